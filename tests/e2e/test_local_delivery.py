"""End to end: `carrier send` against a scripted SMTP peer, and local
delivery through a real carrierd (smtplib and `carrier send` to a local
user, one Maildir file; kill -9 right after the 250 and a restart deliver
exactly once)."""
import os
import pathlib
import pwd
import socket
import subprocess
import threading
import time

import pytest

from conftest import CARRIER, ROOT, free_port, make_tempdir

# ---- a scripted SMTP peer for `carrier send` --------------------------------


class Peer:
    """Accepts one connection at a time and answers from `replies`
    (command verb -> reply line); records commands and the DATA text."""

    def __init__(self, replies=None, host="127.0.0.1"):
        self.replies = {"EHLO": "250-peer\r\n250 PIPELINING", "HELO": "250 peer",
                        "MAIL": "250 2.1.0 Ok", "RCPT": "250 2.1.5 Ok",
                        "DATA": "354 go on", ".": "250 2.0.0 Ok: queued as 0123456789ABCDEFG",
                        "QUIT": "221 bye", "GREETING": "220 peer ESMTP"}
        self.replies.update(replies or {})
        self.commands, self.data = [], None
        self.sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        self.sock.listen(4)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            f = conn.makefile("rb")
            conn.sendall(self.replies["GREETING"].encode() + b"\r\n")
            while True:
                line = f.readline()
                if not line:
                    return
                cmd = line.decode().rstrip("\r\n")
                self.commands.append(cmd)
                verb = cmd.split(" ", 1)[0].split(":", 1)[0].upper()
                reply = self.replies.get(verb, "502 no")
                conn.sendall(reply.encode() + b"\r\n")
                if verb == "DATA" and reply.startswith("354"):
                    data = b""
                    while True:
                        l = f.readline()
                        if not l or l == b".\r\n":
                            break
                        data += l
                    self.data = data
                    self.commands.append(".")
                    conn.sendall(self.replies["."].encode() + b"\r\n")
                if verb == "QUIT":
                    return

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)   # wakes a pending accept()
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def peer_conf(workdir):
    """Returns make(peer, listen=None) -> path of a configuration whose first
    listener is the peer."""
    def make(peer, listen=None):
        path = workdir / "send.conf"
        path.write_text(f"[server]\nlisten = {listen or f'127.0.0.1:{peer.port}'}\n"
                        f"local_domains = example.org, localhost\n"
                        f"[spool]\npath = {workdir}/spool\n[local]\nmaildir = {workdir}/mail\n")
        return str(path)
    return make


def send(conf, *args, input="Subject: hi\n\nhello\n"):
    return subprocess.run([str(CARRIER), "send", "-c", conf, *args], input=input.encode(),
                          capture_output=True, timeout=30)


def test_send_converts_and_stuffs(peer_conf):
    peer = Peer()
    try:
        r = send(peer_conf(peer), "-f", "alice@example.net", "bob@example.org",
                 input="Subject: hi\n\n.starts with a dot\n.\nCRLF kept\r\nno newline at end")
        assert r.returncode == 0, r.stderr
        assert r.stdout.decode().strip() == "0123456789ABCDEFG"
    finally:
        peer.close()
    assert peer.commands[1] == "MAIL FROM:<alice@example.net>"
    assert peer.commands[2] == "RCPT TO:<bob@example.org>"
    assert peer.data == (b"Subject: hi\r\n\r\n..starts with a dot\r\n..\r\nCRLF kept\r\n"
                         b"no newline at end\r\n")
    assert peer.commands[-1] == "QUIT"


def test_send_t_reads_headers_and_drops_bcc(peer_conf):
    peer = Peer()
    msg = ("From: me@example.org\n"
           "To: \"Doe, Jane\" <jane@example.org>, kim@example.net (Kim)\n"
           "Cc: undisclosed-recipients:;\n"
           "Bcc: secret@example.org,\n  Other <other@example.com>\n"
           "Subject: s\n\nbody\n")
    try:
        r = send(peer_conf(peer), "-t", "extra@example.org", input=msg)
        assert r.returncode == 0, r.stderr
    finally:
        peer.close()
    rcpts = [c for c in peer.commands if c.startswith("RCPT")]
    assert rcpts == ["RCPT TO:<extra@example.org>", "RCPT TO:<jane@example.org>",
                     "RCPT TO:<kim@example.net>", "RCPT TO:<secret@example.org>",
                     "RCPT TO:<other@example.com>"]
    assert b"Bcc" not in peer.data and b"secret" not in peer.data
    assert peer.data.startswith(b"From: me@example.org\r\nTo: \"Doe, Jane\"")
    assert peer.data.endswith(b"Subject: s\r\n\r\nbody\r\n")


