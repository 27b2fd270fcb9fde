"""End to end: the reading `carrier queue` commands on a queue larger than the
old 200,000-message cap, walked on the daemon's queue reader thread.

The spool is filled before the daemon starts by tests/e2e/spool_fill.c
(built here against libcarrier.a): 250,000 deferred messages, next attempt a
day away, one recipient each over 10 domains, the last 1,000 held.  Then:

  - `carrier queue summary` counts every message (no "partial"), and an
    SMTP session on the same daemon keeps answering NOOP while it runs;
  - control connections that hang up (or half-close) in the middle of a
    walk, and a daemon stopped with walks under way and waiting, are safe
    (the ASan pass of scripts/run-e2e checks for use after free and leaks).
"""
import json
import os
import pathlib
import signal
import socket
import subprocess
import threading
import time

import pytest

from conftest import CARRIER, build_test_tool, chown_to_daemon_user

ROOT = pathlib.Path(__file__).resolve().parents[2]
FILL_SRC = ROOT / "tests" / "e2e" / "spool_fill.c"

BIG = 250_000          # over the old cap of 200,000
HELD = 1_000
DOMAINS = 10


@pytest.fixture(scope="module")
def spool_fill(tmp_path_factory):
    return build_test_tool(tmp_path_factory, FILL_SRC, ["-lcrypt"])


def filled_daemon(make_daemon, spool_fill, n, held=0):
    d = make_daemon(start=False)
    r = subprocess.run([str(spool_fill), str(d.spool), str(n), str(DOMAINS), str(held)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"spool_fill: {r.stderr}"
    assert int(r.stdout) == n
    chown_to_daemon_user(d.spool)
    d.start(timeout=180)
    return d


def cq(d, *args, timeout=120):
    return subprocess.run([str(CARRIER), *args, "-c", str(d.conf_path)], capture_output=True,
                          text=True, timeout=timeout)


class NoopProbe:
    """One SMTP session sending NOOP every 5 ms, timing each answer."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.f = self.s.makefile("rb")
        assert self.f.readline().startswith(b"220")
        self.s.sendall(b"EHLO probe.example\r\n")
        while self.f.readline()[3:4] != b" ":
            pass
        self.samples = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.is_set():
            t = time.monotonic()
            self.s.sendall(b"NOOP\r\n")
            line = self.f.readline()
            assert line.startswith(b"250"), line
            self.samples.append((t, time.monotonic() - t))
            time.sleep(0.005)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(30)
        self.s.close()

    def between(self, t0, t1):
        """Latencies of the NOOPs sent and answered within [t0, t1]."""
        return [lat for t, lat in self.samples if t >= t0 and t + lat <= t1]


def test_summary_of_a_large_queue_is_complete(make_daemon, spool_fill):
    d = filled_daemon(make_daemon, spool_fill, BIG, HELD)
    with NoopProbe(d.port) as probe:
        time.sleep(0.2)
        t0 = time.monotonic()
        r = cq(d, "queue", "summary", "--json")
        t1 = time.monotonic()
        time.sleep(0.1)
    assert r.returncode == 0, r.stderr
    assert "partial" not in r.stderr and "only the first" not in r.stderr, r.stderr
    s = json.loads(r.stdout)
    pending = BIG - HELD
    assert s["total"]["total"] == pending
    assert sum(s["total"]["ages"].values()) == pending
    assert (s["held_messages"], s["held_recipients"]) == (HELD, HELD)
    hops = {h["next_hop"]: h["total"] for h in s["next_hops"]}
    assert len(hops) == DOMAINS and sum(hops.values()) == pending, hops
    # The walk ran beside the loop: SMTP answered all along.  (Before, the
    # loop walked the spool itself and no NOOP was answered until it was
    # done.)
    during = probe.between(t0, t1)
    if t1 - t0 >= 0.3:
        assert len(during) >= 3, f"{len(during)} NOOPs answered during a {t1 - t0:.2f}s summary"
        assert sorted(during)[len(during) // 2] < 0.1, during
    # The same through the text output, and a filtered list of the held
    # ones (one page).
    r = cq(d, "queue", "summary")
    assert r.returncode == 0 and f"{pending}" in r.stdout.splitlines()[1], r.stdout
    r = cq(d, "queue", "list", "--state", "held", "--json")
    assert r.returncode == 0, r.stderr
    assert len(json.loads(r.stdout)) == HELD
    assert d.stop() == 0


def _raw(d, line, half_close=False):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(d.socket))
    s.sendall(f"CARRIER/1 {line}\n".encode())
    if half_close:
        s.shutdown(socket.SHUT_WR)
    return s


def test_control_connection_closed_mid_walk(make_daemon, spool_fill):
    d = filled_daemon(make_daemon, spool_fill, 60_000)
    # Hang up right after asking, several times over (each walk is given
    # up at its next step, or its answer dropped).
    for i in range(6):
        _raw(d, "queue summary" if i % 2 else "queue list state=deferred").close()
    # Half-closed: the answer still comes.
    s = _raw(d, "queue due", half_close=True)
    s.settimeout(60)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    assert data.startswith(b"CARRIER/1 200"), data[:200]
    assert b"pending: 60000\n" in data, data[:400]
    # Still serving, and the next summary is complete.
    r = cq(d, "queue", "summary", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["total"]["total"] == 60_000
    assert cq(d, "status").returncode == 0

    # Stopped with a walk under way and more waiting: a clean exit (the
    # ASan pass fails on a leak or a use after free).
    waiting = [_raw(d, "queue summary") for _ in range(3)]
    time.sleep(0.02)
    d.signal(signal.SIGTERM)
    assert d.proc.wait(60) == 0, d.stderr()
    for s in waiting:
        s.close()
