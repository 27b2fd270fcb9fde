"""Blast radius (issue 8, item 5), the parts that need no outbound relay:
descriptor exhaustion, ten thousand idle connections, slowloris clients and a
client stalling mid-DATA.  Other sessions go on delivering mail, timeouts
fire with events, and service resumes when the pressure goes away.
"""
import pathlib
import re
import resource
import select
import selectors
import socket
import threading
import time

import pytest

from faultlib import give_to_carrier

LOG = "[log]\nlevel.smtp_in = medium\nlevel.delivery = medium\n[server]\ndrain_timeout = 2s\n"


def raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard), hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def mail_daemon(make_daemon, extra="", argv_prefix=None):
    d = make_daemon(LOG + extra, start=False)
    d.maildir.mkdir()
    give_to_carrier(d.maildir)
    d.start(argv=(argv_prefix or []) + d.argv())
    return d


def deliver(d, tag, timeout=10):
    """One message through SMTP to the Maildir; True once the file is there."""
    import smtplib
    s = smtplib.SMTP("127.0.0.1", d.port, timeout=timeout)
    try:
        s.sendmail("a@sender.example", ["u@localhost"],
                   f"Subject: {tag}\r\nMessage-ID: <{tag}@blast.test>\r\n\r\nhi\r\n")
    finally:
        s.quit()
    deadline = time.time() + timeout
    new = d.maildir / "u" / "new"
    while time.time() < deadline:
        if new.is_dir() and any(f"<{tag}@blast.test>" in p.read_text(errors="replace")
                                for p in new.iterdir()):
            return True
        time.sleep(0.05)
    return False


def assert_clean_stop(d):
    rc = d.stop()
    err = d.stderr()
    assert "Sanitizer" not in err and "runtime error" not in err, err[-3000:]
    assert rc == 0, err[-3000:]


def test_fd_exhaustion_ulimit_64(make_daemon):
    d = mail_daemon(make_daemon, argv_prefix=["prlimit", "--nofile=64:64", "--"])
    # A hard limit far below smtp.max_connections is a warning at start.
    low = d.wait_event("CORE_FD_LIMIT_LOW")[0]
    assert low["severity"] == "warning"
    assert low["fields"]["limit"] == 64 and low["fields"]["max"] == 10000, low
    assert deliver(d, "before")
    socks, greeted, refused = [], 0, 0
    for _ in range(100):
        try:
            s = socket.create_connection(("127.0.0.1", d.port), timeout=2)
            socks.append(s)
        except OSError:
            refused += 1
    # Banners, all at once: connections beyond the daemon's descriptors
    # wait in the listen backlog while it pauses accepting.
    pending = {s.fileno(): s for s in socks}
    deadline = time.time() + 3
    while pending and time.time() < deadline:
        ready, _, _ = select.select(list(pending), [], [], 0.2)
        for fd in ready:
            try:
                greeted += pending.pop(fd).recv(512).startswith(b"220")
            except OSError:
                pass
    # Some sessions were served, the rest waited or were turned away; the
    # daemon is alive.
    assert 0 < greeted < 100, (greeted, refused)
    assert d.proc.poll() is None, d.stderr()[-3000:]
    # The pause is an event that names the listener and the cause.
    paused = d.wait_event("CORE_ACCEPT_PAUSED", timeout=5)
    assert paused[0]["fields"]["listen"] == f"127.0.0.1:{d.port}"
    assert "Too many open files" in paused[0]["fields"]["reason"]
    for s in socks:
        s.close()
    # Service resumes (the listener pauses for a second on EMFILE).
    deadline = time.time() + 10
    ok = False
    while time.time() < deadline and not ok:
        try:
            ok = deliver(d, f"after{int(time.time() * 1000)}")
        except OSError:
            time.sleep(0.2)
    assert ok, d.stderr()[-3000:]
    assert_clean_stop(d)


