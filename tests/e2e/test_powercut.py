"""Power-cut simulation (issue 8, item 2): writes that were not fsync'd are
lost.

carrierd runs under the fault shim in power mode (tests/fault/fault.c):
every fsync/fdatasync of a file under the daemon's directory copies that
file's content into a shadow (by inode), every fsync of a directory records
its entries, and LMDB's synchronous meta-page writes are applied to the
copy as they happen.  Under a steady load of messages (inline and body-file
entries, local Maildir delivery running at the same time) the daemon is
SIGKILLed at a random moment; the spool and the Maildir root are then
rebuilt from the shadow alone (the state a power cut leaves: data that was
never synced is gone, names that were never made durable are gone, a
durable name whose data was never synced comes back empty), and carrierd is
started on that.  It must open (no crash; quarantine only for entries that
never got a 250), and every message acknowledged with 250 before the cut
must be delivered.

POWERCUT_ROUNDS (default 20) sets how many cuts; rounds share one daemon.
"""
import os
import random
import re
import shutil
import signal
import smtplib
import threading
import time

import pytest

from conftest import Daemon, make_tempdir
from faultlib import SHIM_USABLE, give_to_carrier, shadow_init, shadow_rebuild, shim_env

pytestmark = pytest.mark.skipif(not SHIM_USABLE, reason="build/fault/libfault.so not built, or a sanitizer build")

ROUNDS = int(os.environ.get("POWERCUT_ROUNDS", "20"))
VERBOSE = os.environ.get("POWERCUT_VERBOSE")
MSGID = re.compile(rb"^Message-ID: <([^>]+)@power\.test>", re.M | re.I)
QUEUED = re.compile(r"queued as ([0-9A-Z]+)")


