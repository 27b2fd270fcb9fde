"""A private Dovecot LMTP server (dovecot-lmtpd) for end-to-end tests.

Unlike the fixture in test_smtp_client.py (a static userdb: every address
exists), this one knows only the users it is given (a passwd-file userdb),
so Dovecot itself refuses an unknown recipient at RCPT with its own
"550 5.1.1 ... User doesn't exist".  A user may be given a quota (the quota
plugin, quota_full_tempfail = no): a message over it is refused for that
recipient alone after DATA with "552 5.2.2 ... Quota exceeded".

Everything lives in one temp dir: base_dir (the LMTP Unix socket is
BASE/lmtp), state, log, passwd-file and the Maildirs (MAIL/<user>/new, owned
by the 'carrier' user Dovecot switches to).  The master runs in the
foreground (-F) as our child and is stopped by its PID; the system's Dovecot
is never touched.

    peer = DovecotPeer(users={"alice": None, "full": "1K"}).start()
    ... peer.socket, peer.port, peer.messages("alice") ...
    peer.stop()
"""
import os
import pathlib
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

DOVECOT = "/usr/sbin/dovecot"


def available():
    """None when a private Dovecot can run here, else why not."""
    if not os.path.exists(DOVECOT):
        return "dovecot-lmtpd is not installed (scripts/deps test)"
    if os.geteuid() != 0:
        return "the private Dovecot needs root to switch to the mail user"
    try:
        pwd.getpwnam("carrier")
    except KeyError:
        return "no 'carrier' user (scripts/deps test creates it)"
    return None


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DovecotPeer:
    def __init__(self, users):
        self.users = dict(users)          # name -> quota ("1K") or None
        pw = pwd.getpwnam("carrier")
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix="carrier-dovecot-"))
        self.dir.chmod(0o755)
        self.mail = self.dir / "mail"
        self.mail.mkdir()
        os.chown(self.mail, self.uid, self.gid)
        self.port = _free_port()
        self.socket = self.dir / "run" / "lmtp"
        self.log = self.dir / "dovecot.log"
        self.conf = self.dir / "dovecot.conf"
        self.proc = None
        lines = []
        for name, quota in self.users.items():
            extra = f"userdb_quota_rule=*:storage={quota}" if quota else ""
            lines.append(f"{name}::{self.uid}:{self.gid}::{self.mail / name}::{extra}\n")
        passwd = self.dir / "users"
        passwd.write_text("".join(lines))
        passwd.chmod(0o644)
        self.conf.write_text(f"""protocols = lmtp
base_dir = {self.dir}/run
state_dir = {self.dir}/state
log_path = {self.log}
ssl = no
listen = 127.0.0.1
first_valid_uid = 1
auth_username_format = %Ln
mail_location = maildir:{self.mail}/%n
mail_plugins = quota
plugin {{
  quota = count:User quota
  quota_vsizes = yes
  quota_full_tempfail = no
}}
passdb {{
  driver = static
  args = nopassword=y
}}
userdb {{
  driver = passwd-file
  args = {passwd}
}}
service lmtp {{
  unix_listener lmtp {{
    mode = 0666
  }}
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.port}
  }}
}}
""")

    def start(self, timeout=10):
        self.proc = subprocess.Popen([DOVECOT, "-F", "-c", str(self.conf)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"dovecot exited with {self.proc.returncode}:\n"
                                     f"{self.log_text()}")
            if self.socket.exists() and self._tcp_up():
                return self
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"dovecot LMTP not listening after {timeout}s:\n{self.log_text()}")

    def _tcp_up(self):
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def log_text(self):
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def messages(self, user):
        """The messages Dovecot saved in USER's INBOX (bytes, oldest first)."""
        files = []
        for sub in ("new", "cur"):
            p = self.mail / user / sub
            if p.is_dir():
                files += [f for f in p.iterdir() if f.is_file()]
        return [f.read_bytes() for f in sorted(files, key=lambda f: f.stat().st_mtime)]

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