@pytest.mark.parametrize("header,want", [
    ("To: team: a@example.org, \"B, b\" <b@example.org>;, c@example.org",
     ["a@example.org", "b@example.org", "c@example.org"]),
    ("To: d@example.org (comment (nested), with comma)", ["d@example.org"]),
    ("To: \"quoted,local\"@example.org", ['"quoted,local"@example.org']),
    ("To: Route <@relay.example:e@example.org>", ["e@example.org"]),
    ("to: f@example.org\nCC: g@example.org", ["f@example.org", "g@example.org"]),
    ("Reply-To: x@example.org\nTo: h@example.org", ["h@example.org"]),
])
def test_send_t_address_lists(peer_conf, header, want):
    peer = Peer()
    try:
        r = send(peer_conf(peer), "-t", input=header + "\nSubject: s\n\nbody\n")
        assert r.returncode == 0, r.stderr
    finally:
        peer.close()
    assert [c[len("RCPT TO:<"):-1] for c in peer.commands if c.startswith("RCPT")] == want


def test_send_sendmail_options(peer_conf):
    """What cron and mail(1) pass: -FCronDaemon -i -B8BITMIME -oem, --."""
    peer = Peer()
    try:
        r = send(peer_conf(peer), "-FCronDaemon", "-i", "-B", "8BITMIME", "-oem",
                 "-F", "Full Name", "--", "bob@example.org")
        assert r.returncode == 0, r.stderr
    finally:
        peer.close()
    assert "RCPT TO:<bob@example.org>" in peer.commands


def test_send_mail_parameters(peer_conf):
    """SIZE always, BODY=8BITMIME for 8-bit content, SMTPUTF8 for a UTF-8
    address, each only when the server offers it."""
    ehlo = "250-peer\r\n250-SIZE 1000000\r\n250-8BITMIME\r\n250 SMTPUTF8"
    msg = "Subject: caf\u00e9\n\nna\u00efve\n"
    peer = Peer({"EHLO": ehlo})
    try:
        r = send(peer_conf(peer), "-f", "a@example.net", "jos\u00e9@example.org", input=msg)
        assert r.returncode == 0, r.stderr
    finally:
        peer.close()
    size = len(peer.data)                                # as sent
    assert peer.commands[1] == f"MAIL FROM:<a@example.net> SIZE={size} BODY=8BITMIME SMTPUTF8"
    peer = Peer({"EHLO": ehlo})
    try:
        r = send(peer_conf(peer), "-f", "a@example.net", "bob@example.org")
        assert r.returncode == 0, r.stderr
    finally:
        peer.close()
    assert peer.commands[1] == f"MAIL FROM:<a@example.net> SIZE={len(peer.data)}"
    assert len(peer.data) == 22                          # 19 bytes, 3 CRs added


def test_send_default_sender_and_any_address(peer_conf):
    peer = Peer(host="127.0.0.1")
    try:
        r = send(peer_conf(peer, listen=f"0.0.0.0:{peer.port}"), "bob@example.org")
        assert r.returncode == 0, r.stderr
    finally:
        peer.close()
    user = pwd.getpwuid(os.getuid()).pw_name
    assert peer.commands[1] == f"MAIL FROM:<{user}@example.org>"


@pytest.mark.parametrize("verb,code,want", [("RCPT", "550 5.1.1 no such user", 65),
                                             (".", "451 4.3.0 try later", 75),
                                             ("MAIL", "421 4.3.2 closing", 75),
                                             ("GREETING", "554 go away", 65)])
def test_send_refusals(peer_conf, verb, code, want):
    peer = Peer({verb: code})
    try:
        r = send(peer_conf(peer), "bob@example.org")
    finally:
        peer.close()
    assert r.returncode == want, r.stderr
    assert code in r.stderr.decode()
    assert r.stdout == b""


def test_send_connection_refused_and_usage(peer_conf):
    class Nobody:
        port = free_port()     # nobody listens there
    conf = peer_conf(Nobody)
    r = send(conf, "bob@example.org")
    assert r.returncode == 75
    assert b"connect to 127.0.0.1" in r.stderr
    assert send(conf).returncode == 64                          # no recipient
    assert send(conf, "bad address@x").returncode == 64         # never sent
    assert send(conf, "-f", "a>b", "bob@example.org").returncode == 64
    assert send(conf, "-t", input="Subject: none\n\n").returncode == 64


# ---- through carrierd ----------------------------------------------------------

def _prepare_maildir(d):
    """The daemon writes Maildirs as its unprivileged user."""
    d.maildir.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("carrier")
            os.chown(d.maildir, pw.pw_uid, pw.pw_gid)
        except KeyError:
            pass


def _files(d, user):
    new = d.maildir / user / "new"
    return sorted(new.iterdir()) if new.is_dir() else []


