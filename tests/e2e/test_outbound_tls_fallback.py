"""End to end: tls = may falls back to plaintext when the TLS handshake fails.

The peer is the test sink with starttls= (sink.py): it offers STARTTLS,
answers 220, and when carrier's ClientHello arrives either sends a fatal
handshake_failure alert ("alert": no protocol or cipher in common) or just
closes ("close"); it accepts mail in plaintext.  As Postfix does for
opportunistic TLS, carrier must then:

  - log SMTP_OUT_TLS_PLAINTEXT, reconnect to the same address without
    STARTTLS and deliver the message once, in plaintext;
  - count it per next hop as one TLS failure and no TLS session;
  - remember the address: a second message on a new connection goes
    straight to plaintext (no second STARTTLS, no second failed handshake);
  - never do it for tls = encrypt, even to an address remembered by may:
    the message is deferred and nothing reaches the peer.

A 454 to STARTTLS under may goes on in plaintext on the same connection
(RFC 3207 4), with no reconnection and no fallback event.
"""
import time

import pytest

from conftest import hop_stats, wait_until as wait
from sink import Sink

SENDER = "alice@example.net"


def conf(port, tls, extra_routes=""):
    return ("[log]\nlevel.delivery = medium\nlevel.smtp_out = medium\nlevel.tls = medium\n"
            "[delivery]\nretry_schedule = 1s\nconnect_timeout = 3s\ncommand_timeout = 5s\n"
            f"[route *]\nvia = smtp:[127.0.0.1]:{port}\ntls = {tls}\n" + extra_routes)


def send(d, rcpt, subject):
    with d.smtp() as s:
        s.sendmail(SENDER, [rcpt],
                   f"From: <{SENDER}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n"
                   f"Message-ID: <{subject.replace(' ', '.')}@example.net>\r\n\r\n"
                   f"{subject}\r\n")


def subjects(sink):
    return [t["data"].split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
            for t in sink.transactions]


@pytest.fixture
def sink_factory():
    made = []

    def factory(**opts):
        s = Sink(**opts).start()
        made.append(s)
        return s
    yield factory
    for s in made:
        s.stop()


@pytest.mark.parametrize("mode", ["alert", "close"])
def test_may_handshake_failure_delivers_in_plaintext(make_daemon, sink_factory, mode):
    sink = sink_factory(starttls=mode)
    d = make_daemon(conf(sink.port, "may"))
    hop = f"smtp:[127.0.0.1]:{sink.port}"
    addr = f"127.0.0.1:{sink.port}"

    send(d, "ok-fb1@remote.test", f"fallback one {mode}")
    ev = d.wait_event("DELIVERY_DELIVERED", timeout=12)[0]["fields"]
    assert ev["rcpt"] == "ok-fb1@remote.test" and ev["hop"] == hop, ev
    fb = d.wait_event("SMTP_OUT_TLS_PLAINTEXT", timeout=5)
    assert len(fb) == 1, fb
    f = fb[0]["fields"]
    assert f["addr"] == addr and f["hold"] == 3600 and f["reason"], f
    # OpenSSL's words: "unexpected eof while reading", "sslv3 alert
    # handshake failure".
    reason = f["reason"].lower()
    if mode == "close":
        assert "eof" in reason or "closed" in reason, f
    else:
        assert "alert" in reason and "handshake failure" in reason, f
    assert "retrying in plaintext" in fb[0]["msg"], fb[0]
    # Delivered once: the TLS connection, then one plaintext connection.
    sink.wait(1)
    time.sleep(0.3)
    assert subjects(sink) == [f"fallback one {mode}"], sink.transactions
    assert sink.starttls_count == 1, sink.starttls_count
    assert sink.connections == 2, sink.connections
    assert not d.events("SMTP_OUT_TLS_ESTABLISHED")
    assert not d.events("SMTP_OUT_TLS_FAILED"), d.events("SMTP_OUT_TLS_FAILED")
    assert not d.events("DELIVERY_DEFERRED"), d.events("DELIVERY_DEFERRED")
    h = hop_stats(d, hop)
    assert h["messages_delivered"] == 1, h
    assert h["tls_sessions"] == 0, h     # delivered in plaintext
    assert h["tls_failures"] == 1, h     # the failed handshake

    # The pooled plaintext connection idles out (5 s); the next message
    # needs a new connection, which skips STARTTLS: the address is
    # remembered.
    wait(lambda: sink.open_connections == 0, timeout=15,
         what="carrier closing its idle connection")
    send(d, "ok-fb2@remote.test", f"fallback two {mode}")
    d.wait_event("DELIVERY_DELIVERED", timeout=12, count=2)
    sink.wait(2)
    time.sleep(0.3)
    assert subjects(sink) == [f"fallback one {mode}", f"fallback two {mode}"]
    assert sink.connections == 3, sink.connections
    assert sink.starttls_count == 1, "STARTTLS again: the failed address was not remembered"
    assert len(d.events("SMTP_OUT_TLS_PLAINTEXT")) == 1
    h = hop_stats(d, hop)
    assert h["messages_delivered"] == 2, h
    assert h["tls_sessions"] == 0 and h["tls_failures"] == 1, h


