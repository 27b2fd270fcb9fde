"""End to end: `carrier trace PEER`, the per-session SMTP protocol trace.

A trace of 127.0.0.1 logs every command line and reply line of the
sessions from that address (SMTP_TRACE_IN / SMTP_TRACE_OUT), in order,
without message data; `trace off` stops it; only root and the daemon's
user may start one; the CLI follows the JSON log and prints the lines.
"""
import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import CARRIER
from test_tls_auth import pki  # noqa: F401  (fixture)

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
BODY_MARK = "body-line-that-must-not-be-traced"


def send_one(d, subject="trace test"):
    with d.smtp() as s:
        s.ehlo("client.example")
        s.mail("sender@example.org")
        s.rcpt("user@localhost")
        s.data(f"Subject: {subject}\r\nMessage-ID: <trace-1@example.org>\r\n\r\n"
               f"{BODY_MARK}\r\n")


def trace_lines(d):
    out = []
    for ev in d.events():
        if ev["event"] in ("SMTP_TRACE_IN", "SMTP_TRACE_OUT"):
            f = ev["fields"]
            out.append((ev["event"][11:], f["session"], f["line"]))
    return out


def test_trace_logs_commands_and_replies_in_order(daemon):
    r = daemon.carrier("trace", "-c", str(daemon.conf_path), "--no-follow", "127.0.0.1", "60")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "peer: 127.0.0.1" in r.stdout
    daemon.wait_event("SMTP_TRACE_STARTED")
    send_one(daemon)
    daemon.wait_event("SMTP_TRACE_OUT", count=12)
    deadline = time.time() + 5
    while time.time() < deadline and not any(l[2].startswith("221") for l in trace_lines(daemon)):
        time.sleep(0.05)
    lines = trace_lines(daemon)
    sessions = {l[1] for l in lines}
    assert len(sessions) == 1 and next(iter(sessions)).startswith("127.0.0.1:"), lines
    seq = [(d, t) for d, _, t in lines]
    # The dialogue in order: greeting, EHLO and its list, MAIL, RCPT,
    # DATA, the data (as a size only), its 250, QUIT and 221.
    want = [
        ("OUT", "220 "), ("IN", "ehlo client.example"), ("OUT", "250-mx.test.example"),
        ("OUT", "250 CHUNKING"), ("IN", "mail FROM:<sender@example.org>"),
        ("OUT", "250 2.1.0"), ("IN", "rcpt TO:<user@localhost>"), ("OUT", "250 2.1.5"),
        ("IN", "data"), ("OUT", "354 "), ("IN", "<"), ("OUT", "250 2.0.0 Ok: queued as"),
        ("IN", "QUIT"), ("OUT", "221 2.0.0"),
    ]
    pos = 0
    for d_, t in seq:
        if pos < len(want) and d_ == want[pos][0] and t.lower().startswith(want[pos][1].lower()):
            pos += 1
    assert pos == len(want), f"stopped at {want[pos] if pos < len(want) else None}: {seq}"
    data = [t for d_, t in seq if d_ == "IN" and t.endswith("bytes of message data>")]
    assert len(data) == 1, seq
    assert all(BODY_MARK not in t and "Subject" not in t for _, t in seq), seq
    # The Message-ID reaches the tracking log's received record path: the
    # accepted event is there; the trace itself is bounded and escaped.
    assert all(len(t) <= 320 for _, t in seq)


def test_trace_off_stops_tracing(daemon):
    assert daemon.carrier("trace", "-c", str(daemon.conf_path), "--no-follow",
                          "127.0.0.1").returncode == 0
    r = daemon.carrier("trace", "-c", str(daemon.conf_path), "off")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "trace: off" in r.stdout
    ended = daemon.wait_event("SMTP_TRACE_ENDED")
    assert ended[-1]["fields"]["reason"] == "turned off by an administrator"
    send_one(daemon)
    time.sleep(0.3)   # the session has ended: QUIT was answered
    assert trace_lines(daemon) == []
    r = daemon.carrier("trace", "-c", str(daemon.conf_path))
    assert "trace: off" in r.stdout


def test_other_peer_not_traced(daemon):
    assert daemon.carrier("trace", "-c", str(daemon.conf_path), "--no-follow",
                          "192.0.2.7").returncode == 0
    send_one(daemon)
    time.sleep(0.3)   # the session has ended: QUIT was answered
    assert trace_lines(daemon) == []


