"""End-to-end: counters in shared memory, `carrier stats`, `carrier top`
and the metrics endpoint, against a real carrierd.

- stats read from shared memory, and moving after SMTP traffic
- stats read while carrierd is stopped with SIGSTOP
- stats with /dev/shm read-only (a private mount namespace): the daemon
  runs, counts privately, and `carrier stats` says so and asks it over the
  control socket
- the metrics endpoint scraped with urllib; every line parsed against the
  exposition grammar; values move after traffic
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from conftest import CARRIER, CARRIERD, free_port


def stats(d, *more, timeout=10):
    r = d.carrier("stats", "-c", str(d.conf_path), "--json", *more, timeout=timeout)
    assert r.returncode == 0, f"carrier stats exited {r.returncode}: {r.stderr}"
    return json.loads(r.stdout), r


def send_one(d, rcpt="carol@localhost"):
    s = d.smtp()
    try:
        s.sendmail("alice@example.net", [rcpt],
                   "Subject: counters\r\nMessage-ID: <c@test>\r\n\r\nhello\r\n")
    finally:
        s.quit()


def wait_for(pred, timeout=10, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout}s")


def test_stats_from_shared_memory_moves_with_traffic(daemon):
    before, r = stats(daemon)
    assert before["source"] == "shared_memory", before
    assert before["shared"] is True
    assert before["note"] == ""
    assert before["layout"] == 3
    assert before["pid"] == daemon.proc.pid
    c0 = before["counters"]
    for key in ("connections_in_current", "connections_in", "connections_in_rejected",
                "messages_received", "recipients_received", "messages_delivered",
                "messages_deferred", "messages_bounced", "messages_expired",
                "bytes_in", "bytes_out", "queue_active_messages", "queue_deferred_bytes",
                "spool_commits", "spool_committed_messages", "spool_fsyncs",
                "dns_lookups", "dns_failures", "loops_detected"):
        assert key in c0, f"missing counter {key}: {sorted(c0)}"
    assert isinstance(before["next_hops"], list)

    send_one(daemon)

    def moved():
        now, _ = stats(daemon)
        c = now["counters"]
        return now if c["connections_in"] >= c0["connections_in"] + 1 else None
    after = wait_for(moved, what="connections_in to move")["counters"]
    assert after["connections_in"] == c0["connections_in"] + 1
    assert after["connections_in_current"] in (0, 1)
    # The SMTP engine counts accepted messages, recipients and bytes.
    assert after["messages_received"] == c0["messages_received"] + 1
    assert after["recipients_received"] == c0["recipients_received"] + 1
    assert after["bytes_in"] > c0["bytes_in"]

    # The table names the groups and the daemon.
    r = daemon.carrier("stats", "-c", str(daemon.conf_path))
    assert r.returncode == 0, r.stderr
    for group in ("connections\n", "messages\n", "queue\n", "spool\n", "dns\n",
                  "next hops (by queue length)"):
        assert group in r.stdout, r.stdout
    assert f"carrierd pid {daemon.proc.pid}" in r.stdout
    assert re.search(r"^  connections_in\s+1$", r.stdout, re.M), r.stdout


def test_stats_while_daemon_is_stopped(daemon):
    send_one(daemon)
    daemon.signal(signal.SIGSTOP)
    try:
        t0 = time.time()
        snap, r = stats(daemon, timeout=5)
        assert time.time() - t0 < 3, "carrier stats waited for the stopped daemon"
        assert snap["source"] == "shared_memory"
        assert snap["counters"]["connections_in"] >= 1
        assert snap["pid"] == daemon.proc.pid
        r = daemon.carrier("top", "-c", str(daemon.conf_path), "--once", "--interval", "0.1",
                           timeout=5)
        assert r.returncode == 0, r.stderr
        assert "NEXT HOP" in r.stdout
    finally:
        daemon.signal(signal.SIGCONT)
    # And the daemon still serves afterwards.
    send_one(daemon)


def test_stats_not_running(workdir):
    conf = workdir / "carrier.conf"
    shm = f"/carrier-test-{os.getpid()}-absent"
    conf.write_text(f"[control]\nsocket = {workdir}/none.sock\n[counters]\nshm_name = {shm}\n"
                    f"[spool]\npath = {workdir}/spool\n")
    r = subprocess.run([str(CARRIER), "stats", "-c", str(conf)], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 3, (r.returncode, r.stdout, r.stderr)
    assert "not running" in r.stderr
    assert shm in r.stderr


def test_top_once_sorts_and_refuses_bad_options(daemon):
    send_one(daemon)
    for key in ("queue", "age", "failures"):
        r = daemon.carrier("top", "-c", str(daemon.conf_path), "--once", "--interval", "0.1",
                           "--sort", key)
        assert r.returncode == 0, r.stderr
        assert f"sorted by {key}" in r.stdout
        assert "\033[2J" not in r.stdout          # --once does not clear the screen
    r = daemon.carrier("top", "--sort", "size")
    assert r.returncode == 2
    assert "queue, age or failures" in r.stderr


def nsenter_available():
    return os.geteuid() == 0 and shutil.which("unshare") and shutil.which("nsenter")


@pytest.mark.skipif(not nsenter_available(), reason="needs root, unshare and nsenter")
def test_stats_with_read_only_dev_shm(make_daemon):
    d = make_daemon(start=False)
    inner = " ".join(map(str, d.argv()))
    d.start(argv=["unshare", "-m", "sh", "-c",
                  f"mount -t tmpfs -o ro tmpfs /dev/shm && exec {inner}"])
    ev = d.wait_event("COUNTERS_PRIVATE")[0]["fields"]
    assert ev["name"] == d.shm_name
    assert "Read-only file system" in ev["reason"], ev
    send_one(d)

    def in_ns(*args):
        return subprocess.run(["nsenter", "-t", str(d.proc.pid), "-m", str(CARRIER), *args],
                              capture_output=True, text=True, timeout=10)

    r = in_ns("stats", "-c", str(d.conf_path))
    if "unknown command 'stats'" in r.stderr:
        pytest.xfail("waiting for carrierd wiring: no `stats` control command yet")
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert ("counters are private: shared memory unavailable; read over the control socket"
            in r.stdout), r.stdout
    assert re.search(r"^  connections_in\s+1$", r.stdout, re.M), r.stdout
    assert "counters private (shared memory unavailable)" in r.stdout

    r = in_ns("stats", "-c", str(d.conf_path), "--json")
    assert r.returncode == 0, r.stderr
    snap = json.loads(r.stdout)
    assert snap["source"] == "control_socket"
    assert snap["shared"] is False
    assert snap["counters"]["messages_received"] >= 1
    assert snap["pid"] == d.proc.pid
    assert "counters are private" in r.stderr


# ---- metrics -------------------------------------------------------------------

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(rf"^({NAME})(\{{{LABEL}(?:,{LABEL})*\}})? (-?[0-9]+(?:\.[0-9]+)?|NaN|[+-]Inf)$")
HELP = re.compile(rf"^# HELP ({NAME}) .*$")
TYPE = re.compile(rf"^# TYPE ({NAME}) (counter|gauge|histogram|summary|untyped|info|stateset|unknown)$")


def parse_exposition(text, openmetrics=False):
    """Parses the text format strictly; returns {(name, labels): value}."""
    assert text.endswith("\n")
    lines = text.split("\n")[:-1]
    if openmetrics:
        assert lines[-1] == "# EOF", lines[-3:]
        lines = lines[:-1]
    samples, typed, seen_families = {}, {}, []
    for line in lines:
        if line.startswith("# HELP"):
            assert HELP.match(line), f"bad HELP line: {line!r}"
        elif line.startswith("# TYPE"):
            m = TYPE.match(line)
            assert m, f"bad TYPE line: {line!r}"
            assert m.group(1) not in typed, f"family {m.group(1)} typed twice"
            typed[m.group(1)] = m.group(2)
            seen_families.append(m.group(1))
        else:
            m = SAMPLE.match(line)
            assert m, f"bad sample line: {line!r}"
            name = m.group(1)
            family = seen_families[-1]
            if typed[family] == "counter":
                assert name == (family if name == family else family.removesuffix("_total") + "_total"), \
                    (name, family)
                assert name.endswith("_total")
            else:
                assert name == family, f"sample {name} outside its family {family}"
            key = (name, m.group(2) or "")
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = float(m.group(3))
    return samples


def metrics_daemon(make_daemon):
    port = free_port()
    extra = f"[metrics]\nlisten = 127.0.0.1:{port}\n"
    d = make_daemon(extra, start=False)
    check = subprocess.run([str(CARRIERD), "-n", "-c", str(d.conf_path)],
                           capture_output=True, text=True, timeout=10)
    if check.returncode != 0 and "metrics" in (check.stdout + check.stderr):
        pytest.xfail("waiting for carrierd wiring: no [metrics] listen key yet")
    d.start()
    deadline = time.time() + 5
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline:
                pytest.xfail("waiting for carrierd wiring: nothing listens on metrics.listen")
            time.sleep(0.05)
    return d, port


def scrape(port, path="/metrics", accept=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if accept:
        req.add_header("Accept", accept)
    with urllib.request.urlopen(req, timeout=5) as resp:
        return resp.headers.get("Content-Type"), resp.read().decode("utf-8")


def test_metrics_endpoint(make_daemon):
    d, port = metrics_daemon(make_daemon)
    ctype, text = scrape(port)
    assert ctype.startswith("text/plain; version=0.0.4"), ctype
    before = parse_exposition(text)
    for name in ("carrier_messages_received_total", "carrier_connections_in_current",
                 "carrier_connections_in_total", "carrier_bytes_in_total",
                 "carrier_start_time_seconds"):
        assert (name, "") in before, f"{name} missing"
    assert ("carrier_queue_messages", '{state="active"}') in before
    assert ("carrier_queue_messages", '{state="deferred"}') in before

    send_one(d)

    def moved():
        now = parse_exposition(scrape(port)[1])
        return now if now[("carrier_connections_in_total", "")] > \
            before[("carrier_connections_in_total", "")] else None
    after = wait_for(moved, what="carrier_connections_in_total to move")
    assert after[("carrier_messages_received_total", "")] == \
        before[("carrier_messages_received_total", "")] + 1
    assert after[("carrier_bytes_in_total", "")] > before[("carrier_bytes_in_total", "")]

    ctype, text = scrape(port, accept="application/openmetrics-text; version=1.0.0")
    assert ctype.startswith("application/openmetrics-text"), ctype
    parse_exposition(text, openmetrics=True)

    for path in ("/", "/metricsx", "/metrics/"):
        with pytest.raises(urllib.error.HTTPError) as e:
            scrape(port, path)
        assert e.value.code == 404


def test_stats_after_kill_shows_the_last_counters(daemon):
    send_one(daemon)
    wait_for(lambda: stats(daemon)[0]["counters"]["connections_in"] >= 1, what="a connection")
    pid = daemon.proc.pid
    daemon.kill()                   # SIGKILL: the block stays behind
    snap, r = stats(daemon)
    assert snap["source"] == "stale_shared_memory", snap
    assert f"carrierd (pid {pid}) is not running" in snap["note"]
    assert snap["counters"]["connections_in"] >= 1
    r = daemon.carrier("stats", "-c", str(daemon.conf_path))
    assert r.returncode == 0
    assert r.stdout.startswith(f"note: carrierd (pid {pid}) is not running"), r.stdout
