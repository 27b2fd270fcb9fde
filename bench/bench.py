#!/usr/bin/python3
"""carrier against Postfix, side by side in one run (issue 6).

    make bench                          # everything, 3 runs per scenario
    make bench BENCH_ARGS="--quick"     # a small smoke run (< 2 minutes)
    bench/bench.py --only ab --runs 5   # a subset, run directly

Both MTAs relay from 127.0.0.1 to the same sink (Postfix's smtp-sink on
loopback) with their shipped durability (fsync before 250); the load is
Postfix's smtp-source.  Each run starts a fresh MTA with an empty queue.

How each figure is taken (also written into the report):
  accept rate   messages / wall time of smtp-source (one connection per
                message, smtp-source's default)
  relay rate    messages / time from smtp-source's start until the sink
                has counted every accepted message
  CPU/1k msgs   CPU seconds (user+system) of every process of the MTA:
                each MTA is started inside its own cgroup (v1 cpuacct, or
                v2), so exited children (Postfix's smtpd/cleanup/smtp
                processes) are counted too; without a writable cgroup, the
                /proc times of the MTA's process tree (incl. reaped
                children) are sampled instead.  Window: smtp-source start
                to the sink holding every message (accept only when the
                MTA cannot relay yet).
  peak RSS      the largest sum of VmRSS over the MTA's processes, sampled
                every 0.25 s (shared pages count once per process)
  fsyncs/msg    a separate run under strace --seccomp-bpf -f -c (strace
                slows the MTA, so it never shares a run with the timings):
                fsync + fdatasync + msync + sync_file_range calls divided
                by accepted messages, until the sink has all of them
  lost          accepted by the MTA - counted by the sink (must be 0)
"""
import argparse
import contextlib
import datetime
import errno
import json
import os
import pathlib
import platform
import pwd
import re
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMTP_SOURCE = shutil.which("smtp-source") or "/usr/sbin/smtp-source"
SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
POSTCONF = shutil.which("postconf") or "/usr/sbin/postconf"
STRACE = shutil.which("strace") or "/usr/bin/strace"
SYNC_CALLS = "fsync,fdatasync,msync,sync_file_range,syncfs,sync"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class Abort(Exception):
    """Raised by the signal handlers so every finally block runs."""


class Skip(Exception):
    pass


# ---------------------------------------------------------------- output
class Progress:
    def __init__(self):
        self.tty = sys.stdout.isatty()
        self.last = ""
        self.last_print = 0.0
        self.lock = threading.Lock()

    def show(self, text, force=False):
        with self.lock:
            if self.tty:
                width = shutil.get_terminal_size((100, 20)).columns - 1
                sys.stdout.write("\r" + text[:width].ljust(min(width, max(len(self.last), len(text)))))
                sys.stdout.flush()
            elif force or time.time() - self.last_print > 10:
                print(text, flush=True)
                self.last_print = time.time()
            self.last = text

    def line(self, text):
        with self.lock:
            if self.tty and self.last:
                sys.stdout.write("\r" + " " * min(len(self.last), 200) + "\r")
            print(text, flush=True)
            self.last = ""


P = Progress()


def log(text):
    P.line(text)


# ---------------------------------------------------------------- helpers
def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port):
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_banner(port, timeout=30, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if s.recv(512).startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"no SMTP banner on 127.0.0.1:{port} after {timeout}s")


