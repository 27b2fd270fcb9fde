"""End to end: Postfix as a real peer on both sides (issue 4's acceptance).

A private Postfix instance runs from a temporary directory of its own
(main.cf written here, master.cf copied from /etc/postfix with its smtpd on
a free loopback port and no chroot); the system's instance is never
started.  Postfix insists on running as root with its `postfix` user, so
these tests skip when not root or Postfix is missing.

  (a) carrier relays to Postfix ([route *] via = smtp:[127.0.0.1]:PORT),
      Postfix relays onward to the test sink: the message arrives with
      carrier's and Postfix's Received headers.
  (b) Postfix relays into carrier (relayhost = [127.0.0.1]:CARRIERPORT),
      carrier delivers to its Maildir (user@localhost): the file carries
      Postfix's Received header.
"""
import email
import email.policy
import os
import pathlib
import pwd
import shutil
import smtplib
import subprocess
import time

import pytest

from conftest import free_port, make_tempdir
from sink import Sink

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
SENDER = "alice@example.net"

pytestmark = [
    pytest.mark.skipif(not os.path.exists(POSTFIX), reason="postfix not installed"),
    pytest.mark.skipif(os.geteuid() != 0, reason="a private Postfix instance needs root"),
]

# Services of /etc/postfix/master.cf a relay needs; the pipe(8) examples
# (maildrop, uucp, ...) name users that do not exist here.
SERVICES = {"pickup", "cleanup", "qmgr", "tlsmgr", "rewrite", "bounce", "defer", "trace",
            "verify", "flush", "proxymap", "proxywrite", "smtp", "relay", "showq", "error",
            "retry", "discard", "local", "virtual", "lmtp", "anvil", "scache", "postlog"}


class Postfix:
    """A private Postfix instance in `directory`: smtpd on 127.0.0.1:port,
    everything relayed to `relayhost` ("[127.0.0.1]:N")."""

    def __init__(self, directory, relayhost, hostname="postfix.test"):
        self.dir = pathlib.Path(directory)
        self.port = free_port()
        self.hostname = hostname
        self.conf = self.dir / "etc"
        self.queue = self.dir / "queue"
        self.data = self.dir / "data"
        self.maillog = self.dir / "maillog"
        self.started = False
        pw = pwd.getpwnam("postfix")
        for p in (self.conf, self.queue, self.data):
            p.mkdir(mode=0o755, exist_ok=True)
        # Postfix wants its queue directory owned by root, its data
        # directory by mail_owner.
        os.chown(self.queue, 0, 0)
        os.chown(self.data, pw.pw_uid, pw.pw_gid)
        fast = "1s"
        (self.conf / "main.cf").write_text(
            "compatibility_level = 3.6\n"
            f"queue_directory = {self.queue}\n"
            f"data_directory = {self.data}\n"
            "meta_directory = /etc/postfix\n"
            "mail_owner = postfix\n"
            "setgid_group = postdrop\n"
            f"maillog_file_prefixes = {self.dir}\n"
            f"maillog_file = {self.maillog}\n"
            "inet_interfaces = 127.0.0.1\n"
            "inet_protocols = ipv4\n"
            f"myhostname = {hostname}\n"
            f"mydomain = {hostname}\n"
            "myorigin = $myhostname\n"
            "mydestination =\n"
            "local_recipient_maps =\n"
            "alias_maps =\n"
            "alias_database =\n"
            "mynetworks = 127.0.0.0/8\n"
            "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n"
            f"relayhost = {relayhost}\n"
            "default_transport = smtp\n"
            "relay_transport = smtp\n"
            "smtp_tls_security_level = none\n"
            "smtpd_tls_security_level = none\n"
            "biff = no\n"
            f"queue_run_delay = {fast}\n"
            f"minimal_backoff_time = {fast}\n"
            f"maximal_backoff_time = {fast}\n"
            "smtp_connect_timeout = 5s\n")
        lines = []
        for line in pathlib.Path("/etc/postfix/master.cf").read_text().splitlines():
            if line.startswith("#") or not line.strip():
                continue
            if line[0].isspace():
                if lines and lines[-1] is not None:
                    lines.append(line)      # -o option of a kept service
                continue
            f = line.split()
            if f[0] == "smtp" and f[1] == "inet":
                f[0] = f"127.0.0.1:{self.port}"
            elif f[0] not in SERVICES:
                lines.append(None)          # drop it and its continuation lines
                continue
            if len(f) > 4 and f[4] in ("y", "-"):
                f[4] = "n"                  # no chroot: nothing to copy into the queue
            lines.append(" ".join(f))
        (self.conf / "master.cf").write_text(
            "".join(l + "\n" for l in lines if l is not None))

    def run(self, *args, check=True):
        r = subprocess.run([POSTFIX, "-c", str(self.conf), *args], capture_output=True,
                           text=True, timeout=60)
        if check and r.returncode != 0:
            raise AssertionError(f"postfix {' '.join(args)}: {r.returncode}\n"
                                 f"{r.stdout}{r.stderr}\n{self.log()}")
        return r

    def start(self):
        self.run("check")
        self.started = True
        self.run("start")
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=2) as s:
                    s.noop()
                return self
            except OSError:
                time.sleep(0.1)
        raise AssertionError(f"postfix smtpd not listening on {self.port}\n{self.log()}")

    def stop(self):
        if self.started:
            self.run("stop", check=False)
            self.started = False

    def log(self):
        try:
            return self.maillog.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def smtp(self):
        return smtplib.SMTP("127.0.0.1", self.port, timeout=10)


