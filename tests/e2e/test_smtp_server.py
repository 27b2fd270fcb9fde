"""End-to-end tests of the inbound SMTP server against a real carrierd,
with real clients (Python smtplib, swaks) and raw sockets for pipelining,
BDAT and hostile peers.  After every hostile case the server must still
greet a new client with 220."""
import concurrent.futures
import os
import re
import shutil
import smtplib
import socket
import subprocess
import time

import pytest

# INFO events (accepted, rejected, ...) are quiet at the default level.
LOG = "[log]\nlevel.smtp_in = medium\nlevel.policy = medium\n"
QUEUED = re.compile(rb"^250 2\.0\.0 Ok: queued as ([0-9A-Z]{16})\r\n$")


@pytest.fixture
def mk(make_daemon):
    """make_daemon, plus a clean stop at the end: exit code 0 and no
    sanitizer report (with CARRIER_BUILD=build/asan)."""
    made = []

    def factory(extra_conf=""):
        d = make_daemon(LOG + extra_conf)
        made.append(d)
        return d

    yield factory
    for d in made:
        if d.proc is None or d.proc.poll() is not None:
            continue
        rc = d.stop()
        err = d.stderr()
        assert "Sanitizer" not in err and "runtime error" not in err, err[-4000:]
        assert rc == 0, err[-4000:]


@pytest.fixture
def srv(mk):
    return mk()


