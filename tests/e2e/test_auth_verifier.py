"""End-to-end tests of password verification off the loop thread.

Checking a password against [auth] passwd_file costs a yescrypt hash (tens
of milliseconds).  carrierd runs it on verifier threads, so while clients
authenticate, the other sessions of the loop thread are not held up: here
8 clients keep failing AUTH while another session times NOOP round trips,
whose worst case must stay well below the hashing the 8 clients cause.

Also: a client that vanishes while its password is being checked, a stop
while checks are queued, and a full verification queue (454 4.7.0).  No
TLS here (require_tls = no): a handshake would add loop work of its own.
"""
import base64
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

from conftest import CARRIER

PASSWORD = "correct horse battery"


def write_passwd(path, users):
    for user, pw in users.items():
        p = subprocess.run([str(CARRIER), "passwd", "add", "-f", str(path), user],
                           input=pw + "\n", capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
    if os.geteuid() == 0:
        try:
            import pwd
            pw = pwd.getpwnam("carrier")
            os.chown(path, pw.pw_uid, pw.pw_gid)
        except KeyError:
            pass


def auth_daemon(make_daemon, auth_extra="", server_extra="", max_failures=1000):
    d = make_daemon(f"[server]\n{server_extra}[smtp]\nmax_connections_per_ip = 1000\n"
                    "[log]\nlevel.smtp_in = medium\nlevel.auth = medium\n", start=False)
    passwd = d.dir / "passwd"
    write_passwd(passwd, {"alice": PASSWORD})
    with open(d.conf_path, "a") as f:
        f.write(f"[auth]\npasswd_file = {passwd}\nrequire_tls = no\nfailure_delay = 0\n"
                f"max_failures = {max_failures}\n{auth_extra}")
    d.start()
    return d


def plain(user, pw):
    return "AUTH PLAIN " + base64.b64encode(f"\0{user}\0{pw}".encode()).decode()


class Client:
    """A raw SMTP client: one command, one (possibly multi-line) reply."""

    def __init__(self, port, timeout=30):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.sock.makefile("rb")
        assert self.reply()[0] == 220

    def reply(self):
        lines = []
        while True:
            line = self.f.readline()
            assert line, "connection closed"
            lines.append(line.decode().rstrip("\r\n"))
            if line[3:4] != b"-":
                return int(line[:3]), lines[-1][4:]

    def cmd(self, text):
        self.sock.sendall(text.encode() + b"\r\n")
        return self.reply()

    def timed(self, text):
        t0 = time.perf_counter()
        r = self.cmd(text)
        return r, time.perf_counter() - t0

    def ehlo(self):
        assert self.cmd("EHLO client.example")[0] == 250
        return self

    def abort(self):
        """Closes with a reset, as a client that crashed."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        self.f.close()
        self.sock.close()

    def close(self):
        self.f.close()
        self.sock.close()


def single_hash_time(port):
    """The median round trip of a failed AUTH alone: one yescrypt hash."""
    c = Client(port).ehlo()
    times = []
    for _ in range(5):
        (code, _), dt = c.timed(plain("alice", "wrong"))
        assert code == 535
        times.append(dt)
    c.close()
    return statistics.median(times)


# The AUTH clients run in a child process, so that their threads do not
# hold the GIL while the probe times its round trips.
AUTH_LOAD = r"""
import base64, socket, sys, threading
port, clients, rounds = (int(a) for a in sys.argv[1:4])
line = b"AUTH PLAIN " + base64.b64encode(b"\0alice\0wrong") + b"\r\n"

def reply(f):
    while True:
        l = f.readline()
        if not l:
            raise SystemExit("connection closed")
        if l[3:4] != b"-":
            return l

conns = []
for _ in range(clients):
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    f = s.makefile("rb")
    reply(f)
    s.sendall(b"EHLO load.example\r\n")
    reply(f)
    conns.append((s, f))
bad = []

def run(s, f):
    for _ in range(rounds):
        s.sendall(line)
        r = reply(f)
        if not r.startswith(b"535"):
            bad.append(r)

print("ready", flush=True)
sys.stdin.readline()
threads = [threading.Thread(target=run, args=c) for c in conns]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("bad", bad, flush=True)
sys.exit(1 if bad else 0)
"""


def noop_latency_under_auth_load(port, clients=8, rounds=4):
    """NOOP round trips of one session while `clients` sessions fail AUTH
    `rounds` times each; returns the NOOP times and the AUTH window."""
    probe = Client(port).ehlo()
    load = subprocess.Popen([sys.executable, "-c", AUTH_LOAD, str(port), str(clients),
                             str(rounds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert load.stdout.readline().strip() == "ready"
    load.stdin.write("go\n")
    load.stdin.flush()
    t0 = time.perf_counter()
    noops = []
    while load.poll() is None:
        (code, _), dt = probe.timed("NOOP")
        assert code == 250
        noops.append(dt)
        time.sleep(0.002)
    window = time.perf_counter() - t0
    out = load.stdout.read()
    probe.close()
    assert load.returncode == 0, out
    return noops, window


def latency_run(port):
    """One measurement: (passed, summary)."""
    hash_time = single_hash_time(port)
    noops, window = noop_latency_under_auth_load(port, clients=8, rounds=4)
    noops.sort()
    worst, median, p90 = noops[-1], statistics.median(noops), noops[len(noops) * 9 // 10]
    summary = (f"hash {hash_time * 1000:.1f} ms; AUTH window {window * 1000:.0f} ms; "
               f"{len(noops)} NOOPs: median {median * 1000:.2f} ms, p90 {p90 * 1000:.2f} ms, "
               f"max {worst * 1000:.2f} ms")
    # Hashing on the loop thread holds a NOOP behind up to 8 hashes (every
    # client's AUTH read in one loop pass): measured before the verifier
    # threads, the median NOOP took 4-5 hashes and the worst 8-10.  Off
    # the loop a NOOP waits for no hash.  The probe must have run while the
    # hashing went on (32 hashes take a while).
    passed = (len(noops) >= 5 and worst < 4 * hash_time and p90 < hash_time and
              median < hash_time / 4)
    return passed, summary


def test_noop_not_delayed_by_concurrent_auth(make_daemon):
    d = auth_daemon(make_daemon)
    # A busy machine may stall any process now and then (the worst case is
    # then one scheduling delay, not a sum of hashes): up to three tries.
    runs = []
    for _ in range(3):
        passed, summary = latency_run(d.port)
        print(summary)
        runs.append(summary)
        if passed:
            break
    assert passed, "NOOP delayed behind password hashing:\n" + "\n".join(runs)
    assert len(d.events("AUTH_FAILED")) >= len(runs) * (8 * 4 + 5)


def send_auth_all(port, n, pw="wrong"):
    """`n` sessions, each with an AUTH sent and its answer not yet read."""
    clients = [Client(port).ehlo() for _ in range(n)]
    for c in clients:
        c.sock.sendall(plain("alice", pw).encode() + b"\r\n")
    return clients


def assert_serves(d):
    c = Client(d.port).ehlo()
    assert c.cmd(plain("alice", PASSWORD))[0] == 235
    assert c.cmd("NOOP")[0] == 250
    assert c.cmd("QUIT")[0] == 221
    c.close()


def test_client_vanishing_mid_check(make_daemon):
    # One thread: most of the checks wait in the queue when their client
    # resets the connection.
    d = auth_daemon(make_daemon, auth_extra="verify_threads = 1\n")
    for c in send_auth_all(d.port, 12):
        c.abort()
    # Each session learns that its client is gone when it writes the
    # answer, and is freed; the daemon goes on serving.
    d.wait_event("SMTP_IN_CLOSE", count=12, timeout=30)
    assert_serves(d)
    assert len(d.events("AUTH_FAILED")) == 12
    assert d.stop() == 0, d.stderr()


def test_stop_with_checks_in_progress(make_daemon):
    # A drain: each waiting session gets its answer, then 421.
    d = auth_daemon(make_daemon, auth_extra="verify_threads = 1\n")
    clients = send_auth_all(d.port, 6)
    time.sleep(0.05)
    d.signal(signal.SIGTERM)
    for c in clients:
        assert c.reply()[0] == 535
        assert c.reply() == (421, "4.3.2 Service shutting down, closing transmission channel")
        c.close()
    assert d.proc.wait(30) == 0, d.stderr()

    # No drain time: sessions are freed with their checks waiting or being
    # hashed (the answers are dropped); the workers finish and stop.
    d = auth_daemon(make_daemon, auth_extra="verify_threads = 1\n",
                    server_extra="drain_timeout = 0\n")
    clients = send_auth_all(d.port, 20)
    time.sleep(0.05)
    d.signal(signal.SIGTERM)
    assert d.proc.wait(30) == 0, d.stderr()
    assert len(d.events("AUTH_FAILED")) < 20, "every check finished before the stop"
    for c in clients:
        c.close()


def test_full_queue_answers_454(make_daemon):
    d = auth_daemon(make_daemon, auth_extra="verify_threads = 1\nverify_queue = 2\n")
    clients = send_auth_all(d.port, 6)
    codes = []
    for c in clients:
        code, text = c.reply()
        codes.append(code)
        if code == 454:
            assert text == "4.7.0 Temporary authentication failure"
        c.close()
    assert codes.count(535) >= 2 and codes.count(454) >= 1, codes
    assert codes.count(535) + codes.count(454) == 6, codes
    busy = d.wait_event("AUTH_VERIFY_BUSY", count=codes.count(454))
    assert busy[0]["fields"]["pending"] == 2 and busy[0]["fields"]["user"] == "alice"
    # A refusal is no failed password: the limiter does not count it.
    assert len(d.events("AUTH_FAILED")) == codes.count(535)
    assert_serves(d)


def test_reload_while_checks_wait(make_daemon):
    # The checks hold the table they were submitted with; the reload frees
    # the server's reference to it meanwhile (ASan: no use after free).
    d = auth_daemon(make_daemon, auth_extra="verify_threads = 1\n")
    clients = send_auth_all(d.port, 10, pw=PASSWORD)
    time.sleep(0.05)
    write_passwd(d.dir / "passwd", {"alice": "a new password"})
    d.signal(signal.SIGHUP)
    for c in clients:
        assert c.reply()[0] == 235
        c.close()
    log = [e["event"] for e in d.events()]
    reloaded = len(log) - 1 - log[::-1].index("AUTH_PASSWD_LOADED")
    assert log.count("AUTH_PASSWD_LOADED") == 2
    assert "AUTH_SUCCEEDED" in log[reloaded:], "the reload came after every check"
    c = Client(d.port).ehlo()
    assert c.cmd(plain("alice", PASSWORD))[0] == 535
    assert c.cmd(plain("alice", "a new password"))[0] == 235
    c.close()


def test_concurrent_guesses_stay_within_max_failures(make_daemon):
    # Each check counts as a failure from its start until it succeeds, so
    # sessions of one address guessing side by side get max_failures
    # hashes in all, not one each.
    d = auth_daemon(make_daemon, max_failures=3)
    clients = send_auth_all(d.port, 10)
    codes = []
    for c in clients:
        code, text = c.reply()
        codes.append(code)
        c.close()
    assert set(codes) <= {421, 535}, codes
    assert codes.count(421) >= 7, codes
    assert len(d.events("AUTH_FAILED")) == 3
    d.wait_event("AUTH_TOO_MANY_FAILURES")
