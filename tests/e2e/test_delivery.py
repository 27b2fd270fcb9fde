"""End to end: remote delivery through a real carrierd to the test sink
(tests/e2e/sink.py) on loopback.

  - one message to three recipients answered 250, 4xx and 5xx: exactly one
    delivery each in the end, one bounce naming only the failed recipient
  - 4xx then success on retry (retry_schedule = 1s)
  - expiry (max_queue_lifetime = 3s) gives a bounce with status 4.4.7
  - a bounce to an address that itself fails is not bounced again
  - failover across route costs (the cheaper route's next hop is down)
  - mail queued before a restart is delivered after it

The sink answers by local part: ok* 250, temp* 451 4.3.0, perm* 550 5.1.1;
tests change its rules while it runs (Options.rules is read per RCPT).
"""
import email
import email.policy
import time

import pytest

from conftest import free_port
from sink import DEFAULT_RULES, Sink

SENDER = "alice@example.net"
ALL_OK = [("perm", "550 5.1.1 no such user", None)]   # temp* now accepted


@pytest.fixture
def sink():
    s = Sink().start()
    yield s
    s.stop()


def _conf(via, extra_delivery=""):
    return ("[log]\nlevel.delivery = medium\n"
            "[delivery]\nretry_schedule = 1s\ncommand_timeout = 3s\nconnect_timeout = 2s\n" +
            extra_delivery +
            via)


def _start(make_daemon, conf):
    d = make_daemon(conf)
    try:
        d.wait_event("DELIVERY_INDEX_READY", timeout=5)
    except AssertionError:
        pytest.skip("carrierd does not run the delivery runner yet (wiring)")
    return d


def _send(d, rcpts, sender=SENDER, body=None):
    body = body or (f"From: <{sender}>\r\nTo: test\r\nSubject: e2e delivery\r\n"
                    "Message-ID: <e2e@example.net>\r\n\r\nhello remote\r\n")
    s = d.smtp()
    try:
        refused = s.sendmail(sender, rcpts, body)
        assert refused == {}
    finally:
        s.quit()


