#!/usr/bin/python3
"""make crashtest: kill -9 carrierd at random moments under steady load and
prove that nothing it acknowledged is lost (issue 8, item 1).

Load: --clients threads, each opening sessions of 1-3 messages of mixed
sizes (300 B to 300 KB, so inline and body-file spool entries), one
recipient each: a local user (Maildir delivery) or, when carrierd runs the
delivery runner, a recipient at one of two next hops (tests/e2e/sink.py on
loopback); the second hop answers 451 to temp* recipients half of the time.
Every message carries a unique Message-ID; a client records it only when
the reply to its DATA is 250.

Between loads carrierd is SIGKILLed at a random moment and restarted,
--kills times.  At the end the sinks accept everything, carrierd drains its
queue, and the invariant is checked against the client's records and the
sinks' own (Maildir files and sink transactions, by Message-ID): every
250'd message was delivered or is still queued; none vanished.  Duplicates
are counted (a kill between the spool commit and the 250 reaching the
client makes an unacknowledged delivery, a kill between a next hop's 250
and the spool's update a duplicate).

    /usr/bin/python3 tests/crash/crashtest.py [--kills N] [--clients N] [--seed N]
"""
import argparse
import bisect
import json
import os
import pathlib
import random
import re
import shutil
import signal
import smtplib
import socket
import sys
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from conftest import CARRIERD, Daemon, make_tempdir  # noqa: E402
from faultlib import give_to_carrier, spool_qids  # noqa: E402

MSGID = re.compile(rb"^Message-ID: <([^>]+)@crash\.test>", re.M | re.I)


