"""End to end: `carrier queue ...` and `carrier stop` against a running
carrierd whose queue the test builds.

Mail goes to remote domains routed to the test sink (tests/e2e/sink.py)
answering 451 to every temp* recipient, so it stays queued.  When the
delivery runner is wired in the daemon the messages are tried and
deferred; when it is not, they stay queued untried.  Either way each
queue command must change what the next `carrier queue` shows; the tests
that need delivery attempts (retry, flush --wait, a held message left
alone) check them when the runner is there.

Permissions: the control group is `nogroup`; uid 65534 with gid 65534 is a
member (may read, may not change), with gid 12345 it is no member (the
socket refuses it).
"""
import json
import os
import pathlib
import shutil
import subprocess
import time

import pytest

from conftest import CARRIER
from sink import Sink

MEMBER = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
NON_MEMBER = ["setpriv", "--reuid=65534", "--regid=12345", "--clear-groups"]


@pytest.fixture
def sink():
    s = Sink().start()
    yield s
    s.stop()


def _conf(d, sink_port):
    track = d.log_dir / "track"
    return (f"[server]\nlisten = 127.0.0.1:{d.port}\npidfile = {d.pidfile}\n"
            f"hostname = mx.test.example\n"
            f"[spool]\npath = {d.spool}\nmin_free_space = 1M\n"
            f"[local]\nmaildir = {d.maildir}\n"
            f"[control]\nsocket = {d.socket}\ngroup = nogroup\n"
            f"[counters]\nshm_name = {d.shm_name}\n"
            f"[log]\njson = {d.json_log}\nsyslog = no\nlevel.delivery = medium\n"
            f"[track]\ndir = {track}\n"
            f"[delivery]\nretry_schedule = 1h\ncommand_timeout = 3s\nconnect_timeout = 2s\n"
            f"[route *]\nvia = smtp:[127.0.0.1]:{sink_port}\n")


@pytest.fixture
def qd(make_daemon, sink):
    """A started daemon routing everything to the sink."""
    d = make_daemon(start=False)
    d.conf_path.write_text(_conf(d, sink.port))
    d.start()
    d.hop = f"smtp:[127.0.0.1]:{sink.port}"
    d.wired = bool(d.events("DELIVERY_INDEX_READY")) or _wait_wired(d)
    return d


def _wait_wired(d):
    try:
        d.wait_event("DELIVERY_INDEX_READY", timeout=2)
        return True
    except AssertionError:
        return False


