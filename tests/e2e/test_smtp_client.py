"""End-to-end tests of the outbound SMTP/LMTP agent (smtp_client) against the
test sink (tests/e2e/sink.py) on loopback, driven by a small C driver
(tests/e2e/smtp_client_driver.c, built here against build/libcarrier.a)
until the scheduler drives the agent inside carrierd."""
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from sink import Sink  # noqa: E402
from conftest import build_test_tool  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
DRIVER_SRC = ROOT / "tests" / "e2e" / "smtp_client_driver.c"
SINK = ROOT / "tests" / "e2e" / "sink.py"


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    return build_test_tool(tmp_path_factory, DRIVER_SRC)


def closed_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(driver, tmp_path, dests, rcpts, body=b"Subject: test\r\n\r\nhello\r\n",
        sender="sender@example.org", extra=(), timeout=60):
    bf = tmp_path / "body.eml"
    bf.write_bytes(body)
    argv = [str(driver), "--from", sender, "--body", str(bf)]
    for d in dests:
        argv += ["--dest", d]
    for r in rcpts:
        argv += ["--to", r]
    argv += list(extra)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"driver failed: {p.stderr}"
    lines = [json.loads(l) for l in p.stdout.splitlines() if l.strip()]
    return lines[:-1], lines[-1]["stats"]


@pytest.fixture
def sink():
    made = []

    def factory(**kw):
        s = Sink(**kw).start()
        made.append(s)
        return s

    yield factory
    for s in made:
        s.stop()


def classes(job):
    return [(r["class"], r["code"]) for r in job["rcpts"]]


def test_mixed_recipients_one_transaction(driver, sink, tmp_path):
    s = sink()
    jobs, stats = run(driver, tmp_path, [f"127.0.0.1:{s.port}"],
                      ["ok1@x.test", "temp1@x.test", "perm1@x.test", "ok2@x.test"])
    assert classes(jobs[0]) == [("OK", 250), ("TEMP", 451), ("PERM", 550), ("OK", 250)]
    assert jobs[0]["rcpts"][2]["enhanced"] == "5.1.1"
    t = s.wait(1)
    assert len(t) == 1
    assert t[0]["rcpts"] == ["ok1@x.test", "ok2@x.test"]
    assert t[0]["rejected"] == ["temp1@x.test", "perm1@x.test"]
    assert t[0]["data"] == b"Subject: test\r\n\r\nhello\r\n"
    assert t[0]["helo"] == "driver.test"


def test_body_from_spool_large_with_dots(driver, sink, tmp_path):
    # Over the spool's inline limit (a body file), lines starting with dots,
    # no final CRLF: the peer gets the same bytes plus the CRLF.
    lines = [b"Subject: big", b""] + [(b"." if i % 3 == 0 else b"") + b"line %d " % i + b"x" * 70
                                      for i in range(4000)]
    body = b"\r\n".join(lines) + b"\r\n.\r\n..\r\nlast line"
    s = sink()
    jobs, _ = run(driver, tmp_path, [f"127.0.0.1:{s.port}"], ["ok@x.test"], body=body,
                  extra=["--spool", str(tmp_path / "spool")])
    assert classes(jobs[0]) == [("OK", 250)]
    assert len(jobs[0]["qid"]) == 16
    t = s.wait(1)
    assert t[0]["data"] == body + b"\r\n"
    assert t[0]["mail_params"] == f"SIZE={len(body)}"


def test_lmtp_unix_socket_per_recipient(driver, sink, tmp_path):
    path = tmp_path / "lmtp.sock"
    s = sink(unix=str(path), lmtp=True)
    jobs, _ = run(driver, tmp_path, [f"unix:{path}"],
                  ["ok1@x.test", "dtemp1@x.test", "perm1@x.test", "dperm1@x.test"],
                  extra=["--lmtp", "--nexthop", "lmtp:test"])
    assert classes(jobs[0]) == [("OK", 250), ("TEMP", 452), ("PERM", 550), ("PERM", 554)]
    assert jobs[0]["addr"] == str(path)
    t = s.wait(1)
    assert t[0]["delivered"] == ["ok1@x.test"]


