"""End-to-end tests of inbound TLS and SMTP AUTH (issue 7, items 1 and 2).

A private test CA and certificates are generated for each test module with
`openssl req` / `openssl x509` in a temporary directory (no private key is
ever committed).  Real clients: `openssl s_client -starttls smtp`, swaks
(--tls, --tlsc) and Python's smtplib/ssl.  The daemon listens on an SMTP
port (STARTTLS), a submission port (587 style) and an implicit-TLS port
(465 style), with relay_networks = 10.255.255.0/24 so that 127.0.0.1 is not
a relay client.
"""
import base64
import json
import os
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import threading
import time

import pytest

from conftest import CARRIER, free_port, make_tempdir

PASSWORD = "correct horse battery"


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_cert(d, name, ca="ca", sans=None):
    """An EC key and a certificate for `name` signed by the test CA."""
    sans = sans or [f"DNS:{name}"]
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    (d / f"{name}.ext").write_text("subjectAltName=" + ",".join(sans) + "\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-days", "2", "-out", f"{name}.pem", "-extfile", f"{name}.ext",
            cwd=d)
    return d / f"{name}.pem", d / f"{name}.key"


def give_to_daemon_user(*paths):
    """The daemon re-reads certificates and passwords as its user on reload."""
    if os.geteuid() != 0:
        return
    try:
        import pwd
        pw = pwd.getpwnam("carrier")
    except KeyError:
        return
    for p in paths:
        os.chown(p, pw.pw_uid, pw.pw_gid)