def _wait(pred, timeout=15, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _bounces(sink):
    return [t for t in sink.transactions if t["mail_from"] in ("", "<>")]


def _deliveries(sink, addr):
    return [t for t in sink.transactions if t["mail_from"] not in ("", "<>")
            and any(r == addr or (isinstance(r, (list, tuple)) and r[0] == addr)
                    or (isinstance(r, dict) and r.get("addr") == addr)
                    for r in t["rcpts"])]


def _report(t):
    """Parses a bounce and returns (message, [per-recipient field dicts])."""
    msg = email.message_from_bytes(t["data"], policy=email.policy.compat32)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = msg.get_payload()
    assert parts[0].get_content_type() == "text/plain"
    assert parts[1].get_content_type() == "message/delivery-status"
    blocks = parts[1].get_payload()
    return msg, [dict(b.items()) for b in blocks[1:]]


def test_mixed_results_one_delivery_each_one_bounce(make_daemon, sink):
    d = _start(make_daemon, _conf(f"[route *]\nvia = smtp:[127.0.0.1]:{sink.port}\n"))
    _send(d, ["ok1@remote.test", "temp1@remote.test", "perm1@remote.test"])
    # First attempt: ok1 delivered, temp1 deferred, perm1 failed -> bounce.
    d.wait_event("DELIVERY_DEFERRED", timeout=15)
    d.wait_event("DELIVERY_BOUNCED", timeout=15)
    sink.opts.rules = ALL_OK
    _wait(lambda: _deliveries(sink, "temp1@remote.test"), what="temp1 delivered on retry")
    _wait(lambda: _bounces(sink), what="the bounce")
    d.wait_event("DELIVERY_REMOVED", timeout=15, count=2)   # the message and its bounce
    time.sleep(1.5)                                         # nothing more comes
    assert len(_deliveries(sink, "ok1@remote.test")) == 1
    assert len(_deliveries(sink, "temp1@remote.test")) == 1
    assert len(_deliveries(sink, "perm1@remote.test")) == 0
    bounces = _bounces(sink)
    assert len(bounces) == 1
    b = bounces[0]
    assert SENDER in str(b["rcpts"])
    msg, rcpts = _report(b)
    assert "MAILER-DAEMON@mx.test.example" in msg["From"]
    assert [r["Final-Recipient"] for r in rcpts] == ["rfc822; perm1@remote.test"]
    r = rcpts[0]
    assert r["Action"] == "failed"
    assert r["Status"] == "5.1.1"
    assert r["Remote-MTA"].startswith("dns; ")
    assert "550 5.1.1 no such user" in r["Diagnostic-Code"]
    assert r["Diagnostic-Code"].startswith("smtp; ")
    assert b"ok1@remote.test" not in b["data"].split(b"message/rfc822")[0].split(
        b"delivery-status")[1]


def test_temp_then_success_on_retry(make_daemon, sink):
    d = _start(make_daemon, _conf(f"[route *]\nvia = smtp:[127.0.0.1]:{sink.port}\n"))
    _send(d, ["temp2@remote.test"])
    ev = d.wait_event("DELIVERY_DEFERRED", timeout=15)[0]
    assert ev["fields"]["rcpt"] == "temp2@remote.test"
    assert "451" in ev["fields"]["reply"]
    sink.opts.rules = ALL_OK
    _wait(lambda: _deliveries(sink, "temp2@remote.test"), what="delivery on retry")
    d.wait_event("DELIVERY_REMOVED", timeout=10)
    assert _bounces(sink) == []


def test_expiry_bounces(make_daemon, sink):
    d = _start(make_daemon, _conf(f"[route *]\nvia = smtp:[127.0.0.1]:{sink.port}\n",
                                  "max_queue_lifetime = 3s\n"))
    _send(d, ["temp3@remote.test"])
    d.wait_event("DELIVERY_EXPIRED", timeout=15)
    b = _wait(lambda: _bounces(sink), what="the expiry bounce")[0]
    _, rcpts = _report(b)
    assert rcpts[0]["Final-Recipient"] == "rfc822; temp3@remote.test"
    assert rcpts[0]["Action"] == "failed"
    assert rcpts[0]["Status"] == "4.4.7"
    assert "451" in rcpts[0]["Diagnostic-Code"]
    assert len(d.events("DELIVERY_DEFERRED")) >= 2


def test_failed_bounce_is_not_bounced_again(make_daemon, sink):
    d = _start(make_daemon, _conf(f"[route *]\nvia = smtp:[127.0.0.1]:{sink.port}\n"))
    # The sender's own address is refused with 550: so is its bounce.
    _send(d, ["perm4@remote.test"], sender="permsender@remote.test")
    d.wait_event("DELIVERY_DOUBLE_BOUNCE_DROPPED", timeout=20)
    time.sleep(1.5)
    assert _bounces(sink) == []                # the bounce was refused, not accepted
    assert len(d.events("DELIVERY_NOTIFY_QUEUED")) == 1
    assert len(d.events("DELIVERY_BOUNCED")) == 2   # the message's, the bounce's
    assert d.events("DELIVERY_DOUBLE_BOUNCE_DROPPED")[0]["fields"]["rcpts"] == 1
    d.wait_event("DELIVERY_REMOVED", timeout=10, count=2)


def test_double_bounce_to_postmaster(make_daemon, sink):
    d = _start(make_daemon, _conf(f"[route *]\nvia = smtp:[127.0.0.1]:{sink.port}\n",
                                  "double_bounce_to = ok-postmaster@remote.test\n"))
    _send(d, ["perm5@remote.test"], sender="permsender@remote.test")
    d.wait_event("DELIVERY_DOUBLE_BOUNCE_SENT", timeout=20)
    got = _wait(lambda: _deliveries(sink, "ok-postmaster@remote.test") or
                [t for t in _bounces(sink) if "ok-postmaster" in str(t["rcpts"])],
                what="the report to double_bounce_to")
    _, rcpts = _report(got[0])
    assert rcpts[0]["Final-Recipient"] == "rfc822; permsender@remote.test"


def test_failover_across_route_costs(make_daemon, sink):
    dead = free_port()     # nothing listens there
    via = (f"[route *]\nvia = smtp:[127.0.0.1]:{dead}\ncost = 1\n"
           f"[route *]\nvia = smtp:[127.0.0.1]:{sink.port}\ncost = 5\n")
    d = _start(make_daemon, _conf(via))
    _send(d, ["ok6@remote.test"])
    _wait(lambda: _deliveries(sink, "ok6@remote.test"), what="delivery via the dearer route")
    ev = d.wait_event("DELIVERY_DELIVERED", timeout=10)[0]
    assert ev["fields"]["hop"] == f"smtp:[127.0.0.1]:{sink.port}"
    # One attempt, no deferral: the failover happened inside it.
    assert d.events("DELIVERY_DEFERRED") == []


def test_queued_mail_survives_restart(make_daemon, sink):
    dead = free_port()
    d = _start(make_daemon, _conf(f"[route *]\nvia = smtp:[127.0.0.1]:{dead}\n"))
    _send(d, ["ok7@remote.test"])
    d.wait_event("DELIVERY_DEFERRED", timeout=15)
    d.stop()
    text = d.conf_path.read_text().replace(f"127.0.0.1]:{dead}", f"127.0.0.1]:{sink.port}")
    d.conf_path.write_text(text)
    d.start()
    _wait(lambda: _deliveries(sink, "ok7@remote.test"), what="delivery after the restart")
    ready = d.events("DELIVERY_INDEX_READY")
    assert ready[-1]["fields"]["messages"] >= 1


def test_notify_success_relayed_to_peer_without_dsn(make_daemon):
    s = Sink(dsn=False).start()
    try:
        d = _start(make_daemon, _conf(f"[route *]\nvia = smtp:[127.0.0.1]:{s.port}\n"))
        c = d.smtp()
        try:
            c.ehlo()
            if not c.has_extn("dsn"):
                pytest.skip("carrierd does not offer DSN")
            c.sendmail(SENDER, ["ok8@remote.test"],
                       "Subject: success\r\n\r\nhello\r\n",
                       rcpt_options=["NOTIFY=SUCCESS,FAILURE"])
        finally:
            c.quit()
        _wait(lambda: _deliveries(s, "ok8@remote.test"), what="the delivery")
        report = _wait(lambda: _bounces(s), what="the success report")[0]
        msg, rcpts = _report(report)
        assert "Successful" in msg["Subject"]
        assert rcpts[0]["Final-Recipient"] == "rfc822; ok8@remote.test"
        assert rcpts[0]["Action"] == "relayed"
        assert rcpts[0]["Status"].startswith("2.")
    finally:
        s.stop()


# ---- per next hop: rate, backoff, queue gauges -------------------------------

class Refuser:
    """A dead next hop that can be counted: accepts each connection and
    closes it at once (no greeting)."""

    def __init__(self, port=None):
        import socket
        import threading
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port or 0))
        self.port = self.sock.getsockname()[1]
        self.sock.listen(64)
        self.count = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.count += 1
            c.close()

    def close(self):
        import socket
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)


