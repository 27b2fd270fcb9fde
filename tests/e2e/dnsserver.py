"""A real DNS server for the tests: unbound on 127.0.0.1 and a free port.

    with DNSServer(records, timeout_zones=["slow.example."]) as dns:
        conf = f"[dns]\\nforwarder = {dns.forwarder}\\n"

`records` are unbound local-data strings ("a.example. 300 IN MX 10 mx1.a.example.",
"nomail.example. MX 0 .", "alias.example. CNAME real.example.") served from static
local zones (`zones`, default "example.": every name in them that has no
record answers NXDOMAIN or NODATA, authoritatively).  Each name in
`timeout_zones` is delegated to a "black hole": a UDP socket on loopback
that reads nothing, so queries for it never get an answer (a carrier
resolver times out; unbound itself answers SERVFAIL after its own retries).
Every other name, the root included, goes to the same black hole, so the
server never contacts anything off this machine.

The fixture `make_dns_server` (import it into a test module:
`from dnsserver import make_dns_server`) starts servers and stops them at
the end of the test.
"""
import os
import pathlib
import shutil
import socket
import struct
import subprocess
import tempfile
import time

import pytest

UNBOUND = shutil.which("unbound") or "/usr/sbin/unbound"


def _free_udp_tcp_port():
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(50):
        with socket.socket() as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port for the test DNS server")


def dns_query(port, name, qtype=1, timeout=1.0):
    """Sends one query (RD set) and returns (rcode, answer count) or None."""
    qid = int.from_bytes(os.urandom(2), "big")
    q = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in name.rstrip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    q += b"\0" + struct.pack(">HH", qtype, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(q, ("127.0.0.1", port))
        try:
            data, _ = s.recvfrom(4096)
        except socket.timeout:
            return None
    if len(data) < 12:
        return None
    _, flags, _, ancount, _, _ = struct.unpack(">HHHHHH", data[:12])
    return flags & 0xF, ancount


class DNSServer:
    def __init__(self, records, zones=("example.",), timeout_zones=(), directory=None):
        self.records = list(records)
        self.zones = list(zones)
        self.timeout_zones = list(timeout_zones)
        self.own_dir = directory is None
        self.dir = pathlib.Path(directory or tempfile.mkdtemp(prefix="carrier-dns-"))
        self.dir.chmod(0o755)
        self.port = None
        self.proc = None
        self.blackhole = None

    @property
    def forwarder(self):
        """The value for carrier's [dns] forwarder."""
        return f"127.0.0.1@{self.port}"

    def _config(self):
        bh = self.blackhole.getsockname()[1]
        lines = [
            "server:",
            "  interface: 127.0.0.1",
            f"  port: {self.port}",
            "  do-ip6: no",
            "  do-daemonize: no",
            '  username: ""',
            '  chroot: ""',
            f'  directory: "{self.dir}"',
            f'  pidfile: "{self.dir / "unbound.pid"}"',
            "  use-syslog: no",
            f'  logfile: "{self.dir / "unbound.log"}"',
            "  verbosity: 1",
            "  num-threads: 1",
            "  so-reuseport: no",
            "  access-control: 127.0.0.0/8 allow",
            "  do-not-query-localhost: no",
            '  module-config: "iterator"',
            "  qname-minimisation: no",
            "  prefetch: no",
            # Give up on the black hole quickly and do not cache the failure
            # for long, so a test can count on SERVFAIL-or-silence.
            "  infra-host-ttl: 1",
        ]
        for z in self.zones:
            lines.append(f'  local-zone: "{z}" static')
        for z in self.timeout_zones:
            lines.append(f'  local-zone: "{z}" transparent')
        for r in self.records:
            lines.append(f'  local-data: "{r}"')
        for z in self.timeout_zones + ["."]:
            lines += ["stub-zone:", f'  name: "{z}"', f"  stub-addr: 127.0.0.1@{bh}",
                      "  stub-prime: no"]
        lines += ["remote-control:", "  control-enable: no"]
        return "\n".join(lines) + "\n"

    def start(self, timeout=10):
        self.blackhole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.blackhole.bind(("127.0.0.1", 0))
        self.port = _free_udp_tcp_port()
        conf = self.dir / "unbound.conf"
        conf.write_text(self._config())
        self.stderr = open(self.dir / "unbound.stderr", "ab")
        self.proc = subprocess.Popen([UNBOUND, "-d", "-c", str(conf)],
                                     stdin=subprocess.DEVNULL, stdout=self.stderr,
                                     stderr=self.stderr)
        probe = self.zones[0] if self.zones else "."
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"unbound exited with {self.proc.returncode}:\n{self.log()}")
            if dns_query(self.port, probe, 6, timeout=0.2) is not None:
                return self
            time.sleep(0.05)
        raise AssertionError(f"unbound not answering on port {self.port}:\n{self.log()}")

    def log(self):
        out = ""
        for name in ("unbound.stderr", "unbound.log"):
            try:
                out += (self.dir / name).read_text(errors="replace")
            except FileNotFoundError:
                pass
        return out

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc is not None:
            self.stderr.close()
        self.proc = None
        if self.blackhole is not None:
            self.blackhole.close()
            self.blackhole = None
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


@pytest.fixture
def make_dns_server():
    made = []

    def factory(records, **kw):
        s = DNSServer(records, **kw)
        made.append(s)
        return s.start()

    yield factory
    for s in made:
        s.stop()