@pytest.fixture(scope="module")
def pki():
    d = make_tempdir("carrier-pki-")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=carrier test CA", cwd=d)
    make_cert(d, "mx.test.example", sans=["DNS:mx.test.example", "IP:127.0.0.1"])
    make_cert(d, "other.test.example")
    make_cert(d, "mx2.test.example", sans=["DNS:mx2.test.example", "IP:127.0.0.1"])
    d.chmod(0o755)
    for p in d.iterdir():
        p.chmod(0o644)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def write_passwd(path, users):
    for user, pw in users.items():
        p = subprocess.run([str(CARRIER), "passwd", "add", "-f", str(path), user],
                           input=pw + "\n", capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
    give_to_daemon_user(path)


class TlsDaemon:
    """Ports and helpers of one daemon with the three listener roles."""

    def __init__(self, d, sub, smtps, ca):
        self.d, self.port, self.sub, self.smtps, self.ca = d, d.port, sub, smtps, ca

    def ctx(self, verify=True):
        c = ssl.create_default_context(cafile=str(self.ca))
        if not verify:
            c.check_hostname = False
            c.verify_mode = ssl.CERT_NONE
        return c

    def submission(self, timeout=10):
        s = smtplib.SMTP("127.0.0.1", self.sub, timeout=timeout)
        s.ehlo("client.example")
        s.starttls(context=self.ctx())
        s.ehlo("client.example")
        return s

    def smtps_client(self, timeout=10):
        s = smtplib.SMTP_SSL("127.0.0.1", self.smtps, context=self.ctx(), timeout=timeout)
        s.ehlo("client.example")
        return s


def start_tls_daemon(make_daemon, pki, tls_extra="", auth_extra="", server_extra="",
                     cert="mx.test.example", key=None, start=True, users=None):
    d = make_daemon(start=False, base=False)
    sub, smtps = free_port(), free_port()
    passwd = d.dir / "passwd"
    write_passwd(passwd, users if users is not None else
                 {"alice": PASSWORD, "bob@remote.example": "bobs password"})
    cert_path = pki / f"{cert}.pem" if not str(cert).startswith("/") else cert
    key_path = key or (pki / f"{cert}.key")
    d.conf_path.write_text(
        f"[server]\nlisten = 127.0.0.1:{d.port}, 127.0.0.1:{sub}/submission, "
        f"127.0.0.1:{smtps}/smtps\n"
        f"pidfile = {d.pidfile}\nhostname = mx.test.example\n"
        f"relay_networks = 10.255.255.0/24\nlocal_domains = test.example\n{server_extra}"
        f"[spool]\npath = {d.spool}\nmin_free_space = 1M\n"
        f"[local]\nmaildir = {d.maildir}\n"
        f"[control]\nsocket = {d.socket}\n"
        f"[counters]\nshm_name = {d.shm_name}\n"
        f"[log]\njson = {d.json_log}\nsyslog = no\nlevel.tls = medium\nlevel.auth = medium\n"
        f"[tls]\ncert = {cert_path}\nkey = {key_path}\n"
        f"sni = other.test.example:{pki}/other.test.example.pem:{pki}/other.test.example.key\n"
        f"{tls_extra}"
        f"[auth]\npasswd_file = {passwd}\nfailure_delay = 0\n{auth_extra}")
    if start:
        d.start()
    return TlsDaemon(d, sub, smtps, pki / "ca.pem")


@pytest.fixture
def tlsd(make_daemon, pki):
    return start_tls_daemon(make_daemon, pki)


def lines_until_final(f):
    """Reads one SMTP reply (all its lines) from a binary file object."""
    out = []
    while True:
        line = f.readline().decode(errors="replace")
        if not line:
            break
        out.append(line.rstrip("\r\n"))
        if len(line) < 4 or line[3] != "-":
            break
    return out


# ---- STARTTLS and implicit TLS ---------------------------------------------------


def test_openssl_s_client_starttls(tlsd):
    p = subprocess.run(
        ["openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{tlsd.port}",
         "-CAfile", str(tlsd.ca), "-verify_return_error", "-verify_hostname",
         "mx.test.example", "-servername", "mx.test.example", "-brief", "-crlf",
         "-ign_eof"],
        input="EHLO client.example\nQUIT\n", capture_output=True, text=True, timeout=20)
    out = p.stdout + p.stderr
    assert "Protocol version: TLSv1.3" in out, out
    assert "Verification: OK" in out, out
    # After TLS: AUTH offered, STARTTLS no longer.
    assert "250-AUTH PLAIN LOGIN" in out, out
    assert "STARTTLS" not in p.stdout, out
    assert "221 2.0.0 Bye" in out, out
    ev = tlsd.d.wait_event("TLS_ESTABLISHED")[0]
    assert ev["fields"]["version"] == "TLSv1.3"


def test_tls12_and_old_versions(tlsd):
    p = subprocess.run(
        ["openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{tlsd.port}",
         "-tls1_2", "-CAfile", str(tlsd.ca), "-brief"],
        input="QUIT\n", capture_output=True, text=True, timeout=20)
    out = p.stdout + p.stderr
    assert "Protocol version: TLSv1.2" in out, out
    assert "ECDHE" in out, out   # forward secrecy from the default cipher list
    p = subprocess.run(
        ["openssl", "s_client", "-starttls", "smtp", "-connect", f"127.0.0.1:{tlsd.port}",
         "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", "-brief"],
        input="QUIT\n", capture_output=True, text=True, timeout=20)
    assert "Protocol version" not in p.stdout + p.stderr
    tlsd.d.wait_event("TLS_HANDSHAKE_FAILED")


@pytest.mark.skipif(shutil.which("posttls-finger") is None, reason="postfix not installed")
def test_posttls_finger(tlsd, workdir):
    # A private, empty Postfix configuration: the system's is never used.
    (workdir / "main.cf").write_text("")
    env = dict(os.environ, MAIL_CONFIG=str(workdir))
    for port in (tlsd.port, tlsd.sub):
        p = subprocess.run(["posttls-finger", "-c", "-l", "secure", "-F", str(tlsd.ca),
                            f"[127.0.0.1]:{port}", "mx.test.example"],
                           capture_output=True, text=True, timeout=30, env=env)
        out = p.stdout + p.stderr
        assert "Verified TLS connection established" in out, out
        assert "TLSv1.3" in out, out
    p = subprocess.run(["posttls-finger", "-c", "-l", "secure", "-F", str(tlsd.ca),
                        f"[127.0.0.1]:{tlsd.port}", "wrong.example"],
                       capture_output=True, text=True, timeout=30, env=env)
    assert "hostname mismatch" in p.stdout + p.stderr


def test_plain_ehlo_offers_starttls_not_auth(tlsd):
    with smtplib.SMTP("127.0.0.1", tlsd.port, timeout=10) as s:
        s.ehlo("client.example")
        assert s.has_extn("starttls")
        assert not s.has_extn("auth")
        code, msg = s.docmd("AUTH", "PLAIN AGFsaWNlAHg=")
        assert (code, msg[:6]) == (538, b"5.7.11"), (code, msg)


def test_swaks_tls_and_tlsc(tlsd):
    for args in (["--server", f"127.0.0.1:{tlsd.port}", "--tls"],
                 ["--server", f"127.0.0.1:{tlsd.smtps}", "--tlsc"]):
        p = subprocess.run(
            ["swaks", *args, "--auth", "PLAIN", "--auth-user", "alice",
             "--auth-password", PASSWORD, "--from", "alice@test.example",
             "--to", "alice@test.example", "--timeout", "20"],
            capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr
        assert "TLS started" in p.stdout or "TLS started" in p.stderr, p.stdout
        assert "235 2.7.0" in p.stdout, p.stdout
        assert "queued as" in p.stdout, p.stdout


def peer_cn(port, server_hostname, ca):
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_hostname) as s:
            subject = dict(x[0] for x in s.getpeercert()["subject"])
            return subject["commonName"]


def test_sni_picks_the_certificate(tlsd):
    assert peer_cn(tlsd.smtps, "other.test.example", tlsd.ca) == "other.test.example"
    assert peer_cn(tlsd.smtps, "mx.test.example", tlsd.ca) == "mx.test.example"
    assert peer_cn(tlsd.smtps, "unknown.example", tlsd.ca) == "mx.test.example"
    # Also after STARTTLS.
    with smtplib.SMTP("127.0.0.1", tlsd.port, timeout=10) as s:
        s.ehlo("c")
        s._host = "other.test.example"     # smtplib sends it as SNI
        s.starttls(context=tlsd.ctx())
        cn = dict(x[0] for x in s.sock.getpeercert()["subject"])["commonName"]
        assert cn == "other.test.example"


def test_starttls_injection_is_discarded(tlsd):
    s = socket.create_connection(("127.0.0.1", tlsd.port), timeout=10)
    f = s.makefile("rb")
    assert lines_until_final(f)[0].startswith("220 ")
    s.sendall(b"EHLO client.example\r\n")
    assert lines_until_final(f)[-1].startswith("250 ")
    # The command and a pipelined RSET in one write (CVE-2011-0411 class).
    s.sendall(b"STARTTLS\r\nRSET\r\n")
    assert lines_until_final(f) == ["220 2.0.0 Ready to start TLS"]
    t = tlsd.ctx().wrap_socket(s, server_hostname="mx.test.example")
    # Nothing may come after the handshake unasked: the RSET was dropped.
    t.settimeout(1.0)
    with pytest.raises(socket.timeout):
        t.recv(100)
    t.settimeout(10)
    tf = t.makefile("rb")
    # The session forgot the EHLO (RFC 3207 4.2): MAIL needs a new one.
    t.sendall(b"MAIL FROM:<alice@test.example>\r\n")
    assert lines_until_final(tf)[0].startswith("503 5.5.1"), "EHLO was not forgotten"
    t.sendall(b"EHLO again.example\r\n")
    reply = lines_until_final(tf)
    assert reply[0] == "250-mx.test.example Hello [127.0.0.1]", reply
    assert "250-AUTH PLAIN LOGIN" in reply and "250-STARTTLS" not in reply
    t.sendall(b"QUIT\r\n")
    assert lines_until_final(tf)[0].startswith("221")
    t.close()
    ev = tlsd.d.wait_event("TLS_PIPELINED_DISCARDED")[0]
    assert ev["fields"]["bytes"] == len(b"RSET\r\n")


def test_starttls_twice_and_bad_handshake(tlsd):
    with smtplib.SMTP("127.0.0.1", tlsd.port, timeout=10) as s:
        s.ehlo("c")
        s.starttls(context=tlsd.ctx())
        s.ehlo("c")
        code, _ = s.docmd("STARTTLS")
        assert code == 554
    # Plaintext after the 220: the handshake fails, the server lives on.
    s = socket.create_connection(("127.0.0.1", tlsd.port), timeout=10)
    f = s.makefile("rb")
    lines_until_final(f)
    s.sendall(b"EHLO c\r\n")
    lines_until_final(f)
    s.sendall(b"STARTTLS\r\n")
    lines_until_final(f)
    s.sendall(b"EHLO this is not TLS\r\n")
    s.settimeout(5)
    try:
        while s.recv(100):
            pass
    except OSError:
        pass
    s.close()
    tlsd.d.wait_event("TLS_HANDSHAKE_FAILED")
    with smtplib.SMTP("127.0.0.1", tlsd.port, timeout=10) as c:
        assert c.noop()[0] == 250


# ---- submission and AUTH ------------------------------------------------------------


def test_submission_requires_starttls_then_auth(tlsd):
    with smtplib.SMTP("127.0.0.1", tlsd.sub, timeout=10) as s:
        s.ehlo("c")
        assert s.has_extn("starttls") and not s.has_extn("auth")
        code, msg = s.docmd("MAIL", "FROM:<alice@test.example>")
        assert (code, msg) == (530, b"5.7.0 Must issue a STARTTLS command first")
        s.starttls(context=tlsd.ctx())
        s.ehlo("c")
        assert "PLAIN" in s.esmtp_features["auth"] and "LOGIN" in s.esmtp_features["auth"]
        code, msg = s.docmd("MAIL", "FROM:<alice@test.example>")
        assert (code, msg) == (530, b"5.7.0 Authentication required")
        s.login("alice", PASSWORD)
        assert s.mail("alice@test.example")[0] == 250
    with tlsd.smtps_client() as s:
        code, msg = s.docmd("MAIL", "FROM:<alice@test.example>")
        assert (code, msg) == (530, b"5.7.0 Authentication required")


def test_auth_good_and_bad_password(tlsd):
    with tlsd.submission() as s:
        with pytest.raises(smtplib.SMTPAuthenticationError) as e:
            s.login("alice", "wrong password")
        assert e.value.smtp_code == 535 and e.value.smtp_error.startswith(b"5.7.8")
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login("nobody", PASSWORD)
        code, _ = s.login("alice", PASSWORD)
        assert code == 235
        code, _ = s.docmd("AUTH", "PLAIN AGFsaWNlAHg=")
        assert code == 503   # already authenticated
    failed = tlsd.d.wait_event("AUTH_FAILED", count=2)
    assert {e["fields"]["user"] for e in failed} == {"alice", "nobody"}
    ok = tlsd.d.wait_event("AUTH_SUCCEEDED")[0]
    assert ok["fields"]["user"] == "alice"
    # The password never reaches the logs.
    assert PASSWORD not in tlsd.d.json_log.read_text()
    assert PASSWORD not in tlsd.d.stderr()


def test_auth_login_and_sasl_errors(tlsd):
    with tlsd.submission() as s:
        assert s.docmd("AUTH", "LOGIN") == (334, b"VXNlcm5hbWU6")
        assert s.docmd("*") == (501, b"5.0.0 Authentication cancelled")
        assert s.docmd("AUTH", "LOGIN YWxpY2U=") == (334, b"UGFzc3dvcmQ6")
        assert s.docmd("not base64!")[0] == 501
        assert s.docmd("AUTH", "CRAM-MD5")[0] == 504
        assert s.docmd("AUTH", "PLAIN =")[0] == 501
        assert s.docmd("AUTH", "PLAIN") == (334, b"")
        resp = base64.b64encode(b"\0alice\0" + PASSWORD.encode()).decode()
        assert s.docmd(resp)[0] == 235


def test_authenticated_client_relays_unauthenticated_does_not(tlsd):
    with smtplib.SMTP("127.0.0.1", tlsd.port, timeout=10) as s:
        s.ehlo("c")
        s.mail("someone@outside.example")
        code, msg = s.rcpt("bob@remote.example")
        assert (code, msg) == (554, b"5.7.1 Relay access denied")
        assert s.rcpt("alice@test.example")[0] == 250
    p = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{tlsd.sub}", "--tls", "--auth", "LOGIN",
         "--auth-user", "alice", "--auth-password", PASSWORD, "--from", "alice@test.example",
         "--to", "bob@remote.example", "--quit-after", "RCPT", "--timeout", "20"],
        capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "250 2.1.5 Ok" in p.stdout, p.stdout


