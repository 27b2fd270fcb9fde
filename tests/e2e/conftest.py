"""Shared fixtures for end-to-end tests: real carrierd and carrier binaries.

A `Daemon` owns a temporary directory (world-traversable, because carrierd
started as root drops to the unprivileged user 'carrier') holding its
configuration, spool, Maildir root, control socket and JSON event log.

Set CARRIER_BUILD=build/asan to run the sanitizer binaries.
"""
import json
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD = ROOT / os.environ.get("CARRIER_BUILD", "build")
CARRIERD = BUILD / "carrierd"
CARRIER = BUILD / "carrier"


_ports_given = set()


def free_port():
    """A free loopback port, never one this test run handed out before:
    the kernel may offer a just-closed port again, and two listeners of one
    daemon (or a daemon and its sink) must not get the same one."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _ports_given:
            _ports_given.add(port)
            return port
    raise RuntimeError("no fresh loopback port")


def make_tempdir(prefix="carrier-e2e-"):
    d = pathlib.Path(tempfile.mkdtemp(prefix=prefix))
    d.chmod(0o755)
    return d


class Daemon:
    """One carrierd with its own files.  `extra_conf` is INI text appended
    to the generated configuration (later keys in the same section are
    errors, so use sections the base does not set, or pass `base=False`)."""

    def __init__(self, directory, extra_conf="", port=None, base=True, env=None):
        self.dir = pathlib.Path(directory)
        self.port = port or free_port()
        self.spool = self.dir / "spool"
        self.maildir = self.dir / "mail"
        self.socket = self.dir / "carrierd.sock"
        self.pidfile = self.dir / "carrierd.pid"
        # The log directory belongs to the daemon's user, as /var/log/carrier
        # would, so a rotation (rename + SIGUSR1) can create the new file.
        self.log_dir = self.dir / "log"
        self.log_dir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            try:
                import pwd
                pw = pwd.getpwnam("carrier")
                os.chown(self.log_dir, pw.pw_uid, pw.pw_gid)
            except KeyError:
                pass
        self.json_log = self.log_dir / "events.jsonl"
        self.stderr_path = self.dir / "stderr.log"
        self.conf_path = self.dir / "carrier.conf"
        self.shm_name = f"/carrier-test-{os.getpid()}-{self.port}"
        self.proc = None
        self.env = env
        text = ""
        if base:
            text = (f"[server]\nlisten = 127.0.0.1:{self.port}\n"
                    f"pidfile = {self.pidfile}\nhostname = mx.test.example\n"
                    f"{self._server_extra(extra_conf)}"
                    f"[spool]\npath = {self.spool}\nmin_free_space = 1M\n"
                    f"[local]\nmaildir = {self.maildir}\n"
                    f"[control]\nsocket = {self.socket}\n"
                    f"[counters]\nshm_name = {self.shm_name}\n"
                    f"[log]\njson = {self.json_log}\nsyslog = no\n")
        text += self._other_extra(extra_conf) if base else extra_conf
        self.conf_path.write_text(text)

    # extra_conf's [server] keys are merged into the base [server] section
    # so tests can set e.g. relay_networks without a duplicate section.
    @staticmethod
    def _split(extra):
        server, other, cur = [], [], None
        for line in extra.splitlines():
            s = line.strip()
            if s.startswith("["):
                cur = server if s == "[server]" else other
                if cur is other:
                    other.append(line)
                continue
            (cur if cur is not None else other).append(line)
        return server, other

    def _server_extra(self, extra):
        server, _ = self._split(extra)
        return "".join(l + "\n" for l in server)

    def _other_extra(self, extra):
        _, other = self._split(extra)
        return "".join(l + "\n" for l in other)

    def argv(self, *more):
        return [str(CARRIERD), "-f", "-c", str(self.conf_path), *more]

    def start(self, wait_ready=True, timeout=15, argv=None):
        self.stderr_file = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(argv or self.argv(), stdin=subprocess.DEVNULL,
                                     stdout=self.stderr_file, stderr=self.stderr_file,
                                     env=self.env)
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=15):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"carrierd exited with {self.proc.returncode} before ready:\n{self.stderr()}")
            if any(e["event"] == "CORE_READY" for e in self.events()):
                return
            time.sleep(0.05)
        raise AssertionError(f"carrierd not ready after {timeout}s:\n{self.stderr()}")

    def stderr(self):
        try:
            return self.stderr_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def events(self, name=None):
        out = []
        try:
            text = self.json_log.read_text(errors="replace")
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if name is None or ev.get("event") == name:
                out.append(ev)
        return out

    def wait_event(self, name, timeout=10, count=1):
        deadline = time.time() + timeout
        while time.time() < deadline:
            evs = self.events(name)
            if len(evs) >= count:
                return evs
            time.sleep(0.05)
        raise AssertionError(f"no {name} event within {timeout}s; events: "
                             f"{[e['event'] for e in self.events()]}\n{self.stderr()}")

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=30):
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self.stderr_file.close()

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
            self.stderr_file.close()

    def smtp(self, timeout=10):
        import smtplib
        return smtplib.SMTP("127.0.0.1", self.port, timeout=timeout)

    def carrier(self, *args, check=False, timeout=30, input=None):
        return subprocess.run([str(CARRIER), *args], capture_output=True, text=True,
                              timeout=timeout, check=check, input=input)

    def cleanup(self):
        self.kill()
        try:
            os.unlink("/dev/shm" + self.shm_name)
        except OSError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def make_daemon():
    made = []

    def factory(extra_conf="", start=True, **kw):
        d = Daemon(make_tempdir(), extra_conf=extra_conf, **kw)
        made.append(d)
        if start:
            d.start()
        return d

    yield factory
    for d in made:
        d.cleanup()


@pytest.fixture
def daemon(make_daemon):
    return make_daemon()


@pytest.fixture
def workdir():
    d = make_tempdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


def connect_banner(port, host="127.0.0.1", timeout=5):
    """Opens a TCP connection and returns (socket, first line)."""
    s = socket.create_connection((host, port), timeout=timeout)
    f = s.makefile("rb")
    line = f.readline()
    return s, line.decode(errors="replace")


def wait_until(pred, timeout=12, what="condition", log=None):
    """pred()'s first true value within `timeout` seconds, else an
    AssertionError naming `what` (and log()'s text when given)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{log()}" if log else ""))


def hop_stats(d, key):
    """The `carrier stats --json` entry of next hop `key`."""
    r = d.carrier("stats", "-c", str(d.conf_path), "--json", timeout=10)
    assert r.returncode == 0, r.stderr
    for h in json.loads(r.stdout)["next_hops"]:
        if h["key"] == key:
            return h
    raise AssertionError(f"no next hop {key} in {r.stdout}")


def chown_to_daemon_user(path):
    """A root daemon drops to `carrier` and must own what it writes: chown
    `path` and everything below it (nothing when not root or no user)."""
    if os.geteuid() != 0:
        return
    try:
        import pwd
        pw = pwd.getpwnam("carrier")
    except KeyError:
        return
    for dirpath, _, files in os.walk(path):
        os.chown(dirpath, pw.pw_uid, pw.pw_gid)
        for f in files:
            os.chown(os.path.join(dirpath, f), pw.pw_uid, pw.pw_gid)


def _pkg_libs():
    pkgs = ["libevent", "libevent_pthreads", "libevent_openssl", "lmdb", "inih", "openssl"]
    libs = subprocess.run(["pkg-config", "--libs", *pkgs], capture_output=True,
                          text=True, check=True).stdout.split()
    if subprocess.run(["pkg-config", "--exists", "libunbound"]).returncode == 0:
        libs += subprocess.run(["pkg-config", "--libs", "libunbound"], capture_output=True,
                               text=True).stdout.split()
    return libs


def build_test_tool(tmp_path_factory, src, extra_libs=()):
    """Builds the C test tool `src` (tests/e2e/*.c) against the build's
    libcarrier.a, with the sanitizers when the build has them; skips the
    test when the library is not built."""
    lib = BUILD / "libcarrier.a"
    if not lib.exists():
        pytest.skip(f"{lib} not built (run make)")
    src = pathlib.Path(src)
    out = tmp_path_factory.mktemp(src.stem) / src.stem
    asan = "asan" in str(BUILD)
    cc = "clang" if asan else os.environ.get("CC", "cc")
    flags = ["-fsanitize=address,undefined"] if asan else []
    cmd = [cc, "-std=c17", "-D_GNU_SOURCE", f"-I{ROOT / 'src'}", "-O1", "-g", *flags,
           "-o", str(out), str(src), str(lib), *_pkg_libs(), *extra_libs, "-lpthread", "-lm"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, f"building {src.name} failed:\n{' '.join(cmd)}\n{r.stderr}"
    return out


def pytest_sessionfinish(session, exitstatus):
    """Removes this run's counter segments that a daemon left behind: one
    killed with SIGKILL never unlinks its /dev/shm/carrier-test-PID-PORT,
    and a test that starts a daemon a second time on a new port leaves the
    first name to nobody."""
    for p in pathlib.Path("/dev/shm").glob(f"carrier-test-{os.getpid()}-*"):
        try:
            p.unlink()
        except OSError:
            pass