def test_failover_in_order(driver, sink, tmp_path):
    busy = sink(greeting="421 4.3.2 busy")
    refusing = sink(greeting="554 5.7.1 not here")
    good = sink()
    jobs, _ = run(driver, tmp_path,
                  [f"127.0.0.1:{closed_port()}", f"127.0.0.1:{busy.port}",
                   f"127.0.0.1:{refusing.port}", f"127.0.0.1:{good.port}"],
                  ["ok@x.test"])
    j = jobs[0]
    assert classes(j) == [("OK", 250)]
    assert j["addr"] == f"127.0.0.1:{good.port}"
    reasons = [a["reason"] for a in j["attempts"]]
    assert len(reasons) == 3
    assert "connect:" in reasons[0]
    assert "421 4.3.2 busy" in reasons[1]
    assert "554 5.7.1 not here" in reasons[2]
    assert len(good.wait(1)) == 1


def test_every_destination_fails_is_temporary(driver, sink, tmp_path):
    refusing = sink(greeting="554 5.7.1 go away")
    jobs, _ = run(driver, tmp_path, [f"127.0.0.1:{refusing.port}", f"127.0.0.1:{closed_port()}"],
                  ["ok@x.test"])
    assert jobs[0]["connected"] is False
    assert classes(jobs[0]) == [("TEMP", 0)]
    assert len(jobs[0]["attempts"]) == 2


@pytest.mark.parametrize("opts,extra,want", [
    (dict(smtputf8=False), ["--utf8"], ("PERM", 553, "5.6.7")),
    (dict(eightbitmime=False), ["--8bit"], ("PERM", 554, "5.6.3")),
    (dict(size=10), [], ("PERM", 552, "5.3.4")),
])
def test_refused_before_sending(driver, sink, tmp_path, opts, extra, want):
    s = sink(**opts)
    jobs, _ = run(driver, tmp_path, [f"127.0.0.1:{s.port}"], ["ok@x.test"], extra=extra)
    r = jobs[0]["rcpts"][0]
    assert (r["class"], r["code"], r["enhanced"]) == want
    assert r["local"] is True
    assert s.transactions == []


def test_extensions_used_when_offered(driver, sink, tmp_path):
    s = sink()
    body = "Subject: caf\u00e9\r\n\r\n\u00e9\r\n".encode()
    run(driver, tmp_path, [f"127.0.0.1:{s.port}"],
        ["ok@x.test,notify=success+failure,orcpt=rfc822;orig@x.test", "ok2@x.test,notify=never"],
        body=body,
        sender="s\u00e9@example.org",
        extra=["--utf8", "--8bit", "--ret", "hdrs", "--envid", "ENV1"])
    t = s.wait(1)[0]
    assert t["mail_params"].split() == [f"SIZE={len(body)}",
                                        "BODY=8BITMIME", "SMTPUTF8", "RET=HDRS", "ENVID=ENV1"]
    assert t["rcpt_params"] == ["NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;orig@x.test", "NOTIFY=NEVER"]


def test_no_dsn_peer_gets_no_dsn_parameters(driver, sink, tmp_path):
    s = sink(dsn=False, pipelining=False)
    jobs, _ = run(driver, tmp_path, [f"127.0.0.1:{s.port}"],
                  ["ok@x.test,notify=success,orcpt=rfc822;orig@x.test"],
                  extra=["--ret", "full", "--envid", "E"])
    r = jobs[0]["rcpts"][0]
    assert (r["class"], r["dsn_relayed"]) == ("OK", True)
    t = s.wait(1)[0]
    assert t["mail_params"] == "SIZE=24" and t["rcpt_params"] == [""]


def test_many_messages_few_connections(driver, sink, tmp_path):
    s = sink(keep_data=False)
    jobs, stats = run(driver, tmp_path, [f"127.0.0.1:{s.port}"], ["ok1@x.test", "ok2@x.test"],
                      extra=["--count", "400", "--conns", "3"])
    assert len(jobs) == 400
    assert all(classes(j) == [("OK", 250), ("OK", 250)] for j in jobs)
    assert stats["connects"] <= 3
    assert stats["reuses"] >= 397
    assert len(s.wait(400)) == 400
    assert s.connections <= 3