def test_sender_bound_to_login(tlsd):
    with tlsd.submission() as s:
        s.login("alice", PASSWORD)
        code, msg = s.docmd("MAIL", "FROM:<mallory@test.example>")
        assert (code, msg[:5]) == (553, b"5.7.1"), (code, msg)
        code, _ = s.docmd("MAIL", "FROM:<alice@elsewhere.example>")
        assert code == 553
        assert s.docmd("MAIL", "FROM:<alice@test.example>")[0] == 250
    with tlsd.submission() as s:
        s.login("bob@remote.example", "bobs password")
        assert s.docmd("MAIL", "FROM:<bob@test.example>")[0] == 553
        assert s.docmd("MAIL", "FROM:<bob@remote.example>")[0] == 250
    ev = tlsd.d.wait_event("AUTH_SENDER_MISMATCH")[0]
    assert ev["fields"]["user"] == "alice" and ev["fields"]["sender"] == "mallory@test.example"


def test_sender_binding_relaxed(make_daemon, pki):
    t = start_tls_daemon(make_daemon, pki, auth_extra="sender_login_match = no\n")
    with t.submission() as s:
        s.login("alice", PASSWORD)
        assert s.docmd("MAIL", "FROM:<anyone@anywhere.example>")[0] == 250


def test_failed_auth_rate_limit(make_daemon, pki):
    t = start_tls_daemon(make_daemon, pki, auth_extra="max_failures = 3\nfailure_window = 10m\n")
    bad = "PLAIN " + base64.b64encode(b"\0alice\0bad").decode()
    with t.submission() as s:
        for _ in range(2):
            assert s.docmd("AUTH", bad)[0] == 535
        code, msg = s.docmd("AUTH", bad)
        assert (code, msg[:5]) == (421, b"4.7.0"), (code, msg)
    t.d.wait_event("AUTH_TOO_MANY_FAILURES")
    # The address stays limited for the window, even with the right password.
    with t.submission() as s:
        code, _ = s.docmd("AUTH", "PLAIN " + base64.b64encode(
            b"\0alice\0" + PASSWORD.encode()).decode())
        assert code == 421