def test_encrypt_handshake_failure_defers(make_daemon, sink_factory):
    """encrypt never falls back, not even to an address that a may route
    just marked as plaintext-only (both routes share the next hop)."""
    sink = sink_factory(starttls="alert")
    d = make_daemon(conf(sink.port, "may",
                         f"[route enc.test]\nvia = smtp:[127.0.0.1]:{sink.port}\n"
                         "tls = encrypt\n"))
    hop = f"smtp:[127.0.0.1]:{sink.port}"

    send(d, "ok-first@remote.test", "may first")
    d.wait_event("DELIVERY_DELIVERED", timeout=12)
    d.wait_event("SMTP_OUT_TLS_PLAINTEXT", timeout=5)
    assert sink.starttls_count == 1
    wait(lambda: sink.open_connections == 0, timeout=15,
         what="carrier closing its idle connection")

    send(d, "ok-enc@enc.test", "encrypt after may")
    evs = d.wait_event("DELIVERY_DEFERRED", timeout=12, count=2)
    assert all(e["fields"]["rcpt"] == "ok-enc@enc.test" for e in evs), evs
    for e in evs:
        assert "TLS encrypt" in e["fields"]["reply"], e
    fails = d.events("SMTP_OUT_TLS_FAILED")
    assert len(fails) >= 2 and all(f["fields"]["policy"] == "encrypt" for f in fails), fails
    # Each encrypt attempt tried TLS again; none fell back.
    assert sink.starttls_count >= 3, sink.starttls_count
    assert len(d.events("SMTP_OUT_TLS_PLAINTEXT")) == 1
    assert len(d.events("DELIVERY_DELIVERED")) == 1
    assert not d.events("DELIVERY_BOUNCED")
    time.sleep(0.5)
    assert subjects(sink) == ["may first"], "sent in plaintext despite tls = encrypt"
    h = hop_stats(d, hop)
    assert h["tls_sessions"] == 0 and h["tls_failures"] >= 3, h


def test_may_starttls_refused_goes_on_in_plaintext(make_daemon, sink_factory):
    sink = sink_factory(starttls="refuse")
    d = make_daemon(conf(sink.port, "may"))
    send(d, "ok-454@remote.test", "starttls refused")
    d.wait_event("DELIVERY_DELIVERED", timeout=12)
    sink.wait(1)
    assert sink.starttls_count == 1
    assert sink.connections == 1, "reconnected instead of going on after 454"
    assert not d.events("SMTP_OUT_TLS_PLAINTEXT")
    assert not d.events("SMTP_OUT_TLS_FAILED")
    assert not d.events("DELIVERY_DEFERRED")