def cq(d, *args, prefix=(), input=None, stdin=None):
    """Runs `carrier ARGS -c CONF` (optionally as another user)."""
    argv = [*prefix, str(CARRIER), *args, "-c", str(d.conf_path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, input=input,
                          stdin=stdin if input is None else None)


def qjson(d, *args):
    r = cq(d, "queue", "list", "--json", *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def send(d, sender, rcpts, subject="queue test", body="hello queue\r\n"):
    s = d.smtp()
    try:
        assert s.sendmail(sender, rcpts, f"From: <{sender}>\r\nSubject: {subject}\r\n"
                          f"Message-ID: <{subject.replace(' ', '.')}@test>\r\n\r\n{body}") == {}
    finally:
        s.quit()
    return qid_of(d, sender)


def qid_of(d, sender):
    for m in qjson(d):
        if m.get("sender") == sender:
            return m["qid"]
    raise AssertionError(f"no queued message from {sender}")


def wait(pred, timeout=15, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def tried(d, qid):
    return sum(r["attempts"] for m in qjson(d) if m["qid"] == qid for r in m["recipients"])


def settle(d, qids):
    """With the runner wired: wait until each message was tried once."""
    if d.wired:
        for q in qids:
            wait(lambda: tried(d, q) > 0, what=f"a first attempt of {q}")


def track_records(d, qid=None):
    out = []
    for f in sorted((d.log_dir / "track").glob("track-*.jsonl")):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            if qid is None or rec.get("qid") == qid:
                out.append(rec)
    return out


def test_list_filters_json_summary_show(qd):
    q1 = send(qd, "alice@example.org", ["temp1@one.example", "temp2@two.example"], "first")
    q2 = send(qd, "bob@example.org", ["temp3@two.example"], "second")
    settle(qd, [q1, q2])

    r = cq(qd, "queue")
    assert r.returncode == 0, r.stderr
    assert q1 in r.stdout and q2 in r.stdout and "temp2@two.example" in r.stdout
    assert "2 messages" in r.stdout

    msgs = {m["qid"]: m for m in qjson(qd)}
    assert set(msgs) == {q1, q2}
    assert msgs[q1]["sender"] == "alice@example.org"
    assert [x["address"] for x in msgs[q1]["recipients"]] == ["temp1@one.example",
                                                              "temp2@two.example"]
    assert all(x["next_hop"] == qd.hop for x in msgs[q1]["recipients"])
    want_state = "deferred" if qd.wired else "queued"
    assert msgs[q1]["state"] == want_state

    assert [m["qid"] for m in qjson(qd, "--from", "bob@")] == [q2]
    assert [m["qid"] for m in qjson(qd, "--to", "temp1@")] == [q1]
    assert [m["qid"] for m in qjson(qd, "--domain", "two.example")] == [q1, q2]
    assert [m["qid"] for m in qjson(qd, "--domain", "one.example")] == [q1]
    assert [m["qid"] for m in qjson(qd, "--next-hop", qd.hop)] == [q1, q2]
    assert qjson(qd, "--next-hop", "mx:nowhere.example") == []
    assert [m["qid"] for m in qjson(qd, "--state", want_state)] == [q1, q2]
    assert qjson(qd, "--state", "held") == []
    assert qjson(qd, "--older-than", "1h") == []
    assert len(qjson(qd, "--older-than", "0")) == 2
    bad = cq(qd, "queue", "--state", "nonsense")
    assert bad.returncode == 1 and "bad filter" in bad.stderr

    s = cq(qd, "queue", "summary", "--json")
    assert s.returncode == 0, s.stderr
    summary = json.loads(s.stdout)
    assert summary["buckets"][0] == "5m" and summary["buckets"][-1] == "1280m+"
    assert summary["total"]["total"] == 3
    assert summary["total"]["ages"]["5m"] == 3
    assert [(h["next_hop"], h["total"]) for h in summary["next_hops"]] == [(qd.hop, 3)]
    text = cq(qd, "queue", "summary")
    assert "TOTAL" in text.stdout and qd.hop in text.stdout and "1280m+" in text.stdout

    show = cq(qd, "queue", "show", q1)
    assert show.returncode == 0, show.stderr
    assert "sender: alice@example.org" in show.stdout
    assert "temp2@two.example" in show.stdout
    assert "Subject: first" in show.stdout
    assert "hello queue" not in show.stdout
    if qd.wired:
        assert "451" in show.stdout      # the last reply
    body = cq(qd, "queue", "show", q1, "--body")
    assert "hello queue" in body.stdout
    missing = cq(qd, "queue", "show", "0000000000000000")
    assert missing.returncode == 1 and "no message" in missing.stderr


def test_hold_release_and_delivery_leaves_held_alone(qd):
    q1 = send(qd, "held@example.org", ["temp1@one.example"], "held one")
    q2 = send(qd, "free@example.org", ["temp2@one.example"], "free one")
    settle(qd, [q1, q2])

    r = cq(qd, "queue", "hold", q1)
    assert r.returncode == 0, r.stderr
    assert "1 changed" in r.stdout
    assert [m["qid"] for m in qjson(qd, "--state", "held")] == [q1]
    assert "held" in cq(qd, "queue").stdout
    summary = json.loads(cq(qd, "queue", "summary", "--json").stdout)
    assert summary["held_messages"] == 1 and summary["total"]["total"] == 1
    assert [e["fields"]["qid"] for e in qd.wait_event("QUEUE_HELD")] == [q1]

    # Delivery leaves the held one alone, even through a flush.
    before = tried(qd, q1)
    f = cq(qd, "queue", "flush")
    assert f.returncode == 0, f.stderr
    if qd.wired:
        wait(lambda: tried(qd, q2) >= 2, what="the flushed message's second attempt")
        time.sleep(1)
    assert tried(qd, q1) == before
    again = cq(qd, "queue", "retry", q1)
    assert "unchanged" in again.stdout

    r = cq(qd, "queue", "release", q1)
    assert r.returncode == 0 and "1 changed" in r.stdout, r.stdout + r.stderr
    assert qjson(qd, "--state", "held") == []
    assert cq(qd, "queue", "hold", "--all").returncode == 0
    assert len(qjson(qd, "--state", "held")) == 2
    assert "2 changed" in cq(qd, "queue", "release", "--all").stdout
    assert qjson(qd, "--state", "held") == []

    recs = [(x["type"], x.get("uid")) for x in track_records(qd, q1)
            if x["type"] in ("held", "released")]
    assert recs == [("held", 0), ("released", 0), ("held", 0), ("released", 0)]
    usage = cq(qd, "queue", "hold")
    assert usage.returncode == 2


def test_delete_confirmation_and_yes(qd):
    q1 = send(qd, "del@example.org", ["temp1@one.example"], "to delete")
    r = cq(qd, "queue", "delete", q1, stdin=subprocess.DEVNULL)
    assert r.returncode == 2
    assert "--yes" in r.stderr and "no terminal" in r.stderr
    assert [m["qid"] for m in qjson(qd)] == [q1]

    r = cq(qd, "queue", "delete", q1, "--yes")
    assert r.returncode == 0, r.stderr
    assert qjson(qd) == []
    assert cq(qd, "queue", "show", q1).returncode == 1
    assert [x["uid"] for x in track_records(qd, q1) if x["type"] == "deleted"] == [0]
    qd.wait_event("QUEUE_DELETED")
    gone = cq(qd, "queue", "delete", q1, "--yes")
    assert gone.returncode == 1 and "no such message" in gone.stderr


def test_retry_and_flush_wait(qd):
    q1 = send(qd, "retry@example.org", ["temp1@one.example"], "retry me")
    q2 = send(qd, "other@example.org", ["temp2@two.example"], "other")
    if not qd.wired:
        # Untried recipients are due already: nothing to change.
        r = cq(qd, "queue", "retry", q1)
        assert r.returncode == 0 and "unchanged" in r.stdout
        pytest.skip("carrierd does not run the delivery runner yet: no deferral to retry")
    settle(qd, [q1, q2])
    m = {x["qid"]: x for x in qjson(qd)}
    assert m[q1]["recipients"][0]["next_attempt"] > time.time() + 600

    r = cq(qd, "queue", "retry", q1)
    assert r.returncode == 0 and "1 changed" in r.stdout, r.stdout
    wait(lambda: tried(qd, q1) >= 2, what="the retried attempt")
    assert tried(qd, q2) == 1
    assert any(x["type"] == "retry" and x["uid"] == 0 for x in track_records(qd, q1))

    r = cq(qd, "queue", "retry", "--domain", "two.example")
    assert "1 changed" in r.stdout, r.stdout
    wait(lambda: tried(qd, q2) >= 2, what="the domain retry")

    r = cq(qd, "queue", "flush", "--wait", "--timeout", "20")
    assert r.returncode == 0, r.stderr
    assert "nothing due" in r.stdout
    assert tried(qd, q1) >= 3 and tried(qd, q2) >= 3


def test_bounce_queues_a_report(qd):
    q1 = send(qd, "sender@example.org", ["temp1@one.example", "temp2@one.example"], "bounce me")
    r = cq(qd, "queue", "bounce", q1)
    assert r.returncode == 0, r.stderr
    assert "bounced: 2 recipients" in r.stdout
    assert q1 not in [m["qid"] for m in qjson(qd)]
    bounced = [x for x in track_records(qd, q1) if x["type"] == "bounced"]
    assert sorted(x["rcpt"] for x in bounced) == ["temp1@one.example", "temp2@one.example"]
    report = bounced[0]["bounce_qid"]
    assert report
    if not qd.wired:
        (m,) = [m for m in qjson(qd) if m["qid"] == report]
        assert m["sender"] == "" and m["recipients"][0]["address"] == "sender@example.org"
    qd.wait_event("QUEUE_BOUNCED")


def test_quarantined_entry_is_listed(qd):
    send(qd, "quarantine-me@example.org", ["temp1@one.example"], "damaged")
    qid = qid_of(qd, "quarantine-me@example.org")
    assert qd.stop() == 0
    data = (qd.spool / "data.mdb").read_bytes()
    assert b"quarantine-me@example.org" in data
    (qd.spool / "data.mdb").write_bytes(data.replace(b"quarantine-me@example.org",
                                                     b"quarantine-XX@example.org"))
    qd.start(wait_ready=False)
    wait(lambda: cq(qd, "status").returncode == 0, what="the restarted daemon")
    got = qjson(qd)
    assert [(m["qid"], m["state"]) for m in got] == [(qid, "quarantined")]
    assert "CRC" in got[0]["reason"]
    text = cq(qd, "queue")
    assert "quarantined" in text.stdout
    show = cq(qd, "queue", "show", qid)
    assert show.returncode == 0 and "state: quarantined" in show.stdout


def _can_switch_users():
    return os.geteuid() == 0 and shutil.which("setpriv") is not None


@pytest.mark.skipif(not _can_switch_users(), reason="needs root and setpriv")
def test_permissions_group_reads_others_refused(qd):
    q1 = send(qd, "perm@example.org", ["temp1@one.example"], "perms")
    r = cq(qd, "queue", prefix=MEMBER)
    assert r.returncode == 0, r.stderr
    assert q1 in r.stdout
    assert cq(qd, "queue", "summary", prefix=MEMBER).returncode == 0
    assert cq(qd, "queue", "show", q1, prefix=MEMBER).returncode == 0

    for cmd in (["hold", q1], ["release", q1], ["delete", q1, "--yes"], ["retry", "--all"],
                ["flush"], ["bounce", q1]):
        r = cq(qd, "queue", *cmd, prefix=MEMBER)
        assert r.returncode == 1, (cmd, r.stdout, r.stderr)
        assert "only root and the daemon's user" in r.stderr, (cmd, r.stderr)
    r = cq(qd, "stop", prefix=MEMBER)
    assert r.returncode == 1 and "only root and the daemon's user" in r.stderr
    assert qjson(qd)[0]["state"] != "held"

    r = cq(qd, "queue", prefix=NON_MEMBER)
    assert r.returncode == 1
    assert "permission denied" in r.stderr and "nogroup" in r.stderr, r.stderr
    assert not any(x["type"] in ("held", "deleted") for x in track_records(qd, q1))


def test_stop_drains_and_waits(qd):
    r = cq(qd, "stop", "--wait")
    assert r.returncode == 0, r.stderr
    assert "draining" in r.stdout and "stopped" in r.stdout
    assert qd.proc.wait(10) == 0
    ev = qd.events("CORE_STOPPING")
    assert ev and ev[0]["fields"]["signal"] == "carrier stop"
    assert qd.events("QUEUE_STOP_REQUESTED")[0]["fields"]["uid"] == 0
    after = cq(qd, "queue")
    assert after.returncode == 3


def test_many_ids_go_in_batches(qd):
    s = qd.smtp()
    try:
        for i in range(30):
            s.sendmail(f"batch{i}@example.org", [f"temp{i}@one.example"],
                       f"Subject: batch {i}\r\n\r\nx\r\n")
    finally:
        s.quit()
    ids = [m["qid"] for m in qjson(qd)]
    assert len(ids) == 30
    r = cq(qd, "queue", "hold", *ids)
    assert r.returncode == 0, r.stderr
    assert len(qjson(qd, "--state", "held")) == 30
    r = cq(qd, "queue", "delete", "--yes", *ids)
    assert r.returncode == 0, r.stderr
    assert qjson(qd) == []


def test_show_bounds_a_body_of_control_bytes(qd):
    body = ("\x01" * 900 + "\r\n") * 250         # 4x larger once escaped
    qid = send(qd, "ctl@example.org", ["temp1@one.example"], "control bytes", body=body)
    r = cq(qd, "queue", "show", qid, "--body")
    assert r.returncode == 0, r.stderr
    assert "text_truncated" in r.stdout
    assert "Subject: control bytes" in r.stdout