def test_failed_auth_is_delayed(make_daemon, pki):
    t = start_tls_daemon(make_daemon, pki, start=False)
    text = t.d.conf_path.read_text().replace("failure_delay = 0", "failure_delay = 1s")
    t.d.conf_path.write_text(text)
    t.d.start()
    with t.submission() as s:
        start = time.monotonic()
        with pytest.raises(smtplib.SMTPAuthenticationError):
            s.login("alice", "bad")
        assert time.monotonic() - start >= 0.9
        start = time.monotonic()
        s.login("alice", PASSWORD)
        assert time.monotonic() - start < 0.9


def test_received_header_and_tracking(make_daemon, pki):
    t = start_tls_daemon(make_daemon, pki, auth_extra="received_header = yes\n")
    with t.submission() as s:
        s.login("alice", PASSWORD)
        s.sendmail("alice@test.example", ["alice@test.example"],
                   "Subject: tls\r\n\r\nhello\r\n")
    deadline = time.time() + 10
    files = []
    while time.time() < deadline and not files:
        files = list((t.d.maildir / "alice" / "new").glob("*")) if (
            t.d.maildir / "alice" / "new").exists() else []
        time.sleep(0.1)
    assert files, "message not delivered"
    text = files[0].read_text()
    assert "with ESMTPSA id" in text, text
    assert "(version=TLSv1.3 cipher=TLS_" in text, text
    assert "(Authenticated sender: alice)" in text, text
    recs = []
    for f in (t.d.dir / "track").glob("*"):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            if r.get("type") == "received":
                recs.append(r)
    assert recs, "no received record in the tracking log"
    assert recs[0]["tls"].startswith("TLSv1.3 TLS_"), recs[0]
    assert recs[0]["auth"] == "alice", recs[0]