def slowloris(port, stop, sent, replies):
    """Opens a session and sends one byte every second, never a full line;
    keeps what the server finally says."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.recv(512)
        s.settimeout(0.05)
        while not stop.is_set():
            s.sendall(b"N")
            sent.append(1)
            t = time.time() + 1.0
            while time.time() < t:
                try:
                    data = s.recv(512)
                except socket.timeout:
                    continue
                replies.append(data)
                return
    except OSError:
        return


IP_BIND_ADDRESS_NO_PORT = 24     # Linux: pick the port at connect(), per 4-tuple


def open_greeted(port, sources, per_source, window=400, timeout=60):
    """Opens per_source connections from each source address, at most
    `window` waiting for their greeting at once (the listen backlog is
    1024), in one thread.  Returns ({source: [sockets]}, {source: [first
    lines that are not a 220 greeting]})."""
    sel = selectors.DefaultSelector()
    todo = [a for a in sources for _ in range(per_source)]
    held = {a: [] for a in sources}
    bad = {}
    deadline = time.time() + timeout
    while (todo or sel.get_map()) and time.time() < deadline:
        while todo and len(sel.get_map()) < window:
            addr = todo.pop()
            s = socket.socket()
            s.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((addr, 0))
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            sel.register(s, selectors.EVENT_READ, [addr, b""])
        for key, _ in sel.select(0.5):
            s, data = key.fileobj, key.data
            try:
                chunk = s.recv(512)
            except BlockingIOError:
                continue
            except OSError as e:
                chunk = repr(e).encode()
            data[1] += chunk
            if b"\n" in data[1] or not chunk:
                sel.unregister(s)
                if data[1].startswith(b"220"):
                    held[data[0]].append(s)
                else:
                    bad.setdefault(data[0], []).append(data[1])
                    s.close()
    for key in list(sel.get_map().values()):
        bad.setdefault(key.data[0], []).append(b"no greeting: " + key.data[1])
        key.fileobj.close()
    sel.close()
    return held, bad


def rss_kib(pid):
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_idle_connections_and_slowloris(make_daemon):
    """Ten thousand idle connections from a hundred client addresses (the
    per-address limit turns the 101st from one of them away), started with
    the soft descriptor limit systemd gives (1024): carrierd raises it
    itself.  While they are held, slowloris clients time out and mail is
    delivered promptly; then the idle ones time out too."""
    n_sources, per_ip = 100, 100
    n_idle = n_sources * per_ip
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if raise_nofile(n_idle + 500) < n_idle + 500:
        pytest.skip(f"cannot raise RLIMIT_NOFILE to {n_idle + 500} (hard limit {hard})")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    sources = [f"127.0.0.{2 + i}" for i in range(n_sources)]
    idle_timeout = 20
    d = mail_daemon(make_daemon,
                    f"[smtp]\nmax_connections = {n_idle + 100}\n"
                    f"max_connections_per_ip = {per_ip}\n"
                    f"idle_timeout = {idle_timeout}s\ncommand_timeout = 3s\n"
                    "[log]\nlevel.core = medium\n",
                    argv_prefix=["prlimit", f"--nofile=1024:{hard}", "--"])
    # carrierd raised its own soft limit to the hard one, and says so.
    lim = d.wait_event("CORE_FD_LIMIT")[0]["fields"]
    assert lim["was"] == 1024 and lim["limit"] == min(hard, 1048576), lim
    assert not d.events("CORE_FD_LIMIT_LOW"), d.events("CORE_FD_LIMIT_LOW")
    assert deliver(d, "warmup")
    rss0 = rss_kib(d.proc.pid)

    t0 = time.time()
    held, bad = open_greeted(d.port, sources, per_ip)
    t_open = time.time() - t0
    idle = [s for a in sources for s in held[a]]
    try:
        # Every one of the ten thousand was greeted.
        assert not bad, {a: v[:3] for a, v in list(bad.items())[:5]}
        assert len(idle) == n_idle
        rss1 = rss_kib(d.proc.pid)
        per_conn = (rss1 - rss0) * 1024 / n_idle
        print(f"\n{n_idle} idle connections greeted in {t_open:.1f}s;"
              f" carrierd RSS {rss0} -> {rss1} KiB, {per_conn:.0f} bytes each")
        # The benchmark publishes ~1.2 KiB each (3.3 KiB measured under
        # ASan, whose allocator adds redzones): a loose bound for both.
        assert per_conn < 8 * 1024, per_conn
        st = d.carrier("status", "-c", str(d.conf_path))
        assert st.returncode == 0, st.stderr
        m = re.search(r"^\s*sessions:\s*(\d+)", st.stdout, re.M)
        assert m and int(m.group(1)) == n_idle, st.stdout

        # One more from an address that has its hundred: the documented
        # 421 and an event naming the limit.
        extra = socket.socket()
        extra.bind((sources[0], 0))
        extra.settimeout(10)
        extra.connect(("127.0.0.1", d.port))
        line = extra.recv(512)
        extra.close()
        assert line.startswith(b"421 4.7.0"), line
        refused = d.wait_event("POLICY_CONNECTION_REFUSED")[0]["fields"]
        assert refused == {"client": sources[0], "limit": "max_connections_per_ip",
                           "count": per_ip, "max": per_ip}, refused

        # Slowloris clients: a byte a second is not a command line; they
        # are cut off after command_timeout with 421 and an event.
        stop, sent, replies = threading.Event(), [], []
        lorises = [threading.Thread(target=slowloris, args=(d.port, stop, sent, replies),
                                    daemon=True) for _ in range(20)]
        for t in lorises:
            t.start()
        # Other sessions still deliver while all of those are held open.
        t1 = time.time()
        for i in range(5):
            assert deliver(d, f"busy{i}"), d.stderr()[-3000:]
        assert time.time() - t1 < 10, f"5 deliveries took {time.time() - t1:.1f}s"
        for t in lorises:
            t.join(15)
        stop.set()
        assert len(replies) == 20 and all(r.startswith(b"421 4.4.2") for r in replies), replies
        lines = [e for e in d.events("SMTP_IN_TIMEOUT")
                 if e["fields"]["waiting"] == "the end of a command line"]
        assert len(lines) == 20, len(lines)

        # All that time the ten thousand stayed open: nothing was said to
        # any of them yet.
        poll = select.poll()
        for s in idle:
            poll.register(s, select.POLLIN)
        early = poll.poll(0)
        assert not early, f"{len(early)} idle connections closed early " \
            f"(opening took {t_open:.1f}s, idle_timeout {idle_timeout}s)"
        print(f"held for {time.time() - t0:.1f}s; {len(sent)} slowloris bytes")

        # Then the idle timeout closes them all, each with 421 and an event.
        deadline = time.time() + idle_timeout + 20
        n = 0
        while time.time() < deadline:
            n = sum(1 for e in d.events("SMTP_IN_TIMEOUT")
                    if e["fields"]["waiting"] != "the end of a command line")
            if n >= n_idle:
                break
            time.sleep(0.5)
        assert n == n_idle, f"{n} idle timeouts"
        for s in idle[::100]:
            s.settimeout(5)
            data = s.recv(4096)
            assert data.startswith(b"421 4.4.2"), data
            assert s.recv(4096) == b""
    finally:
        for s in idle:
            s.close()
    assert deliver(d, "after")
    assert_clean_stop(d)


def test_stall_mid_data_does_not_block_others(make_daemon):
    d = mail_daemon(make_daemon, "[smtp]\ndata_timeout = 2s\n")
    s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    f = s.makefile("rb")
    f.readline()
    for cmd in (b"EHLO staller\r\n", b"MAIL FROM:<a@b.example>\r\n",
                b"RCPT TO:<u@localhost>\r\n", b"DATA\r\n"):
        s.sendall(cmd)
        line = f.readline()
        while line[3:4] == b"-":
            line = f.readline()
    assert line.startswith(b"354")
    s.sendall(b"Subject: stalled\r\n\r\nhalf a mess")     # and nothing more
    t0 = time.time()
    for i in range(3):
        assert deliver(d, f"other{i}")
    assert time.time() - t0 < 5
    rest = b""
    while True:
        try:
            chunk = s.recv(4096)
        except OSError:
            break
        if not chunk:
            break
        rest += chunk
    assert rest.startswith(b"421"), rest
    assert 1.5 < time.time() - t0 < 8
    d.wait_event("SMTP_IN_TIMEOUT")
    s.close()
    # The stalled message was not kept.
    new = d.maildir / "u" / "new"
    assert not any("stalled" in p.read_text() for p in new.iterdir())
    assert_clean_stop(d)


class Staller:
    """A next hop that answers until DATA, takes the message text and
    never answers the final dot."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        self.conns, self.stalled = [], threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(c)
            threading.Thread(target=self.session, args=(c,), daemon=True).start()

    def session(self, c):
        try:
            f = c.makefile("rb")
            c.sendall(b"220 staller ESMTP\r\n")
            while True:
                line = f.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb in (b"EHLO", b"HELO"):
                    c.sendall(b"250 staller\r\n")
                elif verb == b"DATA":
                    c.sendall(b"354 go on\r\n")
                    while f.readline() not in (b".\r\n", b""):
                        pass
                    self.stalled.set()
                    time.sleep(3600)        # never answer the dot
                elif verb == b"QUIT":
                    c.sendall(b"221 bye\r\n")
                    return
                else:
                    c.sendall(b"250 ok\r\n")
        except OSError:
            return

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