class Load:
    """Client threads: each records the Message-IDs answered with 250."""

    def __init__(self, port, clients, remote, seed):
        self.port, self.remote = port, remote
        self.acked, self.sent, self.refused = {}, 0, 0
        self.mu = threading.Lock()
        self.stop_ev = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i, seed + i), daemon=True)
                        for i in range(clients)]
        self.counter = 0

    def start(self):
        for t in self.threads:
            t.start()

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(15)

    def next_id(self):
        with self.mu:
            self.counter += 1
            return self.counter

    def message(self, rng):
        n = self.next_id()
        mid = f"c{n}"
        kind = rng.random()
        if not self.remote or kind < 0.5:
            rcpt = f"u{n % 4}@localhost"
        elif kind < 0.75:
            rcpt = f"ok{n}@remote1.test"
        else:
            rcpt = f"temp{n}@remote2.test"
        size = rng.choice([300, 2000, 20000, 70000, 300000])
        line = f"{mid} " + "z" * 70 + "\r\n"
        body = (f"From: <load@client.test>\r\nTo: <{rcpt}>\r\nSubject: crash {mid}\r\n"
                f"Message-ID: <{mid}@crash.test>\r\n\r\n" + line * (size // len(line) + 1))
        return mid, rcpt, body

    def run(self, i, seed):
        rng = random.Random(seed)
        while not self.stop_ev.is_set():
            try:
                s = smtplib.SMTP("127.0.0.1", self.port, timeout=5)
            except OSError:
                time.sleep(0.02)
                continue
            try:
                s.ehlo("load.test")
                for _ in range(rng.randint(1, 3)):
                    mid, rcpt, body = self.message(rng)
                    s.mail("load@client.test")
                    s.rcpt(rcpt)
                    with self.mu:
                        self.sent += 1
                    code, msg = s.data(body)
                    with self.mu:
                        if code == 250:
                            self.acked[mid] = (rcpt, msg.decode(errors="replace"))
                        else:
                            self.refused += 1
                s.quit()
            except (OSError, smtplib.SMTPException):
                pass
            finally:
                try:
                    s.close()
                except Exception:
                    pass


class Harvest:
    """Message-ID -> copies delivered and their times, gathered as a mail
    reader would: Maildir files are read and removed, sink transactions
    taken.  Harvesting during the run keeps a 10,000-kill run inside the
    disk and memory of one machine (about 100 GB of mail otherwise)."""

    def __init__(self, d, sinks):
        self.d, self.sinks = d, sinks
        self.got, self.times = {}, {}

    def add(self, head, when, copies=1, began=None):
        """`began`: when the delivering connection was opened (sinks), so
        a copy is placed in the life of the carrierd that sent it even
        when the sink, sharing this process, reads the data late."""
        m = MSGID.search(head)
        if m:
            k = m.group(1).decode()
            self.got[k] = self.got.get(k, 0) + copies
            self.times.setdefault(k, []).append((when, began if began else when))

    def collect(self):
        if self.d.maildir.is_dir():
            for user in self.d.maildir.iterdir():
                for sub in ("new", "cur"):
                    p = user / sub
                    if not p.is_dir():
                        continue
                    for f in p.iterdir():
                        try:
                            with open(f, "rb") as fh:
                                head = fh.read(2048)
                            when = f.stat().st_mtime
                            f.unlink()
                        except OSError:
                            continue
                        self.add(head, when)
        for s in self.sinks:
            for t in s.take():
                self.add(t.get("data") or b"", t.get("time", 0), len(t.get("rcpts") or [1]),
                         t.get("conn_time"))
        return self.got


def events_naming(d, word):
    """The events whose line names `word`, read line by line (the log of a
    long run does not fit in memory as parsed JSON)."""
    needle = word.encode()
    with open(d.json_log, "rb") as f:
        for line in f:
            if needle in line:
                try:
                    yield json.loads(line)
                except ValueError:
                    continue


def log_size(d):
    try:
        return d.json_log.stat().st_size
    except FileNotFoundError:
        return 0


def ready_since(d, offset):
    """True once CORE_READY was logged past `offset`: reading only the new
    part keeps a 10,000-restart run linear (the log grows to gigabytes)."""
    try:
        with open(d.json_log, "rb") as f:
            f.seek(offset)
            return b'"CORE_READY"' in f.read()
    except FileNotFoundError:
        return False


def start(d, timeout=20):
    before = log_size(d)
    d.start(wait_ready=False, argv=[str(d.private_bin), "-f", "-c", str(d.conf_path)])
    deadline = time.time() + timeout
    while time.time() < deadline:
        if d.proc.poll() is not None:
            raise SystemExit(f"carrierd exited with {d.proc.returncode} at restart:\n"
                             f"{d.stderr()[-4000:]}")
        if ready_since(d, before):
            return
        time.sleep(0.01)
    raise SystemExit(f"carrierd not ready after {timeout}s:\n{d.stderr()[-4000:]}")


def runner_wired():
    src = (ROOT / "src" / "carrierd.c").read_text()
    return "delivery_new" in src


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--min-up", type=float, default=0.05, help="shortest run between kills (s)")
    ap.add_argument("--max-up", type=float, default=0.6, help="longest run between kills (s)")
    ap.add_argument("--drain", type=float, default=180, help="seconds allowed to drain")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--log-level", default="minimum",
                    help="carrierd's level.delivery (medium logs every attempt's result)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    remote = runner_wired()
    sinks = []
    conf = (f"[log]\nlevel.delivery = {args.log_level}\n"
            "[spool]\ninline_max = 16k\n"
            "[delivery]\nretry_schedule = 1s\nconnect_timeout = 2s\ncommand_timeout = 5s\n")
    if remote:
        from sink import DEFAULT_RULES, Sink
        sinks = [Sink(keep_data=2048).start(), Sink(keep_data=2048).start()]
        conf += "".join(f"[route remote{i + 1}.test]\nvia = smtp:[127.0.0.1]:{s.port}\n"
                        for i, s in enumerate(sinks))
    d = Daemon(make_tempdir("carrier-crash-"), extra_conf=conf)
    d.maildir.mkdir()
    give_to_carrier(d.maildir)
    # A private copy: others may rebuild build/carrierd during a long run.
    d.private_bin = d.dir / "carrierd"
    shutil.copy2(CARRIERD, d.private_bin)
    print(f"crashtest: seed {args.seed}, {args.kills} kills, {args.clients} clients, "
          f"next hops: Maildir{' + 2 SMTP sinks' if remote else ' only (no delivery runner)'}; "
          f"dir {d.dir}", flush=True)
    start(d)
    load = Load(d.port, args.clients, remote, args.seed)
    load.start()
    harvest = Harvest(d, sinks)
    t0 = time.time()
    flip = 0
    kill_times = []
    try:
        for k in range(1, args.kills + 1):
            time.sleep(rng.uniform(args.min_up, args.max_up))
            if sinks and k % 5 == 0:      # the second hop: 451 to temp* half the time
                flip ^= 1
                sinks[1].opts.rules = DEFAULT_RULES if flip else []
            kill_times.append(time.time())
            d.proc.send_signal(signal.SIGKILL)
            d.proc.wait(10)
            d.stderr_file.close()
            start(d)
            if k % 50 == 0:
                harvest.collect()
            if k % 50 == 0 or k == args.kills:
                with load.mu:
                    print(f"  {k} kills, {len(load.acked)} acknowledged, "
                          f"{time.time() - t0:.0f}s", flush=True)
    finally:
        load.stop()
    for s in sinks:
        s.opts.rules = []
    acked = dict(load.acked)
    deadline = time.time() + args.drain
    while time.time() < deadline:
        got = harvest.collect()
        if all(m in got for m in acked):
            break
        time.sleep(0.5)
    time.sleep(1.0)        # let the last removals commit
    d.stop()
    queued = spool_qids(d.spool)
    got = harvest.collect()
    times = harvest.times
    lost = sorted(m for m in acked if m not in got)
    dup = {m: n for m, n in got.items() if n > 1}
    # A duplicate is explained when a kill fell between two of its copies
    # (delivered, then killed before the spool recorded it, then retried).
    unexplained, windows, late_reads = [], [], 0
    for m in dup:
        ts = sorted(times.get(m, []))
        for (a, a_began), (b, _) in zip(ts, ts[1:]):
            # A kill after the first copy's connection opened (a carrierd
            # cannot open one after its death) and before the second copy.
            i = bisect.bisect_left(kill_times, min(a, a_began) - 0.05)   # sorted
            if i == len(kill_times) or kill_times[i] > b + 0.05:
                unexplained.append(m)
                break
            # How long the copy had been delivered when the kill came: the
            # kill fell inside the window between the next hop's 250 (or
            # the Maildir link) and the spool recording it.
            j = bisect.bisect_left(kill_times, a - 0.05)
            if j < len(kill_times) and kill_times[j] <= b + 0.05:
                windows.append(max(0.0, kill_times[j] - a))
            else:
                late_reads += 1
    dup_local = sum(1 for m in dup if m in acked and acked[m][0].endswith("@localhost"))
    unacked = sorted(m for m in got if m not in acked)
    crashes = [l for l in d.stderr().splitlines() if "Sanitizer" in l or "Segmentation" in l]
    quarantined = sum(1 for _ in events_naming(d, '"SPOOL_QUARANTINED"'))
    print(f"crashtest summary: kills {args.kills}, sent {load.sent}, accepted {len(acked)}, "
          f"refused (4xx/5xx) {load.refused}, delivered {sum(1 for m in acked if m in got)}, "
          f"still queued {len(queued)}, lost {len(lost) if not queued else len(lost)}, "
          f"duplicated {len(dup)} ({sum(dup.values()) - len(dup)} extra copies; "
          f"{dup_local} Maildir, {len(dup) - dup_local} SMTP; "
          f"{len(dup) - len(unexplained)} with a kill between the copies, "
          f"{len(unexplained)} without), "
          f"delivered without a 250 (kill between commit and reply) {len(unacked)}, "
          f"quarantined {quarantined}, seed {args.seed}, {time.time() - t0:.0f}s")
    if windows:
        windows.sort()
        q = lambda f: windows[min(len(windows) - 1, int(f * len(windows)))] * 1000
        per_kill = (sum(dup.values()) - len(dup)) / max(1, args.kills)
        print(f"duplicate window (delivered -> kill, the copy not yet recorded): "
              f"median {q(0.5):.0f} ms, p90 {q(0.9):.0f} ms, p99 {q(0.99):.0f} ms, "
              f"max {windows[-1] * 1000:.0f} ms; {per_kill:.2f} extra copies per kill; "
              f"{late_reads} first copies sent before a kill and read by the sink after it")
    for s in sinks:
        s.stop()
    bad = False
    if lost and not queued:
        print(f"LOST: {lost[:20]}")
        bad = True
    elif lost:
        print(f"not delivered, {len(queued)} still queued: {lost[:20]} (queue: {queued[:10]})")
        bad = True
    if unexplained:
        print(f"duplicates without a kill between the copies: {unexplained[:20]}")
        for m in unexplained[:5]:
            qid = re.search(r"queued as (\w+)", acked.get(m, ("", ""))[1])
            ts = sorted(times.get(m, []))
            i = bisect.bisect_left(kill_times, ts[0][0]) if ts else 0
            near = kill_times[max(0, i - 1):i + 1]
            print(f"  {m} {acked.get(m, ('?',))[0]} copies at {ts}, nearest kills {near}")
            if qid:
                for e in events_naming(d, qid.group(1)):
                    print(f"    {e.get('time', '')} {e['event']}: {e.get('msg', '')[:200]}")
    if crashes:
        print("carrierd crashed:\n" + "\n".join(crashes[:10]))
        bad = True
    if queued:
        print(f"still queued after the drain: {queued[:10]}")
    if not args.keep and not bad:
        d.cleanup()
    else:
        print(f"work directory kept: {d.dir}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