class Load:
    def __init__(self, port, prefix, clients=4, seed=0):
        self.port, self.prefix = port, prefix
        self.acked = {}            # message id -> qid
        self.mu = threading.Lock()
        self.stop_ev = threading.Event()
        self.n = 0
        self.threads = [threading.Thread(target=self.run, args=(seed + i,), daemon=True)
                        for i in range(clients)]
        for t in self.threads:
            t.start()

    def run(self, seed):
        rng = random.Random(seed)
        while not self.stop_ev.is_set():
            try:
                s = smtplib.SMTP("127.0.0.1", self.port, timeout=5)
                s.ehlo("power.test")
                for _ in range(rng.randint(1, 3)):
                    with self.mu:
                        self.n += 1
                        mid = f"{self.prefix}-{self.n}"
                    size = rng.choice([200, 3000, 20000, 100000])
                    line = "p" * 70 + "\r\n"
                    body = (f"Subject: {mid}\r\nMessage-ID: <{mid}@power.test>\r\n\r\n"
                            + line * (size // len(line) + 1))
                    s.mail("load@power.test")
                    s.rcpt(f"u{self.n % 3}@localhost")
                    code, msg = s.data(body)
                    if code == 250:
                        m = QUEUED.search(msg.decode(errors="replace"))
                        with self.mu:
                            self.acked[mid] = m.group(1) if m else None
                s.quit()
            except (OSError, smtplib.SMTPException):
                time.sleep(0.02)

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(10)


def delivered(d):
    got = {}
    for user in d.maildir.iterdir() if d.maildir.is_dir() else []:
        for sub in ("new", "cur"):
            p = user / sub
            for f in p.iterdir() if p.is_dir() else []:
                m = MSGID.search(f.read_bytes()[:1024])
                if m:
                    k = m.group(1).decode()
                    got[k] = got.get(k, 0) + 1
    return got


def start_counted(d, timeout=20):
    before = len(d.events("CORE_READY"))
    d.start(wait_ready=False)
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert d.proc.poll() is None, f"carrierd exited {d.proc.returncode}:\n{d.stderr()[-4000:]}"
        if len(d.events("CORE_READY")) > before:
            return
        time.sleep(0.02)
    raise AssertionError(f"carrierd not ready:\n{d.stderr()[-4000:]}")


def test_power_cut_keeps_every_acknowledged_message():
    d = Daemon(make_tempdir("carrier-power-"),
               extra_conf="[server]\ndrain_timeout = 2s\n[spool]\ninline_max = 4k\n"
                          "[delivery]\nretry_schedule = 1s\n")
    shadow_root = make_tempdir("carrier-shadow-")
    rng = random.Random(int(os.environ.get("POWERCUT_SEED", time.time())))
    acked, quarantined_ok = {}, 0
    try:
        d.maildir.mkdir()
        give_to_carrier(d.maildir)
        start_counted(d)
        for rnd in range(ROUNDS):
            t0 = time.time()
            assert d.stop() == 0, d.stderr()[-3000:]
            t1 = time.time()
            os.sync()
            shadow = shadow_root / f"r{rnd}"
            shadow_init(d.dir, shadow, only=("spool", "mail"))
            d.env = shim_env(d.dir, mode="power", shadow=shadow)
            start_counted(d)
            t2 = time.time()
            load = Load(d.port, f"r{rnd}", seed=rnd * 10)
            time.sleep(rng.uniform(0.2, 1.0))
            d.proc.send_signal(signal.SIGKILL)          # the power cut
            d.proc.wait(10)
            d.stderr_file.close()
            load.stop()
            with load.mu:
                acked.update(load.acked)
                round_acked = dict(load.acked)
            shadow_rebuild(shadow, d.dir, ["spool", "mail"])
            shutil.rmtree(shadow, ignore_errors=True)
            d.env = None
            q_before = len(d.events("SPOOL_QUARANTINED"))
            start_counted(d)
            # Quarantine is allowed only for entries that never got a 250.
            acked_qids = {q for q in round_acked.values() if q}
            for ev in d.events("SPOOL_QUARANTINED")[q_before:]:
                assert ev["fields"].get("qid") not in acked_qids, \
                    f"round {rnd}: acknowledged message quarantined: {ev}"
                quarantined_ok += 1
            deadline = time.time() + 30
            while time.time() < deadline:
                got = delivered(d)
                missing = [m for m in round_acked if m not in got]
                if not missing:
                    break
                time.sleep(0.1)
            assert not missing, (f"round {rnd}: {len(missing)} acknowledged messages lost "
                                 f"after the power cut: {missing[:10]}\n{d.stderr()[-3000:]}")
            # Checked: make room, so the next round's shadow stays small.
            for user in d.maildir.iterdir():
                for f in (user / "new").iterdir():
                    f.unlink()
            if VERBOSE:
                print(f"round {rnd}: stop {t1 - t0:.2f}s, shadow+start {t2 - t1:.2f}s, "
                      f"total {time.time() - t0:.2f}s, {len(round_acked)} acked")
        assert len(acked) > ROUNDS, f"too little load: {len(acked)} messages"
        err = d.stderr()
        assert "Sanitizer" not in err and "Segmentation" not in err
        print(f"power cut: {ROUNDS} cuts, {len(acked)} acknowledged messages all delivered, "
              f"{quarantined_ok} never-acknowledged entries quarantined")
    finally:
        d.cleanup()
        shutil.rmtree(shadow_root, ignore_errors=True)


def test_shadow_drops_what_was_not_synced(workdir):
    """The simulation itself: unsynced data and names are lost, synced ones
    kept, an O_DSYNC write is durable at once."""
    import subprocess
    root = workdir / "root"
    tree = root / "tree"
    (tree / "d").mkdir(parents=True)
    (tree / "old").write_bytes(b"old")
    shadow = workdir / "shadow"
    shadow_init(root, shadow)
    script = (
        "import os\n"
        "t = os.environ['FAULT_DIR'] + '/tree'\n"
        "open(t + '/unsynced', 'wb').write(b'lost')\n"          # never synced
        "f = open(t + '/d/synced', 'wb'); f.write(b'kept'); f.flush(); os.fsync(f.fileno())\n"
        "f.write(b' later'); f.close()\n"                        # after the fsync: lost
        "fd = os.open(t + '/old', os.O_WRONLY | os.O_DSYNC); os.pwrite(fd, b'NEW', 0)\n"
        "open(t + '/d/tmpname', 'wb').write(b'x')\n"
        "os.rename(t + '/d/tmpname', t + '/d/renamed')\n"        # dir never synced: lost
        "open(t + '/d/named', 'wb').write(b'data never synced')\n"
        "dfd = os.open(t + '/d', os.O_RDONLY); os.fsync(dfd)\n"  # name durable, data not
        "open(t + '/d/late', 'wb').write(b'y')\n")
    env = shim_env(root, mode="power", shadow=shadow)
    subprocess.run(["/usr/bin/python3", "-c", script], env=env, check=True)
    assert (tree / "unsynced").exists() and (tree / "d" / "late").exists()
    shadow_rebuild(shadow, root, ["tree"])
    assert (tree / "old").read_bytes() == b"NEW"
    assert not (tree / "unsynced").exists()
    assert (tree / "d" / "synced").read_bytes() == b"kept"
    assert not (tree / "d" / "late").exists()
    assert (tree / "d" / "named").read_bytes() == b""
    # renamed was in d/ when d/ was fsync'd (name durable) but never synced
    assert (tree / "d" / "renamed").read_bytes() == b""
