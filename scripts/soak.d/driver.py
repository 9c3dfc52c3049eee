"""Load driver of scripts/soak: many FTP sessions through the proxy, with client-side faults.

Runs in the lab's client namespace with /usr/bin/python3 (asyncio, no third-party modules).
Each session picks a scenario (seeded), runs it against a lab server (through the gateway's
redirect to the proxy) and is judged against what that scenario must see: a normal transfer
must end with the right checksum, a fault must get the reply it deserves or none. Prints one
JSON object: counts by scenario and outcome, and the unexpected failures in detail.

With --hostile it runs for --minutes instead of a number of sessions: half of the workers run
good sessions (transfers with checksums, through both proxies) while the other half run
hostile clients against the reverse-mode proxy (--reverse-port on the gateway) and sessions
with hostile servers (badserver.py) through the outbound one. A hostile session "fails" when
the proxy misbehaved (a flood it never pushed back, a data connection that outlived its
session, a session that did not recover); its JSON adds the outcome and figures per kind and a
timeline of the hostile sessions. Every client checks every 227 it reads: its address must be
the one it connected to (the proxy's in reverse mode, the server's in outbound mode), and no
227/229 may answer anything but PASV/EPSV.

usage: driver.py --server4 A --server6 A --sums FILE --sessions N [--concurrency C] [--seed S]
                 [--only SCENARIO[,SCENARIO]] [--servers NAME[,NAME]] [--modes pasv,...] [--bad-ports FIRST] [--timeout S]
       driver.py --hostile --minutes M --gw4 A --reverse-port P [--stop-file F] (and the above but --sessions)
"""
import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import socket
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in the source tree
from badserver import MODES as BAD_MODES, WORKING, payload  # noqa: E402

SERVERS = {"vsftpd": 21, "pyftpd": 2121, "pureftpd": 2122}
SERVER_WEIGHTS = {"vsftpd": 5, "pureftpd": 3, "pyftpd": 2}
MODES = {4: ["pasv", "epsv", "port", "eprt"], 6: ["epsv", "eprt"]}
UPLOAD_USER = ("ftplab", "ftplab")

# Scenario -> weight. Faults from the client side, then the bad servers, then the normal ones.
SCENARIOS = {
    "normal-get": 30,
    "normal-list": 5,
    "normal-put": 8,
    "abor": 5,
    "rst-login": 6,
    "rst-transfer": 6,
    "rst-abor": 5,
    "close-after-pasv": 5,
    "junk-line": 4,
    "junk-nul": 2,
    "junk-long": 2,
    "junk-crflood": 1,
    "idle-close": 4,
    "bad-server": 12,
}

# --hostile: the good sessions (half of the workers) and the hostile ones (the other half).
# rev-* go through the reverse-mode proxy to vsftpd, the others through the outbound one.
GOOD = {
    "normal-get": 6,
    "normal-list": 1,
    "normal-put": 2,
    "rev-get": 6,
    "rev-list": 1,
    "rev-put": 2,
}
HOSTILE = {
    # clients from the internet, against the reverse-mode proxy
    "flood": 6,
    "pre-greeting": 4,
    "pipelined-missing": 4,
    "many-pasv": 2,
    "half-open": 3,
    "stop-reading": 2,
    # servers, through the outbound proxy (soak.d/badserver.py)
    "skip-reply": 3,
    "extra-reply": 3,
    "big-multiline": 2,
    "multiline-227": 3,
    "dribble": 3,
}
# Any of them can also be run a number of times (--sessions, --only).
ALL = {**SCENARIOS, **GOOD, **HOSTILE}
# At most this many of a kind at once: floods and big replies cost the machine, not only the proxy.
HOSTILE_CAP = {"flood": 2, "many-pasv": 1, "big-multiline": 2, "stop-reading": 2}

# Locally answered commands (and NOOP, which the server answers), flooded by a client that
# never reads. "epsvall" sends EPSV ALL once, then PASV (refused with 503) over and over.
FLOODS = {
    "lprt": b"LPRT\r\n",
    "lpsv": b"LPSV\r\n",
    "auth": b"AUTH TLS\r\n",
    "port": b"PORT 1,2,3\r\n",
    "cr": b"\r\r\n",
    "epsvall": b"PASV\r\n",
    "noop": b"NOOP\r\n",
}
# A flood lasts FLOOD_S, then the client resets, unless the proxy cuts it off first or it got
# FLOOD_BYTES accepted (no push-back: a finding). The proxy must have stopped taking bytes at
# least PUSHBACK_S before the end (else: still reading, a finding). The slack a proxy that
# does push back leaves is its socket buffers (a few MiB here).
FLOOD_BYTES = 16 << 20
FLOOD_S = 15
PUSHBACK_S = 3
# After the session ended (or the transfer, while the session lives), a data connection the
# proxy carries must be gone within this many seconds.
SESSION_GRACE_S = 3
HALF_CLOSED_S = 15
# TCP states (linux/tcp_states.h) of a socket whose peer is gone.
TCP_GONE = {6, 7}  # TIME_WAIT, CLOSE



def hard_close(w):
    """Reset a connection (RST), unless it is already closed: asyncio's abort() on a transport
    that has finished closing fails (its loop is gone)."""
    t = w.transport
    if t is not None and not t.is_closing():
        t.abort()

class Unexpected(Exception):
    """The session saw something its scenario must not see."""


