"""carrierd starts, or says exactly why not (issue: foundation).

Each test starts the real carrierd and checks what an operator would see:
the exit status, the event on stderr and in the JSON log, and that mail
service (a 220 banner) is there or not.
"""
import json
import os
import pathlib
import pwd
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import CARRIER, CARRIERD, ROOT, Daemon, connect_banner, free_port, make_tempdir

# Exit statuses (src/diag.h, src/carrierd.c)
EXIT_CONFIG, EXIT_LOOPBACK, EXIT_ADDRESS, EXIT_LISTEN, EXIT_RUNNING = 10, 12, 13, 14, 19
EXIT_USER = 21


def run_daemon(d, argv=None, timeout=20, env=None):
    """Runs carrierd to its exit; returns (status, stderr)."""
    p = subprocess.run(argv or d.argv(), capture_output=True, text=True,
                       timeout=timeout, env=env)
    return p.returncode, p.stderr


def test_starts_ready_with_banner_and_stops_on_sigterm(daemon):
    s, line = connect_banner(daemon.port)
    assert line.startswith("220 mx.test.example "), line
    s.close()
    ready = daemon.events("CORE_READY")
    assert len(ready) == 1
    assert f"127.0.0.1:{daemon.port}" in ready[0]["msg"]
    assert daemon.stop() == 0
    assert daemon.events("CORE_STOPPED")


def test_drops_root_to_configured_user(daemon):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    status = pathlib.Path(f"/proc/{daemon.proc.pid}/status").read_text()
    uids = [l for l in status.splitlines() if l.startswith("Uid:")][0].split()[1:]
    want = pwd.getpwnam("carrier").pw_uid
    assert all(int(u) == want for u in uids), f"got Uid: {uids}, want all {want}"
    pid = int(daemon.pidfile.read_text())
    assert pid == daemon.proc.pid


def test_loopback_down_is_named(workdir):
    d = Daemon(workdir)
    rc, err = run_daemon(d, ["unshare", "-n", *d.argv()])
    assert rc == EXIT_LOOPBACK, err
    assert "loopback" in err and " lo " in err, err
    assert "ip link set lo up" in err, err
    ev = [e for e in d.events() if e["severity"] == "fatal"]
    assert ev and "lo" in ev[0]["msg"] and "ip link set lo up" in ev[0]["remedy"]


