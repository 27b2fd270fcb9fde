"""End-to-end tests of `carrier route`, with a real DNS server (unbound on a
loopback port, tests/e2e/dnsserver.py) as the configured forwarder.

The zone: a domain with MX records of three preferences (one exchanger
with both families), a domain with only an A record (RFC 5321 5.1 implicit
MX), a null MX (RFC 7505), a CNAME to the first domain, a domain whose MX
points into a zone that never answers, and that zone itself.
"""
import re
import subprocess
import time

import pytest

from conftest import CARRIER, make_tempdir
from dnsserver import DNSServer, dns_query, make_dns_server  # noqa: F401 (fixture)

ZONE = [
    "multi.example. MX 20 mx2.multi.example.",
    "multi.example. MX 10 mx1.multi.example.",
    "multi.example. MX 30 mx3.multi.example.",
    "mx1.multi.example. A 127.0.0.11",
    "mx1.multi.example. AAAA ::1",
    "mx2.multi.example. A 127.0.0.12",
    "mx3.multi.example. A 127.0.0.13",
    "aonly.example. A 127.0.0.20",
    "nomail.example. MX 0 .",
    "nomail.example. A 127.0.0.21",
    "alias.example. CNAME multi.example.",
    "slowmx.example. MX 10 host.slow.example.",
    "relay.example. A 127.0.0.30",
    "halfdead.example. MX 10 gone.example.",
    "halfdead.example. MX 20 mx2.multi.example.",
    # Bounds: 12 exchangers (10 kept), one with 6 A and 6 AAAA (8 kept).
    *[f"many.example. MX {p} mx{p}.many.example." for p in range(1, 13)],
    *[f"mx{p}.many.example. A 127.0.1.{p}" for p in range(2, 13)],
    *[f"mx1.many.example. A 127.0.2.{i}" for i in range(1, 7)],
    *[f"mx1.many.example. AAAA ::ffff:0:{i}" for i in range(1, 7)],
]


@pytest.fixture(scope="module")
def dns():
    server = DNSServer(ZONE, timeout_zones=["slow.example."])
    server.start()
    yield server
    server.stop()


@pytest.fixture
def conf(dns, workdir):
    def write(extra="", hostname="carrier.test.example"):
        path = workdir / "carrier.conf"
        path.write_text(f"[server]\nlocal_domains = local.example\nhostname = {hostname}\n"
                        f"[local]\nmaildir = {workdir}/mail\n"
                        f"[dns]\nforwarder = {dns.forwarder}\n{extra}")
        return path
    return write


def route(conf_path, *args, timeout=30):
    t0 = time.monotonic()
    r = subprocess.run([str(CARRIER), "route", "-c", str(conf_path), *args],
                       capture_output=True, text=True, timeout=timeout)
    r.elapsed = time.monotonic() - t0
    return r


def tries(out):
    """[(host, address)] from the "try N:" lines, in order."""
    return [(m.group(1), m.group(2)) for m in
            re.finditer(r"^  try \d+: (\S+)(?: \(MX \d+\))? (\S+)$", out, re.M)]


def test_server_serves_the_zone(dns):
    assert dns_query(dns.port, "multi.example", 15) == (0, 3)
    assert dns_query(dns.port, "nx.example", 1)[0] == 3


def test_mx_preference_order(conf):
    r = route(conf(), "--dns", "user@multi.example")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "space: * (implicit" in r.stdout
    assert "route 1: cost 0 mx:multi.example" in r.stdout
    # IPv6 first within a host, then IPv4; hosts by preference.
    assert tries(r.stdout) == [
        ("mx1.multi.example", "[::1]:25"),
        ("mx1.multi.example", "127.0.0.11:25"),
        ("mx2.multi.example", "127.0.0.12:25"),
        ("mx3.multi.example", "127.0.0.13:25"),
    ], r.stdout
    assert "(MX 10)" in r.stdout and "(MX 30)" in r.stdout
    assert "result: deliverable by route 1 (mx:multi.example)" in r.stdout


def test_a_record_fallback(conf):
    r = route(conf(), "--dns", "user@aonly.example")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "no MX for aonly.example: its own A/AAAA (RFC 5321 5.1)" in r.stdout
    assert tries(r.stdout) == [("aonly.example", "127.0.0.20:25")]


def test_null_mx_refused(conf):
    r = route(conf(), "--dns", "user@nomail.example")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "null MX" in r.stdout
    assert "556 5.1.10" in r.stdout
    # The A record must not be used as a fallback.
    assert tries(r.stdout) == []


def test_nxdomain_is_permanent(conf):
    r = route(conf(), "--dns", "user@nowhere.example")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "NXDOMAIN" in r.stdout
    assert "result: permanent failure" in r.stdout


def test_cname_followed(conf):
    r = route(conf(), "--dns", "user@alias.example")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "alias.example is an alias (CNAME) of multi.example" in r.stdout
    assert [h for h, _ in tries(r.stdout)][0] == "mx1.multi.example"


def test_timeout_is_temporary(conf):
    r = route(conf(), "--dns", "--timeout", "1", "user@slow.example")
    assert r.returncode == 75, r.stdout + r.stderr
    assert "timeout" in r.stdout
    assert "result: temporary failure, delivery would be deferred" in r.stdout
    assert r.elapsed < 10
    # An exchanger whose addresses time out: the same, never a bounce.
    r = route(conf(), "--dns", "--timeout", "1", "user@slowmx.example")
    assert r.returncode == 75, r.stdout + r.stderr
    assert "host host.slow.example (MX 10): temporary failure" in r.stdout


