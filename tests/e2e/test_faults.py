"""Fault injection at every write, fsync and commit (issue 8, item 3).

carrierd runs under the LD_PRELOAD shim (tests/fault/fault.c).  A dry run
(FAULT_AT=0) numbers every write/fsync/rename of one message's receive path
under the spool (and of one local delivery under the Maildir root); then,
for each of those points, a fresh daemon fails exactly that call with
ENOSPC or EIO.  Whatever the point:

- the client gets 452 4.3.1 or 250; a failed fsync (or synchronous write,
  or rename of the data) is never followed by 250 for that message;
- after 250, the message is delivered, also after a restart;
- after 4xx, nothing half-written remains (no body file, no envelope);
- the daemon goes on: a second message is accepted and delivered.

The local delivery path: a failed write/fsync/link defers the recipient
(DELIVERY_DEFERRED), never reports it delivered, and the retry delivers it.
"""
import os
import time

import pytest

from conftest import Daemon, make_tempdir
from faultlib import SHIM_USABLE, give_to_carrier, read_log, shim_env, spool_qids

pytestmark = pytest.mark.skipif(not SHIM_USABLE, reason="build/fault/libfault.so not built, or a sanitizer build")

CONF = ("[log]\nlevel.delivery = medium\nlevel.smtp_in = medium\n"
        "[spool]\ninline_max = 4k\n"
        "[delivery]\nretry_schedule = 1s\n")
SERVER = "[server]\ndrain_timeout = 2s\n"
SMALL = 200
LARGE = 40 * 1024       # above inline_max: a body file


