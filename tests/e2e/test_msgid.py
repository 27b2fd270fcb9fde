"""End to end: the tracking log's `received` record carries the message's
Message-ID, captured by the header scanner from DATA and from BDAT chunks
(unfolded, trimmed), and `carrier track` finds the message by it; BDAT
messages count Received: fields through the same scanner."""
import json
import re
import socket

from conftest import connect_banner


def _story(d, *args):
    r = d.carrier("track", "-c", str(d.conf_path), "--json", *args)
    assert r.returncode == 0, r.stdout + r.stderr
    return [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]


def _received(d, qid):
    recs = [r for r in _story(d, "--qid", qid) if r["type"] == "received"]
    assert recs, _story(d, "--qid", qid)
    return recs[0]


def test_data_message_id_folded(daemon):
    with daemon.smtp() as s:
        s.ehlo("client.example")
        s.mail("a@example.org")
        s.rcpt("user@localhost")
        code, text = s.data("Subject: x\r\nMessage-ID:\r\n  <folded.1@example.org>  \r\n"
                            "Message-ID: <second@example.org>\r\n\r\n"
                            "Message-ID: <body@example.org>\r\n")
        assert code == 250, text
    qid = re.search(r"queued as (\S+)", text.decode()).group(1)
    assert _received(daemon, qid)["msgid"] == "<folded.1@example.org>"
    assert any(r.get("qid") == qid for r in _story(daemon, "--message-id", "<folded.1@example.org>"))


def test_no_message_id_is_empty(daemon):
    with daemon.smtp() as s:
        s.ehlo("client.example")
        s.mail("a@example.org")
        s.rcpt("user@localhost")
        code, text = s.data("Subject: none\r\n\r\nbody\r\n")
        assert code == 250, text
    qid = re.search(r"queued as (\S+)", text.decode()).group(1)
    assert _received(daemon, qid).get("msgid", "") == ""


def _bdat_session(port, chunks):
    s, banner = connect_banner(port)
    f = s.makefile("rb")

    def cmd(line):
        s.sendall(line)
        while True:
            r = f.readline().decode()
            if r[3:4] != "-":
                return r
    try:
        assert cmd(b"EHLO client.example\r\n").startswith("250")
        assert cmd(b"MAIL FROM:<a@example.org>\r\n").startswith("250")
        assert cmd(b"RCPT TO:<user@localhost>\r\n").startswith("250")
        last = None
        for i, c in enumerate(chunks):
            tail = b" LAST" if i == len(chunks) - 1 else b""
            last = cmd(b"BDAT %d%s\r\n" % (len(c), tail) + c)
        cmd(b"QUIT\r\n")
        return last
    finally:
        s.close()


def test_bdat_message_id_across_chunks(daemon):
    msg = (b"Received: from a\r\nMessage-ID: <bdat.chunked@example.org>\r\n"
           b"Subject: b\r\n\r\nbody\r\n")
    cut = msg.index(b"chunked")
    reply = _bdat_session(daemon.port, [msg[:cut], msg[cut:]])
    assert reply.startswith("250 2.0.0"), reply
    qid = re.search(r"queued as (\S+)", reply).group(1)
    assert _received(daemon, qid)["msgid"] == "<bdat.chunked@example.org>"


def test_bdat_received_loop_still_refused(make_daemon):
    d = make_daemon("[smtp]\nmax_received_headers = 10\n")
    hdrs = b"".join(b"Received: from h%d\r\n" % i for i in range(11))
    reply = _bdat_session(d.port, [hdrs[:35], hdrs[35:] + b"Subject: loop\r\n\r\nx\r\n"])
    assert reply.startswith("554 5.4.6"), reply
    ok = _bdat_session(d.port, [hdrs[:38] + b"\r\n" + b"Received: in the body\r\n" * 12])
    assert ok.startswith("250"), ok
