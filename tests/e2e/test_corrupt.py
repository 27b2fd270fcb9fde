"""Corrupt spool entries (issue 8, item 4): a flipped byte in an envelope,
an unknown record version on one envelope, a flipped byte in an inline
body, a truncated body file and a missing one.  carrierd starts anyway,
quarantines exactly the damaged entries (SPOOL_QUARANTINED, the quarantine
database, body files moved to quarantine/), and the healthy messages
queued beside them are delivered.

The damage is done with build/fault/spoolpoke (raw LMDB, not the spool's
code) while carrierd is stopped.
"""
import os
import shutil
import time

import pytest

from conftest import Daemon, make_tempdir
from faultlib import POKE, give_to_carrier, poke, spool_qids

pytestmark = pytest.mark.skipif(not POKE.exists(), reason="build/fault/spoolpoke not built")

CONF = ("[server]\ndrain_timeout = 2s\n[log]\nlevel.delivery = medium\nlevel.smtp_in = medium\n"
        "[spool]\ninline_max = 4k\n[delivery]\nretry_schedule = 1s\n")


def send(d, tag, size):
    s = d.smtp()
    try:
        line = "c" * 70 + "\r\n"
        code, msg = s.sendmail("a@sender.example", ["u@localhost"],
                               f"Subject: {tag}\r\nMessage-ID: <{tag}@corrupt.test>\r\n\r\n"
                               + line * (size // len(line) + 1)) or (250, b"")
        return code
    finally:
        s.quit()


def queue_by_tag(d, before):
    """Maps each test message to its qid: qids appear in send order."""
    after = [e["fields"]["qid"] for e in d.events("SMTP_IN_ACCEPTED")]
    return after[before:]


def delivered_tags(d):
    out = set()
    new = d.maildir / "u" / "new"
    for f in new.iterdir() if new.is_dir() else []:
        text = f.read_text(errors="replace")
        for line in text.splitlines():
            if line.lower().startswith("message-id:"):
                out.add(line.split("<")[1].split("@")[0])
    return out


@pytest.fixture
def d():
    dm = Daemon(make_tempdir(), extra_conf=CONF)
    yield dm
    dm.cleanup()


def test_corrupt_entries_are_quarantined_and_the_rest_flows(d):
    # Deliveries fail while the Maildir root is a file: everything stays queued.
    d.maildir.write_text("not a directory\n")
    d.start()
    tags = {"envflip": 300, "version": 300, "bodyflip": 300, "truncated": 20000,
            "missing": 20000, "ok_small": 300, "ok_large": 20000}
    for tag, size in tags.items():
        send(d, tag, size)
    qids = dict(zip(tags, [e["fields"]["qid"] for e in d.wait_event(
        "SMTP_IN_ACCEPTED", count=len(tags))]))
    assert d.stop() == 0
    assert sorted(spool_qids(d.spool)) == sorted(qids.values())
    body = d.spool / "body"
    assert (body / qids["truncated"]).exists() and (body / qids["missing"]).exists()

    poke("flip", d.spool, qids["envflip"], 30)
    poke("version", d.spool, qids["version"], 7)
    poke("flipbody", d.spool, qids["bodyflip"], 40)
    with open(body / qids["truncated"], "r+b") as f:
        f.truncate(1000)
    os.unlink(body / qids["missing"])

    d.maildir.unlink()
    d.maildir.mkdir()
    give_to_carrier(d.maildir)
    d.start()          # startup never stops on a damaged entry
    d.wait_event("CORE_READY")
    damaged = {"envflip", "version", "bodyflip", "truncated", "missing"}
    deadline = time.time() + 20
    while time.time() < deadline:
        q = {e["fields"].get("qid") for e in d.events("SPOOL_QUARANTINED")}
        if {qids[t] for t in damaged} <= q and {"ok_small", "ok_large"} <= delivered_tags(d):
            break
        time.sleep(0.1)
    q_events = d.events("SPOOL_QUARANTINED")
    q = {e["fields"].get("qid") for e in q_events}
    assert {qids[t] for t in damaged} <= q, (
        f"quarantined {q}, want {[qids[t] for t in damaged]}; "
        f"{[e['event'] for e in d.events()]}\n{d.stderr()[-3000:]}")
    assert q <= set(qids.values())
    for e in q_events:
        assert e["fields"].get("reason"), e
    # Everything else keeps flowing: the healthy ones are delivered, and a
    # new message too.
    assert {"ok_small", "ok_large"} <= delivered_tags(d), d.stderr()[-3000:]
    assert not (delivered_tags(d) & damaged)
    send(d, "after", 300)
    deadline = time.time() + 10
    while "after" not in delivered_tags(d) and time.time() < deadline:
        time.sleep(0.1)
    assert "after" in delivered_tags(d)
    d.wait_event("DELIVERY_REMOVED", count=3)
    time.sleep(0.3)
    assert d.stop() == 0
    # The damaged entries are in the quarantine database, out of the queue;
    # the truncated body file was moved to quarantine/.
    quarantined = {l.split()[0] for l in poke("list", d.spool, "quarantine").splitlines()}
    assert {qids[t] for t in damaged} <= quarantined
    assert spool_qids(d.spool) == []
    assert (d.spool / "quarantine" / qids["truncated"]).exists()
    assert not (body / qids["truncated"]).exists()
    # A restart does not quarantine or deliver them again.
    n = len(q_events)
    d.start()
    time.sleep(0.5)
    assert len(d.events("SPOOL_QUARANTINED")) == n
    assert d.stop() == 0
