"""End to end: the real carrierd delivers to a real, private Dovecot LMTP
server (dovecot-lmtpd, tests/e2e/dovecotpeer.py) through a route
`via = lmtp:unix:/PATH` or `via = lmtp:[127.0.0.1]:PORT`.

One message to two recipients of lmtp.example: Dovecot saves one in its
Maildir and refuses the other, either at RCPT (an unknown user: "550 5.1.1
... User doesn't exist") or after DATA (a user over quota: "552 5.2.2 ...
Quota exceeded", LMTP's per-recipient reply).  The refused recipient's bounce
goes to the sender's domain, routed to the test sink, and names only that
recipient; `carrier track --qid` shows the delivery and the bounce.
"""
import email
import email.policy
import json
import re
import time

import pytest

from dovecotpeer import DovecotPeer, available
from sink import Sink

SENDER = "sender@sender.example"


@pytest.fixture
def sink():
    s = Sink().start()
    yield s
    s.stop()


@pytest.fixture
def dovecot():
    why = available()
    if why:
        pytest.skip(why)
    peer = DovecotPeer(users={"alice": None, "full": "1K"})
    try:
        yield peer.start()
    finally:
        peer.cleanup()


def _wait(pred, timeout=15, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _start(make_daemon, via, sink):
    d = make_daemon("[log]\nlevel.delivery = medium\n"
                    "[delivery]\nretry_schedule = 1s\ncommand_timeout = 5s\n"
                    "connect_timeout = 2s\n"
                    f"[route lmtp.example]\nvia = {via}\n"
                    f"[route sender.example]\nvia = smtp:[127.0.0.1]:{sink.port}\n")
    try:
        d.wait_event("DELIVERY_INDEX_READY", timeout=5)
    except AssertionError:
        pytest.skip("carrierd does not run the delivery runner yet (wiring)")
    return d


def _send(d, rcpts, body):
    s = d.smtp()
    try:
        s.ehlo("client.example")
        s.mail(SENDER)
        for r in rcpts:
            code, text = s.rcpt(r)
            assert code == 250, (r, code, text)
        code, text = s.data(body)
        assert code == 250, text
        return re.search(r"queued as (\S+)", text.decode()).group(1)
    finally:
        s.quit()


def _story(d, qid):
    r = d.carrier("track", "-c", str(d.conf_path), "--json", "--qid", qid)
    if r.returncode == 1:
        return []
    assert r.returncode == 0, r.stdout + r.stderr
    return [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]


def _bounces(sink):
    return [t for t in sink.transactions if t["mail_from"] in ("", "<>")]


def _report(t):
    """Parses a bounce and returns (message, status text, [per-recipient fields])."""
    msg = email.message_from_bytes(t["data"], policy=email.policy.compat32)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = msg.get_payload()
    assert parts[1].get_content_type() == "message/delivery-status"
    blocks = parts[1].get_payload()
    status = "".join(b.as_string() for b in blocks)
    return msg, status, [dict(b.items()) for b in blocks[1:]]


def _check(d, dovecot, sink, qid, good, bad, code, text, marker):
    # The accepted recipient's copy is in its Dovecot Maildir.
    got = _wait(lambda: dovecot.messages(good), what=f"{good}'s message in Dovecot's Maildir")
    time.sleep(0.5)
    got = dovecot.messages(good)
    assert len(got) == 1, got
    assert marker.encode() in got[0]
    assert f"Return-Path: <{SENDER}>".encode() in got[0]
    assert dovecot.messages(bad) == []

    # The refused recipient bounces to the sender, through the sink.
    b = _wait(lambda: _bounces(sink), what="the bounce at the sink")
    time.sleep(1.0)                           # no second bounce, no retry
    bounces = _bounces(sink)
    assert len(bounces) == 1, bounces
    b = bounces[0]
    assert SENDER in str(b["rcpts"])
    msg, status, rcpts = _report(b)
    assert [r["Final-Recipient"] for r in rcpts] == [f"rfc822; {bad}@lmtp.example"]
    r = rcpts[0]
    assert r["Action"] == "failed"
    assert r["Status"] == code
    assert text in r["Diagnostic-Code"], r
    assert f"{good}@lmtp.example" not in status, status
    assert f"{good}@lmtp.example" not in msg.get_payload()[0].get_payload()
    assert d.events("DELIVERY_DEFERRED") == []

    # carrier track tells both outcomes.
    def outcomes():
        story = _story(d, qid)
        mine = [x for x in story if x.get("qid") == qid]
        dl = [x for x in mine if x["type"] == "delivered"]
        bo = [x for x in mine if x["type"] == "bounced"]
        return (story, dl, bo) if dl and bo else None
    story, delivered, bounced = _wait(outcomes, what="delivered and bounced track records")
    assert [x["rcpt"] for x in delivered] == [f"{good}@lmtp.example"], story
    assert [x["rcpt"] for x in bounced] == [f"{bad}@lmtp.example"], story
    bq = bounced[0].get("bounce_qid")
    assert bq and any(x.get("qid") == bq for x in story), story
    plain = d.carrier("track", "-c", str(d.conf_path), "--qid", qid)
    assert plain.returncode == 0, plain.stderr
    assert "delivered" in plain.stdout and "bounced" in plain.stdout


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_unknown_user_refused_at_rcpt(make_daemon, dovecot, sink, transport):
    via = (f"lmtp:unix:{dovecot.socket}" if transport == "unix"
           else f"lmtp:[127.0.0.1]:{dovecot.port}")
    d = _start(make_daemon, via, sink)
    marker = f"lmtp route {transport} {time.time()}"
    body = (f"From: <{SENDER}>\r\nTo: alice, bob\r\nSubject: {marker}\r\n"
            f"Message-ID: <lmtp-{transport}@sender.example>\r\n\r\nhello dovecot\r\n"
            ".leading dot\r\n")
    qid = _send(d, ["alice@lmtp.example", "bob@lmtp.example"], body)
    _check(d, dovecot, sink, qid, "alice", "bob", "5.1.1", "User doesn't exist", marker)
    saved = dovecot.messages("alice")[0]
    assert saved.endswith(b"\nhello dovecot\n.leading dot\n"), saved[-200:]


def test_over_quota_refused_after_data(make_daemon, dovecot, sink):
    d = _start(make_daemon, f"lmtp:unix:{dovecot.socket}", sink)
    marker = f"lmtp route quota {time.time()}"
    body = (f"From: <{SENDER}>\r\nTo: alice, full\r\nSubject: {marker}\r\n"
            "Message-ID: <lmtp-quota@sender.example>\r\n\r\n" +
            "".join(f"line {i:04d} of a message larger than full's 1K quota\r\n"
                    for i in range(100)))
    qid = _send(d, ["alice@lmtp.example", "full@lmtp.example"], body)
    _check(d, dovecot, sink, qid, "alice", "full", "5.2.2", "Quota exceeded", marker)