def _send_many(d, n, rcpt):
    s = d.smtp()
    try:
        for i in range(n):
            s.sendmail(SENDER, [rcpt], f"Subject: m{i}\r\nMessage-ID: <m{i}@example.net>\r\n"
                       "\r\nhello\r\n")
    finally:
        s.quit()


def _stats_hop(d, key):
    import json
    r = d.carrier("stats", "-c", str(d.conf_path), "--json")
    assert r.returncode == 0, r.stderr
    for h in json.loads(r.stdout)["next_hops"]:
        if h["key"] == key:
            return h
    return None


def test_max_rate_spaces_messages(make_daemon, sink):
    d = _start(make_daemon, _conf(f"[route *]\nvia = smtp:[127.0.0.1]:{sink.port}\n"
                                  "max_rate = 5\n"))
    _send_many(d, 20, "ok-rate@remote.test")
    _wait(lambda: len(sink.transactions) >= 20, timeout=20, what="20 deliveries")
    times = sorted(t["time"] for t in sink.transactions)
    # 5 per second: 19 gaps of 0.2 s (the first token is there at once).
    assert times[-1] - times[0] >= 3.0, times[-1] - times[0]
    # They waited for the rate, nothing was deferred.
    assert d.events("DELIVERY_DEFERRED") == []
    assert len(d.events("DELIVERY_DELIVERED")) == 20