def test_sink_as_a_process(driver, tmp_path):
    rec = tmp_path / "rec"
    p = subprocess.Popen([sys.executable, str(SINK), "--port", "0", "--record", str(rec)],
                         stdout=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline()
        assert line.startswith("READY "), line
        port = int(line.split()[1])
        jobs, _ = run(driver, tmp_path, [f"127.0.0.1:{port}"], ["ok@x.test", "perm@x.test"],
                      extra=["--count", "20", "--conns", "2"])
        assert len(jobs) == 20
    finally:
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=10)
    assert "TRANSACTIONS 20" in out
    recs = [json.loads(l) for l in (rec / "transactions.jsonl").read_text().splitlines()]
    assert len(recs) == 20
    assert recs[0]["delivered"] == ["ok@x.test"] and recs[0]["rejected"] == ["perm@x.test"]


DOVECOT = "/usr/sbin/dovecot"


@pytest.fixture
def dovecot(tmp_path):
    """A private Dovecot LMTP server (dovecot-lmtpd) on a Unix socket and a
    loopback port, delivering to Maildirs under a temp dir."""
    import pwd
    import time
    if not os.path.exists(DOVECOT):
        pytest.skip("dovecot-lmtpd is not installed (scripts/deps test)")
    if os.geteuid() != 0:
        pytest.skip("the private Dovecot needs root to switch to the mail user")
    try:
        pw = pwd.getpwnam("carrier")
    except KeyError:
        pytest.skip("no 'carrier' user (scripts/deps test creates it)")
    d = pathlib.Path(tempfile.mkdtemp(prefix="carrier-dovecot-"))
    d.chmod(0o755)
    mail = d / "mail"
    mail.mkdir()
    os.chown(mail, pw.pw_uid, pw.pw_gid)
    port = closed_port()
    conf = d / "dovecot.conf"
    conf.write_text(f"""protocols = lmtp
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
ssl = no
listen = 127.0.0.1
first_valid_uid = 1
mail_location = maildir:{mail}/%n
passdb {{
  driver = static
  args = nopassword=y
}}
userdb {{
  driver = static
  args = uid={pw.pw_uid} gid={pw.pw_gid} home={mail}/%n
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0666
  }}
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
}}
""")
    proc = subprocess.Popen([DOVECOT, "-F", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    sock = d / "run" / "lmtp"
    deadline = time.time() + 10
    while not sock.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert sock.exists(), (d / "dovecot.log").read_text() if (d / "dovecot.log").exists() else ""
    yield {"dir": d, "mail": mail, "socket": sock, "port": port}
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    import shutil
    shutil.rmtree(d, ignore_errors=True)


def test_dovecot_lmtp_per_recipient_replies(driver, dovecot, tmp_path):
    # dave's Maildir path is a plain file: Dovecot fails that recipient
    # alone after the dot, alice and bob are saved.
    (dovecot["mail"] / "dave").write_text("")
    body = b"Subject: lmtp\r\n\r\n.leading dot\r\nend"
    jobs, _ = run(driver, tmp_path, [f"unix:{dovecot['socket']}"],
                  ["alice@x.test", "dave@x.test", "bob@x.test"], body=body,
                  extra=["--lmtp", "--nexthop", "lmtp:dovecot"])
    assert classes(jobs[0]) == [("OK", 250), ("TEMP", 451), ("OK", 250)]
    assert "Saved" in jobs[0]["rcpts"][0]["text"]
    for user in ("alice", "bob"):
        files = list((dovecot["mail"] / user / "new").iterdir())
        assert len(files) == 1
        text = files[0].read_bytes()
        assert text.endswith(b"Subject: lmtp\n\n.leading dot\nend\n"), text


def test_dovecot_lmtp_over_tcp_with_reuse(driver, dovecot, tmp_path):
    jobs, stats = run(driver, tmp_path, [f"127.0.0.1:{dovecot['port']}"], ["carol@x.test"],
                      extra=["--lmtp", "--nexthop", "lmtp:dovecot-tcp", "--count", "5",
                             "--conns", "1"])
    assert all(classes(j) == [("OK", 250)] for j in jobs)
    assert stats["connects"] == 1 and stats["reuses"] == 4
    assert len(list((dovecot["mail"] / "carol" / "new").iterdir())) == 5