def test_next_hop_stalled_mid_data(make_daemon):
    from sink import Sink
    sink, staller = Sink().start(), Staller()
    try:
        d = mail_daemon(make_daemon,
                        "[delivery]\nretry_schedule = 30s\nconnect_timeout = 2s\n"
                        "command_timeout = 2s\ndata_timeout = 2s\n"
                        f"[route stall.test]\nvia = smtp:[127.0.0.1]:{staller.port}\n"
                        f"[route ok.test]\nvia = smtp:[127.0.0.1]:{sink.port}\n")
        try:
            d.wait_event("DELIVERY_INDEX_READY", timeout=5)
        except AssertionError:
            pytest.skip("carrierd does not run the delivery runner")
        import smtplib
        s = smtplib.SMTP("127.0.0.1", d.port, timeout=10)
        s.sendmail("a@sender.example", ["x@stall.test"], "Subject: stall\r\n\r\nstuck\r\n")
        s.quit()
        assert staller.stalled.wait(10), "the stalled hop never got the message"
        # While that delivery hangs on the dot: other next hops and the
        # Maildir go on.
        t0 = time.time()
        s = smtplib.SMTP("127.0.0.1", d.port, timeout=10)
        for i in range(3):
            s.sendmail("a@sender.example", [f"ok{i}@ok.test"], f"Subject: ok{i}\r\n\r\nfine\r\n")
        s.quit()
        assert deliver(d, "local-while-stalled")
        sink.wait(3, timeout=10)
        assert time.time() - t0 < 5, "deliveries waited for the stalled hop"
        # The stalled attempt times out and is deferred, with an event.
        deadline = time.time() + 10
        ev = []
        while time.time() < deadline and not ev:
            ev = [e for e in d.events("DELIVERY_DEFERRED") if "x@stall.test" in e["msg"]]
            time.sleep(0.1)
        assert ev, [e["event"] for e in d.events()]
        assert_clean_stop(d)
    finally:
        sink.stop()
        staller.close()