def test_dead_hop_backoff_then_flush(make_daemon):
    dead = Refuser()
    port = dead.port
    key = f"smtp:[127.0.0.1]:{port}"
    s = None
    try:
        # First hop retry after 1 s, then 60 s: only a flush brings it back.
        d = _start(make_daemon, _conf(f"[route *]\nvia = smtp:[127.0.0.1]:{port}\n").replace(
            "retry_schedule = 1s", "retry_schedule = 1s, 60s"))
        _send_many(d, 50, "ok-dead@remote.test")
        d.wait_event("DELIVERY_HOP_DOWN", timeout=10, count=2)   # the probe after 1 s failed
        _wait(lambda: (len(d.events("DELIVERY_DEFERRED")) +
                       sum(e["fields"]["rcpts"] for e in d.events("DELIVERY_POSTPONED"))) >= 50,
              timeout=10, what="every message deferred or postponed")
        time.sleep(1.0)
        tried = dead.count
        attempts = len(d.events("DELIVERY_DEFERRED"))
        assert tried <= 12, f"{tried} connections to a dead next hop for 50 messages"
        assert attempts <= 12, attempts
        h = _stats_hop(d, key)
        assert h is not None
        assert h["queue_messages"] == 50, h
        assert h["next_retry"] > time.time() + 30, h
        assert h["last_failure"] > 0
        # The next hop comes back; a flush delivers everything at once.
        dead.close()
        s = Sink(port=port).start()
        r = d.carrier("queue", "-c", str(d.conf_path), "flush")
        assert r.returncode == 0, r.stdout + r.stderr
        _wait(lambda: len(s.transactions) >= 50, timeout=15, what="50 deliveries after the flush")
        d.wait_event("DELIVERY_HOP_UP", timeout=5)
        d.wait_event("DELIVERY_REMOVED", timeout=10, count=50)
        assert dead.count == tried
        _wait(lambda: _stats_hop(d, key)["queue_messages"] == 0, timeout=5,
              what="the hop's queue gauge back to 0")
    finally:
        dead.close()
        if s is not None:
            s.stop()


def test_hop_queue_gauges(make_daemon):
    dead = free_port()
    key = f"smtp:[127.0.0.1]:{dead}"
    d = _start(make_daemon, _conf(f"[route *]\nvia = smtp:[127.0.0.1]:{dead}\n").replace(
        "retry_schedule = 1s", "retry_schedule = 30s"))
    t0 = time.time()
    _send_many(d, 10, "ok-gauge@remote.test")
    h = _wait(lambda: (lambda x: x if x and x["queue_messages"] == 10 else None)(
        _stats_hop(d, key)), timeout=10, what="queue_messages == 10 for the dead hop")
    assert h["queue_bytes"] > 0
    assert t0 - 2 <= h["oldest_arrival"] <= time.time()
    assert h["next_retry"] > time.time()
    assert h["connections_failed"] >= 1
    r = d.carrier("stats", "-c", str(d.conf_path))
    assert key in r.stdout