class Client:
    """A raw SMTP client: send bytes, read reply lines in order."""

    def __init__(self, port, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.f = self.sock.makefile("rb")
        self.greeting = self.f.readline()

    def send(self, data):
        self.sock.sendall(data)

    def line(self):
        return self.f.readline()

    def reply(self):
        """One whole (possibly multi-line) reply as a list of lines."""
        lines = []
        while True:
            ln = self.f.readline()
            if not ln:
                return lines
            lines.append(ln)
            if len(ln) < 4 or ln[3:4] != b"-":
                return lines

    def replies(self, n):
        return [self.reply() for _ in range(n)]

    def cmd(self, text):
        self.send(text.encode() + b"\r\n")
        return b"".join(self.reply())

    def ehlo(self):
        return self.cmd("EHLO client.example")

    def close(self):
        try:
            self.f.close()
            self.sock.close()
        except OSError:
            pass


def client(d, **kw):
    return Client(d.port, **kw)


def assert_alive(d):
    c = client(d)
    try:
        assert c.greeting.startswith(b"220 "), c.greeting
        assert c.cmd("NOOP").startswith(b"250 2.0.0")
    finally:
        c.close()


def accepted(d):
    """Fields of every message-accepted event so far."""
    return [e["fields"] for e in d.events("SMTP_IN_ACCEPTED")]


def wait_accepted(d, n, timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        evs = accepted(d)
        if len(evs) >= n:
            return evs
        time.sleep(0.05)
    return accepted(d)


def start_txn(c, rcpt="user@localhost", sender="a@sender.example"):
    assert c.ehlo().startswith(b"250-")
    assert c.cmd(f"MAIL FROM:<{sender}>").startswith(b"250 2.1.0")
    assert c.cmd(f"RCPT TO:<{rcpt}>").startswith(b"250 2.1.5")


# ---- commands and extensions ------------------------------------------------

def test_greeting_and_ehlo_extensions(srv):
    c = client(srv)
    assert c.greeting == b"220 mx.test.example ESMTP carrier\r\n"
    lines = c.cmd("EHLO client.example").split(b"\r\n")[:-1]
    assert lines[0] == b"250-mx.test.example Hello [127.0.0.1]"
    kw = [ln[4:] for ln in lines[1:]]
    assert kw == [b"PIPELINING", b"SIZE 52428800", b"8BITMIME", b"ENHANCEDSTATUSCODES",
                  b"SMTPUTF8", b"DSN", b"CHUNKING"]
    assert lines[-1].startswith(b"250 ") and all(ln.startswith(b"250-") for ln in lines[:-1])
    c.close()


def test_smtplib_features(srv):
    with srv.smtp() as s:
        code, _ = s.ehlo("client.example")
        assert code == 250
        for ext in ("pipelining", "8bitmime", "enhancedstatuscodes", "smtputf8", "dsn",
                    "chunking"):
            assert s.has_extn(ext), ext
        assert s.esmtp_features["size"] == "52428800"


def test_helo_noop_vrfy_help_rset_quit(srv):
    c = client(srv)
    assert c.cmd("HELO client.example") == b"250 mx.test.example\r\n"
    assert c.cmd("NOOP") == b"250 2.0.0 Ok\r\n"
    assert c.cmd("NOOP anything") == b"250 2.0.0 Ok\r\n"
    assert c.cmd("VRFY user").startswith(b"252 2.5.2 ")
    assert c.cmd("HELP").startswith(b"214 2.0.0 ")
    assert c.cmd("MAIL FROM:<a@b.example>") == b"250 2.1.0 Ok\r\n"
    assert c.cmd("RSET") == b"250 2.0.0 Ok\r\n"
    # RSET ended the transaction: RCPT needs a new MAIL.
    assert c.cmd("RCPT TO:<u@localhost>").startswith(b"503 5.5.1")
    assert c.cmd("QUIT") == b"221 2.0.0 Bye\r\n"
    assert c.line() == b""          # closed by the server
    c.close()


def test_helo_session_refuses_esmtp_params(srv):
    c = client(srv)
    c.cmd("HELO client.example")
    assert c.cmd("MAIL FROM:<a@b.example> SIZE=10").startswith(b"555 5.5.4")
    c.close()


def test_smtplib_sendmail_and_event(srv):
    with srv.smtp() as s:
        refused = s.sendmail("a@sender.example", ["user@localhost"],
                             b"Subject: hi\r\n\r\nhello\r\n")
        assert refused == {}
        code, msg = s.noop()
        assert code == 250
    evs = wait_accepted(srv, 1)
    assert len(evs) == 1
    ev = evs[0]
    assert re.fullmatch(r"[0-9A-Z]{16}", ev["qid"])
    assert ev["sender"] == "a@sender.example" and ev["rcpts"] == 1
    assert ev["client"] == "127.0.0.1"


def test_reply_is_queued_with_qid(srv):
    c = client(srv)
    start_txn(c)
    assert c.cmd("DATA").startswith(b"354 ")
    c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
    m = QUEUED.match(c.line())
    assert m
    assert wait_accepted(srv, 1)[0]["qid"] == m.group(1).decode()
    c.close()


def test_swaks(srv):
    swaks = shutil.which("swaks") or "/usr/bin/swaks"
    r = subprocess.run([swaks, "--server", f"127.0.0.1:{srv.port}", "--from", "a@sender.example",
                        "--to", "user@localhost", "--helo", "client.example",
                        "--body", "hello from swaks"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"<-  250 2\.0\.0 Ok: queued as [0-9A-Z]{16}", r.stdout), r.stdout
    assert len(wait_accepted(srv, 1)) == 1


def test_swaks_pipelining(srv):
    swaks = shutil.which("swaks") or "/usr/bin/swaks"
    r = subprocess.run([swaks, "--server", f"127.0.0.1:{srv.port}", "--pipeline",
                        "--to", "user@localhost,other@localhost", "--from", "a@sender.example"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "queued as" in r.stdout
    ev = wait_accepted(srv, 1)[0]
    assert ev["rcpts"] == 2


def test_dsn_smtputf8_8bitmime_params(srv):
    c = client(srv)
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@sender.example> RET=HDRS ENVID=abc+2Bdef BODY=8BITMIME "
                 "SIZE=1000").startswith(b"250 2.1.0")
    assert c.cmd("RCPT TO:<u@localhost> NOTIFY=SUCCESS,FAILURE "
                 "ORCPT=rfc822;u@localhost").startswith(b"250 2.1.5")
    assert c.cmd("RCPT TO:<v@localhost> NOTIFY=NEVER").startswith(b"250 2.1.5")
    assert c.cmd("DATA").startswith(b"354")
    c.send("Subject: \u00e9t\u00e9\r\n\r\n8bit body \u00e9\r\n.\r\n".encode())
    assert QUEUED.match(c.line())
    # SMTPUTF8: a UTF-8 address needs the parameter.
    assert c.cmd("MAIL FROM:<j\u00f6rg@sender.example>").startswith(b"553 5.6.7")
    assert c.cmd("MAIL FROM:<j\u00f6rg@sender.example> SMTPUTF8").startswith(b"250 2.1.0")
    assert c.cmd("RCPT TO:<m\u00fcller@localhost>").startswith(b"250 2.1.5")
    assert c.cmd("DATA").startswith(b"354")
    c.send(b"Subject: u\r\n\r\nx\r\n.\r\n")
    assert QUEUED.match(c.line())
    assert c.cmd("MAIL FROM:<a@b.example> BODY=BINARYMIME").startswith(b"555 5.5.4")
    assert c.cmd("MAIL FROM:<a@b.example> FOO=bar").startswith(b"555 5.5.4")
    c.close()
    assert len(wait_accepted(srv, 2)) == 2


def test_null_sender_and_postmaster(mk):
    d = mk("[server]\nrelay_networks = 10.255.255.0/24\n")
    c = client(d)
    c.ehlo()
    assert c.cmd("MAIL FROM:<>").startswith(b"250 2.1.0")
    assert c.cmd("RCPT TO:<Postmaster>").startswith(b"250 2.1.5")
    assert c.cmd("DATA").startswith(b"354")
    c.send(b"Subject: bounce\r\n\r\nx\r\n.\r\n")
    assert QUEUED.match(c.line())
    c.close()
    ev = wait_accepted(d, 1)[0]
    assert ev["sender"] == ""


# ---- error replies --------------------------------------------------------------

def test_error_replies(mk):
    srv = mk("[smtp]\nmax_errors = 50\n")
    c = client(srv)
    assert c.cmd("MAIL FROM:<a@b.example>").startswith(b"503 5.5.1")      # no HELO
    assert c.cmd("FROB").startswith(b"500 5.5.1")
    assert c.cmd("EHLO").startswith(b"501 5.5.2")
    c.ehlo()
    assert c.cmd("RCPT TO:<u@localhost>").startswith(b"503 5.5.1")       # no MAIL
    assert c.cmd("DATA").startswith(b"503 5.5.1")
    assert c.cmd("MAIL FROM:a@b.example").startswith(b"501 5.1.7")
    assert c.cmd("STARTTLS").startswith(b"502 5.5.1")
    assert c.cmd("MAIL FROM:<a@b.example>").startswith(b"250")
    assert c.cmd("MAIL FROM:<a@b.example>").startswith(b"503 5.5.1")     # nested
    assert c.cmd("RCPT TO:<not an address>").startswith(b"501 5.1.3")
    assert c.cmd("DATA").startswith(b"554 5.5.1")                          # no valid rcpt
    assert c.cmd("RSET").startswith(b"250")
    c.close()
    assert_alive(srv)


def test_size_limits(mk):
    d = mk("[smtp]\nmax_message_size = 2k\n")
    c = client(d)
    assert b"250-SIZE 2048\r\n" in c.ehlo()
    assert c.cmd("MAIL FROM:<a@b.example> SIZE=4096").startswith(b"552 5.3.4")
    start_txn_after_ehlo = c.cmd("MAIL FROM:<a@b.example> SIZE=100")
    assert start_txn_after_ehlo.startswith(b"250")
    assert c.cmd("RCPT TO:<u@localhost>").startswith(b"250")
    assert c.cmd("DATA").startswith(b"354")
    c.send(b"Subject: big\r\n\r\n" + (b"x" * 70 + b"\r\n") * 100 + b".\r\n")
    assert c.line().startswith(b"552 5.3.4")
    assert c.cmd("NOOP").startswith(b"250")
    c.close()
    assert accepted(d) == []


def test_too_many_recipients(mk):
    d = mk("[smtp]\nmax_recipients = 3\n")
    c = client(d)
    start_txn(c)
    assert c.cmd("RCPT TO:<b@localhost>").startswith(b"250")
    assert c.cmd("RCPT TO:<c@localhost>").startswith(b"250")
    assert c.cmd("RCPT TO:<d@localhost>").startswith(b"452 4.5.3")
    assert c.cmd("DATA").startswith(b"354")
    c.send(b"Subject: x\r\n\r\nx\r\n.\r\n")
    assert QUEUED.match(c.line())
    c.close()
    assert wait_accepted(d, 1)[0]["rcpts"] == 3


def test_max_errors_closes_with_421(mk):
    d = mk("[smtp]\nmax_errors = 3\n")
    c = client(d)
    c.send(b"FROB\r\nFROB\r\nFROB\r\nNOOP\r\nNOOP\r\n")
    got = [c.line() for _ in range(4)]
    assert [g[:3] for g in got] == [b"500", b"500", b"500", b"421"], got
    assert got[3].startswith(b"421 4.7.0")
    assert c.line() == b""
    c.close()
    assert d.events("SMTP_IN_TOO_MANY_ERRORS")
    assert_alive(d)


def test_bad_bytes_in_commands(srv):
    c = client(srv)
    c.ehlo()
    assert c.cmd("NO\x00OP").startswith(b"500 5.5.2")
    c.send(b"NOOP \xff\xfe\r\n")
    assert c.line().startswith(b"500 5.5.2")
    c.send(b"MAIL FROM:<a\x00b@example.org>\r\n")
    assert c.line().startswith(b"500 5.5.2")
    assert c.cmd("NOOP").startswith(b"250")
    c.close()
    assert_alive(srv)


def test_megabyte_line_one_reply_then_resync(srv):
    c = client(srv)
    c.ehlo()
    chunk = b"A" * 65536
    for _ in range(16):
        c.send(chunk)
    c.send(b"\r\nNOOP\r\n")
    first = c.line()
    assert first.startswith(b"500 5.5.6"), first
    assert c.line() == b"250 2.0.0 Ok\r\n"     # exactly one 500, then in sync
    c.close()
    assert_alive(srv)


def test_command_line_limit(srv):
    c = client(srv)
    c.ehlo()
    assert c.cmd("NOOP " + "x" * 505).startswith(b"250")       # 512 with CRLF
    assert c.cmd("NOOP " + "x" * 506).startswith(b"500 5.5.6")
    assert c.cmd("NOOP").startswith(b"250")
    c.close()


def test_text_line_limit(srv):
    c = client(srv)
    start_txn(c)
    assert c.cmd("DATA").startswith(b"354")
    c.send(b"Subject: x\r\n\r\n" + b"y" * 1001 + b"\r\n.\r\n")
    assert c.line().startswith(b"500 5.5.6")
    assert c.cmd("NOOP").startswith(b"250")
    c.close()
    assert accepted(srv) == []


# ---- pipelining and chunking ---------------------------------------------------------

def test_pipelined_transactions_in_one_write(srv):
    c = client(srv)
    c.send(b"EHLO client.example\r\n"
           b"MAIL FROM:<a@sender.example>\r\nRCPT TO:<u@localhost>\r\n"
           b"RCPT TO:<x@localhost>\r\nRCPT TO:<bad address>\r\nDATA\r\n"
           b"Subject: one\r\n\r\nfirst\r\n.\r\n"
           b"MAIL FROM:<b@sender.example>\r\nRCPT TO:<v@localhost>\r\nDATA\r\n"
           b"Subject: two\r\n\r\nsecond\r\n.\r\n"
           b"NOOP\r\nQUIT\r\n")
    r = c.replies(12)
    codes = [x[-1][:3] for x in r]
    assert codes == [b"250", b"250", b"250", b"250", b"501", b"354", b"250",
                     b"250", b"250", b"354", b"250", b"250"], r
    q1 = QUEUED.match(r[6][0]).group(1)
    q2 = QUEUED.match(r[10][0]).group(1)
    assert q1 != q2
    assert c.line() == b"221 2.0.0 Bye\r\n"
    c.close()
    evs = wait_accepted(srv, 2)
    assert [e["sender"] for e in evs] == ["a@sender.example", "b@sender.example"]
    assert [e["rcpts"] for e in evs] == [2, 1]


def test_replies_batched_in_one_segment(srv):
    """Pipelined commands get their replies together, not one write each."""
    c = client(srv)
    c.ehlo()
    c.send(b"NOOP\r\n" * 50)
    time.sleep(0.3)
    c.sock.settimeout(2)
    data = c.sock.recv(65536)
    assert data.count(b"250 2.0.0 Ok\r\n") == 50, data
    c.close()


def test_bdat(srv):
    c = client(srv)
    start_txn(c)
    c.send(b"BDAT 14\r\nSubject: x\r\n\r\nBDAT 6 LAST\r\nbody\r\n")
    assert c.line() == b"250 2.0.0 14 octets received\r\n"
    assert QUEUED.match(c.line())
    # BDAT 0 LAST ends a message sent in earlier chunks.
    assert c.cmd("MAIL FROM:<a@sender.example>").startswith(b"250")
    assert c.cmd("RCPT TO:<u@localhost>").startswith(b"250")
    c.send(b"BDAT 14\r\nSubject: y\r\n\r\nBDAT 0 LAST\r\n")
    assert c.line().startswith(b"250 2.0.0 14 octets")
    assert QUEUED.match(c.line())
    # BDAT data may hold anything, even a line that looks like a command.
    assert c.cmd("MAIL FROM:<a@sender.example>").startswith(b"250")
    assert c.cmd("RCPT TO:<u@localhost>").startswith(b"250")
    body = b"Subject: z\r\n\r\n.\r\nQUIT\r\n"
    c.send(b"BDAT %d LAST\r\n" % len(body) + body)
    assert QUEUED.match(c.line())
    assert c.cmd("NOOP").startswith(b"250")
    c.close()
    assert len(wait_accepted(srv, 3)) == 3


def test_bdat_errors_skip_the_chunk(srv):
    c = client(srv)
    c.ehlo()
    # Refused (no MAIL), but its 5 bytes are skipped, not read as commands.
    c.send(b"BDAT 5\r\nQUIT\nNOOP\r\n")
    assert c.line().startswith(b"503 5.5.1")
    assert c.line() == b"250 2.0.0 Ok\r\n"
    start_txn_lines = c.cmd("MAIL FROM:<a@b.example>")
    assert start_txn_lines.startswith(b"250")
    assert c.cmd("RCPT TO:<u@localhost>").startswith(b"250")
    c.send(b"BDAT 3\r\nabc")
    assert c.line().startswith(b"250 2.0.0 3 octets")
    assert c.cmd("DATA").startswith(b"503 5.5.1")          # no DATA after BDAT
    c.send(b"BDAT 0 LAST\r\n")
    assert QUEUED.match(c.line())
    # A BDAT line that cannot be parsed cannot be skipped: reply, close.
    c.send(b"BDAT x\r\n")
    assert c.line().startswith(b"501")
    assert c.line() == b""
    c.close()
    assert_alive(srv)


def test_bdat_size_limit(mk):
    d = mk("[smtp]\nmax_message_size = 1k\n")
    c = client(d)
    start_txn(c)
    c.send(b"BDAT 2000 LAST\r\n" + b"x" * 2000 + b"NOOP\r\n")
    assert c.line().startswith(b"552 5.3.4")
    assert c.line() == b"250 2.0.0 Ok\r\n"
    c.close()
    assert accepted(d) == []


# ---- load ------------------------------------------------------------------------------

def send_one(port, i):
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.example")
        code, resp = s.docmd("MAIL FROM:<sender%d@example.org>" % i)
        assert code == 250
        code, resp = s.docmd("RCPT TO:<user%d@localhost>" % (i % 7))
        assert code == 250
        code, resp = s.data(b"Subject: %d\r\n\r\nmessage %d\r\n" % (i, i))
        assert code == 250, resp
        return resp.decode().rsplit(" ", 1)[1]


def send_session(port, base, n):
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as s:
        s.ehlo("client.example")
        out = []
        for i in range(base, base + n):
            code, resp = s.docmd("MAIL FROM:<sender%d@example.org>" % i)
            assert code == 250
            code, resp = s.docmd("RCPT TO:<user%d@localhost>" % (i % 7))
            assert code == 250
            code, resp = s.data(b"Subject: %d\r\n\r\nmessage %d\r\n" % (i, i))
            assert code == 250, resp
            out.append(resp.decode().rsplit(" ", 1)[1])
        return out


def maildir_files(root):
    found = []
    for dirpath, _, files in os.walk(root):
        if os.path.basename(dirpath) in ("new", "cur"):
            found += [os.path.join(dirpath, f) for f in files]
    return found


def test_hundred_messages_ten_sessions(srv):
    with concurrent.futures.ThreadPoolExecutor(10) as ex:
        futs = [ex.submit(send_session, srv.port, k * 10, 10) for k in range(10)]
        qids = [q for f in futs for q in f.result()]
    assert len(qids) == 100
    assert len(set(qids)) == 100
    evs = wait_accepted(srv, 100)
    assert sorted(e["qid"] for e in evs) == sorted(qids)
    # Delivery to Maildir is another module's; when it runs, each message
    # must land exactly once.
    time.sleep(1.0)
    files = maildir_files(srv.maildir)
    if files:
        deadline = time.time() + 20
        while len(files) < 100 and time.time() < deadline:
            time.sleep(0.2)
            files = maildir_files(srv.maildir)
        subjects = []
        for p in files:
            with open(p, "rb") as f:
                m = re.search(rb"^Subject: (\d+)\r?$", f.read(), re.M)
                subjects.append(int(m.group(1)))
        assert sorted(subjects) == list(range(100))


# ---- SMTP smuggling ---------------------------------------------------------------------

SMUGGLE = [b"\n.\n", b"\r\n.\n", b"\n.\r\n", b"\r.\r\n"]


def smuggle_payload(sep):
    return (b"Subject: outer\r\n\r\nouter body" + sep +
            b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@localhost>\r\n"
            b"DATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n")


@pytest.mark.parametrize("sep", SMUGGLE, ids=["LF.LF", "CRLF.LF", "LF.CRLF", "CR.CRLF"])
def test_smuggling_refused(srv, sep):
    c = client(srv)
    start_txn(c)
    assert c.cmd("DATA").startswith(b"354")
    c.send(smuggle_payload(sep) + b"NOOP\r\n")
    got = c.line()
    assert got.startswith(b"550 5.5.2"), got
    assert c.line() == b"250 2.0.0 Ok\r\n"      # the smuggled commands were data
    c.close()
    time.sleep(0.3)
    assert accepted(srv) == []
    assert srv.events("SMTP_IN_BARE_LINE_END")


@pytest.mark.parametrize("sep", SMUGGLE, ids=["LF.LF", "CRLF.LF", "LF.CRLF", "CR.CRLF"])
def test_smuggling_normalized_is_one_message(mk, sep):
    d = mk("[smtp]\nbare_lf_normalize = yes\n")
    c = client(d)
    start_txn(c)
    assert c.cmd("DATA").startswith(b"354")
    c.send(smuggle_payload(sep) + b"NOOP\r\n")
    assert QUEUED.match(c.line())
    assert c.line() == b"250 2.0.0 Ok\r\n"
    c.close()
    time.sleep(0.3)
    evs = accepted(d)
    assert len(evs) == 1 and evs[0]["sender"] == "a@sender.example"


# ---- hostile peers ------------------------------------------------------------------------

def test_two_hundred_connections(mk):
    d = mk("[smtp]\nmax_connections_per_ip = 500\n")
    socks = []
    try:
        for _ in range(200):
            socks.append(socket.create_connection(("127.0.0.1", d.port), timeout=10))
        for s in socks:
            assert s.makefile("rb").readline().startswith(b"220 ")
    finally:
        for s in socks:
            s.close()
    assert_alive(d)


def test_per_ip_limit(mk):
    d = mk("[smtp]\nmax_connections_per_ip = 5\n")
    held = [client(d) for _ in range(5)]
    assert all(c.greeting.startswith(b"220") for c in held)
    extra = client(d)
    assert extra.greeting.startswith(b"421 4.7.0"), extra.greeting
    extra.close()
    ev = d.wait_event("POLICY_CONNECTION_REFUSED")[0]["fields"]
    assert ev["limit"] == "max_connections_per_ip" and ev["max"] == 5
    held.pop().close()
    deadline = time.time() + 5
    while True:       # the freed slot is usable again
        c = client(d)
        ok = c.greeting.startswith(b"220")
        c.close()
        if ok or time.time() > deadline:
            break
        time.sleep(0.1)
    assert ok
    for c in held:
        c.close()


def test_total_connection_limit(mk):
    d = mk("[smtp]\nmax_connections = 3\n")
    held = [client(d) for _ in range(3)]
    extra = client(d)
    assert extra.greeting.startswith(b"421 4.7.0")
    extra.close()
    for c in held:
        c.close()
    time.sleep(0.3)
    assert_alive(d)


def test_client_stalls_in_data(mk):
    d = mk("[smtp]\ndata_timeout = 2s\n")
    c = client(d, timeout=15)
    start_txn(c)
    assert c.cmd("DATA").startswith(b"354")
    c.send(b"Subject: stall\r\n\r\npartial")
    t0 = time.time()
    got = c.line()
    assert got.startswith(b"421 4.4.2"), got
    assert 1.5 <= time.time() - t0 < 10
    assert c.line() == b""
    c.close()
    assert accepted(d) == []
    assert d.events("SMTP_IN_TIMEOUT")
    assert_alive(d)


def test_idle_timeout(mk):
    d = mk("[smtp]\nidle_timeout = 1s\n")
    c = client(d, timeout=10)
    assert c.line().startswith(b"421 4.4.2")
    c.close()
    assert_alive(d)


def test_client_vanishes_mid_data(srv):
    c = client(srv)
    start_txn(c)
    assert c.cmd("DATA").startswith(b"354")
    # More than the spool's inline limit, so a body file was being written.
    c.send(b"Subject: gone\r\n\r\n" + (b"z" * 998 + b"\r\n") * 300)
    time.sleep(0.3)
    c.sock.shutdown(socket.SHUT_RDWR)
    c.close()
    srv.wait_event("SMTP_IN_CLOSE")
    time.sleep(0.2)
    assert accepted(srv) == []
    body_dir = srv.spool / "body"
    leftovers = list(body_dir.iterdir()) if body_dir.exists() else []
    assert leftovers == []
    assert_alive(srv)


def test_client_vanishes_after_end_of_data(srv):
    c = client(srv)
    start_txn(c)
    assert c.cmd("DATA").startswith(b"354")
    c.send(b"Subject: quick\r\n\r\nbye\r\n.\r\n")
    c.sock.shutdown(socket.SHUT_RDWR)
    c.close()
    time.sleep(0.5)
    assert_alive(srv)


# ---- policy ---------------------------------------------------------------------------------

def test_relay_denied_outside_relay_networks(mk):
    d = mk("[server]\nrelay_networks = 10.255.255.0/24\n")
    c = client(d)
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@sender.example>").startswith(b"250")
    assert c.cmd("RCPT TO:<x@remote.example>") == b"554 5.7.1 Relay access denied\r\n"
    assert c.cmd("RCPT TO:<x@[192.0.2.1]>").startswith(b"554 5.7.1")
    assert c.cmd("RCPT TO:<user@localhost>").startswith(b"250 2.1.5")
    assert c.cmd("RCPT TO:<user@LOCALHOST>").startswith(b"250 2.1.5")
    assert c.cmd("DATA").startswith(b"354")
    c.send(b"Subject: x\r\n\r\nx\r\n.\r\n")
    assert QUEUED.match(c.line())
    c.close()
    ev = d.wait_event("POLICY_RELAY_DENIED")[0]["fields"]
    assert ev["rcpt"] == "x@remote.example" and ev["client"] == "127.0.0.1"
    assert wait_accepted(d, 1)[0]["rcpts"] == 2


def test_relay_allowed_inside_relay_networks(srv):
    c = client(srv)
    start_txn(c, rcpt="x@remote.example")
    c.close()


def received_headers(n):
    return b"".join(b"Received: from h%d.example by h%d.example; Tue, 1 Jan 2030 00:00:00 +0000\r\n"
                    % (i, i + 1) for i in range(n))


def test_loop_detected(srv):
    c = client(srv)
    start_txn(c)
    assert c.cmd("DATA").startswith(b"354")
    c.send(received_headers(101) + b"Subject: loop\r\n\r\nx\r\n.\r\n")
    assert c.line().startswith(b"554 5.4.6")
    # The limit itself is fine.
    assert c.cmd("MAIL FROM:<a@sender.example>").startswith(b"250")
    assert c.cmd("RCPT TO:<u@localhost>").startswith(b"250")
    assert c.cmd("DATA").startswith(b"354")
    c.send(received_headers(100) + b"Subject: ok\r\n\r\nx\r\n.\r\n")
    assert QUEUED.match(c.line())
    # BDAT counts them too.
    assert c.cmd("MAIL FROM:<a@sender.example>").startswith(b"250")
    assert c.cmd("RCPT TO:<u@localhost>").startswith(b"250")
    body = received_headers(101) + b"Subject: loop\r\n\r\nx\r\n"
    c.send(b"BDAT %d LAST\r\n" % len(body) + body)
    assert c.line().startswith(b"554 5.4.6")
    c.close()
    assert len(srv.events("POLICY_LOOP")) == 2
    assert len(wait_accepted(srv, 1)) == 1


# ---- shutdown -------------------------------------------------------------------------------

def test_shutdown_idle_gets_421_and_transaction_finishes(srv):
    idle = client(srv)
    busy = client(srv)
    start_txn(busy)
    srv.signal(15)
    assert idle.line().startswith(b"421 4.3.2")
    # The open transaction is allowed to finish, then the session closes.
    assert busy.cmd("DATA").startswith(b"354")
    busy.send(b"Subject: last\r\n\r\nx\r\n.\r\n")
    assert QUEUED.match(busy.line())
    assert busy.line().startswith(b"421 4.3.2")
    idle.close()
    busy.close()
    assert srv.proc.wait(30) == 0


# ---- more hostile input and resource limits ----------------------------------------------

def test_nul_and_bare_cr_in_data(srv):
    c = client(srv)
    start_txn(c)
    assert c.cmd("DATA").startswith(b"354")
    c.send(b"Subject: nul\r\n\r\na\x00b\r\n.\r\n")
    assert c.line().startswith(b"550 5.6.0")
    assert c.cmd("MAIL FROM:<a@sender.example>").startswith(b"250")
    assert c.cmd("RCPT TO:<u@localhost>").startswith(b"250")
    assert c.cmd("DATA").startswith(b"354")
    c.send(b"Subject: cr\r\n\r\na\rb\r\n.\r\n")
    assert c.line().startswith(b"550 5.5.2")
    # 8-bit text, even invalid UTF-8, is fine in DATA.
    assert c.cmd("MAIL FROM:<a@sender.example>").startswith(b"250")
    assert c.cmd("RCPT TO:<u@localhost>").startswith(b"250")
    assert c.cmd("DATA").startswith(b"354")
    c.send(b"Subject: 8bit\r\n\r\n\xff\xfe\xe9\r\n.\r\n")
    assert QUEUED.match(c.line())
    c.close()
    assert len(wait_accepted(srv, 1)) == 1


def test_client_not_reading_replies(srv):
    """Thousands of pipelined commands from a client that reads nothing:
    the server stops reading while its replies pile up, then catches up."""
    c = client(srv, timeout=30)
    c.ehlo()
    n = 20000
    import threading
    t = threading.Thread(target=c.send, args=(b"NOOP\r\n" * n,))
    t.start()
    time.sleep(1.0)
    got = 0
    while got < n:
        ln = c.line()
        assert ln == b"250 2.0.0 Ok\r\n", (got, ln)
        got += 1
    t.join()
    assert c.cmd("QUIT").startswith(b"221")
    c.close()


def carrier_ids():
    import pwd
    try:
        pw = pwd.getpwnam("carrier")
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        return os.getuid(), os.getgid()


@pytest.fixture
def small_spool(make_daemon):
    """A daemon whose spool is a 24 MiB tmpfs (needs root to mount)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    d = make_daemon(LOG, start=False)
    d.spool.mkdir(mode=0o700, exist_ok=True)
    uid, gid = carrier_ids()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=24m,mode=0700,uid={uid},gid={gid}",
                        "tmpfs", str(d.spool)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        d.start()
        yield d
    finally:
        d.stop()
        subprocess.run(["umount", "-l", str(d.spool)], capture_output=True)


def test_free_space_checked_at_mail(small_spool):
    d = small_spool
    c = client(d)
    c.ehlo()
    assert c.cmd("MAIL FROM:<a@b.example> SIZE=40000000").startswith(b"452 4.3.1")
    assert c.cmd("MAIL FROM:<a@b.example> SIZE=1000").startswith(b"250")
    c.close()
    assert d.events("SMTP_IN_SPACE_LOW")


def test_disk_full_during_data_is_452_and_nothing_stays(small_spool):
    d = small_spool
    c = client(d, timeout=60)
    start_txn(c)
    assert c.cmd("DATA").startswith(b"354")
    line = b"f" * 998 + b"\r\n"
    c.send(b"Subject: full\r\n\r\n" + line * 30000 + b".\r\n")     # 30 MB > 24 MiB
    assert c.line().startswith(b"452 4.3.1")
    assert c.cmd("NOOP").startswith(b"250")
    c.close()
    assert accepted(d) == []
    assert d.events("SMTP_IN_SPOOL_WRITE_FAILED")
    body_dir = d.spool / "body"
    assert (list(body_dir.iterdir()) if body_dir.exists() else []) == []
    # The space came back: the next message goes through.
    c = client(d)
    start_txn(c)
    assert c.cmd("DATA").startswith(b"354")
    c.send(b"Subject: ok\r\n\r\nsmall\r\n.\r\n")
    assert QUEUED.match(c.line())
    c.close()


def test_reload_applies_to_next_transaction(mk):
    d = mk("[smtp]\nmax_recipients = 2\n")
    c = client(d)
    start_txn(c)
    text = d.conf_path.read_text().replace("max_recipients = 2", "max_recipients = 4")
    d.conf_path.write_text(text)
    d.signal(1)       # SIGHUP
    d.wait_event("CORE_RELOADED")
    # The open transaction keeps the limits it started with ...
    assert c.cmd("RCPT TO:<b@localhost>").startswith(b"250")
    assert c.cmd("RCPT TO:<c@localhost>").startswith(b"452 4.5.3")
    assert c.cmd("RSET").startswith(b"250")
    # ... the next one gets the new ones.
    assert c.cmd("MAIL FROM:<a@sender.example>").startswith(b"250")
    for r in "abcd":
        assert c.cmd(f"RCPT TO:<{r}@localhost>").startswith(b"250"), r
    assert c.cmd("RCPT TO:<e@localhost>").startswith(b"452 4.5.3")
    c.close()


def test_command_timeout_inside_transaction(mk):
    d = mk("[smtp]\ncommand_timeout = 1s\n")
    c = client(d, timeout=10)
    start_txn(c)
    t0 = time.time()
    assert c.line().startswith(b"421 4.4.2")
    assert time.time() - t0 < 5
    c.close()
    ev = d.wait_event("SMTP_IN_TIMEOUT")[0]["fields"]
    assert ev["waiting"] == "a command" and ev["seconds"] == 1
    assert_alive(d)


def test_delivered_copy_has_one_received_header(srv):
    c = client(srv)
    start_txn(c, rcpt="rcv@localhost")
    assert c.cmd("DATA").startswith(b"354")
    c.send(b"Subject: trace\r\n\r\nbody\r\n.\r\n")
    qid = QUEUED.match(c.line()).group(1).decode()
    c.close()
    deadline = time.time() + 10
    files = []
    while not files and time.time() < deadline:
        files = maildir_files(srv.maildir)
        time.sleep(0.1)
    if not files:
        pytest.skip("local delivery did not run")
    assert len(files) == 1
    text = open(files[0], "rb").read()
    assert text.count(b"\nReceived: ") + text.startswith(b"Received: ") == 1
    assert re.search(rb"Received: from client\.example \(\[127\.0\.0\.1\]\)\r?\n"
                     rb"\tby mx\.test\.example \(carrier\) with ESMTP id " + qid.encode() +
                     rb"\r?\n\tfor <rcv@localhost>;\r?\n\t\w{3}, \d{2} \w{3} \d{4} "
                     rb"\d\d:\d\d:\d\d \+0000\r?\n", text), text


def test_trickling_command_line_times_out(mk):
    """Reads reset the read timeout; a line must still end in time."""
    import select
    d = mk("[smtp]\ncommand_timeout = 2s\n")
    s = socket.create_connection(("127.0.0.1", d.port), timeout=15)
    assert s.recv(4096).startswith(b"220")
    t0 = time.time()
    got = b""
    for ch in b"NOOP and some more text that never ends":
        try:
            s.sendall(bytes([ch]))
        except OSError:
            break
        r, _, _ = select.select([s], [], [], 0.25)
        if r:
            got = s.recv(4096)
            break
    assert got.startswith(b"421 4.4.2"), got
    assert time.time() - t0 < 6
    s.close()
    assert_alive(d)