def test_bounded_exchangers_and_addresses(conf):
    r = route(conf(), "--dns", "user@many.example")
    assert r.returncode == 0, r.stdout + r.stderr
    t = tries(r.stdout)
    first = [a for h, a in t if h == "mx1.many.example"]
    assert len(first) == 8, r.stdout
    # Families interleave, IPv6 first.
    assert [a.startswith("[") for a in first] == [True, False] * 4, first
    hosts = []
    for h, _ in t:
        if h not in hosts:
            hosts.append(h)
    assert hosts == [f"mx{p}.many.example" for p in range(1, 11)], hosts


def test_dead_exchanger_skipped(conf):
    r = route(conf(), "--dns", "user@halfdead.example")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "host gone.example (MX 10): no such domain" in r.stdout
    assert tries(r.stdout) == [("mx2.multi.example", "127.0.0.12:25")]


def test_mx_loop_to_myself(conf):
    # We are mx2: only the more preferred mx1 may take the mail.
    r = route(conf(hostname="MX2.multi.example"), "--dns", "user@multi.example")
    assert r.returncode == 0, r.stdout + r.stderr
    assert [h for h, _ in tries(r.stdout)] == ["mx1.multi.example"] * 2, r.stdout
    # We are the best MX of a domain that is not local: a loop, permanent.
    r = route(conf(hostname="mx1.multi.example"), "--dns", "user@multi.example")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "loops back to myself" in r.stdout
    assert tries(r.stdout) == []


def test_failover_past_a_timeout(conf):
    path = conf("[route multi.example]\nvia = smtp:[host.slow.example]\ncost = 1\n"
                "[route multi.example]\nvia = smtp:[relay.example]\ncost = 2\n")
    r = route(path, "--dns", "--timeout", "1", "user@multi.example")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "route 1: smtp:[host.slow.example]:25: temporary failure" in r.stdout
    assert tries(r.stdout) == [("relay.example", "127.0.0.30:25")]
    assert "result: deliverable by route 2 (smtp:[relay.example]:25)" in r.stdout


def test_routes_by_cost_with_failover(conf):
    path = conf("[route multi.example]\nvia = smtp:[relay.example]:2525\ncost = 1\n"
                "[route multi.example]\nvia = mx\ncost = 5\n"
                "[route multi.example]\nvia = smtp:[192.0.2.9]\ncost = 9\n")
    r = route(path, "--dns", "user@multi.example")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [l for l in r.stdout.splitlines() if re.match(r"route \d: cost", l)]
    assert [l.split(" (via")[0] for l in lines] == [
        "route 1: cost 1 smtp:[relay.example]:2525",
        "route 2: cost 5 mx:multi.example",
        "route 3: cost 9 smtp:[192.0.2.9]:25",
    ]
    t = tries(r.stdout)
    assert t[0] == ("relay.example", "127.0.0.30:2525")
    assert t[1] == ("mx1.multi.example", "[::1]:25")
    assert t[-1] == ("192.0.2.9", "192.0.2.9:25")


def test_equal_costs_alternate(conf):
    path = conf("[route shared.example]\nvia = smtp:[127.0.0.41]\ncost = 1\n"
                "[route shared.example]\nvia = smtp:[127.0.0.42]\ncost = 1\n")
    # Each `carrier route` is a fresh table, so both start with the first
    # in file order; sharing across decisions is the unit test's job.
    r = route(path, "user@shared.example")
    assert r.returncode == 0
    assert "route 1: cost 1 smtp:[127.0.0.41]:25" in r.stdout
    assert "route 2: cost 1 smtp:[127.0.0.42]:25" in r.stdout


def test_local_reject_and_no_dns(conf, workdir):
    path = conf("[route spam.example]\nvia = reject\n")
    r = route(path, "user@local.example")
    assert r.returncode == 0
    assert "space: local.example (implicit: local domain)" in r.stdout
    assert f"maildir:{workdir}/mail" in r.stdout
    assert "add --dns" in r.stdout
    r = route(path, "user@spam.example")
    assert r.returncode == 1
    assert "rejected" in r.stdout
    r = route(path, "--dns", "user@spam.example")
    assert r.returncode == 1


def test_via_error_reported_with_file_line(conf):
    path = conf("[route bad.example]\nvia = smtp:[10.0.0.1\n")
    r = route(path, "user@bad.example")
    assert r.returncode == 2
    line = path.read_text().splitlines().index("via = smtp:[10.0.0.1") + 1
    assert f"{path}:{line}: route bad.example.via:" in r.stderr, r.stderr


def test_usage(conf):
    r = route(conf(), "user@multi.example", "extra")
    assert r.returncode == 2
    r = route(conf(), "user@bad..example")
    assert r.returncode == 2
    assert "no valid domain" in r.stderr


def test_dnsserver_fixture(make_dns_server):
    s = make_dns_server(["one.example. MX 5 two.example.", "two.example. A 127.0.0.5"])
    assert dns_query(s.port, "one.example", 15) == (0, 1)
    assert s.forwarder == f"127.0.0.1@{s.port}"