def test_bad_arguments(daemon):
    r = daemon.carrier("trace", "-c", str(daemon.conf_path), "--no-follow", "not-an-ip")
    assert r.returncode == 1 and "not an IPv4 or IPv6 address" in r.stderr, r.stderr
    r = daemon.carrier("trace", "-c", str(daemon.conf_path), "--no-follow", "127.0.0.1", "3601")
    assert r.returncode == 1 and "1 to 3600" in r.stderr, r.stderr


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv")
def test_unprivileged_user_refused(make_daemon):
    d = make_daemon(start=False)
    d.conf_path.write_text(d.conf_path.read_text().replace(
        f"[control]\nsocket = {d.socket}\n", f"[control]\nsocket = {d.socket}\ngroup = nogroup\n"))
    d.start()
    r = subprocess.run([*NOBODY, str(CARRIER), "trace", "-c", str(d.conf_path), "--no-follow",
                        "127.0.0.1"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "403" in r.stderr and "only root and the daemon's user" in r.stderr, r.stderr
    assert d.events("SMTP_TRACE_STARTED") == []
    # Reading the state is fine for a member of the control group.
    r = subprocess.run([*NOBODY, str(CARRIER), "trace", "-c", str(d.conf_path)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "trace: off" in r.stdout, r.stdout + r.stderr


def test_cli_follows_and_ctrl_c_turns_it_off(daemon):
    p = subprocess.Popen([str(CARRIER), "trace", "-c", str(daemon.conf_path), "127.0.0.1", "60"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        daemon.wait_event("SMTP_TRACE_STARTED")
        send_one(daemon)
        daemon.wait_event("SMTP_TRACE_OUT", count=12)
        time.sleep(0.6)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 0, out + err
    assert " C: ehlo client.example" in out, out
    assert " S: 250 2.1.0 Ok" in out, out
    assert "bytes of message data>" in out and BODY_MARK not in out, out
    assert "trace of 127.0.0.1 turned off" in out, out
    daemon.wait_event("SMTP_TRACE_ENDED")


def test_cli_stops_at_expiry(daemon):
    r = daemon.carrier("trace", "-c", str(daemon.conf_path), "127.0.0.1", "1", timeout=15)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "trace of 127.0.0.1 ended: expired" in r.stdout, r.stdout


def test_auth_redacted_and_tls_sessions_traced(make_daemon, pki):
    """After STARTTLS (a new bufferevent) the trace goes on; AUTH keeps
    only its mechanism, every line of the exchange is <redacted>, and no
    credential reaches the log in any form."""
    import base64
    import smtplib
    from test_tls_auth import PASSWORD, start_tls_daemon

    t = start_tls_daemon(make_daemon, pki)
    d = t.d
    r = d.carrier("trace", "-c", str(d.conf_path), "--no-follow", "127.0.0.1")
    assert r.returncode == 0, r.stdout + r.stderr
    plain = base64.b64encode(b"\0alice\0" + PASSWORD.encode()).decode()
    with t.submission() as s:
        assert s.docmd("AUTH", "LOGIN")[0] == 334
        assert s.docmd(base64.b64encode(b"alice").decode())[0] == 334
        assert s.docmd(base64.b64encode(b"wrong password").decode())[0] == 535
        assert s.docmd("AUTH", "PLAIN " + plain)[0] == 235
    deadline = time.time() + 5
    while time.time() < deadline and not any(l[2].startswith("221") for l in trace_lines(d)):
        time.sleep(0.05)
    seq = [(dr, text) for dr, _, text in trace_lines(d)]
    assert ("OUT", "220 2.0.0 Ready to start TLS") in seq, seq
    assert ("OUT", "250-AUTH PLAIN LOGIN") in seq, seq     # replies after the TLS switch
    assert ("IN", "AUTH LOGIN") in seq, seq
    assert seq.count(("IN", "<redacted>")) == 2, seq
    assert ("IN", "AUTH PLAIN <redacted>") in seq, seq
    assert ("OUT", "235 2.7.0 Authentication successful") in seq, seq
    log = d.json_log.read_text()
    for secret in (PASSWORD, plain, base64.b64encode(b"wrong password").decode(),
                   base64.b64encode(b"alice").decode()):
        assert secret not in log, secret


def test_cli_replacing_a_trace_follows_the_new_one(daemon):
    """The old trace's end (replaced) is logged before the new start: the
    follower must not take it for the end of its own trace."""
    assert daemon.carrier("trace", "-c", str(daemon.conf_path), "--no-follow",
                          "127.0.0.1", "600").returncode == 0
    r = daemon.carrier("trace", "-c", str(daemon.conf_path), "127.0.0.1", "1", timeout=15)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "replaced" not in r.stdout, r.stdout
    assert "trace of 127.0.0.1 ended: expired" in r.stdout, r.stdout
    reasons = [e["fields"]["reason"] for e in daemon.events("SMTP_TRACE_ENDED")]
    assert reasons[:1] == ["replaced by a new trace"], reasons