@pytest.fixture
def workdir_pf():
    d = make_tempdir("carrier-postfix-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def _wait(pred, timeout=15, what="condition", log=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}" + (f"\n{log()}" if log else ""))


def _received(data):
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    return msg, [" ".join(h.split()) for h in msg.get_all("Received", [])]


def test_system_postfix_is_not_running():
    """The system's instance is never started (scripts/deps installs it
    with "No configuration"); the private ones are all this file uses."""
    r = subprocess.run([POSTFIX, "status"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0, r.stdout + r.stderr


def test_carrier_relays_to_postfix(make_daemon, workdir_pf):
    sink = Sink().start()
    pf = Postfix(workdir_pf, relayhost=f"[127.0.0.1]:{sink.port}")
    try:
        pf.start()
        d = make_daemon("[log]\nlevel.delivery = medium\n"
                        "[delivery]\nretry_schedule = 1s\n"
                        f"[route *]\nvia = smtp:[127.0.0.1]:{pf.port}\n")
        d.wait_event("DELIVERY_INDEX_READY", timeout=5)
        with d.smtp() as s:
            s.sendmail(SENDER, ["ok-pf@remote.test"],
                       f"From: <{SENDER}>\r\nTo: <ok-pf@remote.test>\r\n"
                       "Subject: carrier to postfix\r\nMessage-ID: <c2p@example.net>\r\n"
                       "\r\nhello postfix\r\n")
        ev = d.wait_event("DELIVERY_DELIVERED", timeout=15)[0]
        assert ev["fields"]["hop"] == f"smtp:[127.0.0.1]:{pf.port}"
        assert "250" in ev["fields"]["reply"]
        t = _wait(lambda: sink.transactions, what="the message at the sink via Postfix",
                  log=pf.log)[0]
        assert t["mail_from"] == SENDER
        assert "ok-pf@remote.test" in str(t["rcpts"])
        msg, recv = _received(t["data"])
        assert msg["Subject"] == "carrier to postfix"
        assert "hello postfix" in msg.get_payload()
        # Newest first: Postfix's, then carrier's.
        assert len(recv) >= 2, recv
        assert f"by {pf.hostname} (Postfix)" in recv[0], recv
        assert "by mx.test.example (carrier)" in recv[1], recv
        assert "status=sent" in pf.log()
    finally:
        pf.stop()
        sink.stop()


def test_postfix_relays_into_carrier(make_daemon, workdir_pf):
    d = make_daemon("[log]\nlevel.delivery = medium\n", start=False)
    d.maildir.mkdir(exist_ok=True)
    pw = pwd.getpwnam("carrier")
    os.chown(d.maildir, pw.pw_uid, pw.pw_gid)
    d.start()
    pf = Postfix(workdir_pf, relayhost=f"[127.0.0.1]:{d.port}")
    try:
        pf.start()
        with pf.smtp() as s:
            s.sendmail(SENDER, ["user@localhost"],
                       f"From: <{SENDER}>\r\nTo: <user@localhost>\r\n"
                       "Subject: postfix to carrier\r\nMessage-ID: <p2c@example.net>\r\n"
                       "\r\nhello carrier\r\n")
        new = d.maildir / "user" / "new"
        files = _wait(lambda: sorted(new.iterdir()) if new.is_dir() else [],
                      what="the Maildir file", log=lambda: pf.log() + d.stderr())
        assert len(files) == 1
        msg, recv = _received(files[0].read_bytes())
        assert msg["Subject"] == "postfix to carrier"
        assert "hello carrier" in msg.get_payload()
        # carrier's Received (from Postfix's smtp client), then Postfix's own.
        assert "by mx.test.example (carrier)" in recv[0], recv
        assert pf.hostname in recv[0], recv
        assert any(f"by {pf.hostname} (Postfix)" in r for r in recv[1:]), recv
        ev = d.wait_event("DELIVERY_DELIVERED", timeout=10)[0]
        assert ev["fields"]["rcpt"] == "user@localhost"
        _wait(lambda: "status=sent" in pf.log(), timeout=5, what="Postfix's status=sent",
              log=pf.log)
        assert f"relay=127.0.0.1[127.0.0.1]:{d.port}" in pf.log()
    finally:
        pf.stop()
