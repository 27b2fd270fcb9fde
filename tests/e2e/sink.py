#!/usr/bin/env python3
"""A test sink: an SMTP or LMTP server with programmable answers.

Python stdlib only (asyncio Protocol, one loop); fast enough for thousands
of messages per second from a few pipelining connections.

Answers by the recipient's local part (case-insensitive prefix; the first
matching rule wins; a rule table may be passed in):

    local part   RCPT reply             reply after the final dot
    ok*          250 2.1.5              250 2.0.0
    temp*        451 4.3.0              -
    perm*        550 5.1.1              -
    dtemp*       250 2.1.5              452 4.2.2 (LMTP: this recipient)
    dperm*       250 2.1.5              554 5.6.0 (LMTP: this recipient)
    anything     250 2.1.5              250 2.0.0

In SMTP mode the reply after the dot is the first non-2xx data reply of the
accepted recipients, else 250.

STARTTLS (off by default) is offered for testing a client's fallback only;
the sink never speaks TLS.  starttls="alert" answers 220 and, when the
client's first handshake bytes arrive, sends a fatal TLS handshake_failure
alert and closes (a peer with no protocol version or cipher in common);
"close" answers 220 and closes when they arrive; "refuse" answers
454 4.7.0.  Recorder.starttls counts the STARTTLS commands received.  A sender whose local part starts with
"tempmail" gets 451 4.3.2 to MAIL, "permmail" 550 5.7.1.

Every finished DATA transaction is recorded: a dict with helo, mail_from,
mail_params, rcpts (accepted, with params), rejected, data (bytes, with the
dot-stuffing undone), size and per-recipient final replies.

As a pytest helper:

    from sink import Sink
    s = Sink(lmtp=False, size=0, pipelining=True).start()
    ... s.port, s.transactions, s.wait(n) ...
    s.stop()

As a process (the benchmark counts lines of DIR/transactions.jsonl):

    python3 tests/e2e/sink.py --port N --record DIR [--lmtp] [--unix PATH]
        [--no-pipelining] [--no-8bitmime] [--no-smtputf8] [--no-dsn]
        [--size BYTES] [--greeting "554 5.7.1 go away"] [--delay SECONDS]
        [--save-data] [--starttls alert|close|refuse]

It prints "READY <port>" on stdout once listening.
"""
import argparse
import asyncio
import json
import os
import pathlib
import re
import signal
import socket
import sys
import threading
import time

DEFAULT_RULES = [
    ("ok", "250 2.1.5 ok", "250 2.0.0 ok"),
    ("temp", "451 4.3.0 try again later", None),
    ("perm", "550 5.1.1 no such user", None),
    ("dtemp", "250 2.1.5 ok", "452 4.2.2 mailbox full"),
    ("dperm", "250 2.1.5 ok", "554 5.6.0 content refused"),
]
MAX_LINE = 4096
# A fatal alert record: TLS 1.0 record version, level 2, handshake_failure.
TLS_ALERT_HANDSHAKE_FAILURE = b"\x15\x03\x01\x00\x02\x02\x28"
STARTTLS_MODES = ("alert", "close", "refuse")


def _local(addr):
    return addr.split("@", 1)[0].lower()


class Options:
    def __init__(self, lmtp=False, pipelining=True, eightbitmime=True, smtputf8=True,
                 dsn=True, size=0, greeting="220 sink.test ESMTP", delay=0.0,
                 rules=None, hostname="sink.test", keep_data=True, starttls=None):
        if starttls is not None and starttls not in STARTTLS_MODES:
            raise ValueError(f"starttls: one of {STARTTLS_MODES} or None")
        self.lmtp = lmtp
        self.pipelining = pipelining
        self.eightbitmime = eightbitmime
        self.smtputf8 = smtputf8
        self.dsn = dsn
        self.size = size
        self.greeting = greeting
        self.delay = delay
        self.rules = rules if rules is not None else DEFAULT_RULES
        self.hostname = hostname
        self.keep_data = keep_data
        self.starttls = starttls

    def rule(self, local):
        for prefix, rcpt, data in self.rules:
            if local.startswith(prefix):
                return rcpt, data or "250 2.0.0 ok"
        return "250 2.1.5 ok", "250 2.0.0 ok"