@pytest.fixture
def dovecot_auth():
    """A private Dovecot auth server: users in a passwd-file, the
    auth-client socket in a temp dir."""
    if not os.path.exists("/usr/sbin/dovecot"):
        pytest.skip("dovecot-core is not installed (scripts/deps test)")
    if os.geteuid() != 0:
        pytest.skip("the private Dovecot needs root")
    d = make_tempdir("carrier-dovecot-auth-")
    (d / "users").write_text("dave:{PLAIN}daves password\n")
    conf = d / "dovecot.conf"
    conf.write_text(f"""protocols = none
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
ssl = no
listen = 127.0.0.1
first_valid_uid = 1
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = {d}/users
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home=/tmp
}}
service auth {{
  unix_listener auth-client {{
    mode = 0666
  }}
}}
""")
    proc = subprocess.Popen(["/usr/sbin/dovecot", "-F", "-c", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    sock = d / "run" / "auth-client"
    deadline = time.time() + 10
    while not sock.exists() and time.time() < deadline:
        time.sleep(0.05)
    assert sock.exists(), (d / "dovecot.log").read_text() if (d / "dovecot.log").exists() else ""
    yield {"dir": d, "socket": sock, "proc": proc}
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    shutil.rmtree(d, ignore_errors=True)


def test_auth_delegated_to_dovecot(make_daemon, pki, dovecot_auth):
    t = start_tls_daemon(make_daemon, pki,
                         auth_extra=f"dovecot_socket = {dovecot_auth['socket']}\n")
    with t.submission() as s:
        assert s.login("dave", "daves password")[0] == 235
        assert s.docmd("MAIL", "FROM:<dave@test.example>")[0] == 250
    with t.submission() as s:
        assert s.docmd("AUTH", "PLAIN " + base64.b64encode(b"\0dave\0wrong").decode())[0] == 535
        # The password file is not used when Dovecot is asked.
        assert s.docmd("AUTH", "PLAIN " + base64.b64encode(
            b"\0alice\0" + PASSWORD.encode()).decode())[0] == 535
    assert t.d.wait_event("AUTH_SUCCEEDED")[0]["fields"]["user"] == "dave"
    # Dovecot gone: a temporary failure, not a wrong password.
    dovecot_auth["proc"].terminate()
    dovecot_auth["proc"].wait(10)
    with t.submission() as s:
        code, msg = s.docmd("AUTH", "PLAIN " + base64.b64encode(
            b"\0dave\0daves password").decode())
        assert (code, msg) == (454, b"4.7.0 Temporary authentication failure")
    t.d.wait_event("AUTH_BACKEND_FAILED")


def test_dovecot_parallel_guesses_stay_within_max_failures(make_daemon, pki, dovecot_auth):
    # A question to Dovecot counts as a failure until it is answered, so
    # sessions of one address guessing side by side get max_failures
    # answers from Dovecot in all, not one each; the rest get 421 at once.
    t = start_tls_daemon(make_daemon, pki,
                         auth_extra=f"dovecot_socket = {dovecot_auth['socket']}\n"
                                    "max_failures = 3\n")
    clients = [t.submission(timeout=30) for _ in range(10)]
    guess = "PLAIN " + base64.b64encode(b"\0dave\0wrong").decode()
    for s in clients:
        s.putcmd("AUTH", guess)
    codes = []
    for s in clients:
        codes.append(s.getreply()[0])
        s.close()
    assert set(codes) <= {421, 535}, codes
    assert codes.count(421) >= 7, codes
    assert len(t.d.events("AUTH_FAILED")) == 3
    t.d.wait_event("AUTH_TOO_MANY_FAILURES")


def test_dovecot_hanging_up_is_not_a_failure(make_daemon, pki, tmp_path):
    # An auth socket that accepts and hangs up (a Dovecot dying mid-answer)
    # gives 454, and the failure counted when the question went out is
    # taken back: after more than max_failures such attempts, no 421.
    path = tmp_path / "auth-client"
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    os.chmod(path, 0o666)
    srv.listen(16)
    stop = threading.Event()

    def hang_up():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except socket.timeout:
                continue
            conn.close()

    th = threading.Thread(target=hang_up, daemon=True)
    th.start()
    try:
        t = start_tls_daemon(make_daemon, pki,
                             auth_extra=f"dovecot_socket = {path}\nmax_failures = 2\n")
        good = "PLAIN " + base64.b64encode(b"\0dave\0daves password").decode()
        for _ in range(4):
            with t.submission() as s:
                assert s.docmd("AUTH", good)[0] == 454
        assert len(t.d.events("AUTH_BACKEND_FAILED")) == 4
        assert not t.d.events("AUTH_TOO_MANY_FAILURES")
        assert not t.d.events("AUTH_FAILED")
    finally:
        stop.set()
        th.join(5)
        srv.close()


# ---- startup checks and reload -------------------------------------------------------


def test_broken_cert_path_refuses_startup(make_daemon, pki):
    t = start_tls_daemon(make_daemon, pki, cert="/nonexistent/cert.pem",
                         key=pki / "mx.test.example.key", start=False)
    t.d.start(wait_ready=False)
    assert t.d.proc.wait(20) == 25
    err = t.d.stderr()
    assert "TLS_CERT_FAILED" in err and "/nonexistent/cert.pem" in err, err
    assert "No such file" in err or "no such file" in err, err


def test_mismatched_key_refuses_startup(make_daemon, pki):
    t = start_tls_daemon(make_daemon, pki, cert="mx.test.example",
                         key=pki / "other.test.example.key", start=False)
    t.d.start(wait_ready=False)
    assert t.d.proc.wait(20) == 25
    ev = t.d.events("TLS_CERT_FAILED")[0]
    assert ev["fields"]["path"] == str(pki / "other.test.example.key")
    assert "does not match" in ev["fields"]["reason"] and "mismatch" in ev["fields"]["reason"], ev


def test_unreadable_passwd_file_refuses_startup(make_daemon, pki):
    t = start_tls_daemon(make_daemon, pki, start=False)
    (t.d.dir / "passwd").write_text("alice no colon\n")
    t.d.start(wait_ready=False)
    assert t.d.proc.wait(20) == 26
    ev = t.d.events("AUTH_PASSWD_UNREADABLE")[0]
    assert "passwd:1" in ev["fields"]["reason"], ev


def test_certificate_reload_under_load(make_daemon, pki, workdir):
    # The certificate files the daemon reads, replaced before the reload.
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    shutil.copy(pki / "mx.test.example.pem", cert)
    shutil.copy(pki / "mx.test.example.key", key)
    give_to_daemon_user(cert, key)
    t = start_tls_daemon(make_daemon, pki, cert=str(cert), key=key)
    sessions = []
    for i in range(20):
        if i % 2:
            s = smtplib.SMTP("127.0.0.1", t.port, timeout=20)
            s.ehlo("c")
            s.starttls(context=t.ctx())
            s.ehlo("c")
            assert s.mail(f"load{i}@outside.example")[0] == 250
        else:
            s = t.smtps_client(20)
            s.login("alice", PASSWORD)
            assert s.mail("alice@test.example")[0] == 250
        sessions.append(s)
    assert peer_cn(t.smtps, "mx.test.example", t.ca) == "mx.test.example"
    shutil.copy(pki / "mx2.test.example.pem", cert)
    shutil.copy(pki / "mx2.test.example.key", key)
    give_to_daemon_user(cert, key)
    t.d.signal(signal.SIGHUP)
    t.d.wait_event("TLS_RELOADED", count=2)
    t.d.wait_event("CORE_RELOADED")
    # New sessions get the new certificate...
    assert peer_cn(t.smtps, "mx.test.example", t.ca) == "mx2.test.example"
    with smtplib.SMTP("127.0.0.1", t.port, timeout=10) as s:
        s.ehlo("c")
        s.starttls(context=t.ctx())
        cn = dict(x[0] for x in s.sock.getpeercert()["subject"])["commonName"]
        assert cn == "mx2.test.example"
    # ... and every open session finishes its transaction.
    for i, s in enumerate(sessions):
        assert s.rcpt("alice@test.example")[0] == 250
        assert s.data(f"Subject: load {i}\r\n\r\nbody\r\n")[0] == 250
        s.quit()
    assert not t.d.events("TLS_RELOAD_FAILED")


def test_reload_with_a_broken_certificate_keeps_the_old(make_daemon, pki, workdir):
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    shutil.copy(pki / "mx.test.example.pem", cert)
    shutil.copy(pki / "mx.test.example.key", key)
    give_to_daemon_user(cert, key)
    t = start_tls_daemon(make_daemon, pki, cert=str(cert), key=key)
    shutil.copy(pki / "other.test.example.key", key)   # no longer matches
    give_to_daemon_user(key)
    t.d.signal(signal.SIGHUP)
    ev = t.d.wait_event("TLS_RELOAD_FAILED")[0]
    assert ev["fields"]["path"] == str(key)
    assert peer_cn(t.smtps, "mx.test.example", t.ca) == "mx.test.example"


def test_passwd_reload(make_daemon, pki):
    t = start_tls_daemon(make_daemon, pki)
    write_passwd(t.d.dir / "passwd", {"carol": "carols password"})
    t.d.signal(signal.SIGHUP)
    t.d.wait_event("AUTH_PASSWD_LOADED", count=2)
    with t.submission() as s:
        assert s.login("carol", "carols password")[0] == 235


# ---- carrier passwd ---------------------------------------------------------------------


def test_carrier_passwd(workdir):
    path = workdir / "passwd"

    def run(*args, input=None):
        return subprocess.run([str(CARRIER), "passwd", *args], input=input,
                              capture_output=True, text=True, timeout=30)

    assert run("add", "-f", str(path), "alice", input="pw one\n").returncode == 0
    assert run("add", "-f", str(path), "bob@example.org", input="pw two\n").returncode == 0
    assert run("add", "-f", str(path), "alice", input="pw three\n").returncode == 0
    assert run("list", "-f", str(path)).stdout.split() == ["alice", "bob@example.org"]
    text = path.read_text()
    assert text.count("$y$") == 2 and "pw " not in text
    assert oct(path.stat().st_mode & 0o777) == "0o640"
    assert run("del", "-f", str(path), "alice").returncode == 0
    assert run("del", "-f", str(path), "alice").returncode == 1
    assert run("list", "-f", str(path)).stdout.split() == ["bob@example.org"]
    p = run("add", "-f", str(path), "bad:name", input="x\n")
    assert p.returncode == 2 and "not a valid user name" in p.stderr
    p = run("add", "-f", str(path), "carol", input="")
    assert p.returncode == 1 and "no password" in p.stderr
    assert run("list").returncode == 1   # the embedded default sets no passwd_file
    assert not list(workdir.glob("passwd.tmp.*"))