class Ctl:
    """An FTP control connection: latin1 lines, whole (multi-line) replies."""

    def __init__(self, reader, writer, timeout):
        self.r = reader
        self.w = writer
        self.timeout = timeout
        self.transcript = []
        # 227/229 replies the proxy should never have let through (check_227, check_answer).
        self.violations = []
        # Data connections made for this session, all closed when it ends however it ended.
        self.data = []

    @classmethod
    async def connect(cls, host, port, timeout):
        r, w = await asyncio.wait_for(asyncio.open_connection(host, port, limit=1 << 20), timeout)
        return cls(r, w, timeout)

    @property
    def local(self):
        return self.w.get_extra_info("sockname")[0]

    @property
    def peer(self):
        return self.w.get_extra_info("peername")[0]

    def send(self, data):
        raw = data if isinstance(data, bytes) else (data + "\r\n").encode("latin1")
        self.transcript.append("> " + raw[:120].decode("latin1"))
        self.w.write(raw)

    async def line(self, timeout=None):
        raw = await asyncio.wait_for(self.r.readline(), timeout or self.timeout)
        if not raw:
            return None
        s = raw.decode("latin1").rstrip("\r\n")
        if s.startswith("227"):
            self.check_227(s)
        return s

    def check_227(self, line):
        """A 227 line must carry the address this client connected to, whoever sent it."""
        m = re.search(r"(\d+),(\d+),(\d+),(\d+),\d+,\d+", line)
        if m and ".".join(m.groups()) != self.peer:
            self.violations.append(f"227 carrying {'.'.join(m.groups())} (connected to {self.peer}): {line[:80]!r}")

    async def reply(self, timeout=None):
        """(code, text) of the next whole reply, or None at EOF."""
        first = await self.line(timeout)
        if first is None:
            self.transcript.append("< EOF")
            return None
        self.transcript.append("< " + first[:120])
        if not re.match(r"^[1-5]\d\d", first):
            raise Unexpected(f"not a reply: {first[:80]!r}")
        code = int(first[:3])
        text = first
        if first[3:4] == "-":
            while True:
                l = await self.line(timeout)
                if l is None:
                    raise Unexpected("EOF inside a multi-line reply")
                text += "\n" + l
                if l[:3] == first[:3] and l[3:4] in (" ", ""):
                    break
        return code, text

    def check_answer(self, line, r):
        """Only PASV and EPSV are answered with 227 or 229."""
        if r[0] in (227, 229) and line.split(" ")[0].upper() not in ("PASV", "EPSV"):
            self.violations.append(f"{r[0]} in answer to {line.split(' ')[0]}: {r[1][:80]!r}")

    async def final(self, timeout=None):
        """The next reply of 200 or above (preliminary ones skipped); None at EOF."""
        while True:
            r = await self.reply(timeout)
            if r is None or r[0] >= 200:
                return r

    async def cmd(self, line, want=None, timeout=None):
        self.send(line)
        r = await self.reply(timeout)
        if r is None:
            raise Unexpected(f"EOF after {line.split(' ')[0]}")
        self.check_answer(line, r)
        if want is not None and not str(r[0]).startswith(str(want)):
            raise Unexpected(f"{line.split(' ')[0]}: {r[1][:100]!r}")
        return r

    async def eof(self, timeout=None):
        """Wait for the proxy to close; returns the replies seen before."""
        seen = []
        while True:
            try:
                l = await self.line(timeout)
            except (ConnectionResetError, BrokenPipeError):
                return seen
            if l is None:
                return seen
            seen.append(l)

    def rst(self):
        """Close with a TCP RST (SO_LINGER 0)."""
        sock = self.w.get_extra_info("socket")
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        hard_close(self.w)

    async def fin(self):
        self.w.close()
        try:
            await asyncio.wait_for(self.w.wait_closed(), 5)
        except Exception:
            pass


async def login(c, user="anonymous", password="soak@example.org"):
    r = await c.reply()
    if r is None or r[0] != 220:
        raise Unexpected(f"greeting: {r}")
    code, text = await c.cmd(f"USER {user}")
    if code == 331:
        await c.cmd(f"PASS {password}", want=2)
    elif code != 230:
        raise Unexpected(f"USER: {text[:100]!r}")


class Data:
    """One data connection, passive or active, set up before the transfer command."""

    def __init__(self, c, mode, family, rcvbuf=None):
        self.c = c
        c.data.append(self)
        self.mode = mode
        self.family = family
        # A small receive buffer (and stream limit) for a client that reads slowly or stops.
        self.rcvbuf = rcvbuf
        self.listener = None
        self.r = self.w = None

    async def prepare(self):
        c = self.c
        if self.mode in ("pasv", "epsv"):
            verb = "PASV" if self.mode == "pasv" else "EPSV"
            code, text = await c.cmd(verb)
            if verb == "EPSV" and code == 502 and self.family == 4:
                # The relay in outbound mode may refuse IPv4 EPSV: use PASV, as curl and lftp do.
                verb = "PASV"
                code, text = await c.cmd(verb)
            if not str(code).startswith("2"):
                raise Unexpected(f"{verb}: {text[:100]!r}")
            host, port = passive_endpoint(c, code, text)
            self.r, self.w = await asyncio.wait_for(self.open(host, port), c.timeout)
        else:
            fam = socket.AF_INET if self.family == 4 else socket.AF_INET6
            s = socket.socket(fam, socket.SOCK_STREAM)
            if self.rcvbuf:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            s.bind((c.local, 0))
            s.listen(1)
            s.setblocking(False)
            self.listener = s
            port = s.getsockname()[1]
            if self.mode == "port":
                line = "PORT " + ",".join(c.local.split(".") + [str(port >> 8), str(port & 255)])
            else:
                line = f"EPRT |{1 if self.family == 4 else 2}|{c.local}|{port}|"
            await c.cmd(line, want=2)

    async def connected(self):
        if self.listener is not None:
            loop = asyncio.get_running_loop()
            conn, _ = await asyncio.wait_for(loop.sock_accept(self.listener), self.c.timeout)
            self.listener.close()
            self.listener = None
            self.r, self.w = await asyncio.open_connection(sock=conn, limit=self.rcvbuf or 1 << 20)

    async def open(self, host, port):
        return await dial(host, port, rcvbuf=self.rcvbuf, limit=self.rcvbuf or 1 << 20)

    async def read_all(self, limit=None):
        h = hashlib.sha256()
        n = 0
        while True:
            chunk = await asyncio.wait_for(self.r.read(1 << 16), self.c.timeout)
            if not chunk:
                break
            h.update(chunk)
            n += len(chunk)
            if limit is not None and n >= limit:
                break
        return n, h.hexdigest()

    def abort(self):
        if self.listener is not None:
            self.listener.close()
        if self.w is not None:
            hard_close(self.w)


async def dial(host, port, rcvbuf=None, sndbuf=None, limit=1 << 20):
    """A stream connection whose socket buffers are set before it connects."""
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    for opt, size in ((socket.SO_RCVBUF, rcvbuf), (socket.SO_SNDBUF, sndbuf)):
        if size:
            s.setsockopt(socket.SOL_SOCKET, opt, size)
    s.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(s, (host, port))
    except BaseException:
        s.close()
        raise
    return await asyncio.open_connection(sock=s, limit=limit)