def pid_alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def proc_status(pid, keys=("VmRSS", "VmHWM")):
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in keys:
                    out[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return out


def proc_pss(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def proc_stat(pid):
    """(ppid, utime+stime, cutime+cstime) in seconds, or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rindex(")") + 2:].split()
    ppid = int(rest[1])
    own = (int(rest[11]) + int(rest[12])) / CLK_TCK
    children = (int(rest[13]) + int(rest[14])) / CLK_TCK
    return ppid, own, children


def all_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def descendants(root):
    parent = {}
    for pid in all_pids():
        st = proc_stat(pid)
        if st:
            parent[pid] = st[0]
    out, todo = {root} if root in parent else set(), [root]
    while todo:
        p = todo.pop()
        for c, pp in parent.items():
            if pp == p and c not in out:
                out.add(c)
                todo.append(c)
    return out


def fmt_num(v, digits=None):
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if digits is None:
        digits = 0 if abs(v) >= 100 else (1 if abs(v) >= 10 else 2)
    return f"{v:,.{digits}f}"


def mib(b):
    return None if b is None else b / 1048576


def kill_group(proc, sig=signal.SIGTERM, timeout=10):
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


# ---------------------------------------------------------------- CPU accounting
class Accounting:
    """A cgroup for one MTA instance (v1 cpuacct or v2), or /proc sampling.

    start_cmd() prefixes a command so it (and everything it forks,
    including daemons that detach) starts inside the cgroup."""

    made = []

    def __init__(self, name, mode):
        self.mode = mode          # "cgroup-v1", "cgroup-v2" or "proc"
        self.dir = None
        self.root_pid = None
        self.proc_base = 0.0
        if mode == "cgroup-v1":
            self.dir = pathlib.Path(detect_cgroup()[1]) / name
        elif mode == "cgroup-v2":
            self.dir = pathlib.Path(detect_cgroup()[1]) / name
        if self.dir is not None:
            self.dir.mkdir()
            Accounting.made.append(self)

    def start_cmd(self, argv):
        if self.dir is None:
            return argv
        return ["/bin/sh", "-c", f'echo $$ > {self.dir}/cgroup.procs && exec "$@"', "sh", *argv]

    def pids(self):
        if self.dir is not None:
            try:
                return [int(x) for x in (self.dir / "cgroup.procs").read_text().split()]
            except OSError:
                return []
        if self.root_pid is None:
            return []
        return sorted(descendants(self.root_pid))

    def cpu(self):
        """(user, system) seconds used so far by every process, live or exited."""
        if self.mode == "cgroup-v1":
            usage = int((self.dir / "cpuacct.usage").read_text()) / 1e9
            st = dict(l.split() for l in (self.dir / "cpuacct.stat").read_text().splitlines())
            u, s = int(st["user"]), int(st["system"])
            tot = (u + s) or 1
            return usage * u / tot, usage * s / tot
        if self.mode == "cgroup-v2":
            st = dict(l.split() for l in (self.dir / "cpu.stat").read_text().splitlines())
            return int(st["user_usec"]) / 1e6, int(st["system_usec"]) / 1e6
        # /proc: own + reaped children of every live process of the tree.
        # Split user/system is not kept for the tree; report all as user.
        total = 0.0
        for pid in self.pids():
            st = proc_stat(pid)
            if st:
                total += st[1] + st[2]
        return total, 0.0

    def rss(self):
        return sum(proc_status(p).get("VmRSS", 0) for p in self.pids())

    def pss(self):
        return sum(proc_pss(p) for p in self.pids())

    def kill_all(self):
        for _ in range(50):
            pids = self.pids()
            if not pids:
                return
            for p in pids:
                with contextlib.suppress(OSError):
                    os.kill(p, signal.SIGKILL)
            time.sleep(0.1)

    def remove(self):
        if self.dir is None:
            return
        self.kill_all()
        for _ in range(50):
            try:
                self.dir.rmdir()
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)
        if self in Accounting.made:
            Accounting.made.remove(self)


_cgroup = None


def detect_cgroup():
    """('cgroup-v1', dir) / ('cgroup-v2', dir) / ('proc', None)."""
    global _cgroup
    if _cgroup is not None:
        return _cgroup
    _cgroup = ("proc", None)
    mounts = []
    with contextlib.suppress(OSError):
        with open("/proc/mounts") as f:
            mounts = [l.split() for l in f]
    cands = []
    for m in mounts:
        if m[2] == "cgroup" and "cpuacct" in m[3].split(","):
            cands.append(("cgroup-v1", m[1]))
    for m in mounts:
        if m[2] == "cgroup2":
            cands.append(("cgroup-v2", m[1]))
    for mode, d in cands:
        test = pathlib.Path(d) / f"carrier-bench-probe-{os.getpid()}"
        try:
            test.mkdir()
            ok = (test / ("cpuacct.usage" if mode == "cgroup-v1" else "cpu.stat")).exists()
            test.rmdir()
        except OSError:
            continue
        if ok:
            _cgroup = (mode, d)
            break
    return _cgroup


# ---------------------------------------------------------------- sink
class Sink:
    """Postfix's smtp-sink with a running message counter (-c)."""

    def __init__(self, workdir):
        self.port = free_port()
        self.count = 0
        self.proc = subprocess.Popen(
            [SMTP_SINK, "-u", "nobody", "-c", f"127.0.0.1:{self.port}", "2048"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            cwd=workdir)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        wait_banner(self.port, 10, self.proc)

    def _read(self):
        buf = b""
        while True:
            chunk = self.proc.stdout.read1(65536) if hasattr(self.proc.stdout, "read1") else self.proc.stdout.read(4096)
            if not chunk:
                return
            buf = (buf + chunk)[-4096:]
            m = re.findall(rb"mesg=(\d+)", buf)
            if m:
                self.count = int(m[-1])

    def stop(self):
        kill_group(self.proc)


# ---------------------------------------------------------------- load
def smtp_source(port, msgs, size, sessions, reuse=False, timeout=3600, on_tick=None):
    """Runs smtp-source; returns (accepted, seconds, error text)."""
    argv = [SMTP_SOURCE, "-c", "-s", str(sessions), "-m", str(msgs), "-l", str(size),
            "-f", "from@bench.example", "-t", "to@sink.example"]
    if reuse:
        argv.append("-d")
    argv.append(f"127.0.0.1:{port}")
    t0 = time.time()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    state = {"count": 0, "buf": b""}

    def reader():
        while True:
            chunk = proc.stdout.read1(65536)
            if not chunk:
                return
            state["buf"] = (state["buf"] + chunk)[-256:]
            nums = re.findall(rb"(\d+)\r", state["buf"])
            if nums:
                state["count"] = int(nums[-1])

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    try:
        while proc.poll() is None:
            if time.time() - t0 > timeout:
                raise RuntimeError("smtp-source timed out")
            if on_tick:
                on_tick(state["count"])
            time.sleep(0.1)
    finally:
        kill_group(proc)
    elapsed = time.time() - t0
    th.join(2)
    err = proc.stderr.read().decode(errors="replace").strip()
    accepted = msgs if proc.returncode == 0 else state["count"]
    return accepted, elapsed, (err if proc.returncode else "")


# ---------------------------------------------------------------- MTAs
class Carrier:
    name = "carrier"

    def __init__(self, bench, run_dir, sink_port, extra_conf="", strace_out=None,
                 map_size=None, label="carrier"):
        self.b = bench
        self.dir = pathlib.Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        self.port = free_port()
        self.log_dir = self.dir / "log"
        self.log_dir.mkdir(exist_ok=True)
        with contextlib.suppress(KeyError):
            pw = pwd.getpwnam("carrier")
            os.chown(self.log_dir, pw.pw_uid, pw.pw_gid)
        self.json_log = self.log_dir / "events.jsonl"
        self.conf = self.dir / "carrier.conf"
        self.spool = self.dir / "spool"
        self.pidfile = self.dir / "carrierd.pid"
        self.shm = f"/carrier-bench-{os.getpid()}-{self.port}"
        self.strace_out = strace_out
        self.proc = None
        self.acct = None
        self.label = label
        route = f"[route *]\nvia = smtp:[127.0.0.1]:{sink_port}\n" if sink_port else ""
        self.conf.write_text(
            f"[server]\nlisten = 127.0.0.1:{self.port}\npidfile = {self.pidfile}\n"
            f"hostname = mx.bench.example\n"
            f"[smtp]\nmax_connections = {bench.max_conns}\n"
            f"max_connections_per_ip = {bench.max_conns}\n"
            f"[spool]\npath = {self.spool}\nmin_free_space = 1M\n"
            + (f"map_size = {map_size}\n" if map_size else "") +
            f"[local]\nmaildir = {self.dir / 'mail'}\n"
            f"[control]\nsocket = {self.dir / 'carrierd.sock'}\n"
            f"[counters]\nshm_name = {self.shm}\n"
            f"[log]\njson = {self.json_log}\nsyslog = no\n"
            f"{route}{extra_conf}{bench.carrier_conf}")

    def check_conf(self):
        r = subprocess.run([str(self.b.carrierd), "-n", "-c", str(self.conf)],
                           capture_output=True, text=True)
        return r.returncode == 0, (r.stdout + r.stderr).strip()

    def start(self, timeout=120):
        self.acct = Accounting(f"carrier-bench-{os.getpid()}-{self.port}-{len(Accounting.made)}",
                               self.b.acct_mode)
        argv = [str(self.b.carrierd), "-f", "-c", str(self.conf)]
        if self.strace_out:
            argv = [STRACE, "--seccomp-bpf", "-f", "-c", "-e", f"trace={SYNC_CALLS}",
                    "-o", str(self.strace_out)] + argv
        self.log_offset = self.json_log.stat().st_size if self.json_log.exists() else 0
        self.t_exec = time.time()
        self.stderr = open(self.dir / "stderr.log", "ab")
        self.proc = subprocess.Popen(self.acct.start_cmd(argv), stdin=subprocess.DEVNULL,
                                     stdout=self.stderr, stderr=self.stderr,
                                     start_new_session=True)
        self.acct.root_pid = self.proc.pid
        self.b.cleanups.append(self.stop)
        self.ready_seconds = self.wait_ready(timeout)
        self.mta_pid = int(self.pidfile.read_text().split()[0]) if self.pidfile.exists() else self.proc.pid
        return self

    def wait_ready(self, timeout):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"carrierd exited with {self.proc.returncode} before ready: "
                                   f"{(self.dir / 'stderr.log').read_text(errors='replace')[-2000:]}")
            try:
                with open(self.json_log, "rb") as f:
                    f.seek(self.log_offset)
                    data = f.read()
                if b'"CORE_READY"' in data:
                    return time.time() - self.t_exec
            except FileNotFoundError:
                pass
            time.sleep(0.01)
        raise RuntimeError(f"carrierd not ready after {timeout}s")

    def wait_log_event(self, name, timeout):
        """Seconds from exec until event NAME appears after this start, or None."""
        deadline = time.time() + timeout
        key = f'"{name}"'.encode()
        pos, tail = self.log_offset, b""
        while time.time() < deadline and self.proc.poll() is None:
            with contextlib.suppress(FileNotFoundError):
                with open(self.json_log, "rb") as f:
                    f.seek(pos)
                    data = f.read(16 << 20)
                    pos += len(data)
                    if key in tail + data:
                        return time.time() - self.t_exec
                    tail = data[-256:]
                    if len(data) == 16 << 20:
                        continue
            time.sleep(0.02)
        return None

    def events(self, name):
        out = []
        with contextlib.suppress(FileNotFoundError):
            for line in self.json_log.read_text(errors="replace").splitlines():
                with contextlib.suppress(ValueError):
                    ev = json.loads(line)
                    if ev.get("event") == name:
                        out.append(ev)
        return out

    def hwm(self):
        return proc_status(self.mta_pid).get("VmHWM")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.mta_pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                kill_group(self.proc, signal.SIGKILL)
        if self.acct:
            self.acct.remove()
            self.acct = None
        with contextlib.suppress(OSError):
            os.unlink("/dev/shm" + self.shm)
        with contextlib.suppress(Exception):
            self.stderr.close()
        with contextlib.suppress(ValueError):
            self.b.cleanups.remove(self.stop)


POSTFIX_MASTER_CF = """\
{port}    inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix:
    """A private Postfix instance: its own main.cf/master.cf, queue and data
    directories under the run directory; never the system's."""
    name = "postfix"

    def __init__(self, bench, run_dir, sink_port, strace_out=None):
        self.b = bench
        self.dir = pathlib.Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o755)
        self.port = free_port()
        self.conf_dir = self.dir / "etc"
        self.queue = self.dir / "queue"
        self.data = self.dir / "data"
        for d in (self.conf_dir, self.queue, self.data):
            d.mkdir(exist_ok=True)
            d.chmod(0o755)
        pw = pwd.getpwnam("postfix")
        os.chown(self.data, pw.pw_uid, pw.pw_gid)
        self.strace_out = strace_out
        self.acct = None
        self.proc = None
        maillog = f"maillog_file = {self.dir / 'maillog'}\n" if bench.args.postfix_maillog else ""
        (self.conf_dir / "main.cf").write_text(
            "# private benchmark instance written by carrier's bench/bench.py\n"
            "compatibility_level = 3.6\n"
            f"queue_directory = {self.queue}\n"
            f"data_directory = {self.data}\n"
            "mail_owner = postfix\nsetgid_group = postdrop\n"
            "myhostname = postfix.bench.example\nmydomain = bench.example\n"
            "myorigin = $myhostname\nmydestination =\nlocal_recipient_maps =\n"
            "alias_maps =\nalias_database =\n"
            "inet_interfaces = 127.0.0.1\ninet_protocols = ipv4\n"
            "mynetworks = 127.0.0.0/8\n"
            f"relayhost = [127.0.0.1]:{sink_port}\n"
            "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n"
            f"syslog_name = postfix-bench-{self.port}\n"
            f"{maillog}"
            "biff = no\n")
        (self.conf_dir / "master.cf").write_text(POSTFIX_MASTER_CF.format(port=self.port))

    def _postfix(self, *args, cmd_prefix=None):
        argv = [POSTFIX, "-c", str(self.conf_dir), *args]
        return argv if cmd_prefix is None else cmd_prefix(argv)

    def start(self, timeout=60):
        self.acct = Accounting(f"postfix-bench-{os.getpid()}-{self.port}-{len(Accounting.made)}",
                               self.b.acct_mode)
        argv = self._postfix("start")
        if self.strace_out:
            # strace follows the start command into the detached master and
            # every process master forks; it writes its summary when the
            # master exits (postfix stop).
            argv = [STRACE, "--seccomp-bpf", "-f", "-c", "-e", f"trace={SYNC_CALLS}",
                    "-o", str(self.strace_out)] + argv
        self.out = open(self.dir / "postfix-start.log", "ab")
        self.b.cleanups.append(self.stop)
        self.proc = subprocess.Popen(self.acct.start_cmd(argv), stdin=subprocess.DEVNULL,
                                     stdout=self.out, stderr=self.out, start_new_session=True)
        if not self.strace_out:
            rc = self.proc.wait(timeout)
            if rc != 0:
                raise RuntimeError("postfix start failed: " +
                                   (self.dir / "postfix-start.log").read_text(errors="replace")[-2000:])
        wait_banner(self.port, timeout)
        pidf = self.queue / "pid" / "master.pid"
        self.master_pid = int(pidf.read_text().split()[0])
        self.acct.root_pid = self.master_pid
        return self

    def queue_empty(self):
        for sub in ("incoming", "active", "deferred", "maildrop", "hold"):
            d = self.queue / sub
            if d.exists():
                for _root, _dirs, files in os.walk(d):
                    if files:
                        return False
        return True

    def hwm(self):
        return None

    def stop(self):
        if self.acct is None and self.proc is None:
            return
        with contextlib.suppress(Exception):
            subprocess.run(self._postfix("stop"), capture_output=True, timeout=60)
        # master exits after its children; wait for the whole instance.
        deadline = time.time() + 30
        while time.time() < deadline and self.acct and self.acct.pids():
            if self.acct.dir is None and not pid_alive(self.master_pid):
                break
            time.sleep(0.1)
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                kill_group(self.proc, signal.SIGKILL)
        if self.acct:
            if self.acct.dir is None:
                for p in descendants(getattr(self, "master_pid", -1)):
                    with contextlib.suppress(OSError):
                        os.kill(p, signal.SIGKILL)
            self.acct.remove()
            self.acct = None
        with contextlib.suppress(Exception):
            self.out.close()
        self.proc = None
        with contextlib.suppress(ValueError):
            self.b.cleanups.remove(self.stop)


# ---------------------------------------------------------------- the bench
SCEN_TITLES = {
    "a": "(a) {m:,} msgs x {k}, {s} sessions",
    "b": "(b) {m:,} msgs x {k}, {s} sessions",
    "c": "(c) {m:,} msgs x {k}, {s} sessions",
    "d": "(d) {n:,} idle connections",
    "e": "(e) {n:,} queued msgs, next hop down",
}


def ksize(n):
    return f"{n // 1024} KiB" if n % 1024 == 0 else f"{n} B"


def parse_triple(text):
    m = re.fullmatch(r"(\d+):(\d+):(\d+)", text)
    if not m:
        raise argparse.ArgumentTypeError("expected MESSAGES:SIZE:SESSIONS, e.g. 20000:4096:20")
    return tuple(int(x) for x in m.groups())


class Bench:
    def __init__(self, args):
        self.args = args
        self.build = (ROOT / args.build).resolve()
        self.carrierd = self.build / "carrierd"
        self.carrier = self.build / "carrier"
        self.cleanups = []
        self.results = {}      # (scenario, mta, metric) -> [values]
        self.notes = {}        # scenario -> [text]
        self.relay = None      # carrier relays to the sink?
        self.profiles = {}     # scenario -> perf report lines
        self.max_conns = max(20000, args.d + 1000)
        self.carrier_conf = ""
        if args.carrier_conf:
            self.carrier_conf = "\n" + pathlib.Path(args.carrier_conf).read_text()
        self.acct_mode = detect_cgroup()[0]
        self.work = pathlib.Path(tempfile.mkdtemp(prefix="carrier-bench-", dir=args.workdir))
        self.work.chmod(0o755)
        self.step = 0
        self.steps = 1

    # ---- bookkeeping
    def add(self, scen, mta, metric, value):
        self.results.setdefault((scen, mta, metric), []).append(value)

    def note(self, scen, text):
        self.notes.setdefault(scen, [])
        if text not in self.notes[scen]:
            self.notes[scen].append(text)

    def progress(self, text):
        P.show(f"[{self.step}/{self.steps}] {text}")

    def cleanup(self):
        for fn in list(reversed(self.cleanups)):
            with contextlib.suppress(Exception):
                fn()
        self.cleanups.clear()
        for a in list(Accounting.made):
            with contextlib.suppress(Exception):
                a.remove()
        if not self.args.keep:
            shutil.rmtree(self.work, ignore_errors=True)

    def sink(self):
        s = Sink(self.work)
        self.cleanups.append(s.stop)
        return s

    # ---- checks
    def preflight(self):
        for tool in (SMTP_SOURCE, SMTP_SINK, POSTFIX, STRACE):
            if not os.path.exists(tool):
                raise SystemExit(f"bench: {tool} missing (run scripts/deps bench)")
        for b in (self.carrierd, self.carrier):
            if not b.exists():
                raise SystemExit(f"bench: {b} missing (make B={self.args.build} OPT=-O2)")
        if os.geteuid() != 0:
            raise SystemExit("bench: run as root (Postfix's private instance and carrierd drop "
                             "privileges themselves; scenario (d) raises RLIMIT_NOFILE)")
        # A system Postfix may run; we never touch it, only stay off its ports.
        for pid in all_pids():
            with contextlib.suppress(OSError):
                exe = os.readlink(f"/proc/{pid}/exe")
                if exe.endswith("/postfix/sbin/master"):
                    cmd = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
                    if str(self.work) not in cmd:
                        log(f"note: a Postfix master (pid {pid}: {cmd.strip()}) is running; "
                            "it is left alone, the benchmark uses its own ports")
        # (d) needs a descriptor per connection in the client and in the MTA
        # (which inherits the limit).  Raise the hard limit if allowed (root
        # with CAP_SYS_RESOURCE), else take the soft limit up to the hard one.
        want = max(65536, self.args.d + 4096)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < want:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
            except (ValueError, OSError):
                with contextlib.suppress(ValueError, OSError):
                    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        if "d" in self.args.only and resource.getrlimit(resource.RLIMIT_NOFILE)[0] < self.args.d + 256:
            log(f"note: RLIMIT_NOFILE is {resource.getrlimit(resource.RLIMIT_NOFILE)[0]}, "
                f"too low for {self.args.d:,} connections in (d)")
        self.nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self.version_postfix = subprocess.run(
            [POSTCONF, "-d", "-h", "mail_version"], capture_output=True, text=True,
            env=dict(os.environ, MAIL_CONFIG="/etc/postfix")).stdout.strip() or "?"
        r = subprocess.run([str(self.carrier), "--version"], capture_output=True, text=True)
        self.version_carrier = r.stdout.strip() or "?"
        self.machine()

    def probe_relay(self):
        """Does carrier relay a message to the sink yet?"""
        sink = self.sink()
        c = Carrier(self, self.work / "probe", sink.port)
        try:
            ok, text = c.check_conf()
            if not ok:
                self.relay_why = f"carrierd -n rejects a [route *] via smtp: config: {text[:200]}"
                return False
            c.start()
            acc, _, err = smtp_source(c.port, 1, 512, 1)
            if acc != 1:
                raise RuntimeError(f"carrier did not accept the probe message: {err}")
            deadline = time.time() + self.args.relay_probe_wait
            while time.time() < deadline:
                if sink.count >= 1:
                    return True
                time.sleep(0.1)
            self.relay_why = (f"a message accepted by carrier did not reach the sink within "
                              f"{self.args.relay_probe_wait:.0f}s (outbound relay not there yet)")
            return False
        finally:
            c.stop()
            sink.stop()

    # ---- the disk's ceiling
    def fsync_ceiling(self):
        seconds = self.args.ceiling_seconds
        out = {}
        for batch in (1, 32):
            path = self.work / f"fsync-ceiling-{batch}"
            block = os.urandom(4096) * batch
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            n = 0
            try:
                t0 = time.time()
                while time.time() - t0 < seconds:
                    os.write(fd, block)
                    os.fdatasync(fd)
                    n += 1
                    if n % 256 == 0:
                        os.ftruncate(fd, 0)
                        os.lseek(fd, 0, os.SEEK_SET)
                        os.fsync(fd)
                el = time.time() - t0
            finally:
                os.close(fd)
                path.unlink()
            out[batch] = (n / el, n * batch / el)
        return out

    # ---- one relay run
    def relay_run(self, scen, mta_name, msgs, size, sessions, fsync_run=False, run_no=1):
        d = self.work / f"{scen}-{mta_name}-{run_no}{'-strace' if fsync_run else ''}"
        sink = self.sink()
        strace_out = (d / "strace.txt") if fsync_run else None
        if mta_name == "carrier":
            mta = Carrier(self, d, sink.port, strace_out=strace_out)
        else:
            mta = Postfix(self, d, sink.port, strace_out=strace_out)
        relay = True if mta_name == "postfix" else self.relay
        what = "fsync count (strace)" if fsync_run else f"run {run_no}/{self.args.runs}"
        try:
            mta.start()
            if strace_out:
                time.sleep(0.3)
            acct = mta.acct
            peak = {"rss": acct.rss(), "pss": acct.pss()}
            stop_sampler = threading.Event()

            def sampler():
                while not stop_sampler.wait(0.25):
                    with contextlib.suppress(Exception):
                        peak["rss"] = max(peak["rss"], acct.rss())
                        peak["pss"] = max(peak["pss"], acct.pss())

            th = threading.Thread(target=sampler, daemon=True)
            th.start()
            cpu0 = acct.cpu()
            t0 = time.time()

            def tick(n):
                self.progress(f"{scen} {mta_name} {what}: {n:,}/{msgs:,} accepted, "
                              f"{sink.count:,} at sink, {time.time() - t0:.0f}s")

            accepted, src_secs, err = smtp_source(mta.port, msgs, size, sessions, on_tick=tick)
            if err:
                self.note(scen, f"{mta_name}: smtp-source stopped early: {err.splitlines()[-1][:160]}")
            t_end = None
            if relay:
                last, last_change = -1, time.time()
                while True:
                    n = sink.count
                    if n >= accepted:
                        t_end = time.time()
                        break
                    if n != last:
                        last, last_change = n, time.time()
                    if time.time() - last_change > self.args.relay_stall:
                        self.note(scen, f"{mta_name}: sink stalled at {n:,} of {accepted:,} "
                                        f"for {self.args.relay_stall:.0f}s")
                        break
                    self.progress(f"{scen} {mta_name} {what}: {accepted:,} accepted, "
                                  f"{n:,} at sink, {time.time() - t0:.0f}s")
                    time.sleep(0.1)
            else:
                time.sleep(0.5)   # the last commits' CPU
            cpu1 = acct.cpu()
            stop_sampler.set()
            th.join(2)
            hwm = mta.hwm()
            rss_peak = max(peak["rss"], hwm or 0)
            if fsync_run:
                if mta_name == "postfix":
                    # let the queue manager finish removing queue files
                    for _ in range(50):
                        if mta.queue_empty():
                            break
                        time.sleep(0.1)
                mta.stop()
                calls = parse_strace(strace_out)
                self.add(scen, mta_name, "fsyncs_per_msg", calls / max(accepted, 1))
                if not relay:
                    self.note(scen, "carrier fsyncs/msg: accept only (no relay yet), "
                                    "delivery-side commits not included")
                return
            self.add(scen, mta_name, "accept_rate", accepted / src_secs)
            if relay and t_end is not None:
                self.add(scen, mta_name, "relay_rate", accepted / (t_end - t0))
            cpu_u, cpu_s = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
            self.add(scen, mta_name, "cpu_per_1k", (cpu_u + cpu_s) / max(accepted, 1) * 1000)
            if cpu_u + cpu_s > 0 and self.acct_mode != "proc":
                self.add(scen, mta_name, "cpu_kernel_pct", 100 * cpu_s / (cpu_u + cpu_s))
            self.add(scen, mta_name, "rss_peak_mib", mib(rss_peak))
            self.add(scen, mta_name, "pss_peak_mib", mib(peak["pss"]))
            if relay:
                time.sleep(0.3)
                self.add(scen, mta_name, "lost", max(accepted - sink.count, 0))
            self.add(scen, mta_name, "accepted", accepted)
        finally:
            mta.stop()
            sink.stop()
            if not self.args.keep:
                shutil.rmtree(d, ignore_errors=True)

    # ---- (d) idle connections
    def idle_run(self, mta_name, n, run_no):
        d = self.work / f"d-{mta_name}-{run_no}"
        sink = self.sink()
        mta = (Carrier if mta_name == "carrier" else Postfix)(self, d, sink.port)
        socks = []
        sel = selectors.DefaultSelector()
        try:
            mta.start()
            time.sleep(0.5)
            rss0, pss0 = mta.acct.rss(), mta.acct.pss()
            banners = connected = failed = other = closed = 0
            bufs = {}
            t0 = time.time()
            deadline = t0 + self.args.idle_wait
            opened = 0
            pending = 0
            while time.time() < deadline:
                # open in batches so the listen backlog is not the only limit
                while opened < n and pending < 512:
                    s = socket.socket()
                    s.setblocking(False)
                    err = s.connect_ex(("127.0.0.1", mta.port))
                    if err not in (0, errno.EINPROGRESS):
                        failed += 1
                        s.close()
                        opened += 1
                        continue
                    socks.append(s)
                    bufs[s] = b""
                    sel.register(s, selectors.EVENT_WRITE | selectors.EVENT_READ, "c")
                    opened += 1
                    pending += 1
                for key, ev in sel.select(0.05):
                    s = key.fileobj
                    if key.data == "c":
                        e = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        pending -= 1
                        if e:
                            failed += 1
                            sel.unregister(s)
                            continue
                        connected += 1
                        sel.modify(s, selectors.EVENT_READ, "r")
                        if not ev & selectors.EVENT_READ:
                            continue
                    try:
                        chunk = s.recv(512)
                    except BlockingIOError:
                        continue
                    except OSError:
                        chunk = b""
                    if not chunk:
                        closed += 1
                        sel.unregister(s)
                        continue
                    bufs[s] += chunk
                    if b"\n" in bufs[s]:
                        if bufs[s].startswith(b"220"):
                            banners += 1
                        else:
                            other += 1
                            if other == 1:
                                self.note("d", f"{mta_name}: first non-220 greeting: "
                                               f"{bufs[s][:100].decode(errors='replace').strip()}")
                        sel.unregister(s)
                self.progress(f"d {mta_name} run {run_no}: {opened:,} opened, {connected:,} "
                              f"connected, {banners:,} banners, {time.time() - t0:.0f}s")
                if banners + failed + other + closed >= n:
                    break
            time.sleep(1.0)
            rss1, pss1 = mta.acct.rss(), mta.acct.pss()
            self.add("d", mta_name, "banners", banners)
            self.add("d", mta_name, "connected", connected)
            if failed or other or closed or banners < n:
                self.note("d", f"{mta_name} run {run_no}: {n:,} tried, {connected:,} connected, "
                               f"{banners:,} banners, {other:,} other greetings, {closed:,} closed "
                               f"without a line, {failed:,} connect errors within "
                               f"{self.args.idle_wait:g}s")
            if banners:
                self.add("d", mta_name, "rss_per_conn_kib", (rss1 - rss0) / banners / 1024)
                self.add("d", mta_name, "pss_per_conn_kib", (pss1 - pss0) / banners / 1024)
            self.add("d", mta_name, "rss_total_mib", mib(rss1))
        finally:
            for s in socks:
                with contextlib.suppress(Exception):
                    s.close()
            sel.close()
            mta.stop()
            sink.stop()
            if not self.args.keep:
                shutil.rmtree(d, ignore_errors=True)

    # ---- (e) a big queue
    def big_queue(self, n):
        d = self.work / "e-carrier"
        dead = free_port()          # nothing listens here: the next hop is down
        c = Carrier(self, d, dead, map_size="32G")
        try:
            c.start()
            t0 = time.time()
            per = max(n // 50, 1)
            accepted, secs, err = smtp_source(
                c.port, n, self.args.e_size, 50, reuse=True, timeout=7200,
                on_tick=lambda k: self.progress(
                    f"e carrier: filling the spool {k:,}/{n:,}, {time.time() - t0:.0f}s"))
            self.add("e", "carrier", "fill_rate", accepted / secs)
            self.add("e", "carrier", "queued", accepted)
            if err:
                self.note("e", f"fill stopped early: {err.splitlines()[-1][:160]}")
            c.stop()
            self.progress("e carrier: restarting with the full spool")
            c.start(timeout=600)
            self.add("e", "carrier", "ready_s", c.ready_seconds)
            # The delivery runner may load its index of the queue after
            # CORE_READY; time that too when the event exists.
            idx = c.wait_log_event("DELIVERY_INDEX_READY", timeout=60)
            if idx is not None:
                self.add("e", "carrier", "index_ready_s", idx)
            time.sleep(2)
            st = proc_status(c.mta_pid)
            self.add("e", "carrier", "rss_mib", mib(st.get("VmRSS")))
            t1 = time.time()
            r = subprocess.run([str(self.carrier), "queue", "summary", "-c", str(c.conf)],
                               capture_output=True, text=True, timeout=600)
            dt = time.time() - t1
            if r.returncode == 0:
                self.add("e", "carrier", "summary_s", dt)
                if "only the first" in r.stderr:
                    # The daemon caps a summary's walk; a capped answer is
                    # not the full summary the target asks for.
                    self.add("e", "carrier", "summary_partial", 1)
                    self.note("e", "`carrier queue summary` answered a capped walk: "
                                   + r.stderr.strip().splitlines()[-1][:120])
            else:
                first = ((r.stderr or r.stdout).strip().splitlines() or [""])[0]
                self.note("e", "`carrier queue summary` not available yet "
                               f"(exit {r.returncode}: {first[:100]})")
            del per
        finally:
            c.stop()
            if not self.args.keep:
                shutil.rmtree(d, ignore_errors=True)

    # ---- the whole run
    def run(self):
        a = self.args
        mtas = [m for m in ("carrier", "postfix") if m in a.mta]
        plan = []
        for s in "abc":
            if s in a.only:
                m, size, sess = getattr(a, s)
                for mta in mtas:
                    for r in range(1, a.runs + 1):
                        plan.append(("relay", s, mta, (m, size, sess, False, r)))
                    if not a.no_fsync:
                        fm = min(m, a.fsync_msgs)
                        plan.append(("relay", s, mta, (fm, size, sess, True, 0)))
        if "d" in a.only:
            for mta in mtas:
                for r in range(1, a.runs + 1):
                    plan.append(("idle", "d", mta, (a.d, r)))
        if "e" in a.only and "carrier" in mtas:
            plan.append(("big", "e", "carrier", (a.e,)))
        self.steps = len(plan) + 2
        self.step = 1
        self.progress("fsync ceiling of the spool's filesystem")
        self.ceiling = self.fsync_ceiling()
        log(f"fsync ceiling: {self.ceiling[1][0]:,.0f} fdatasyncs/s at 1 msg each; "
            f"{self.ceiling[32][1]:,.0f} msgs/s at 32 msgs per fdatasync")
        self.step = 2
        if "carrier" in mtas and any(p[1] in "abce" for p in plan):
            self.progress("does carrier relay yet? (one message to the sink)")
            self.relay_why = ""
            self.relay = self.probe_relay()
            log("carrier relays to the sink: " + ("yes" if self.relay else f"NO - {self.relay_why}"))
            if not self.relay:
                for s in [x for x in "abc" if x in self.args.only]:
                    self.note(s, "carrier: relay not available yet - accept rate, CPU and RSS "
                                 "measure acceptance into carrier's spool only; relay rate, "
                                 "lost and the relay ratios are pending")
        for kind, scen, mta, params in plan:
            self.step += 1
            if kind == "relay":
                m, size, sess, fs, r = params
                self.relay_run(scen, mta, m, size, sess, fsync_run=fs, run_no=r)
            elif kind == "idle":
                self.idle_run(mta, *params)
            elif kind == "big":
                if not self.relay and not a.force_e:
                    self.note("e", "needs relay: skipped until carrier relays "
                                   "(--force-e measures the restart with mail queued for no route)")
                    continue
                self.big_queue(*params)
        if not a.no_profile and "carrier" in mtas and shutil.which("perf"):
            for scen in self.short_scenarios():
                self.progress(f"{scen} carrier: perf profile of the hot path")
                with contextlib.suppress(Exception):
                    self.profile_run(scen, *getattr(a, scen))
        self.step = self.steps
        self.progress("fsync ceiling again (the disk is shared; it varies)")
        self.ceiling_end = self.fsync_ceiling()
        P.line("")

    # ---- targets (issue 6) and profiles where carrier falls short
    def targets(self):
        """[(target, measured, verdict)]"""
        a, out = self.args, []

        def med(scen, mta, metric):
            v = self.summary(scen, mta, metric)
            return v[0] if v else None

        for scen, want in (("a", 3.0), ("b", 3.0), ("c", 2.0)):
            if scen not in a.only:
                continue
            c, p = med(scen, "carrier", "relay_rate"), med(scen, "postfix", "relay_rate")
            if c and p:
                out.append((f"({scen}) relay rate >= {want:g}x Postfix", f"{c / p:.2f}x",
                            "met" if c / p >= want else "SHORT"))
            else:
                ca, pa = med(scen, "carrier", "accept_rate"), med(scen, "postfix", "accept_rate")
                acc = f"accept rate {ca / pa:.2f}x" if ca and pa else "n/a"
                out.append((f"({scen}) relay rate >= {want:g}x Postfix", acc,
                            "pending relay" + ("" if not (ca and pa) else
                                               (" (accept: met)" if ca / pa >= want
                                                else " (accept: SHORT)"))))
        for scen in "abc":
            if scen not in a.only:
                continue
            c, p = med(scen, "carrier", "cpu_per_1k"), med(scen, "postfix", "cpu_per_1k")
            if c is not None and p:
                verdict = "met" if c / p <= 1 / 3 else "SHORT"
                if not self.relay:
                    verdict += " (carrier: accept only)"
                out.append((f"({scen}) CPU per 1,000 msgs <= 1/3 of Postfix", f"{c / p:.2f}x", verdict))
        if "b" in a.only:
            f = med("b", "carrier", "fsyncs_per_msg")
            if f is not None:
                verdict = "met" if f <= 0.2 else "SHORT"
                if not self.relay:
                    verdict += " (accept only)"
                out.append(("(b) fsyncs per message <= 0.2", f"{f:.3f}", verdict))
        for scen in "abc":
            if scen not in a.only:
                continue
            vals = self.results.get((scen, "carrier", "lost"))
            pv = self.results.get((scen, "postfix", "lost"))
            out.append((f"({scen}) lost messages = 0",
                        f"carrier {max(vals) if vals else 'n/a'}, Postfix {max(pv) if pv else 'n/a'}",
                        ("met" if max(vals) == 0 else "FAILED") if vals else "pending relay"))
        if "d" in a.only:
            b = med("d", "carrier", "banners")
            r = med("d", "carrier", "rss_per_conn_kib")
            if b is not None:
                out.append((f"(d) {a.d:,} idle connections held", f"{b:,.0f}",
                            "met" if b >= a.d else "SHORT"))
            if r is not None:
                out.append(("(d) <= 10 KiB per connection", f"{r:.1f} KiB",
                            "met" if r <= 10 else "SHORT"))
        if "e" in a.only:
            rd, sm = med("e", "carrier", "ready_s"), med("e", "carrier", "summary_s")
            q = med("e", "carrier", "queued")
            big = q is not None and q >= 1000000
            out.append(("(e) 1M-message spool ready in <= 10 s",
                        "n/a" if rd is None else f"{rd:.2f} s ({q:,.0f} msgs)",
                        "pending relay" if rd is None else
                        (("met" if rd <= 10 else "SHORT") + ("" if big else " (smaller spool)"))))
            partial = med("e", "carrier", "summary_partial")
            out.append(("(e) `carrier queue summary` in <= 1 s",
                        "n/a" if sm is None else f"{sm:.2f} s",
                        ("pending relay" if rd is None else "pending command") if sm is None else
                        "NOT MEASURED (capped walk, partial summary)" if partial else
                        (("met" if sm <= 1 else "SHORT") + ("" if big else " (smaller spool)"))))
        return out

    def short_scenarios(self):
        out = []
        for t, _, verdict in self.targets():
            m = re.match(r"\(([abc])\)", t)
            if m and "SHORT" in verdict and "fsyncs" not in t and m.group(1) not in out:
                out.append(m.group(1))
        return out

    def profile_run(self, scen, msgs, size, sessions):
        """One more carrier run of the scenario under perf record; keeps the
        top of the flat profile (self time by symbol) for the report."""
        d = self.work / f"{scen}-carrier-perf"
        sink = self.sink()
        c = Carrier(self, d, sink.port)
        perf = None
        try:
            c.start()
            data = d / "perf.data"
            perf = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-o", str(data),
                                     "-p", str(c.mta_pid)], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
            self.cleanups.append(lambda: kill_group(perf, signal.SIGKILL))
            time.sleep(0.5)
            smtp_source(c.port, msgs, size, sessions, on_tick=lambda n: self.progress(
                f"{scen} carrier: perf profile, {n:,}/{msgs:,} accepted"))
            if self.relay:
                deadline = time.time() + self.args.relay_stall
                while sink.count < msgs and time.time() < deadline:
                    time.sleep(0.1)
            kill_group(perf, signal.SIGINT, timeout=60)
            r = subprocess.run(["perf", "report", "-i", str(data), "--stdio", "--no-children",
                                "--sort", "dso,sym", "-g", "none", "--percent-limit", "1.5"],
                               capture_output=True, text=True, timeout=300)
            lines = [l.rstrip() for l in r.stdout.splitlines()
                     if l.strip() and not l.startswith("#")][:25]
            self.profiles[scen] = lines
        finally:
            kill_group(perf, signal.SIGKILL)
            c.stop()
            sink.stop()
            if not self.args.keep:
                shutil.rmtree(d, ignore_errors=True)

    # ---- report
    def summary(self, scen, mta, metric):
        vals = self.results.get((scen, mta, metric))
        if not vals:
            return None
        return statistics.median(vals), min(vals), max(vals), len(vals)

    def cell(self, scen, mta, metric, digits=None):
        s = self.summary(scen, mta, metric)
        if s is None:
            return "n/a"
        med, lo, hi, n = s
        if n == 1 or lo == hi:
            return fmt_num(med, digits)
        return f"{fmt_num(med, digits)} [{fmt_num(lo, digits)}-{fmt_num(hi, digits)}]"

    def ratio(self, scen, metric, higher_better=True):
        if metric in ("cpu_kernel_pct", "lost"):
            return "-"
        c, p = self.summary(scen, "carrier", metric), self.summary(scen, "postfix", metric)
        if not c or not p or not p[0]:
            return "n/a"
        return f"{c[0] / p[0]:.2f}x"

    def rows(self):
        a = self.args
        out = []
        metrics = [
            ("accept_rate", "accept rate (msgs/s)", None),
            ("relay_rate", "relay rate, end to end (msgs/s)", None),
            ("cpu_per_1k", "CPU s per 1,000 msgs", 2),
            ("cpu_kernel_pct", "  of which kernel (%)", 0),
            ("rss_peak_mib", "peak RSS (MiB, sum of processes)", 1),
            ("pss_peak_mib", "peak PSS (MiB, sum of processes)", 1),
            ("fsyncs_per_msg", "fsyncs per message", 3),
            ("lost", "messages lost", 0),
        ]
        for s in "abc":
            if s not in a.only:
                continue
            m, size, sess = getattr(a, s)
            title = SCEN_TITLES[s].format(m=m, k=ksize(size), s=sess)
            for key, label, dg in metrics:
                out.append((title, label, self.cell(s, "carrier", key, dg),
                            self.cell(s, "postfix", key, dg), self.ratio(s, key)))
                title = ""
        if "d" in a.only:
            title = SCEN_TITLES["d"].format(n=a.d)
            for key, label, dg in [("banners", "connections given a banner", 0),
                                   ("rss_per_conn_kib", "RSS per connection (KiB)", 1),
                                   ("pss_per_conn_kib", "PSS per connection (KiB)", 1),
                                   ("rss_total_mib", "RSS with them open (MiB)", 1)]:
                out.append((title, label, self.cell("d", "carrier", key, dg),
                            self.cell("d", "postfix", key, dg), self.ratio("d", key)))
                title = ""
        if "e" in a.only:
            title = SCEN_TITLES["e"].format(n=a.e)
            for key, label, dg in [("fill_rate", "spool fill rate (msgs/s, -d)", None),
                                   ("ready_s", "restart to ready (s)", 2),
                                   ("index_ready_s", "restart to DELIVERY_INDEX_READY (s)", 2),
                                   ("rss_mib", "RSS after ready (MiB)", 1),
                                   ("summary_s", "`carrier queue summary` (s)", 2)]:
                out.append((title, label, self.cell("e", "carrier", key, dg), "-", "-"))
                title = ""
        return out

    def table_text(self):
        hdr = ("scenario", "figure", "carrier", "postfix", "carrier/postfix")
        rows = [hdr] + self.rows()
        w = [max(len(r[i]) for r in rows) for i in range(5)]
        lines = []
        for i, r in enumerate(rows):
            lines.append("  ".join(r[j].ljust(w[j]) if j < 2 else r[j].rjust(w[j])
                                   for j in range(5)))
            if i == 0:
                lines.append("  ".join("-" * w[j] for j in range(5)))
        return "\n".join(lines)

    def notes_text(self, md=False):
        out = []
        for s in sorted(self.notes):
            for n in self.notes[s]:
                out.append(f"{'- ' if md else '  '}({s}) {n}")
        return out

    def machine(self):
        if getattr(self, "_machine", None):
            return self._machine
        cpu = "?"
        with contextlib.suppress(OSError):
            for line in open("/proc/cpuinfo"):
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        fs = subprocess.run(["df", "-T", str(self.work)], capture_output=True,
                            text=True).stdout.splitlines()
        fstype = fs[1].split()[1] if len(fs) > 1 else "?"
        dev = fs[1].split()[0] if len(fs) > 1 else "?"
        mem = 0
        with contextlib.suppress(OSError):
            for line in open("/proc/meminfo"):
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) // 1024
        git = self.args.source or subprocess.run(
            ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
            capture_output=True, text=True).stdout.strip() or "?"
        self._machine = {"cpu": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
                         "fs": f"{fstype} on {dev} ({self.work.parent})", "mem": f"{mem:,} MiB",
                         "git": git}
        return self._machine

    def write_report(self, started, elapsed):
        a = self.args
        m = self.machine()
        path = pathlib.Path(a.report)
        if not path.is_absolute():
            path = ROOT / path
        path.parent.mkdir(parents=True, exist_ok=True)
        L = []
        L.append("# carrier vs Postfix: benchmark results\n")
        L.append(f"Generated by `bench/bench.py{' --quick' if a.quick else ''}` (what `make bench` runs) "
                 f"on {started:%Y-%m-%d %H:%M} UTC, {elapsed / 60:.1f} min.\n")
        L.append("| machine | |\n|---|---|")
        L.append(f"| CPU | {m['cpu']}, {m['cores']} cores |")
        L.append(f"| memory | {m['mem']} |")
        L.append(f"| kernel | {m['kernel']} |")
        L.append(f"| spool filesystem | {m['fs']} |")
        L.append(f"| carrier | {self.version_carrier}, {self.build.relative_to(ROOT) if self.build.is_relative_to(ROOT) else self.build} (-O2), "
                 f"source tree {m['git']}"
                 f"{' (-dirty: built with uncommitted changes)' if m['git'].endswith('-dirty') else ''} |")
        if self.carrier_conf.strip():
            extra = "; ".join(l.strip() for l in self.carrier_conf.splitlines() if l.strip())
            L.append(f"| carrier settings added | `{extra}` (--carrier-conf) |")
        L.append(f"| Postfix | {self.version_postfix}, private instance, shipped durability |")
        L.append(f"| load / sink | Postfix smtp-source / smtp-sink on 127.0.0.1 |")
        L.append(f"| CPU accounting | {self.acct_mode} |")
        la0, la1 = getattr(self, "load_start", None), os.getloadavg()
        L.append(f"| load average (1 min) | {la0[0] if la0 else 0:.1f} at start, {la1[0]:.1f} at end "
                 "(other work on the machine shares its 2 cores and disk) |")
        L.append(f"| runs per scenario | {a.runs} (median [min-max]) |\n")
        for when, attr in (("before", "ceiling"), ("after", "ceiling_end")):
            c = getattr(self, attr, None)
            if c:
                L.append(f"**Disk fsync ceiling, {when} the MTAs** (4 KiB write + fdatasync, "
                         f"{a.ceiling_seconds:g} s each, in the spool's filesystem): "
                         f"{c[1][0]:,.0f} fdatasyncs/s = {c[1][1]:,.0f} msgs/s at one message "
                         f"per fdatasync; {c[32][1]:,.0f} msgs/s at 32 messages per fdatasync.\n")
        L.append(f"**carrier relays yet:** {'yes' if self.relay else 'no - ' + getattr(self, 'relay_why', '')}\n")
        L.append("| scenario | figure | carrier | Postfix | carrier/Postfix |")
        L.append("|---|---|--:|--:|--:|")
        for r in self.rows():
            L.append("| " + " | ".join(x.replace("|", "/") for x in r) + " |")
        L.append("")
        tg = self.targets()
        if tg:
            L.append("## Targets (issue 6)\n")
            L.append("| target | measured | verdict |\n|---|--:|---|")
            for t in tg:
                L.append(f"| {t[0]} | {t[1]} | {t[2]} |")
            L.append("")
        for scen, lines in sorted(self.profiles.items()):
            L.append(f"## Where carrier's time goes in ({scen})\n")
            L.append(f"`perf record -F 999 -g -p <carrierd>` over one run of ({scen}); self time by "
                     "shared object and symbol (>= 1.5%):\n")
            L.append("```")
            L.extend(lines)
            L.append("```\n")
        notes = self.notes_text(md=True)
        if notes:
            L.append("Notes:\n")
            L.extend(notes)
            L.append("")
        L.append(METHOD_MD.format(acct=self.acct_mode, fsync_msgs=a.fsync_msgs,
                                  idle_wait=a.idle_wait, nofile=self.nofile))
        path.write_text("\n".join(L) + "\n")
        raw = {"date": started.isoformat(), "machine": m, "relay": bool(self.relay),
               "args": {k: v for k, v in vars(a).items() if isinstance(v, (int, float, str, list, tuple, bool))},
               "ceiling": {"before": getattr(self, "ceiling", None), "after": getattr(self, "ceiling_end", None)},
               "results": [{"scenario": k[0], "mta": k[1], "metric": k[2], "values": v}
                           for k, v in sorted(self.results.items())],
               "targets": self.targets(), "notes": self.notes, "profiles": self.profiles}
        path.with_suffix(".json").write_text(json.dumps(raw, indent=1, default=str) + "\n")
        return path