def body(tag, size):
    line = "x" * 70 + "\r\n"
    return (f"Subject: {tag}\r\nMessage-ID: <{tag}@fault.test>\r\n\r\n"
            + line * (size // len(line) + 1))


def send(d, tag, size, rcpt="u@localhost"):
    """Returns the final reply code of the transaction."""
    s = d.smtp()
    try:
        s.ehlo()
        s.mail("a@sender.example")
        s.rcpt(rcpt)
        code, msg = s.data(body(tag, size))
        return code, msg
    finally:
        try:
            s.quit()
        except Exception:
            s.close()


def mail_with(d, tag, user="u"):
    new = d.maildir / user / "new"
    if not new.is_dir():
        return []
    return [p for p in new.iterdir() if f"<{tag}@fault.test>".encode() in p.read_bytes()]


def wait_mail(d, tag, user="u", timeout=10):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = mail_with(d, tag, user)
        if got:
            return got
        time.sleep(0.05)
    return []


def new_daemon(made, fault_dir, **fault):
    d = Daemon(make_tempdir(), extra_conf=SERVER + CONF)
    made.append(d)
    d.maildir.mkdir()
    give_to_carrier(d.maildir)
    d.fault_log = d.dir / "fault.log"
    target = d.spool if fault_dir == "spool" else d.maildir
    d.env = shim_env(target, d.fault_log, **fault)
    return d


@pytest.fixture
def made():
    lst = []
    yield lst
    for d in lst:
        d.cleanup()


def points(made, fault_dir, size):
    """Dry run: the numbered calls of one message's path, after startup.
    Each call gets its rank among the calls of the same op (from process
    start), which stays stable where the overall order does not (a body's
    write count depends on how TCP cut it): FAULT_OP=op FAULT_AT=rank."""
    d = new_daemon(made, fault_dir, at=0)
    d.start()
    start = len(read_log(d.fault_log))
    code, _ = send(d, "dry", size)
    assert code == 250
    assert wait_mail(d, "dry")
    d.wait_event("DELIVERY_REMOVED")
    time.sleep(0.2)
    d.stop()
    calls, rank, out = read_log(d.fault_log), {}, []
    for c in calls:
        rank[c[1]] = rank.get(c[1], 0) + 1
        out.append((rank[c[1]],) + c[1:])
    return start, out[start:]


def receive_points(made, size):
    start, calls = points(made, "spool", size)
    # The receive path: up to and including the first LMDB commit's meta
    # page write after the body; delivery's commits come later.
    out = []
    for c in calls:
        out.append(c)
        if c[1] == "pwrite" and c[2].endswith("data.mdb"):
            break
    return out


SYNCS = ("fsync", "fdatasync", "pwrite", "rename")   # pwrite: LMDB's O_DSYNC meta page


@pytest.mark.parametrize("size", [SMALL, LARGE], ids=["inline", "bodyfile"])
def test_fault_at_every_receive_point(made, size):
    pts = receive_points(made, size)
    ops = [p[1] for p in pts]
    assert "fdatasync" in ops and "pwrite" in ops, pts
    if size == LARGE:
        assert "rename" in ops and "fsync" in ops, pts
    # Large bodies are written in many write() calls, as many as TCP cut
    # it: keep the first, and every other point.
    chosen = []
    writes = [p for p in pts if p[1] == "write"]
    for p in pts:
        if p[1] != "write" or p == writes[0]:
            chosen.append(p)
    covered = []
    for i, (n, op, path, _, _) in enumerate(chosen):
        err = "EIO" if i % 2 == 0 else "ENOSPC"
        d = new_daemon(made, "spool", at=n, errno=err, op=op)
        d.start()
        tag = f"m{op}{n}"
        code, msg = send(d, tag, size)
        log = read_log(d.fault_log)
        failed = [c for c in log if c[3] == -1 and c[0] == n]
        assert failed, f"point {n} {op} was not reached: {log[-5:]}"
        where = f"point {n} {op} {os.path.basename(path)} {err}: {code} {msg!r}"
        assert code in (250, 452), where
        if code == 452:
            assert msg.startswith(b"4.3.1"), where
        if op in SYNCS:
            assert code != 250, "a failed sync was followed by 250: " + where
        # The daemon goes on: a second message is accepted and delivered.
        # (After a failed LMDB meta-page write LMDB refuses every commit
        # until the environment is reopened: 452 until then; see
        # test_meta_page_failure_recovers_in_place.)
        meta = op == "pwrite" and path.endswith("data.mdb")
        code2, msg2 = send(d, tag + "b", SMALL)
        if meta:
            assert code2 in (250, 452), where
            if code2 == 250:
                assert wait_mail(d, tag + "b"), where
        else:
            assert code2 == 250, f"after {where}: {code2} {msg2!r}\n{d.stderr()[-2000:]}"
            assert wait_mail(d, tag + "b"), where
        if code == 250:
            assert wait_mail(d, tag), where
        if meta:
            d.kill()     # known: after MDB_PANIC, SIGTERM may not stop it
        else:
            stop_ok(d, where)
        # After a restart: the 250'd message is there, the refused one is not
        # and left nothing behind.
        body_dir = d.spool / "body"
        leftovers = [p.name for p in body_dir.iterdir()] if body_dir.is_dir() else []
        d.env = None
        d.start()
        time.sleep(0.3)
        if code == 250:
            assert len(mail_with(d, tag)) == 1, where
        else:
            assert mail_with(d, tag) == [], where
            assert leftovers == [], f"{where}: left {leftovers}"
        if meta:      # restarted, it accepts again
            code2, _ = send(d, tag + "c", SMALL)
            assert code2 == 250 and wait_mail(d, tag + "c"), where
            d.wait_event("DELIVERY_REMOVED")
            time.sleep(0.2)
        d.stop()
        assert spool_qids(d.spool) == [], where
        covered.append((op, err, code))
    assert len(covered) == len(chosen)


def _spool_reopens():
    from conftest import ROOT
    return "EV_SPOOL_REOPENED" in (ROOT / "src" / "spool.c").read_text()


def test_meta_page_failure_recovers_in_place(made):
    pts = receive_points(made, SMALL)
    n = [p[0] for p in pts if p[1] == "pwrite"][0]
    d = new_daemon(made, "spool", at=n, errno="EIO", op="pwrite")
    d.start()
    assert send(d, "meta", SMALL)[0] == 452
    deadline, code = time.time() + 15, 0
    while time.time() < deadline and code != 250:
        code = send(d, f"meta{int(time.time() * 1000)}", SMALL)[0]
        if code != 250:
            time.sleep(0.5)
    assert code == 250
    # and nothing acknowledged before the failure was lost: the spool opens
    d.kill()
    d.env = None
    d.start()


def stop_ok(d, where):
    try:
        rc = d.stop(timeout=15)
    except Exception:
        d.kill()
        raise AssertionError(f"{where}: carrierd did not stop on SIGTERM\n{d.stderr()[-3000:]}")
    assert rc == 0, f"{where}: exit {rc}\n{d.stderr()[-3000:]}"


def local_points(made):
    start, calls = points(made, "mail", SMALL)
    return calls


def test_fault_at_every_maildir_point(made):
    pts = local_points(made)
    ops = [p[1] for p in pts]
    assert "write" in ops and "fsync" in ops and ("link" in ops or "rename" in ops), pts
    for i, (n, op, path, _, _) in enumerate(pts):
        err = "EIO" if i % 2 == 0 else "ENOSPC"
        d = new_daemon(made, "mail", at=n, errno=err, op=op)
        d.start()
        tag = f"l{op}{n}"
        code, msg = send(d, tag, SMALL)
        where = f"point {n} {op} {path} {err}"
        assert code == 250, where
        ev = d.wait_event("DELIVERY_DEFERRED")[0]
        # The failed attempt deferred; the retry (1s) delivers.
        got = wait_mail(d, tag, timeout=15)
        assert got, where
        d.wait_event("DELIVERY_REMOVED", timeout=10)
        delivered = d.events("DELIVERY_DELIVERED")
        deferred = d.events("DELIVERY_DEFERRED")
        assert len(deferred) >= 1, where
        # Delivered is reported once, after the deferral, never for the
        # failed attempt.
        assert len(delivered) == 1, f"{where}: {delivered}"
        t_def = d.events().index(deferred[0])
        t_del = d.events().index(delivered[0])
        assert t_def < t_del, where
        # A failure after the link into new/ may leave a copy: a duplicate,
        # never a loss; before it there is exactly one.
        if op in ("write", "link", "rename") or (op == "fsync" and "/tmp/" in path):
            assert len(mail_with(d, tag)) == 1, where
        assert [p for p in (d.maildir / "u" / "tmp").iterdir()] == [], where
        d.stop()
