"""`carrier track` tells the whole story of messages carrierd handled:
one deferred and then delivered, one bounced (its bounce followed too)."""
import json
import re
import time

import pytest

from sink import Sink

SENDER = "alice@example.net"


@pytest.fixture
def sink():
    s = Sink().start()
    yield s
    s.stop()


def _send(d, rcpts, msgid):
    s = d.smtp()
    try:
        s.ehlo("client.example")
        s.mail(SENDER)
        for r in rcpts:
            assert s.rcpt(r)[0] == 250
        code, text = s.data(f"From: <{SENDER}>\r\nSubject: story\r\nMessage-ID: {msgid}\r\n"
                            "\r\nonce upon a time\r\n")
        assert code == 250, text
        return re.search(r"queued as (\S+)", text.decode()).group(1)
    finally:
        s.quit()


def _story(d, *args):
    r = d.carrier("track", "-c", str(d.conf_path), "--json", *args)
    assert r.returncode == 0, r.stdout + r.stderr
    return [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]


def _wait(pred, timeout=20):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    raise AssertionError("timed out")


def test_deferred_then_delivered_and_bounced_stories(make_daemon, sink):
    d = make_daemon("[delivery]\nretry_schedule = 1s\n"
                    f"[route *]\nvia = smtp:[127.0.0.1]:{sink.port}\n")
    qid = _send(d, ["temp1@remote.example", "perm1@remote.example"], "<story@example.net>")
    _wait(lambda: any(r["type"] == "deferred" for r in _story(d, "--qid", qid)))
    sink.opts.rules = [("perm", "550 5.1.1 no such user", None)]   # temp* now accepted
    _wait(lambda: any(r["type"] == "delivered" and r.get("rcpt") == "temp1@remote.example"
                      for r in _story(d, "--qid", qid)))
    story = _story(d, "--qid", qid)
    types = [r["type"] for r in story if r.get("qid") == qid]
    assert types[0] == "received", types
    assert "queued" in types
    # temp1: deferred, then delivered on the retry, in that order.
    t1 = [r["type"] for r in story if r.get("qid") == qid and r.get("rcpt") == "temp1@remote.example"]
    assert "deferred" in t1 and "delivered" in t1 and t1.index("deferred") < t1.index("delivered"), t1
    # perm1: bounced, and the bounce's own story is followed.
    bounced = [r for r in story if r.get("type") == "bounced" and r.get("rcpt") == "perm1@remote.example"]
    assert bounced and bounced[0].get("bounce_qid"), story
    bq = bounced[0]["bounce_qid"]
    assert any(r.get("qid") == bq for r in story), "the bounce's story is not followed"
    received = [r for r in story if r["type"] == "received" and r["qid"] == qid][0]
    assert received["helo"] == "client.example"
    assert received["from"] == SENDER
    # The same story by sender and by recipient, and in readable form.
    assert any(r.get("qid") == qid for r in _story(d, "--to", "perm1@remote.example"))
    assert any(r.get("qid") == qid for r in _story(d, "--from", SENDER, "--since", "-1h"))
    text = d.carrier("track", "-c", str(d.conf_path), "--qid", qid)
    assert text.returncode == 0
    assert "received" in text.stdout and "delivered" in text.stdout and "bounced" in text.stdout