def test_port_held_by_another_process_names_it(workdir):
    port = free_port()
    holder = subprocess.Popen([sys.executable, "-c",
                               "import socket,sys,time\n"
                               "s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                               f"s.bind(('127.0.0.1',{port})); s.listen(); print('up', flush=True)\n"
                               "time.sleep(60)"], stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"up"
        d = Daemon(workdir, port=port)
        rc, err = run_daemon(d)
        assert rc == EXIT_LISTEN, err
        assert f"127.0.0.1:{port}" in err, err
        assert f"pid {holder.pid}" in err, err
        name = pathlib.Path(f"/proc/{holder.pid}/comm").read_text().strip()
        assert f"({name})" in err, err
    finally:
        holder.kill()
        holder.wait()


def test_address_on_no_interface_is_named(workdir):
    d = Daemon(workdir, extra_conf="[server]\nlisten = 192.0.2.1:2525\n", base=True)
    # The base config sets listen already; write our own instead.
    text = d.conf_path.read_text().replace(f"listen = 127.0.0.1:{d.port}\n", "")
    d.conf_path.write_text(text)
    rc, err = run_daemon(d)
    assert rc == EXIT_ADDRESS, err
    assert "192.0.2.1" in err and "not configured on any interface" in err, err
    assert "bind failed" not in err


def test_three_config_mistakes_all_reported(workdir):
    conf = workdir / "bad.conf"
    conf.write_text("[server]\n"
                    "listen = 127.0.0.1:2525\n"
                    "lisen = 127.0.0.1:25\n"
                    "[smtp]\n"
                    "max_recipients = many\n"
                    "[spool]\n"
                    "pth = /tmp\n")
    p = subprocess.run([str(CARRIERD), "-n", "-c", str(conf)], capture_output=True, text=True)
    assert p.returncode == EXIT_CONFIG
    lines = p.stderr.splitlines()
    assert f"{conf}:3: server.lisen: unknown key (did you mean 'listen'?)" in lines
    assert any(l.startswith(f"{conf}:5: smtp.max_recipients: 'many' is not a number (expected ")
               for l in lines), p.stderr
    assert any(l.startswith(f"{conf}:7: spool.pth: unknown key (did you mean 'path'?)")
               for l in lines), p.stderr
    # The daemon refuses to start with the same three, as events.
    p = subprocess.run([str(CARRIERD), "-f", "-c", str(conf)], capture_output=True,
                       text=True, timeout=10)
    assert p.returncode == EXIT_CONFIG
    assert p.stderr.count("CONFIG_ERROR") == 3, p.stderr
    assert "CONFIG_INVALID" in p.stderr


def test_shipped_config_and_embedded_default_are_valid():
    p = subprocess.run([str(CARRIERD), "-n", "-c", str(ROOT / "etc/carrier.conf")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    # Every key carrierd knows is documented in the shipped file.
    dump = subprocess.run([str(CARRIERD), "-p"], capture_output=True, text=True).stdout
    shipped = (ROOT / "etc/carrier.conf").read_text()
    for line in dump.splitlines():
        if "=" in line and not line.startswith(";") and not line.startswith("level."):
            key = line.split("=")[0].strip()
            assert f"\n{key} =" in shipped, f"{key} is missing from etc/carrier.conf"


def test_shared_memory_unavailable_degrades_with_one_warning(make_daemon):
    d = make_daemon(start=False)
    argv = ["unshare", "-m", "sh", "-c",
            "mount -t tmpfs -o ro,size=64k tmpfs /dev/shm && exec " +
            " ".join(d.argv())]
    d.start(argv=argv)
    s, line = connect_banner(d.port)
    assert line.startswith("220 ")
    s.close()
    warnings = d.events("COUNTERS_PRIVATE")
    assert len(warnings) == 1, d.events()
    assert warnings[0]["severity"] == "warning"
    assert "Read-only file system" in warnings[0]["msg"]
    st = d.carrier("status", "-c", str(d.conf_path))
    assert st.returncode == 0, st.stderr
    assert d.stop() == 0


def test_sighup_with_broken_config_keeps_running(daemon):
    good = daemon.conf_path.read_text()
    daemon.conf_path.write_text(good + "[smtp]\nmax_errors = lots\n")
    daemon.signal(signal.SIGHUP)
    refused = daemon.wait_event("CORE_RELOAD_REFUSED")
    assert refused[0]["severity"] == "error"
    errors = daemon.events("CONFIG_ERROR")
    assert errors and "max_errors" in errors[-1]["msg"] and ":" in errors[-1]["msg"]
    s, line = connect_banner(daemon.port)
    assert line.startswith("220 ")
    s.close()
    daemon.conf_path.write_text(good + "[smtp]\nmax_errors = 5\n")
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("CORE_RELOADED")
    assert daemon.proc.poll() is None
    assert daemon.stop() == 0


def test_sigusr1_reopens_the_json_log(daemon):
    rotated = daemon.json_log.with_suffix(".1")
    daemon.json_log.rename(rotated)
    daemon.signal(signal.SIGUSR1)
    deadline = time.time() + 10
    while time.time() < deadline and not daemon.events("CORE_LOGS_REOPENED"):
        time.sleep(0.05)
    assert daemon.events("CORE_LOGS_REOPENED"), "no event in the new file"
    assert "CORE_READY" in rotated.read_text()


def test_second_instance_is_refused_naming_the_first(daemon, workdir):
    # Same control socket and pidfile: the second must not start.
    second = Daemon(workdir, port=free_port())
    text = second.conf_path.read_text()
    text = text.replace(str(second.socket), str(daemon.socket))
    second.conf_path.write_text(text)
    rc, err = run_daemon(second)
    assert rc == EXIT_RUNNING, err
    assert "another carrierd" in err.lower() or "already running" in err.lower(), err
    s, line = connect_banner(daemon.port)
    assert line.startswith("220 ")
    s.close()


def test_unknown_user_is_named(workdir):
    if os.geteuid() != 0:
        pytest.skip("needs root")
    d = Daemon(workdir, extra_conf="[server]\nuser = no-such-carrier-user\n")
    rc, err = run_daemon(d)
    assert rc == EXIT_USER, err
    assert "no-such-carrier-user does not exist" in err
    assert "useradd" in err


def test_status_running_and_not_running(daemon):
    st = daemon.carrier("status", "-c", str(daemon.conf_path))
    assert st.returncode == 0, st.stderr
    assert str(daemon.proc.pid) in st.stdout
    assert f"127.0.0.1:{daemon.port}" in st.stdout
    assert str(daemon.spool) in st.stdout
    daemon.stop()
    st = daemon.carrier("status", "-c", str(daemon.conf_path))
    assert st.returncode == 3
    assert "not running" in (st.stdout + st.stderr)


def test_log_level_changes_at_runtime(daemon):
    assert not daemon.events("CORE_LEVEL_CHANGED")
    r = daemon.carrier("log-level", "-c", str(daemon.conf_path), "smtp_in", "maximum")
    assert r.returncode == 0, r.stderr
    assert "smtp_in: maximum" in r.stdout
    ev = daemon.wait_event("CORE_LEVEL_CHANGED")
    assert ev[0]["fields"] == {"category": "smtp_in", "level": "maximum"}
    r = daemon.carrier("log-level", "-c", str(daemon.conf_path), "smtp_in", "loud")
    assert r.returncode != 0
    r = daemon.carrier("log-level", "-c", str(daemon.conf_path), "delivery=medium")
    assert r.returncode == 0, r.stderr
    assert "delivery: medium" in r.stdout


def test_background_start_reports_ready_and_failure(workdir):
    d = Daemon(workdir)
    argv = [str(CARRIERD), "-c", str(d.conf_path)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    assert p.returncode == 0, p.stderr
    pid = int(d.pidfile.read_text())
    try:
        assert pathlib.Path(f"/proc/{pid}").exists()
        s, line = connect_banner(d.port)
        assert line.startswith("220 ")
        s.close()
        # A second start in the background fails with the child's status.
        p2 = subprocess.run(argv, capture_output=True, text=True, timeout=20)
        assert p2.returncode == EXIT_RUNNING, p2.stderr
    finally:
        os.kill(pid, signal.SIGTERM)
        for _ in range(200):
            if not pathlib.Path(f"/proc/{pid}").exists():
                break
            time.sleep(0.05)


def test_readiness_reaches_the_service_manager(make_daemon, workdir):
    path = str(workdir / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    os.chmod(path, 0o777)
    sock.settimeout(15)
    d = make_daemon(start=False, env={**os.environ, "NOTIFY_SOCKET": path})
    d.start(wait_ready=False)
    msg = sock.recv(256)
    assert msg == b"READY=1"
    d.stop()
    assert sock.recv(256) == b"STOPPING=1"


def test_make_run_in_a_fresh_clone(workdir):
    """The README's first command: a fresh clone, `make run`, a banner."""
    if os.environ.get("CARRIER_SKIP_MAKE_RUN"):
        pytest.skip("CARRIER_SKIP_MAKE_RUN is set")
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 2525)) == 0:
            pytest.fail("127.0.0.1:2525 is taken; `make run` needs it")
    clone = workdir / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    log = open(workdir / "make-run.log", "wb")
    p = subprocess.Popen(["make", "-s", "run"], cwd=clone, stdout=log, stderr=log,
                         start_new_session=True)
    try:
        deadline = time.time() + 300
        line = ""
        while time.time() < deadline:
            if p.poll() is not None:
                break
            try:
                s, line = connect_banner(2525)
                s.close()
                break
            except OSError:
                time.sleep(0.5)
        out = (workdir / "make-run.log").read_text(errors="replace")
        assert line.startswith("220 "), f"no banner from `make run`:\n{out}"
        assert "CORE_READY" in out
        assert (clone / "var" / "spool" / "data.mdb").exists()
    finally:
        try:
            os.killpg(p.pid, signal.SIGTERM)
            p.wait(30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        log.close()
    assert p.returncode in (0, -signal.SIGTERM, 2), p.returncode


def test_sigterm_drains_open_sessions(make_daemon):
    d = make_daemon("[server]\ndrain_timeout = 5s\n")
    idle, line = connect_banner(d.port)
    assert line.startswith("220 ")
    started = time.time()
    d.signal(signal.SIGTERM)
    f = idle.makefile("rb")
    assert f.readline().startswith(b"421 4.3.2"), "idle session not told we close"
    assert d.proc.wait(10) == 0
    assert time.time() - started < 5, "an idle session held up the stop"
    stopping = d.events("CORE_STOPPING")
    assert stopping and stopping[0]["fields"]["sessions"] == 1
    # No new connections once stopping began.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", d.port), timeout=2).recv(1)


def test_doctor_warns_about_shared_memory_but_passes(workdir):
    d = Daemon(workdir)
    p = subprocess.run(["unshare", "-m", "sh", "-c",
                        "mount -t tmpfs -o ro,size=64k tmpfs /dev/shm && exec "
                        f"{CARRIER} doctor -c {d.conf_path}"],
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    line = [l for l in p.stdout.splitlines() if "counters:" in l]
    assert line and line[0].startswith("WARN"), p.stdout
    assert "Read-only file system" in line[0]


def test_hostile_values_cannot_split_or_forge_log_lines(make_daemon):
    """A HELO with control characters and an address full of JSON syntax go
    into the event log and the tracking log as data, one line each."""
    d = make_daemon("[server]\nrelay_networks = 10.255.255.0/24\n"
                    "[log]\nlevel.policy = medium\nlevel.smtp_in = medium\n")
    evil_rcpt = '"x\\"},{\\"event\\":\\"CORE_READY\\"}"@remote.example'
    s = socket.create_connection(("127.0.0.1", d.port), timeout=10)
    f = s.makefile("rb")
    f.readline()
    for line, want in ((b"HELO evil\x1b[2J\x07host\r\n", b"250"),
                       (b"MAIL FROM:<a@localhost>\r\n", b"250"),
                       (b"RCPT TO:<" + evil_rcpt.encode() + b">\r\n", b"554"),
                       (b"RCPT TO:<bob@localhost>\r\n", b"250"),
                       (b"DATA\r\n", b"354"),
                       (b"Subject: x\r\n\r\nhi\r\n.\r\n", b"250"),
                       (b"QUIT\r\n", b"221")):
        s.sendall(line)
        reply = f.readline()
        while reply[3:4] == b"-":
            reply = f.readline()
        assert reply.startswith(want), (line, reply)
    s.close()
    denied = d.wait_event("POLICY_RELAY_DENIED")
    # The address arrives as data, quotes and all.
    assert '},{' in denied[0]["fields"]["rcpt"] and "CORE_READY" in denied[0]["fields"]["rcpt"]
    assert denied[0]["fields"]["rcpt"].endswith("@remote.example")
    # Every line of the event log is one JSON object; the forged event
    # is not among them.
    lines = d.json_log.read_text().splitlines()
    parsed = [json.loads(l) for l in lines]
    assert sum(1 for e in parsed if e["event"] == "CORE_READY") == 1
    track_dir = d.dir / "track"
    deadline = time.time() + 10
    while time.time() < deadline and not any(track_dir.glob("track-*.jsonl")):
        time.sleep(0.1)
    tracked = [json.loads(l) for p in track_dir.glob("track-*.jsonl")
               for l in p.read_text().splitlines()]
    received = [r for r in tracked if r["type"] == "received"]
    assert received and received[0]["helo"] == "evil\x1b[2J\x07host"