class Recorder:
    """Keeps transactions in memory and/or appends them to a JSONL file."""

    def __init__(self, record_dir=None, save_data=False, keep=True):
        self.lock = threading.Lock()
        self.transactions = []
        self.connections = 0
        self.open = 0               # connections open now
        self.starttls = 0           # STARTTLS commands received
        self.keep = keep
        self.file = None
        self.dir = None
        self.save_data = save_data
        self.count = 0
        if record_dir:
            self.dir = pathlib.Path(record_dir)
            self.dir.mkdir(parents=True, exist_ok=True)
            self.file = open(self.dir / "transactions.jsonl", "a", buffering=1 << 16)

    def add(self, t):
        with self.lock:
            self.count += 1
            if self.keep:
                self.transactions.append(t)
            if self.file is not None:
                rec = {k: v for k, v in t.items() if k != "data"}
                if self.save_data:
                    name = f"msg-{os.getpid()}-{self.count}.eml"
                    (self.dir / name).write_bytes(t["data"])
                    rec["file"] = name
                self.file.write(json.dumps(rec) + "\n")
                self.file.flush()

    def close(self):
        if self.file is not None:
            self.file.close()
            self.file = None


class Session(asyncio.Protocol):
    def __init__(self, opts, rec, loop):
        self.o = opts
        self.rec = rec
        self.loop = loop
        self.buf = bytearray()
        self.data = None          # bytearray while in DATA, starts with CRLF
        self.helo = ""
        self.reset()
        self.transport = None
        self.closing = False
        self.tls_pending = False    # 220 to STARTTLS sent; handshake next

    def reset(self):
        self.mail_from = None
        self.mail_params = ""
        self.rcpts = []            # (addr, params, data reply)
        self.rejected = []

    def connection_made(self, transport):
        self.transport = transport
        self.conn_time = time.time()
        with self.rec.lock:
            self.rec.connections += 1
            self.rec.open += 1
        self.send([self.o.greeting])

    def send(self, lines):
        if not lines or self.transport is None:
            return
        out = "".join(l + "\r\n" for l in lines).encode()
        if self.o.delay:
            self.loop.call_later(self.o.delay, self._write, out)
        else:
            self._write(out)

    def _write(self, out):
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(out)

    def data_received(self, chunk):
        replies = []
        if self.tls_pending:
            # The client's first handshake bytes: fail the handshake.
            if self.o.starttls == "alert":
                self.transport.write(TLS_ALERT_HANDSHAKE_FAILURE)
            self.closing = True
            self.transport.close()
            return
        if self.data is not None:
            self.data += chunk
        else:
            self.buf += chunk
        while not self.closing:
            if self.data is not None:
                if not self._data_step(replies):
                    break
                continue
            nl = self.buf.find(b"\n")
            if nl < 0:
                if len(self.buf) > MAX_LINE:
                    replies.append("500 5.5.6 line too long")
                    self.buf.clear()
                break
            line = bytes(self.buf[:nl]).rstrip(b"\r")
            del self.buf[:nl + 1]
            self._command(line.decode("utf-8", "replace"), replies)
        self.send(replies)

    def _data_step(self, replies):
        end = self.data.find(b"\r\n.\r\n")
        if end < 0:
            return False
        raw = bytes(self.data[:end + 2])
        rest = self.data[end + 5:]
        self.data = None
        self.buf = bytearray(rest)
        body = raw.replace(b"\r\n.", b"\r\n")[2:]
        self._finish(body, replies)
        return True

    def _finish(self, body, replies):
        finals = []
        if self.o.size and len(body) > self.o.size:
            finals = ["552 5.3.4 message too big"] * len(self.rcpts)
        else:
            finals = [r[2] for r in self.rcpts]
        if self.o.lmtp:
            replies.extend(finals)
        else:
            bad = [f for f in finals if not f.startswith("2")]
            replies.append(bad[0] if bad else "250 2.0.0 queued")
            if bad:
                finals = [bad[0]] * len(finals)
        t = {
            "helo": self.helo,
            "mail_from": self.mail_from,
            "mail_params": self.mail_params,
            "rcpts": [r[0] for r in self.rcpts],
            "rcpt_params": [r[1] for r in self.rcpts],
            "rejected": self.rejected,
            "final": finals,
            "delivered": [r[0] for r, f in zip(self.rcpts, finals) if f.startswith("2")],
            "size": len(body),
            "time": time.time(),
            "conn_time": getattr(self, "conn_time", 0.0),
        }
        keep = self.o.keep_data      # True, False, or a byte count (the head)
        t["data"] = body if keep is True else body[:keep] if keep else b""
        self.rec.add(t)
        self.reset()

    def _command(self, line, replies):
        verb = line[:4].upper()
        arg = line[5:] if len(line) > 4 else ""
        o = self.o
        if verb in ("EHLO", "LHLO"):
            if (verb == "LHLO") != o.lmtp:
                replies.append("500 5.5.1 wrong greeting for this protocol")
                return
            self.helo = arg
            self.reset()
            caps = [o.hostname]
            if o.pipelining:
                caps.append("PIPELINING")
            if o.eightbitmime:
                caps.append("8BITMIME")
            if o.smtputf8:
                caps.append("SMTPUTF8")
            if o.dsn:
                caps.append("DSN")
            if o.starttls and not o.lmtp:
                caps.append("STARTTLS")
            caps.append(f"SIZE {o.size}" if o.size else "SIZE")
            caps.append("ENHANCEDSTATUSCODES")
            replies.extend(f"250-{c}" for c in caps[:-1])
            replies.append(f"250 {caps[-1]}")
        elif verb == "HELO" and not o.lmtp:
            self.helo = arg
            self.reset()
            replies.append(f"250 {o.hostname}")
        elif verb == "MAIL":
            m = re.match(r"(?i)FROM:\s*<([^>]*)>\s*(.*)$", arg)
            if not m:
                replies.append("501 5.5.4 syntax")
                return
            if self.mail_from is not None:
                replies.append("503 5.5.1 nested MAIL")
                return
            sender, params = m.group(1), m.group(2)
            up = params.upper()
            lp = _local(sender)
            size = re.search(r"SIZE=(\d+)", up)
            if lp.startswith("tempmail"):
                replies.append("451 4.3.2 not now")
            elif lp.startswith("permmail"):
                replies.append("550 5.7.1 sender refused")
            elif "BODY=8BITMIME" in up and not o.eightbitmime:
                replies.append("555 5.5.4 BODY not supported")
            elif "SMTPUTF8" in up and not o.smtputf8:
                replies.append("555 5.5.4 SMTPUTF8 not supported")
            elif ("RET=" in up or "ENVID=" in up) and not o.dsn:
                replies.append("555 5.5.4 DSN not supported")
            elif size and o.size and int(size.group(1)) > o.size:
                replies.append("552 5.3.4 message too big")
            else:
                self.mail_from = sender
                self.mail_params = params
                replies.append("250 2.1.0 ok")
        elif verb == "RCPT":
            m = re.match(r"(?i)TO:\s*<([^>]*)>\s*(.*)$", arg)
            if self.mail_from is None:
                replies.append("503 5.5.1 need MAIL first")
            elif not m:
                replies.append("501 5.5.4 syntax")
            elif ("NOTIFY=" in m.group(2).upper() or "ORCPT=" in m.group(2).upper()) and not o.dsn:
                replies.append("555 5.5.4 DSN not supported")
            else:
                rcpt_reply, data_reply = o.rule(_local(m.group(1)))
                replies.append(rcpt_reply)
                if rcpt_reply.startswith("2"):
                    self.rcpts.append((m.group(1), m.group(2), data_reply))
                else:
                    self.rejected.append(m.group(1))
        elif verb == "DATA":
            if self.mail_from is None or not self.rcpts:
                replies.append("554 5.5.1 no valid recipients")
            else:
                replies.append("354 end with <CRLF>.<CRLF>")
                self.data = bytearray(b"\r\n") + self.buf
                self.buf = bytearray()
        elif line.upper() == "STARTTLS" and o.starttls and not o.lmtp:
            with self.rec.lock:
                self.rec.starttls += 1
            if o.starttls == "refuse":
                replies.append("454 4.7.0 TLS not available due to temporary reason")
            else:
                replies.append("220 2.0.0 ready to start TLS")
                self.tls_pending = True
                self.buf.clear()
        elif verb == "RSET":
            self.reset()
            replies.append("250 2.0.0 ok")
        elif verb == "NOOP":
            replies.append("250 2.0.0 ok")
        elif verb == "QUIT":
            replies.append("221 2.0.0 bye")
            self.closing = True
            self.send(replies)
            replies.clear()
            if self.o.delay:
                self.loop.call_later(self.o.delay, self.transport.close)
            else:
                self.transport.close()
        else:
            replies.append("500 5.5.2 unknown command")

    def connection_lost(self, exc):
        self.transport = None
        with self.rec.lock:
            self.rec.open -= 1


