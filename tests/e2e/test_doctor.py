"""End-to-end tests of `carrier doctor` (and carrierd's own startup checks),
running the real build/carrier.

Network scenarios run in throw-away network namespaces (`unshare -n`, so
root): a fresh namespace has its loopback down, and addresses added there
never touch the host.  Build first: `make build/carrier build/carrierd`.
"""
import json
import os
import pathlib
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD = ROOT / os.environ.get("CARRIER_BUILD", "build")
CARRIER = BUILD / "carrier"

EXIT_CONFIG, EXIT_LOOPBACK, EXIT_ADDRESS, EXIT_LISTEN, EXIT_RUNNING = 10, 12, 13, 14, 19


def _can_unshare():
    try:
        return subprocess.run(["unshare", "-n", "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


needs_netns = pytest.mark.skipif(os.geteuid() != 0 or not _can_unshare(),
                                 reason="needs root and unshare -n")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tmp():
    d = pathlib.Path(tempfile.mkdtemp(prefix="carrier-doctor-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def write_conf(d, listen, extra=""):
    """A configuration with everything under `d`; returns its path."""
    conf = d / "carrier.conf"
    conf.write_text(f"[server]\nlisten = {listen}\nhostname = localhost\n"
                    f"pidfile = {d / 'carrierd.pid'}\n{extra}"
                    f"[spool]\npath = {d / 'spool'}\n"
                    f"[control]\nsocket = {d / 'carrierd.sock'}\n")
    return conf


def doctor(*args, timeout=60):
    return subprocess.run([str(CARRIER), "doctor", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def in_netns(script, timeout=60):
    """Runs a shell script in a new network namespace (loopback down)."""
    return subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True,
                          text=True, timeout=timeout)


def carrier_cmd(*args):
    return " ".join(shlex.quote(str(a)) for a in [CARRIER, "doctor", *args])


def lines_of(out, status):
    return [l for l in out.splitlines() if l.startswith(status)]


def test_healthy_host_passes(tmp):
    conf = write_conf(tmp, f"127.0.0.1:{free_port()}")
    r = doctor("-c", conf)
    assert r.returncode == 0, r.stdout + r.stderr
    assert lines_of(r.stdout, "FAIL") == [], r.stdout
    assert "ok    loopback: interface lo is up" in r.stdout
    assert "ok    listener: 127.0.0.1:" in r.stdout
    # doctor changes nothing: no spool was created
    assert not (tmp / "spool").exists()


@needs_netns
def test_loopback_down_is_named_with_remedy(tmp):
    conf = write_conf(tmp, f"127.0.0.1:{free_port()}")
    r = in_netns(carrier_cmd("-c", conf))
    assert r.returncode == EXIT_LOOPBACK, r.stdout + r.stderr
    assert "FAIL  loopback: loopback interface lo is down" in r.stdout, r.stdout
    assert "      remedy: ip link set lo up" in r.stdout
    assert "1202 NET_LOOPBACK_DOWN" in r.stdout
    # the listener's address is blamed on lo, not reported as a bind failure
    assert "bind failed" not in r.stdout
    assert "not configured on any interface" not in r.stdout


def test_port_in_use_names_the_holder(tmp):
    port = free_port()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import socket, sys\n"
         "s = socket.socket(); s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen()\n"
         "print('ready', flush=True); sys.stdin.read()\n", str(port)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        comm = pathlib.Path(f"/proc/{holder.pid}/comm").read_text().strip()
        assert comm.startswith("python3")
        r = doctor("-c", write_conf(tmp, f"127.0.0.1:{port}"))
        assert r.returncode == EXIT_LISTEN, r.stdout + r.stderr
        want = f"FAIL  listener: 127.0.0.1:{port} is already in use by pid {holder.pid} ({comm})"
        assert want in r.stdout, r.stdout
        assert f"kill {holder.pid}" in r.stdout
    finally:
        holder.stdin.close()
        holder.wait(10)


needs_setpriv = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                                   reason="needs root and setpriv")


def doctor_as_nobody(*args):
    return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                           str(CARRIER), "doctor", *map(str, args)],
                          capture_output=True, text=True, timeout=60)


@needs_setpriv
def test_holder_hidden_from_this_user(tmp):
    """Root holds the port; an unprivileged doctor cannot read root's
    /proc/PID/fd and says so instead of guessing."""
    port = free_port()
    conf = write_conf(tmp, f"127.0.0.1:{port}")
    conf.chmod(0o644)
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        r = doctor_as_nobody("-c", conf)
    assert r.returncode == EXIT_LISTEN, r.stdout + r.stderr
    assert (f"FAIL  listener: 127.0.0.1:{port} is already in use, held by a process "
            "this user cannot see") in r.stdout, r.stdout
    assert "of uid 0 is listening" in r.stdout
    assert f"ss -ltnp 'sport = :{port}'" in r.stdout


@needs_setpriv
def test_privileged_port_names_the_privilege(tmp):
    limit = int(pathlib.Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    if limit <= 25:
        pytest.skip("unprivileged users may bind port 25 on this host")
    conf = write_conf(tmp, "127.0.0.1:25")
    conf.chmod(0o644)
    r = doctor_as_nobody("-c", conf)
    assert r.returncode == 15, r.stdout + r.stderr
    assert (f"FAIL  listener: 127.0.0.1:25: port 25 is below {limit} and uid 65534 "
            "has no privilege to bind it") in r.stdout, r.stdout
    assert "cap_net_bind_service" in r.stdout


@needs_netns
def test_unconfigured_address_is_named(tmp):
    port = free_port()
    conf = write_conf(tmp, f"127.0.0.1:{port}, 192.0.2.1:{port}")
    r = in_netns("ip link set lo up && " + carrier_cmd("-c", conf))
    assert r.returncode == EXIT_ADDRESS, r.stdout + r.stderr
    assert "FAIL  address: address 192.0.2.1 is not configured on any interface" in r.stdout, r.stdout
    assert "bind failed" not in r.stdout
    assert f"ok    listener: 127.0.0.1:{port} is free" in r.stdout


@needs_netns
def test_tentative_ipv6_address_is_named(tmp):
    """An IPv6 address still in duplicate address detection cannot be bound:
    doctor says so instead of "not configured" or "bind failed"."""
    port = free_port()
    conf = write_conf(tmp, f"[fd00::9]:{port}")
    setup = ("ip link set lo up && ip link add v0 type veth peer name v1 && "
             "ip link set v0 up && ip link set v1 up && ip -6 addr add fd00::9/64 dev v0")
    r = in_netns(f"{setup} || exit 99; " + carrier_cmd("-c", conf))
    if r.returncode == 99:
        pytest.skip(f"cannot create a veth pair here: {r.stderr.strip()}")
    assert r.returncode == EXIT_ADDRESS, r.stdout + r.stderr
    assert (f"FAIL  address: address fd00::9 of listener [fd00::9]:{port} is on v0 but not "
            "usable yet: IPv6 duplicate address detection has not finished") in r.stdout, r.stdout
    assert "network-online.target" in r.stdout


@needs_netns
def test_baseline_drift(tmp):
    r1, r2 = tmp / "resolv1.conf", tmp / "resolv2.conf"
    r1.write_text("search example.org\nnameserver 127.0.0.53\nnameserver 192.0.2.99\n")
    r2.write_text("nameserver 192.0.2.53\nnameserver 192.0.2.99\n")
    conf = write_conf(tmp, f"127.0.0.1:{free_port()}")
    base = tmp / "spool" / "network.baseline"
    script = " && ".join([
        "ip link set lo up",
        carrier_cmd("-c", conf, "--save-baseline", "--resolv-conf", r1) + " > save.out",
        "ip addr add 10.9.9.9/32 dev lo",
        carrier_cmd("-c", conf, "--resolv-conf", r2) + " > drift.out; echo rc=$? >> drift.out",
        carrier_cmd("-c", conf, "--resolv-conf", r2, "--json") + " > drift.json; true",
    ])
    r = in_netns(f"cd {shlex.quote(str(tmp))} && {script}")
    assert r.returncode == 0, r.stdout + r.stderr
    save = (tmp / "save.out").read_text()
    assert f"ok    baseline: network baseline saved to {base}" in save, save
    text = base.read_text()
    assert text.startswith("# carrier network baseline 1\n")
    facts = text.splitlines()[1:]
    assert facts == sorted(facts)
    assert "iface lo up" in facts and "addr lo 127.0.0.1/8" in facts
    assert "resolver 127.0.0.53" in facts and "resolver 192.0.2.99" in facts
    assert not any("10.9.9.9" in f for f in facts)

    drift = (tmp / "drift.out").read_text()
    assert "WARN  drift: address 10.9.9.9/32 on lo: new" in drift, drift
    assert "WARN  drift: resolver 192.0.2.53: new, 127.0.0.53: missing" in drift, drift
    assert "192.0.2.99" not in drift
    assert "rc=0" in drift      # drift warns; it does not fail

    report = json.loads((tmp / "drift.json").read_text())
    drifts = [c for c in report["checks"] if c["check"] == "drift"]
    assert [c["status"] for c in drifts] == ["warn", "warn"]
    assert all(c["name"] == "NET_DRIFT" and c["event"] == 1213 for c in drifts)
    assert str(base) in drifts[0]["cause"]


def test_config_errors_are_listed_with_file_and_line(tmp):
    conf = tmp / "bad.conf"
    conf.write_text("[server]\nlisten = 127.0.0.1:notaport\nbogus_key = 1\n")
    r = doctor("-c", conf)
    assert r.returncode == EXIT_CONFIG, r.stdout + r.stderr
    fails = lines_of(r.stdout, "FAIL  config: ")
    assert len(fails) >= 2, r.stdout
    assert any(f"{conf}:2:" in l for l in fails), r.stdout
    assert any(f"{conf}:3:" in l for l in fails), r.stdout
    # the host-wide checks still run
    assert "loopback:" in r.stdout


def test_unreadable_config(tmp):
    r = doctor("-c", tmp / "missing.conf")
    assert r.returncode == EXIT_CONFIG
    assert "missing.conf" in r.stdout


def test_usage_errors():
    r = doctor("--no-such-option")
    assert r.returncode == 2
    assert "usage: carrier doctor" in r.stderr
    r = doctor("--help")
    assert r.returncode == 0 and "Exit status" in r.stdout


def test_running_daemon_is_named(daemon):
    """A healthy carrierd holds the port and answers on the control socket:
    doctor names it in both places."""
    r = doctor("-c", daemon.conf_path)
    assert r.returncode == EXIT_LISTEN, r.stdout + r.stderr
    pid = daemon.proc.pid
    assert f"127.0.0.1:{daemon.port} is already in use by pid {pid} (carrierd)" in r.stdout, r.stdout
    assert (f"another carrierd is running: its control socket {daemon.socket} answers "
            f"(pid {pid}, carrierd)") in r.stdout, r.stdout


def test_carrierd_exits_with_the_listener_status(make_daemon):
    """carrierd itself names the holder and exits with the listener status."""
    d = make_daemon(start=False)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", d.port))
        s.listen()
        d.start(wait_ready=False)
        assert d.proc.wait(30) == EXIT_LISTEN, d.stderr()
    assert f"127.0.0.1:{d.port} is already in use by pid {os.getpid()}" in d.stderr()


def test_unresolvable_host_name_warns_only(tmp):
    conf = write_conf(tmp, f"127.0.0.1:{free_port()}")
    conf.write_text(conf.read_text().replace("hostname = localhost",
                                             "hostname = mx.nonexistent.invalid"))
    r = doctor("-c", conf)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "WARN  hostname: host name mx.nonexistent.invalid does not resolve: " in r.stdout, r.stdout
    assert "/etc/hosts" in r.stdout


def test_stale_control_socket_is_left_alone_by_doctor(tmp):
    conf = write_conf(tmp, f"127.0.0.1:{free_port()}")
    path = tmp / "carrierd.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()       # bound, never listened: connect() is refused
    r = doctor("-c", conf)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"ok    control: {path} is a stale socket (nothing answers); carrierd will remove it" in r.stdout
    assert path.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_spool_of_another_owner_is_named(tmp):
    import pwd
    try:
        uid = pwd.getpwnam("carrier").pw_uid
    except KeyError:
        pytest.skip("no user 'carrier' (scripts/deps creates it)")
    conf = write_conf(tmp, f"127.0.0.1:{free_port()}")
    (tmp / "spool").mkdir(mode=0o700)      # owned by root, not by carrier
    r = doctor("-c", conf)
    assert r.returncode == 17, r.stdout + r.stderr
    assert (f"FAIL  spool: spool directory {tmp / 'spool'} is owned by uid 0, expected user "
            f"carrier (uid {uid})") in r.stdout, r.stdout
    assert f"chown -R carrier: {tmp / 'spool'}" in r.stdout