def test_dns_server_killed(make_daemon):
    """The DNS server dies: mail for MX-routed domains defers with an
    event; explicit routes and the Maildir go on."""
    from dnsserver import DNSServer
    from sink import Sink
    sink = Sink().start()
    dns = DNSServer(["relay.example. 300 IN MX 10 host.example.",
                     "host.example. 300 IN A 127.0.0.1",
                     "relay2.example. 300 IN MX 10 host2.example.",
                     "host2.example. 300 IN A 127.0.0.1"])
    dns.start()
    try:
        d = mail_daemon(make_daemon,
                        "[delivery]\nretry_schedule = 30s\nconnect_timeout = 2s\n"
                        f"[dns]\nforwarder = {dns.forwarder}\ntimeout = 2s\n"
                        f"[route dns.test]\nvia = smtp:relay.example:{sink.port}\n"
                        f"[route dns2.test]\nvia = smtp:relay2.example:{sink.port}\n"
                        f"[route ok.test]\nvia = smtp:[127.0.0.1]:{sink.port}\n")
        try:
            d.wait_event("DELIVERY_INDEX_READY", timeout=5)
        except AssertionError:
            pytest.skip("carrierd does not run the delivery runner")
        import smtplib
        s = smtplib.SMTP("127.0.0.1", d.port, timeout=10)
        s.sendmail("a@sender.example", ["first@dns.test"], "Subject: dns up\r\n\r\nx\r\n")
        s.quit()
        sink.wait(1, timeout=10)                 # through DNS while it is up
        dns.stop()             # (relay.example stays in the cache; relay2 was never asked)
        s = smtplib.SMTP("127.0.0.1", d.port, timeout=10)
        s.sendmail("a@sender.example", ["second@dns2.test"], "Subject: dns down\r\n\r\nx\r\n")
        s.sendmail("a@sender.example", ["direct@ok.test"], "Subject: direct\r\n\r\nx\r\n")
        s.quit()
        assert deliver(d, "local-without-dns")
        sink.wait(2, timeout=10)                 # the explicit route still delivers
        assert any("direct@ok.test" in str(t["rcpts"]) for t in sink.transactions)
        deadline = time.time() + 30
        ev = []
        while time.time() < deadline and not ev:
            ev = [e for e in d.events("DELIVERY_DEFERRED") if "second@dns2.test" in e["msg"]]
            time.sleep(0.2)
        assert ev, [e["event"] for e in d.events()]
        assert not any("second@dns2.test" in str(t["rcpts"]) for t in sink.transactions)
        assert_clean_stop(d)
    finally:
        sink.stop()
        dns.stop()