class Sink:
    """A sink on its own thread and loop (for pytest)."""

    def __init__(self, host="127.0.0.1", port=0, unix=None, record_dir=None,
                 save_data=False, **opts):
        self.opts = Options(**opts)
        self.host = host
        self.port = port
        self.unix = unix
        self.rec = Recorder(record_dir, save_data)
        self.loop = None
        self.server = None
        self.thread = None

    @property
    def transactions(self):
        with self.rec.lock:
            return list(self.rec.transactions)

    def take(self):
        """The transactions recorded since the last take, forgotten here
        (a long run would otherwise keep every one in memory)."""
        with self.rec.lock:
            out, self.rec.transactions = self.rec.transactions, []
            return out

    @property
    def connections(self):
        return self.rec.connections

    @property
    def open_connections(self):
        return self.rec.open

    @property
    def starttls_count(self):
        """STARTTLS commands received (see starttls=)."""
        return self.rec.starttls

    def start(self):
        ready = threading.Event()
        err = []

        def run():
            self.loop = asyncio.new_event_loop()
            try:
                self.server = self.loop.run_until_complete(self._serve())
            except Exception as e:  # pragma: no cover - reported to start()
                err.append(e)
                ready.set()
                return
            ready.set()
            self.loop.run_forever()
            self.server.close()
            self.loop.run_until_complete(self.server.wait_closed())
            self.loop.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)
        if err:
            raise err[0]
        return self

    async def _serve(self):
        loop = asyncio.get_running_loop()
        factory = lambda: Session(self.opts, self.rec, loop)  # noqa: E731
        if self.unix:
            server = await loop.create_unix_server(factory, self.unix)
        else:
            server = await loop.create_server(factory, self.host, self.port,
                                              reuse_address=True, backlog=512)
            self.port = server.sockets[0].getsockname()[1]
        return server

    def wait(self, n, timeout=10):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.rec.count >= n:
                return self.transactions
            time.sleep(0.02)
        raise AssertionError(f"sink: {self.rec.count} transactions, wanted {n}")

    def stop(self):
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        self.rec.close()