def parse_strace(path):
    """Sum of calls in strace -c output."""
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for line in pathlib.Path(path).read_text().splitlines():
            parts = line.split()
            if len(parts) >= 5 and parts[-1] in SYNC_CALLS.split(","):
                with contextlib.suppress(ValueError):
                    total += int(parts[3])
    return total


METHOD_MD = """\
## How the figures are taken

- Each run starts a fresh MTA with an empty queue and a fresh sink
  (`smtp-sink -c`, which counts messages), then runs `smtp-source -s SESSIONS
  -m MESSAGES -l SIZE` (a new connection per message, smtp-source's default).
- **accept rate**: messages / wall time of smtp-source. **relay rate**:
  messages / time from smtp-source's start until the sink holds every accepted
  message. **lost**: accepted - counted by the sink, after the sink stopped
  moving.
- **CPU**: user + system seconds of every process of the MTA, over the window
  smtp-source start .. sink complete, per 1,000 messages. Accounting: `{acct}`
  (each MTA instance is started inside its own cgroup, so processes that exit
  during the run, like Postfix's smtpd, cleanup and smtp, are included; with
  `proc`, the /proc times of the MTA's process tree incl. reaped children).
- **peak RSS**: the largest sum of VmRSS over the MTA's processes, sampled
  every 0.25 s (for carrier also VmHWM). For Postfix shared pages count once
  per process, which overstates its memory, hence the PSS row. carrier's
  figure includes the pages of its LMDB map it touched (the queue itself:
  bodies up to `inline_max` are stored inline), so it grows with the queue.
- **fsyncs per message**: a separate, smaller run (at most {fsync_msgs:,}
  messages) of each MTA under `strace --seccomp-bpf -f -c -e
  trace=fsync,fdatasync,msync,sync_file_range,syncfs,sync`; calls / accepted
  messages, from start to the sink holding everything. strace slows the MTA,
  so these runs never provide timings.
- **(d)**: one client opens the connections non-blocking (RLIMIT_NOFILE
  raised to {nofile:,}) and counts 220 banners within {idle_wait:g} s; RSS per
  connection = (RSS with them open - RSS before) / banners. carrier's
  `smtp.max_connections` and `max_connections_per_ip` are raised for this;
  Postfix keeps its default process limit (100 smtpd), which is the point of
  the comparison: the rest wait in the listen queue without a banner.
- **(e)**: carrier only, next hop down (a route to a closed port); the spool is
  filled over 50 sessions that reuse their connection (`smtp-source -d`),
  then carrierd is restarted: exec to CORE_READY, RSS 2 s later, and the time
  of `carrier queue summary`. Needs relay, else skipped.
- Postfix: a private instance under a temporary directory (own main.cf and
  master.cf, queue_directory, data_directory; `postfix -c DIR start`),
  `relayhost = [127.0.0.1]:SINK`, `mynetworks = 127.0.0.0/8`, `inet_interfaces
  = 127.0.0.1`, no chroot, logging to syslog (no syslog daemon here, so its
  logging costs little), every durability setting as shipped. The system's
  Postfix is never configured or started.
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build/bench", help="carrier build directory")
    ap.add_argument("-a", type=parse_triple, default=(20000, 4096, 20), metavar="M:SIZE:S",
                    help="scenario (a): messages:size:sessions (20000:4096:20)")
    ap.add_argument("-b", type=parse_triple, default=(20000, 4096, 100), metavar="M:SIZE:S",
                    help="scenario (b) (20000:4096:100)")
    ap.add_argument("-c", type=parse_triple, default=(5000, 102400, 20), metavar="M:SIZE:S",
                    help="scenario (c) (5000:102400:20)")
    ap.add_argument("-d", type=int, default=10000, metavar="N",
                    help="scenario (d): idle connections (10000)")
    ap.add_argument("-e", type=int, default=1000000, metavar="N",
                    help="scenario (e): queued messages (1000000)")
    ap.add_argument("--e-size", type=int, default=1024, help="message size for (e) (1024)")
    ap.add_argument("--only", default="abcde", help="scenarios to run, e.g. 'ab' (abcde)")
    ap.add_argument("--mta", default="carrier,postfix", help="carrier,postfix")
    ap.add_argument("--runs", type=int, default=3, help="runs per scenario (3)")
    ap.add_argument("--quick", action="store_true",
                    help="a small smoke run: 1 run, a tenth of the messages, 1000 idle "
                         "connections, (e) with 20000 messages")
    ap.add_argument("--no-fsync", action="store_true", help="skip the strace fsync runs")
    ap.add_argument("--no-profile", action="store_true",
                    help="skip the perf profile of scenarios where carrier falls short")
    ap.add_argument("--fsync-msgs", type=int, default=5000,
                    help="messages in each strace run (5000)")
    ap.add_argument("--ceiling-seconds", type=float, default=3.0)
    ap.add_argument("--idle-wait", type=float, default=15.0,
                    help="(d): seconds to wait for banners (15)")
    ap.add_argument("--relay-stall", type=float, default=60.0,
                    help="give up when the sink count stops moving this long (60)")
    ap.add_argument("--relay-probe-wait", type=float, default=15.0)
    ap.add_argument("--force-e", action="store_true",
                    help="run (e) even when carrier does not relay yet")
    ap.add_argument("--postfix-maillog", action="store_true",
                    help="Postfix logs to a file in its run directory (debugging)")
    ap.add_argument("--workdir", default=None, help="parent of the temporary directory")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--carrier-conf", default=None, metavar="FILE",
                    help="append FILE to the configuration of every carrierd the bench starts "
                         "(experiments: try a setting against the shipped defaults)")
    ap.add_argument("--report", default="bench/results/latest.md")
    ap.add_argument("--source", default=None,
                    help="what --build was built from, for the report (default: git describe "
                         "--dirty of this tree)")
    args = ap.parse_args()
    if args.quick:
        q = lambda t: (max(t[0] // 10, 100), t[1], t[2])
        if args.a == (20000, 4096, 20):
            args.a = q(args.a)
        if args.b == (20000, 4096, 100):
            args.b = q(args.b)
        if args.c == (5000, 102400, 20):
            args.c = q(args.c)
        if args.d == 10000:
            args.d = 1000
        if args.e == 1000000:
            args.e = 20000
        args.runs = 1 if args.runs == 3 else args.runs
        args.fsync_msgs = min(args.fsync_msgs, 500)
        args.no_profile = True
        args.ceiling_seconds = min(args.ceiling_seconds, 1.0)
        args.idle_wait = min(args.idle_wait, 5.0)
        args.relay_stall = min(args.relay_stall, 20.0)
        args.relay_probe_wait = min(args.relay_probe_wait, 10.0)
    args.mta = [m.strip() for m in args.mta.split(",")]

    bench = Bench(args)

    def on_signal(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Abort(signal.Signals(signum).name)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.time()
    rc = 0
    try:
        bench.load_start = os.getloadavg()
        bench.preflight()
        log(f"carrier bench: {bench.version_carrier} vs Postfix {bench.version_postfix}; "
            f"work dir {bench.work}; CPU accounting: {bench.acct_mode}; runs: {args.runs}")
        bench.run()
    except Abort as e:
        log(f"\nbench: interrupted ({e}); stopping everything")
        rc = 130
    except SystemExit:
        raise
    except Exception as e:  # report what we have
        import traceback
        log("bench: failed: " + "".join(traceback.format_exception(e))[-3000:])
        rc = 1
    finally:
        bench.cleanup()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
    if bench.results or hasattr(bench, "ceiling"):
        print()
        print(bench.table_text())
        for n in bench.notes_text():
            print(n)
        tg = bench.targets()
        if tg:
            print("\ntargets (issue 6):")
            w = max(len(t[0]) for t in tg)
            for t in tg:
                print(f"  {t[0].ljust(w)}  {t[1]:>14}  {t[2]}")
        if rc == 0:
            path = bench.write_report(started, time.time() - t0)
            print(f"\nreport: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