async def list_kept(c, d):
    """LIST on a prepared data connection, read to EOF, answered 226; the client keeps its end."""
    code, text = await c.cmd("LIST")
    if code not in (125, 150):
        raise Unexpected(f"LIST: {text[:100]!r}")
    await d.connected()
    await d.read_all()
    r = await c.final()
    if r is None or r[0] != 226:
        raise Unexpected(f"after LIST: {r}")


async def quit(c):
    """QUIT answered with 221, then a clean close."""
    await c.cmd("QUIT", want=221)
    await c.fin()
    return c


def passive_endpoint(c, code, text):
    """(host, port) of a 227/229 reply; a 227 elsewhere than the control peer is never followed."""
    if code == 227:
        m = re.search(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", text)
        if not m:
            raise Unexpected(f"passive reply: {text[:100]!r}")
        n = [int(x) for x in m.groups()]
        host = ".".join(map(str, n[:4]))
        if host != c.peer:
            raise Unexpected(f"227 carrying {host} (connected to {c.peer}): {text[:100]!r}")
        return host, n[4] * 256 + n[5]
    m = re.search(r"\(([!-~])\1\1(\d+)\1\)", text)
    if not m or code != 229:
        raise Unexpected(f"passive reply: {text[:100]!r}")
    return c.peer, int(m.group(2))


async def retr_start(c, mode, family, name):
    """PASV/PORT, RETR, 150: the data connection is open and flowing."""
    d = Data(c, mode, family)
    await d.prepare()
    code, text = await c.cmd(f"RETR {name}")
    if code not in (125, 150):
        d.abort()
        raise Unexpected(f"RETR: {text[:100]!r}")
    await d.connected()
    return d


async def retr(c, mode, family, name):
    d = await retr_start(c, mode, family, name)
    n, digest = await d.read_all()
    d.abort()
    r = await c.final()
    if r is None or r[0] != 226:
        raise Unexpected(f"after RETR: {r}")
    return n, digest


async def stor(c, mode, family, name, payload):
    d = Data(c, mode, family)
    await d.prepare()
    code, text = await c.cmd(f"STOR {name}")
    if code not in (125, 150):
        d.abort()
        raise Unexpected(f"STOR: {text[:100]!r}")
    await d.connected()
    d.w.write(payload)
    await asyncio.wait_for(d.w.drain(), c.timeout)
    d.w.close()
    r = await c.final()
    if r is None or r[0] != 226:
        raise Unexpected(f"after STOR: {r}")


class Session:
    def __init__(self, args, index, sums, kind):
        self.args = args
        self.kind = kind
        self.index = index
        self.rng = random.Random(f"{args.seed}-{index}")
        self.sums = sums
        self.family = 4 if self.rng.random() < 0.7 else 6
        servers = args.servers or list(SERVER_WEIGHTS)
        self.server = self.rng.choices(servers, weights=[SERVER_WEIGHTS[s] for s in servers])[0]
        modes = [m for m in MODES[self.family] if not args.modes or m in args.modes] or MODES[self.family]
        if self.server == "pyftpd":
            # pyftpdlib (1.5, one thread) stalls its whole loop for ~20 s in active mode under this
            # load, without the proxy too (checked behind the kernel's FTP helper): passive only.
            modes = [m for m in modes if m in ("pasv", "epsv")] or ["epsv"]
        self.mode = self.rng.choice(modes)
        self.host = args.server4 if self.family == 4 else args.server6
        self.port = SERVERS[self.server]
        self.fault = None
        # What a hostile session measured (MiB a flood got accepted, connections left open...).
        self.figure = None
        # How a hostile session that did not fail went (a flood pushed back or cut off, ...).
        self.outcome = None
        self.c = None

    def variant(self, choices):
        """One of a kind's variants, among those --only names (KIND:VARIANT) if it does."""
        wanted = [c for c in choices if c in self.args.variants.get(self.kind, choices)]
        return self.rng.choice(wanted or choices)

    def reverse(self):
        """Through the reverse-mode proxy (the gateway, --reverse-port) to its vsftpd (IPv4 only:
        the nftables plane cannot translate between families)."""
        self.server = "vsftpd-rev"
        self.family = 4
        self.host = self.args.gw4
        self.port = self.args.reverse_port
        self.mode = self.rng.choice([m for m in MODES[4] if not self.args.modes or m in self.args.modes] or MODES[4])

    def bad(self, mode, family=None):
        """Through the outbound proxy to one of badserver.py's working-but-misbehaving servers."""
        self.server = "badserver"
        self.family = family or self.family
        self.host = self.args.server4 if self.family == 4 else self.args.server6
        self.port = self.args.bad_ports + BAD_MODES.index(mode)
        self.mode = self.rng.choice(["pasv", "epsv"]) if self.family == 4 else "epsv"

    async def ctl(self, port=None):
        self.c = await Ctl.connect(self.host, port or self.port, self.args.timeout)
        return self.c

    # --- normal sessions: must succeed, checksums must match ---

    async def normal_get(self):
        c = await self.ctl()
        await login(c)
        await c.cmd("TYPE I", want=2)
        for _ in range(self.rng.choice([1, 1, 2, 3])):
            name = self.rng.choice(["small.txt", "1MiB.bin", "1MiB.bin"])
            n, digest = await retr(c, self.mode, self.family, name)
            if digest != self.sums[name]:
                raise Unexpected(f"RETR {name}: checksum mismatch after {n} bytes")
        return await quit(c)

    async def normal_list(self):
        c = await self.ctl()
        await login(c)
        d = Data(c, self.mode, self.family)
        await d.prepare()
        code, text = await c.cmd("NLST dir1000")
        if code not in (125, 150):
            raise Unexpected(f"NLST: {text[:100]!r}")
        await d.connected()
        body = b""
        while True:
            chunk = await asyncio.wait_for(d.r.read(1 << 16), c.timeout)
            if not chunk:
                break
            body += chunk
        d.abort()
        r = await c.final()
        if r is None or r[0] != 226:
            raise Unexpected(f"after NLST: {r}")
        # Servers differ in path prefixes and in listing . and ..: the 1000 files must be there.
        names = {l.rsplit("/", 1)[-1] for l in body.decode("latin1").split("\r\n") if l}
        missing = {f"f{i:04d}.txt" for i in range(1000)} - names
        if missing:
            raise Unexpected(f"NLST dir1000: {len(missing)} of 1000 files missing")
        return await quit(c)

    async def normal_put(self):
        c = await self.ctl()
        await login(c, *UPLOAD_USER)
        await c.cmd("TYPE I", want=2)
        payload = os.urandom(self.rng.choice([1, 4096, 65536, 300000, 1048576]))
        name = f"soak-{self.args.seed}-{self.index}.bin"
        await stor(c, self.mode, self.family, name, payload)
        n, digest = await retr(c, self.mode, self.family, name)
        if digest != hashlib.sha256(payload).hexdigest():
            raise Unexpected(f"STOR then RETR {name}: checksum mismatch ({n} of {len(payload)} bytes)")
        await c.cmd(f"DELE {name}", want=2)
        return await quit(c)

    async def abor(self):
        """RETR of a big file, ABOR halfway: the session must go on (NOOP answered)."""
        c = await self.ctl()
        await login(c)
        await c.cmd("TYPE I", want=2)
        d = await retr_start(c, self.mode, self.family, "100MiB.bin")
        await d.read_all(limit=self.rng.choice([1, 65536, 1 << 20]))
        self.fault = self.rng.choice(["plain", "telnet"])
        c.send(b"ABOR\r\n" if self.fault == "plain" else b"\xff\xf4\xff\xf2ABOR\r\n")
        d.abort()
        # pure-ftpd 1.0.50 now and then ignores an ABOR sent with Telnet IP and the Synch in the
        # middle of a transfer, without the proxy too (the proxy passes that form on as it came):
        # a short wait, then the session is written off as the server's.
        quirk = self.server == "pureftpd" and self.fault == "telnet"
        # 426 for the transfer and 226 for ABOR, or one of them: then NOOP must get its 200.
        for _ in range(3):
            try:
                r = await c.reply(timeout=3 if quirk else None)
            except asyncio.TimeoutError:
                if not quirk:
                    raise
                self.fault = "telnet: pure-ftpd ignored the ABOR (it does so without the proxy too)"
                c.rst()
                return c
            if r is None:
                raise Unexpected("EOF after ABOR")
            if r[0] in (225, 226):
                break
        c.send("NOOP")
        for _ in range(4):
            r = await c.reply()
            if r is None:
                raise Unexpected("EOF after ABOR and NOOP")
            if r[0] == 200:
                break
        else:
            raise Unexpected("NOOP after ABOR never answered 200")
        return await quit(c)

    # --- faults from the client: anything may happen to the session, the proxy must survive ---

    async def rst_login(self):
        c = await self.ctl()
        r = await c.reply()
        if r is None or r[0] != 220:
            raise Unexpected(f"greeting: {r}")
        self.fault = self.rng.choice(["after-greeting", "after-user", "after-pass"])
        if self.fault != "after-greeting":
            c.send("USER anonymous")
            if self.rng.random() < 0.5:
                await c.reply()
            if self.fault == "after-pass":
                c.send("PASS x@y")
        c.rst()
        return c

    async def rst_transfer(self):
        c = await self.ctl()
        await login(c)
        await c.cmd("TYPE I", want=2)
        d = await retr_start(c, self.mode, self.family, "100MiB.bin")
        await d.read_all(limit=self.rng.choice([1, 65536, 1 << 20, 8 << 20]))
        c.rst()
        if self.rng.random() < 0.5:
            d.abort()
        else:
            await asyncio.sleep(0.05)
            d.abort()
        return c

    async def rst_abor(self):
        c = await self.ctl()
        await login(c)
        d = await retr_start(c, self.mode, self.family, "100MiB.bin")
        await d.read_all(limit=65536)
        c.send(b"\xff\xf4\xff\xf2ABOR\r\n")
        if self.rng.random() < 0.5:
            await asyncio.sleep(0.01)
        c.rst()
        d.abort()
        return c

    async def close_after_pasv(self):
        c = await self.ctl()
        await login(c)
        self.fault = self.rng.choice(["before-reply", "after-reply"])
        c.send("PASV" if self.mode == "pasv" else "EPSV")
        if self.fault == "after-reply":
            await c.reply()
        await c.fin()
        return c

    async def junk_line(self):
        """A line of junk is answered (by the proxy or the server) and the session goes on."""
        c = await self.ctl()
        await login(c)
        kind = self.rng.choice(["printable", "binary", "telnet", "port-junk"])
        self.fault = kind
        if kind == "printable":
            line = "X" + "".join(chr(self.rng.randint(33, 126)) for _ in range(self.rng.randint(0, 200)))
        elif kind == "binary":
            line = "X" + "".join(chr(self.rng.choice([b for b in range(1, 256) if b not in (10, 13)])) for _ in range(self.rng.randint(0, 200)))
        elif kind == "telnet":
            line = "\xff\xf4\xff\xf2NOOP"
        else:
            line = self.rng.choice(["PORT 1,2,3,4,5,6", "PORT 999,1,1,1,1,1", "EPRT |9|x|1|", "EPRT |1|10.0.0.1|80|", "PORT " + ",".join(c.local.split(".") + ["0", "21"]) if self.family == 4 else "EPRT |2|::1|21|"])
        # NOOP right behind it: pure-ftpd answers nothing at all to a line with bytes it dislikes
        # (it does so without the proxy too), so the junk's own reply may never come.
        c.send(line)
        c.send("NOOP")
        r = await c.reply()
        if r is None:
            raise Unexpected(f"EOF after a junk line ({kind})")
        if kind == "port-junk" and r[0] < 500:
            raise Unexpected(f"{line!r} accepted: {r[1][:100]!r}")
        # The proxy removes Telnet bytes from every line, so the Telnet-prefixed NOOP reaches
        # every server as a plain NOOP and is answered.
        if r[0] != 200 or self.server != "pureftpd" or kind == "telnet":
            r = await c.reply()
            if r is None or r[0] != 200:
                raise Unexpected(f"NOOP after a junk line ({kind}): {r}")
        return await quit(c)

    async def junk_fatal(self, payload, want):
        """NUL, an over-long line, a CR flood: the proxy answers `want` and closes."""
        c = await self.ctl()
        await login(c)
        c.send(payload)
        seen = await c.eof()
        if not any(l.startswith(want) for l in seen):
            raise Unexpected(f"expected {want} then close, saw {seen[:3]}")
        return c

    async def idle_close(self):
        c = await self.ctl()
        await login(c)
        await asyncio.sleep(self.rng.uniform(0.2, 3.0))
        self.fault = self.rng.choice(["fin", "quit", "rst"])
        if self.fault == "quit":
            await c.cmd("QUIT", want=221)
            await c.fin()
        elif self.fault == "rst":
            c.rst()
        else:
            await c.fin()
        return c

    # --- misbehaving servers (soak.d/badserver.py), reached through the same redirect ---

    async def bad_server(self):
        mode = self.rng.choice([m for m in BAD_MODES if m not in WORKING])
        self.fault = mode
        self.server = "badserver"
        c = await self.ctl(self.args.bad_ports + BAD_MODES.index(mode))
        if mode == "silent":
            try:
                r = await c.reply(timeout=1.5)
                raise Unexpected(f"a silent server, yet a reply: {r}")
            except asyncio.TimeoutError:
                pass
            await c.fin()
        elif mode == "junk-greeting":
            seen = await c.eof()
            if not any(l.startswith("421 ") for l in seen):
                raise Unexpected(f"expected 421 then close, saw {seen[:2]} ... {seen[-2:]}")
        elif mode == "endless-multiline":
            # A long multi-line reply is streamed in pieces, never cut off or held whole: every
            # line of the greeting arrives, in order; the client then gives up on its end and
            # closes, and the session must end with it (the soak's final checks).
            want = ["220-welcome"] + [f"220-line {i}" for i in range(25000)]
            for n, expected in enumerate(want):
                got = await c.line()
                if got != expected:
                    raise Unexpected(f"greeting line {n}: expected {expected!r}, got {got!r}")
            await c.fin()
        elif mode in ("close-after-227", "rst-on-pasv"):
            await login(c)
            c.send("PASV" if self.family == 4 else "EPSV")
            seen = await c.eof()
            if any(not re.match(r"^(227|229|425|421) ", l) for l in seen):
                raise Unexpected(f"after the server closed: {seen[:3]}")
        else:
            await login(c)
            code, text = await c.cmd("PASV" if self.family == 4 else "EPSV")
            if code != 425:
                raise Unexpected(f"a broken passive reply reached the client as {text[:100]!r}")
            await c.cmd("NOOP", want=200)
            await c.cmd("QUIT", want=221)
            await c.fin()
        return c

    # --- hostile clients, against the reverse-mode proxy ---

    async def flood(self):
        """Commands the proxy answers itself (or NOOP), sent as fast as accepted, never reading."""
        self.reverse()
        self.fault = self.variant(list(FLOODS))
        # limit=1: the stream stops reading after the first bytes, and the window closes.
        r, w = await asyncio.wait_for(dial(self.host, self.port, rcvbuf=4096, sndbuf=65536, limit=1), self.args.timeout)
        self.c = Ctl(r, w, self.args.timeout)
        unit = FLOODS[self.fault]
        chunk = unit * (65536 // len(unit))
        if self.fault == "epsvall":
            w.write(b"EPSV ALL\r\n")
        started = progress = time.monotonic()
        deadline = started + FLOOD_S
        sent = 0
        try:
            while sent < FLOOD_BYTES and time.monotonic() < deadline:
                w.write(chunk)
                sent += len(chunk)
                try:
                    await asyncio.wait_for(w.drain(), deadline - time.monotonic())
                except asyncio.TimeoutError:
                    break
                progress = time.monotonic()
            # A proxy too busy to read for a moment is not one that paused this client: only
            # one that stopped taking bytes at least PUSHBACK_S before the end pushed back.
            if sent >= FLOOD_BYTES:
                outcome = "no push-back"
            elif deadline - progress >= PUSHBACK_S:
                outcome = "pushed back"
            else:
                outcome = "still reading"
        except OSError:
            outcome = "cut off"
        accepted = max(0, sent - (w.transport.get_write_buffer_size() if not w.transport.is_closing() else 0))
        self.figure = round(accepted / (1 << 20), 1)
        self.c.rst()
        self.outcome = outcome
        if outcome in ("no push-back", "still reading"):
            raise Unexpected(f"{self.fault} flood: {self.figure} MiB accepted in {time.monotonic() - started:.0f} s from a client that never reads ({outcome})")
        return self.c

    async def pre_greeting(self):
        """USER, PASS and PASV in one write before the greeting; then a transfer on that PASV."""
        self.reverse()
        self.mode = "pasv"
        c = await self.ctl()
        c.send(b"USER anonymous\r\nPASS soak@example.org\r\nPASV\r\n")
        replies = []
        for _ in range(4):
            r = await c.reply()
            if r is None:
                raise Unexpected(f"EOF after {len(replies)} replies to USER, PASS, PASV sent before the greeting")
            replies.append(r)
        if replies[0][0] != 220 or replies[3][0] != 227:
            raise Unexpected(f"USER, PASS, PASV before the greeting: {[t[:60] for _, t in replies]}")
        host, port = passive_endpoint(c, *replies[3])
        d = Data(c, "pasv", 4)
        d.r, d.w = await asyncio.wait_for(d.open(host, port), c.timeout)
        code, text = await c.cmd("RETR small.txt")
        if code not in (125, 150):
            d.abort()
            raise Unexpected(f"RETR: {text[:100]!r}")
        n, digest = await d.read_all()
        d.abort()
        if digest != self.sums["small.txt"]:
            raise Unexpected(f"RETR small.txt after a PASV sent before the greeting: checksum mismatch after {n} bytes")
        r = await c.final()
        if r is None or r[0] != 226:
            raise Unexpected(f"after RETR: {r}")
        return await quit(c)

    async def pipelined_missing(self):
        """PASV and RETR of a missing file in one write: after the 550, the path is gone too."""
        self.reverse()
        self.mode = "pasv"
        c = await self.ctl()
        await login(c)
        c.send(f"PASV\r\nRETR no-such-file-{self.index}\r\n".encode())
        r = await c.reply()
        if r is None or r[0] != 227:
            raise Unexpected(f"pipelined PASV: {r}")
        host, port = passive_endpoint(c, *r)
        r = await c.final()
        if r is None or r[0] < 400:
            raise Unexpected(f"RETR of a missing file: {r}")
        try:
            _, w = await asyncio.wait_for(asyncio.open_connection(host, port), 2)
            hard_close(w)
            raise Unexpected(f"the data port of a RETR that failed ({r[0]}) still admits a connection")
        except (OSError, asyncio.TimeoutError):
            pass
        await c.cmd("NOOP", want=200)
        return await quit(c)

    async def many_pasv(self):
        """Many PASV+LIST, each read to EOF, no data socket ever closed; QUIT: all must go."""
        self.reverse()
        self.mode = self.rng.choice(["pasv", "epsv"])
        c = await self.ctl()
        await login(c)
        n = self.rng.randint(20, 60)
        held = []
        try:
            for _ in range(n):
                d = Data(c, self.mode, 4)
                await d.prepare()
                held.append(d)
                await list_kept(c, d)
            await c.cmd("QUIT", want=221)
            await c.eof()
            await asyncio.sleep(SESSION_GRACE_S)
            self.figure = sum([await still_open(d.w) for d in held])
            if self.figure:
                raise Unexpected(f"{self.figure} of {n} data connections (read to EOF, never closed) still open {SESSION_GRACE_S} s after their session ended")
        finally:
            for d in held:
                d.abort()
        return c

    async def half_open(self):
        """A data connection the client never closes: after a LIST while the session lives on
        (it must end within HALF_CLOSED_S), or half-closed without a transfer (it must end
        with the session)."""
        self.reverse()
        self.mode = self.rng.choice(["pasv", "epsv"])
        self.fault = self.variant(["after-list", "no-transfer"])
        c = await self.ctl()
        await login(c)
        d = Data(c, self.mode, 4)
        await d.prepare()
        try:
            if self.fault == "after-list":
                await list_kept(c, d)
                ended = time.monotonic()
                while time.monotonic() - ended < HALF_CLOSED_S:
                    await asyncio.sleep(3)
                    await c.cmd("NOOP", want=200)
                if await still_open(d.w):
                    raise Unexpected(f"a data connection still open {HALF_CLOSED_S} s after its transfer ended (the client never closed it)")
                return await quit(c)
            else:
                d.w.write_eof()
                await asyncio.sleep(self.rng.uniform(0.5, 3))
                await c.cmd("QUIT", want=221)
                await c.eof()
                await asyncio.sleep(SESSION_GRACE_S)
                if await still_open(d.w):
                    raise Unexpected(f"a half-closed data connection without a transfer still open {SESSION_GRACE_S} s after its session ended")
        finally:
            d.abort()
        return c

    async def stop_reading(self):
        """A slow download whose client stops reading for a while, then aborts it."""
        self.reverse()
        c = await self.ctl()
        await login(c)
        await c.cmd("TYPE I", want=2)
        d = Data(c, self.mode, 4, rcvbuf=16384)
        await d.prepare()
        code, text = await c.cmd("RETR 100MiB.bin")
        if code not in (125, 150):
            d.abort()
            raise Unexpected(f"RETR: {text[:100]!r}")
        await d.connected()
        n = 0
        until = time.monotonic() + self.rng.uniform(1, 4)
        while time.monotonic() < until:
            chunk = await asyncio.wait_for(d.r.read(16384), c.timeout)
            if not chunk:
                raise Unexpected(f"EOF after {n} bytes of a slow download")
            n += len(chunk)
            await asyncio.sleep(0.02)
        self.figure = round(n / (1 << 20), 1)
        await asyncio.sleep(self.rng.uniform(10, 20))
        d.abort()
        c.send("ABOR")
        for _ in range(3):
            r = await c.reply()
            if r is None:
                raise Unexpected("EOF after ABOR of a stalled download")
            if r[0] in (225, 226):
                break
        await self.sync(c, "NOOP", "200")
        return await quit(c)

    async def sync(self, c, line, prefix, slack=2):
        """Send `line`, skip up to `slack` replies that do not start with `prefix` (each 227/229
        among them is a violation), return the one that does."""
        c.send(line)
        for _ in range(slack + 1):
            r = await c.reply()
            if r is None:
                raise Unexpected(f"EOF after {line.split(' ')[0]}")
            c.check_answer(line, r)
            if r[1].startswith(prefix):
                return r
        raise Unexpected(f"{line.split(' ')[0]}: no {prefix!r} reply in {slack + 1}")

    # --- hostile servers (soak.d/badserver.py), through the outbound proxy ---

    async def fetch(self, c, name):
        """RETR of badserver.py content on a fresh passive path, checked."""
        if c.violations:
            raise Unexpected(c.violations[0])
        n, digest = await retr(c, self.mode, self.family, name)
        if digest != hashlib.sha256(payload(name)).hexdigest():
            raise Unexpected(f"RETR {name}: checksum mismatch after {n} bytes")

    async def skip_reply(self):
        """The server answers RETR with 150 only and ABOR with one 226: the next PASV must work."""
        self.bad("skip-reply")
        c = await self.ctl()
        await login(c)
        await c.cmd("TYPE I", want=200)
        d = await retr_start(c, self.mode, self.family, "65536")
        try:
            await d.read_all()
        except OSError:
            pass
        d.abort()
        c.send("ABOR")
        r = await c.reply()
        if r is None or r[0] >= 500:
            raise Unexpected(f"ABOR after a RETR the server left unanswered: {r}")
        # One reply or two (426 and 226) for the pair, whichever the proxy makes of it.
        await self.sync(c, "NOOP", "200")
        await self.fetch(c, "4096")
        await self.sync(c, "QUIT", "221")
        await c.fin()
        return c

    async def extra_reply(self):
        """An unsolicited 227 after NOOP's 200 and 229 after TYPE's 200 must not reach the client."""
        self.bad("extra-reply")
        c = await self.ctl()
        await login(c)
        await self.sync(c, "NOOP", "200 NOOP")
        await self.sync(c, "TYPE I", "200 TYPE")
        await self.fetch(c, "4096")
        await self.sync(c, "QUIT", "221")
        await c.fin()
        return c

    async def big_multiline(self):
        """STAT or FEAT answered with a 10 MB 211 reply in maximal lines, read late or at once:
        it arrives whole, or the proxy refuses it with 421 and closes."""
        self.bad("big-multiline")
        self.fault = self.variant(["STAT", "FEAT"])
        c = await self.ctl()
        await login(c)
        c.send(self.fault)
        await asyncio.sleep(self.rng.choice([0, 0, 3, 8]))
        lines = size = 0
        while True:
            l = await c.line()
            if l is None:
                raise Unexpected(f"EOF inside a {size}-byte 211 reply without a 421")
            lines += 1
            size += len(l) + 2
            if l.startswith("421"):
                self.outcome = "refused with 421"
                await c.eof()
                return c
            if l.startswith("211 "):
                break
        self.figure = round(size / 1e6, 1)
        self.outcome = "whole"
        m = re.search(r"(\d+) lines", l)
        if not m or lines != int(m.group(1)) + 2:
            raise Unexpected(f"211 reply: {lines} lines arrived, the server sent {m and int(m.group(1)) + 2}")
        await c.cmd("NOOP", want=200)
        return await quit(c)

    async def multiline_227(self):
        """`227-Entering Passive Mode` then the 227 line with the address: a normal transfer."""
        self.bad("multiline-227", family=4)
        self.mode = "pasv"
        c = await self.ctl()
        await login(c)
        await self.fetch(c, "4096")
        return await quit(c)

    async def dribble(self):
        """Every reply a byte at a time: a normal session, only slower."""
        self.bad("dribble")
        c = await self.ctl()
        await login(c)
        await c.cmd("TYPE I", want=200)
        await c.cmd("FEAT", want=211)
        await self.fetch(c, "65536")
        return await quit(c)

    async def via_reverse(self, fn):
        self.reverse()
        return await fn()

    async def run(self, scenario):
        fn = {
            "normal-get": self.normal_get,
            "normal-list": self.normal_list,
            "normal-put": self.normal_put,
            "abor": self.abor,
            "rst-login": self.rst_login,
            "rst-transfer": self.rst_transfer,
            "rst-abor": self.rst_abor,
            "close-after-pasv": self.close_after_pasv,
            "junk-line": self.junk_line,
            "junk-nul": lambda: self.junk_fatal(b"NOOP \x00x\r\n", "500 "),
            "junk-long": lambda: self.junk_fatal(b"NOOP " + b"a" * self.rng.randint(1100, 70000) + b"\r\n", "500 "),
            "junk-crflood": lambda: self.junk_fatal(b"\r" * self.rng.randint(1100, 20000) + b"\n", "500 "),
            "idle-close": self.idle_close,
            "bad-server": self.bad_server,
            "rev-get": lambda: self.via_reverse(self.normal_get),
            "rev-list": lambda: self.via_reverse(self.normal_list),
            "rev-put": lambda: self.via_reverse(self.normal_put),
            "flood": self.flood,
            "pre-greeting": self.pre_greeting,
            "pipelined-missing": self.pipelined_missing,
            "many-pasv": self.many_pasv,
            "half-open": self.half_open,
            "stop-reading": self.stop_reading,
            "skip-reply": self.skip_reply,
            "extra-reply": self.extra_reply,
            "big-multiline": self.big_multiline,
            "multiline-227": self.multiline_227,
            "dribble": self.dribble,
        }[scenario]
        return await fn()


def tcp_state(sock):
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]


async def still_open(w):
    """Whether the far end of our data connection (the proxy's relay, or the server through
    the kernel's NAT) still holds it. A byte is sent (unless we shut our side): a closed end
    answers it with a reset."""
    sock = w.get_extra_info("socket")
    if sock is None or sock.fileno() < 0:
        return False
    probe = socket.socket(fileno=os.dup(sock.fileno()))
    try:
        if tcp_state(probe) in TCP_GONE:
            return False
        try:
            probe.send(b"?", socket.MSG_DONTWAIT)
        except OSError:
            pass
        await asyncio.sleep(0.3)
        return tcp_state(probe) not in TCP_GONE
    finally:
        probe.close()


async def one(args, index, scenario, sums, results):
    s = Session(args, index, sums, scenario)
    started = time.monotonic()
    wall = time.time()
    entry = {"i": index, "scenario": scenario, "server": s.server, "family": s.family, "mode": s.mode}
    try:
        await asyncio.wait_for(s.run(scenario), args.timeout * 4)
        if s.c is not None and s.c.violations:
            raise Unexpected(s.c.violations[0])
        entry["ok"] = True
    except Unexpected as e:
        entry.update(ok=False, error=str(e))
    except asyncio.TimeoutError:
        entry.update(ok=False, error="timeout")
    except Exception as e:  # a reset, a refused connection: unexpected in every scenario
        entry.update(ok=False, error=f"{type(e).__name__}: {e}")
    if s.c is not None:
        # A failed session leaves nothing open for the proxy to hold on to.
        for d in s.c.data:
            d.abort()
        hard_close(s.c.w)
    entry.update(server=s.server, family=s.family, mode=s.mode)
    if s.fault:
        entry["fault"] = s.fault
    if s.figure is not None:
        entry["figure"] = s.figure
    if s.outcome is not None:
        entry["outcome"] = s.outcome
    entry["ms"] = round((time.monotonic() - started) * 1000)
    if args.hostile:
        entry["t"] = [round(wall, 2), round(time.time(), 2)]
    # Ended after the watch killed a proxy (--stop-file): counted apart, whatever it saw.
    if args.stop_file and os.path.exists(args.stop_file):
        entry["interrupted"] = True
    if not entry["ok"] and s.c is not None:
        entry["transcript"] = s.c.transcript[-12:]
        if s.c.violations:
            entry["violations"] = s.c.violations[:3]
    results.append(entry)


async def run_plan(args, sums, names, results):
    """The classic soak: --sessions sessions, scenarios drawn by weight, C at a time."""
    pick = random.Random(args.seed)
    plan = [pick.choices(names, weights=[ALL[n] for n in names])[0] for _ in range(args.sessions)]
    sem = asyncio.Semaphore(args.concurrency)
    started = time.monotonic()

    async def guarded(i, scenario):
        async with sem:
            await one(args, i, scenario, sums, results)
            if args.progress and len(results) % args.progress == 0:
                bad = sum(1 for r in results if not r["ok"])
                print(f"driver: {len(results)}/{args.sessions} sessions, {bad} unexpected, {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)

    await asyncio.gather(*(guarded(i, s) for i, s in enumerate(plan)))


async def run_hostile(args, sums, names, results):
    """--hostile: until --minutes have passed (or --stop-file appears), half of the workers run
    good sessions and half hostile ones, each kind at most HOSTILE_CAP at once."""
    deadline = time.monotonic() + args.minutes * 60
    pools = [{k: w for k, w in t.items() if k in names} for t in (GOOD, HOSTILE)]
    pools = [p for p in pools if p]
    running = {k: 0 for k in names}
    seq = iter(range(1 << 62))
    pick = random.Random(args.seed)

    def stopping():
        return time.monotonic() >= deadline or (args.stop_file and os.path.exists(args.stop_file))

    async def worker(pool):
        while not stopping():
            free = [k for k in pool if running[k] < HOSTILE_CAP.get(k, args.concurrency)]
            if not free:
                await asyncio.sleep(0.2)
                continue
            kind = pick.choices(free, weights=[pool[k] for k in free])[0]
            running[kind] += 1
            try:
                await one(args, next(seq), kind, sums, results)
            finally:
                running[kind] -= 1

    async def progress():
        started = time.monotonic()
        while not stopping():
            await asyncio.sleep(min(60, max(0.1, deadline - time.monotonic())))
            bad = sum(1 for r in results if not r["ok"])
            print(f"driver: {time.monotonic() - started:.0f} s, {len(results)} sessions, {bad} failed", file=sys.stderr, flush=True)

    ticker = asyncio.create_task(progress())
    await asyncio.gather(*(worker(pools[i % len(pools)]) for i in range(args.concurrency)))
    ticker.cancel()


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server4", required=True)
    ap.add_argument("--server6", required=True)
    ap.add_argument("--sums", required=True, help="SHA256SUMS of the lab's content")
    ap.add_argument("--sessions", type=int)
    ap.add_argument("--hostile", action="store_true", help="good and hostile sessions for --minutes")
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--gw4", help="the gateway's address the reverse-mode proxy listens on (--hostile)")
    ap.add_argument("--reverse-port", type=int, default=8121)
    ap.add_argument("--stop-file", default="", help="stop starting sessions once this file exists (--hostile)")
    ap.add_argument("--concurrency", type=int, default=48)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", default="")
    ap.add_argument("--servers", default="", help="some of vsftpd,pureftpd,pyftpd (default: all)")
    ap.add_argument("--modes", default="", help="some of pasv,epsv,port,eprt (default: all)")
    ap.add_argument("--bad-ports", type=int, default=2190)
    ap.add_argument("--timeout", type=float, default=20.0)
    ap.add_argument("--progress", type=int, default=500, help="a line on stderr every N sessions")
    args = ap.parse_args()

    sums = {}
    with open(args.sums) as f:
        for line in f:
            digest, name = line.split()
            sums[name.lstrip("*")] = digest

    args.modes = [m for m in args.modes.split(",") if m]
    args.servers = [s for s in args.servers.split(",") if s]
    for s in args.servers:
        if s not in SERVERS:
            ap.error(f"unknown server {s}")
    table = {**GOOD, **HOSTILE} if args.hostile else SCENARIOS
    # KIND:VARIANT narrows a kind to some of its variants (flood:lprt, half-open:no-transfer).
    args.variants = {}
    only = []
    for s in args.only.split(","):
        kind, _, variant = s.partition(":")
        if variant:
            args.variants.setdefault(kind, []).append(variant)
        if kind and kind not in only:
            only.append(kind)
    for s in only:
        if s not in ALL or s not in table and args.hostile:
            ap.error(f"unknown scenario {s}")
    if args.hostile and not args.gw4:
        ap.error("--hostile needs --gw4")
    if not args.hostile and not args.sessions:
        ap.error("--sessions N, or --hostile")
    names = only or list(table)

    results = []
    started = time.monotonic()
    await (run_hostile if args.hostile else run_plan)(args, sums, names, results)

    interrupted = [r for r in results if r.get("interrupted")]
    results = [r for r in results if not r.get("interrupted")]
    by = {}
    for r in results:
        key = r["scenario"] + (f":{r['fault']}" if "fault" in r else "")
        b = by.setdefault(key, {"ok": 0, "unexpected": 0})
        b["ok" if r["ok"] else "unexpected"] += 1
        if "outcome" in r:
            b.setdefault("outcomes", {})
            b["outcomes"][r["outcome"]] = b["outcomes"].get(r["outcome"], 0) + 1
        if "figure" in r:
            b["max"] = max(b.get("max", 0), r["figure"])
    failures = sorted((r for r in results if not r["ok"]), key=lambda r: r["i"])
    by_server = {}
    for r in results:
        b = by_server.setdefault(r["server"], {"ok": 0, "unexpected": 0})
        b["ok" if r["ok"] else "unexpected"] += 1
    causes = {}
    for r in failures:
        key = f"{r['server']} {r['scenario']}: {re.sub(r'[0-9]+', 'N', r['error'])[:60]}"
        causes[key] = causes.get(key, 0) + 1
    print(json.dumps({
        "sessions": len(results),
        "interrupted": len(interrupted),
        "interrupted_by_scenario": {k: sum(1 for r in interrupted if r["scenario"] == k) for k in sorted({r["scenario"] for r in interrupted})},
        "ok": len(results) - len(failures),
        "unexpected": len(failures),
        "elapsed_s": round(time.monotonic() - started, 1),
        "by_scenario": dict(sorted(by.items())),
        "by_server": dict(sorted(by_server.items())),
        "causes": dict(sorted(causes.items(), key=lambda kv: -kv[1])),
        "failures": failures[:50],
        # When each hostile session ran, to tell which kinds were running when the proxy grew.
        "timeline": [[r["scenario"] + (f":{r['fault']}" if "fault" in r else ""), *r["t"]] for r in results + interrupted if "t" in r and r["scenario"] in HOSTILE],
    }))


if __name__ == "__main__":
    asyncio.run(main())