def _wait_files(d, user, n, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if len(_files(d, user)) >= n:
            return _files(d, user)
        time.sleep(0.05)
    raise AssertionError(f"{user}: {len(_files(d, user))} files, want {n}; events: "
                         f"{[e['event'] for e in d.events()]}\n{d.stderr()}")


@pytest.fixture
def mail_daemon(make_daemon):
    d = make_daemon("[log]\nlevel.delivery = medium\n", start=False)
    _prepare_maildir(d)
    d.start()
    return d


def _smtp_send(d, rcpt, body):
    s = d.smtp()
    try:
        try:
            s.sendmail("alice@example.net", [rcpt], body)
        except Exception as e:  # the inbound engine may not accept mail yet
            if "not" in str(e).lower() and "implement" in str(e).lower():
                pytest.skip(f"the SMTP engine does not accept mail yet: {e}")
            raise
    finally:
        s.quit()


def test_smtp_to_maildir(mail_daemon):
    d = mail_daemon
    _smtp_send(d, "User@localhost", "Subject: e2e\r\n\r\nhello maildir\r\n")
    files = _wait_files(d, "user", 1)
    text = files[0].read_text()
    assert text.startswith("Return-Path: <alice@example.net>\nDelivered-To: user@localhost\n")
    assert "Subject: e2e\n" in text and "hello maildir\n" in text
    assert "\r" not in text
    ev = d.wait_event("DELIVERY_DELIVERED")[0]
    assert ev["fields"]["rcpt"].lower() == "user@localhost"
    assert files[0].name in ev["fields"]["reply"]
    d.wait_event("DELIVERY_REMOVED")
    time.sleep(0.3)
    assert len(_files(d, "user")) == 1
    assert list((d.maildir / "user" / "tmp").iterdir()) == []


def test_carrier_send_to_maildir(mail_daemon):
    d = mail_daemon
    r = d.carrier("send", "-c", str(d.conf_path), "-f", "alice@example.net", "bob@localhost",
                  input="Subject: via carrier send\n\n.dot line\ncaf\u00e9\n")
    assert r.returncode == 0, r.stderr
    qid = r.stdout.strip()
    assert len(qid) >= 10
    files = _wait_files(d, "bob", 1)
    assert ".dot line\ncaf\u00e9\n" in files[0].read_text()
    assert any(e["fields"]["qid"] == qid for e in d.wait_event("DELIVERY_DELIVERED"))


def test_kill_after_250_delivers_once(mail_daemon):
    d = mail_daemon
    s = d.smtp()
    s.sendmail("alice@example.net", ["carol@localhost"], "Subject: crash\r\n\r\nonce\r\n")
    d.kill()                 # kill -9 right after the 250
    s.close()
    d.start()
    files = _wait_files(d, "carol", 1)
    d.wait_event("DELIVERY_REMOVED")
    time.sleep(0.5)
    assert len(_files(d, "carol")) == 1
    assert "once\n" in files[0].read_text()
    # Another restart delivers nothing again.
    d.stop()
    d.start()
    time.sleep(0.5)
    assert len(_files(d, "carol")) == 1


def test_unwritable_root_defers(make_daemon):
    d = make_daemon("[log]\nlevel.delivery = medium\n", start=False)
    d.maildir.write_text("a file where the Maildir root belongs\n")
    d.start()
    _smtp_send(d, "dave@localhost", "Subject: later\r\n\r\nwait\r\n")
    ev = d.wait_event("DELIVERY_DEFERRED")[0]
    assert ev["fields"]["rcpt"] == "dave@localhost"
    assert 54 <= ev["fields"]["delay"] <= 66      # 1m with 10% jitter
    assert "Maildir root" in ev["fields"]["reply"]
    assert ev["cause"]
    assert not d.events("DELIVERY_DELIVERED")


def test_large_message_from_a_body_file(mail_daemon):
    """Above spool.inline_max the body is a file: delivered from its fd."""
    d = mail_daemon
    lines = [f"line {i:07d} " + "y" * 60 for i in range(40000)]      # ~2.9 MB
    body = "Subject: big\r\n\r\n" + "\r\n".join(lines) + "\r\n"
    _smtp_send(d, "erin@localhost", body)
    files = _wait_files(d, "erin", 1, timeout=30)
    d.wait_event("DELIVERY_REMOVED", timeout=30)
    text = files[0].read_bytes()
    head = b"Return-Path: <alice@example.net>\nDelivered-To: erin@localhost\nReceived: "
    want = body.replace("\r\n", "\n").encode()
    assert text.startswith(head)
    assert text.endswith(want)
    assert b"\r" not in text
    received = text[len(head) - len(b"Received: "):len(text) - len(want)]
    assert received.count(b"\nReceived: ") == 0 and len(received) < 400