def main(argv=None):
    p = argparse.ArgumentParser(description="SMTP/LMTP test sink")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--unix")
    p.add_argument("--record")
    p.add_argument("--save-data", action="store_true")
    p.add_argument("--lmtp", action="store_true")
    p.add_argument("--no-pipelining", action="store_true")
    p.add_argument("--no-8bitmime", action="store_true")
    p.add_argument("--no-smtputf8", action="store_true")
    p.add_argument("--no-dsn", action="store_true")
    p.add_argument("--size", type=int, default=0)
    p.add_argument("--greeting", default="220 sink.test ESMTP")
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--starttls", choices=STARTTLS_MODES)
    a = p.parse_args(argv)
    opts = Options(lmtp=a.lmtp, pipelining=not a.no_pipelining,
                   eightbitmime=not a.no_8bitmime, smtputf8=not a.no_smtputf8,
                   dsn=not a.no_dsn, size=a.size, greeting=a.greeting, delay=a.delay,
                   keep_data=a.save_data, starttls=a.starttls)
    rec = Recorder(a.record, a.save_data, keep=False)

    async def serve():
        loop = asyncio.get_running_loop()
        factory = lambda: Session(opts, rec, loop)  # noqa: E731
        if a.unix:
            server = await loop.create_unix_server(factory, a.unix)
            where = a.unix
        else:
            server = await loop.create_server(factory, a.host, a.port,
                                              reuse_address=True, backlog=1024)
            where = server.sockets[0].getsockname()[1]
        print(f"READY {where}", flush=True)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        server.close()
        await server.wait_closed()

    asyncio.run(serve())
    rec.close()
    print(f"TRANSACTIONS {rec.count}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
