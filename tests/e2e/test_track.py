"""End-to-end tests of `carrier track`, the real build/carrier reading
tracking files.

The files are generated here in the exact format of src/track.c (one JSON
object a line, "ts", "qid", "type" first, UTC day files named
track-YYYY-MM-DD.jsonl; see src/track.h for the fields of each type), so
the reader is tested on its own.  When the daemon wiring lands, a test
that sends mail through carrierd and tracks it joins these.
"""
import datetime
import json
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BUILD = ROOT / os.environ.get("CARRIER_BUILD", "build")
CARRIER = BUILD / "carrier"

UTC = datetime.timezone.utc


def ts(s):
    """'2025-11-23 23:58:00.5' -> datetime (UTC)."""
    return datetime.datetime.fromisoformat(s).replace(tzinfo=UTC)


def iso(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def rec(when, qid, typ, **fields):
    """One record line as src/track.c writes it."""
    obj = {"ts": iso(when), "qid": qid, "type": typ}
    obj.update(fields)
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class TrackDir:
    def __init__(self, path):
        self.path = pathlib.Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def add(self, when, qid, typ, **fields):
        self.raw(when, rec(when, qid, typ, **fields))

    def raw(self, when, line, newline=True):
        name = self.path / f"track-{when:%Y-%m-%d}.jsonl"
        with open(name, "ab") as f:
            f.write(line.encode() if isinstance(line, str) else line)
            if newline:
                f.write(b"\n")


def track(directory, *args):
    return subprocess.run([str(CARRIER), "track", "-d", str(directory), *args],
                          capture_output=True, text=True, timeout=30)


def stories(out):
    """Output -> {qid: [lines]} in order, and the qids in order."""
    got, order, cur = {}, [], None
    for line in out.splitlines():
        if line.startswith("message "):
            cur = line[len("message "):]
            order.append(cur)
            got[cur] = []
        elif line and cur is not None:
            got[cur].append(line)
    return got, order


@pytest.fixture
def logs(workdir):
    """Three stories over four days (a year back, clear of "now"):
    Q5  2025-11-20, delivered at once (from other@z.example)
    Q1  2025-11-23 23:58 received, deferred for e@f, delivered the next day
    Q3  2025-11-24 09:00 bounced for nobody@d.example; its bounce is Q4
    plus damaged lines and a hostile HELO (QH)."""
    t = TrackDir(workdir / "track")
    d = ts("2025-11-20 08:00:00")
    t.add(d, "Q5", "received", client="192.0.2.9", helo="z.example", tls="none", size=100,
          msgid="<q5@z.example>", **{"from": "other@z.example"}, nrcpts=1,
          rcpts=["r@d.example"])
    t.add(d, "Q5", "delivered", rcpt="r@d.example", nexthop="maildir", reply="delivered")

    d = ts("2025-11-23 23:58:00.250")
    t.add(d, "Q1", "received", client="127.0.0.1", helo="client.example",
          tls="TLSv1.3 TLS_AES_256_GCM_SHA384", auth="alice", size=4096,
          msgid="<m1@a.example>", **{"from": "a@b.example"}, nrcpts=2,
          rcpts=["c@d.example", "e@f.example"])
    t.add(d, "Q1", "queued", origin="smtp", **{"from": "a@b.example"}, nrcpts=2)
    d = ts("2025-11-23 23:58:01")
    t.add(d, "Q1", "routed", rcpt="c@d.example", space="d.example",
          nexthop="smtp:[127.0.0.1]:2526", cost=5)
    t.add(d, "Q1", "routed", rcpt="e@f.example", space="*", nexthop="mx:f.example", cost=10)
    d = ts("2025-11-23 23:58:02")
    t.add(d, "Q1", "attempt", nexthop="smtp:[127.0.0.1]:2526", addr="127.0.0.1:2526",
          reply="250 2.0.0 Ok", nrcpts=1, rcpts=["c@d.example"])
    t.add(d, "Q1", "delivered", rcpt="c@d.example", nexthop="smtp:[127.0.0.1]:2526",
          reply="250 2.0.0 Ok")
    t.add(d, "Q1", "attempt", nexthop="mx:f.example", addr="192.0.2.7:25",
          reply="451 4.3.0 try again later", nrcpts=1, rcpts=["e@f.example"])
    t.add(d, "Q1", "deferred", rcpt="e@f.example", reason="451 4.3.0 try again later",
          next="2025-11-24T00:03:02.000Z")
    # Damage: a torn line glued to nothing, garbage, a non-object.
    t.raw(d, '{"ts":"2025-11-23T23:59:00.000Z","qid":"Q1","type":"deliv')
    t.raw(d, "this is not json")
    t.raw(d, b"{\"ts\":\"2025-11-23T23:59:00.000Z\",\"qid\":\"Q1\",\"type\":\"x\xff\"}")
    d = ts("2025-11-24 00:03:02")
    t.add(d, "Q1", "attempt", nexthop="mx:f.example", addr="192.0.2.7:25",
          reply="250 2.0.0 queued as 77", nrcpts=1, rcpts=["e@f.example"])
    t.add(d, "Q1", "delivered", rcpt="e@f.example", nexthop="mx:f.example",
          reply="250 2.0.0 queued as 77")

    d = ts("2025-11-24 09:00:00")
    t.add(d, "Q3", "received", client="127.0.0.1", helo="y.example", tls="none", size=512,
          msgid="<m3@y.example>", **{"from": "x@y.example"}, nrcpts=1,
          rcpts=["nobody@d.example"])
    d = ts("2025-11-24 09:00:01")
    t.add(d, "Q3", "attempt", nexthop="smtp:[127.0.0.1]:2526", addr="127.0.0.1:2526",
          reply="550 5.1.1 no such user", nrcpts=1, rcpts=["nobody@d.example"])
    t.add(d, "Q3", "bounced", rcpt="nobody@d.example", reason="550 5.1.1 no such user",
          bounce_qid="Q4")
    t.add(d, "Q4", "queued", origin="dsn", **{"from": ""}, nrcpts=1)
    d = ts("2025-11-24 09:00:02")
    t.add(d, "Q4", "delivered", rcpt="x@y.example", nexthop="maildir", reply="delivered")
    t.add(d, "Q3", "held", uid=0)

    d = ts("2025-11-24 10:00:00")
    t.add(d, "QH", "received", client="203.0.113.5",
          helo="evil\x1b[2J\r\n{\"type\":\"delivered\"}\x07", tls="none", size=1,
          msgid="", **{"from": "h@evil.example"}, nrcpts=0, rcpts=[])
    (t.path / "track-notes.txt").write_text('{"ts":"2025-11-24T00:00:00.000Z","qid":"Q1"}\n')
    return t


def test_story_across_days_by_qid(logs):
    r = track(logs.path, "--qid", "Q1")
    assert r.returncode == 0, r.stderr
    got, order = stories(r.stdout)
    assert order == ["Q1"]
    lines = got["Q1"]
    assert [l.split()[2] for l in lines] == [
        "received", "queued", "routed", "routed", "attempt", "delivered", "attempt",
        "deferred", "attempt", "delivered"]
    assert lines[0] == ("2025-11-23 23:58:00  received  from <a@b.example> via 127.0.0.1 "
                        "[helo client.example] tls TLSv1.3 TLS_AES_256_GCM_SHA384 auth alice "
                        "size 4096 msgid <m1@a.example> rcpts 2")
    assert lines[2] == ("2025-11-23 23:58:01  routed    <c@d.example> route d.example "
                        "via smtp:[127.0.0.1]:2526 cost 5")
    assert lines[6] == ("2025-11-23 23:58:02  attempt   <e@f.example> via mx:f.example "
                        "(192.0.2.7:25) 451 4.3.0 try again later")
    assert lines[7] == ("2025-11-23 23:58:02  deferred  <e@f.example> 451 4.3.0 try again "
                        "later, next attempt 2025-11-24 00:03:02")
    assert lines[9] == ("2025-11-24 00:03:02  delivered <e@f.example> via mx:f.example "
                        "250 2.0.0 queued as 77")
    # The damaged lines are skipped and said so, not fatal.
    assert "skipped 3 unreadable lines" in r.stderr


def test_bounce_story_follows_bounce_qid(logs):
    r = track(logs.path, "--qid", "Q3")
    assert r.returncode == 0, r.stderr
    got, order = stories(r.stdout)
    assert order == ["Q3", "Q4"]
    assert any("bounced   <nobody@d.example> 550 5.1.1 no such user, bounce Q4" in l
               for l in got["Q3"])
    assert got["Q3"][-1].endswith("held      by uid 0")
    assert got["Q4"][0].endswith("queued    origin dsn from <> rcpts 1")
    assert got["Q4"][1].endswith("delivered <x@y.example> via maildir delivered")
    # Asking for the bounce finds the message that caused it too.
    got, order = stories(track(logs.path, "--qid", "Q4").stdout)
    assert order == ["Q3", "Q4"]


def test_by_sender_recipient_and_message_id(logs):
    _, order = stories(track(logs.path, "--from", "a@b.example").stdout)
    assert order == ["Q1"]
    _, order = stories(track(logs.path, "--from", "<A@B.EXAMPLE>").stdout)
    assert order == ["Q1"]
    _, order = stories(track(logs.path, "--from", "@y.example").stdout)
    assert order == ["Q3", "Q4"]
    _, order = stories(track(logs.path, "--to", "e@f.example").stdout)
    assert order == ["Q1"]
    _, order = stories(track(logs.path, "--to", "@d.example").stdout)
    assert order == ["Q5", "Q1", "Q3", "Q4"]
    _, order = stories(track(logs.path, "--to", "x@y.example").stdout)
    assert order == ["Q4"]
    _, order = stories(track(logs.path, "--message-id", "m1@a.example").stdout)
    assert order == ["Q1"]
    _, order = stories(track(logs.path, "--message-id", "<m3@y.example>").stdout)
    assert order == ["Q3", "Q4"]
    # Options combine: one record must satisfy all of them.
    _, order = stories(track(logs.path, "--from", "a@b.example", "--to", "c@d.example").stdout)
    assert order == ["Q1"]
    r = track(logs.path, "--from", "a@b.example", "--to", "nobody@d.example")
    assert r.returncode == 1 and r.stdout == ""


def test_time_range_reads_only_its_files(logs):
    _, order = stories(track(logs.path, "--until", "2025-11-20").stdout)
    assert order == ["Q5"]
    _, order = stories(track(logs.path, "--since", "2025-11-21", "--to", "@d.example").stdout)
    assert order == ["Q1", "Q3", "Q4"]
    _, order = stories(track(logs.path, "--since", "2025-11-24T09:00", "--until",
                             "2025-11-24 09:30:00Z").stdout)
    assert order == ["Q3", "Q4"]
    _, order = stories(track(logs.path, "--since", "2025-11-24T10:00:00.000+01:00", "--until",
                             "2025-11-24T04:30-05:00").stdout)
    assert order == ["Q3", "Q4"]
    for bad in ("2025-11-24T10", "2025-11-24T10:00+1", "2025-11-24T10:00:00+19:00",
                "2025-13-01", "-2y", "2025-11-24X10:00"):
        r = track(logs.path, "--since", bad)
        assert r.returncode == 2 and "bad time" in r.stderr, bad
    # Only the 2025-11-24 file is read: Q1's story starts there.
    r = track(logs.path, "--since", "2025-11-24", "--qid", "Q1")
    got, order = stories(r.stdout)
    assert order == ["Q1"]
    assert [l.split()[2] for l in got["Q1"]] == ["attempt", "delivered"]
    # The damaged lines are in the 2025-11-23 file, which was not read.
    assert "unreadable" not in r.stderr
    r = track(logs.path, "--since", "2025-12-01")
    assert r.returncode == 1 and r.stdout == ""


def test_relative_time(logs):
    now = datetime.datetime.now(UTC)
    logs.add(now - datetime.timedelta(minutes=30), "QN", "received", client="127.0.0.1",
             helo="now.example", tls="none", size=1, msgid="", **{"from": "n@now.example"},
             nrcpts=1, rcpts=["r@d.example"])
    _, order = stories(track(logs.path, "--since", "-2h").stdout)
    assert order == ["QN"]
    _, order = stories(track(logs.path, "--since", "-2h", "--until", "-1h").stdout)
    assert order == []
    _, order = stories(track(logs.path, "--since", "-1w", "--until", "now").stdout)
    assert order == ["QN"]
    _, order = stories(track(logs.path, "--since", "-1000d", "--to", "r@d.example").stdout)
    assert order == ["Q5", "QN"]


def test_json_output(logs):
    r = track(logs.path, "--json", "--qid", "Q3")
    assert r.returncode == 0, r.stderr
    recs = [json.loads(l) for l in r.stdout.splitlines()]
    assert [(x["qid"], x["type"]) for x in recs] == [
        ("Q3", "received"), ("Q3", "attempt"), ("Q3", "bounced"), ("Q3", "held"),
        ("Q4", "queued"), ("Q4", "delivered")]
    assert recs[2]["bounce_qid"] == "Q4"


def test_hostile_values_cannot_drive_the_terminal(logs):
    r = track(logs.path, "--qid", "QH")
    assert r.returncode == 0, r.stderr
    got, _ = stories(r.stdout)
    assert len(got["QH"]) == 1
    assert "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert '[helo evil?[2J??{"type":"delivered"}?]' in got["QH"][0]
    # --json hands the record back exactly, escapes and all.
    r = track(logs.path, "--json", "--qid", "QH")
    assert json.loads(r.stdout)["helo"] == "evil\x1b[2J\r\n{\"type\":\"delivered\"}\x07"


def test_errors_and_usage(logs, workdir):
    r = track(logs.path, "--qid", "NOPE")
    assert r.returncode == 1 and r.stdout == ""
    r = track(logs.path, "--since", "yesterday")
    assert r.returncode == 2 and "bad time" in r.stderr
    r = track(logs.path, "--bogus")
    assert r.returncode == 2 and "unknown option" in r.stderr
    r = track(workdir / "missing")
    assert r.returncode == 2 and "cannot read the tracking log directory" in r.stderr
    r = subprocess.run([str(CARRIER), "track", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--message-id" in r.stdout


def test_directory_from_the_configuration(logs, workdir):
    """Without -d the directory comes from the configuration (for now: a
    `track` directory beside the spool)."""
    conf = workdir / "carrier.conf"
    conf.write_text(f"[spool]\npath = {workdir}/spool\n")
    r = subprocess.run([str(CARRIER), "track", "-c", str(conf), "--qid", "Q5"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert stories(r.stdout)[1] == ["Q5"]
    conf.write_text("[spool]\nbogus = 1\n")
    r = subprocess.run([str(CARRIER), "track", "-c", str(conf), "--qid", "Q5"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "bogus" in r.stderr
