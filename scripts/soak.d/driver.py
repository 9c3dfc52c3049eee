"""Load driver of scripts/soak: many FTP sessions through the proxy, with client-side faults.

Runs in the lab's client namespace with /usr/bin/python3 (asyncio, no third-party modules).
Each session picks a scenario (seeded), runs it against a lab server (through the gateway's
redirect to the proxy) and is judged against what that scenario must see: a normal transfer
must end with the right checksum, a fault must get the reply it deserves or none. Prints one
JSON object: counts by scenario and outcome, and the unexpected failures in detail.

usage: driver.py --server4 A --server6 A --sums FILE --sessions N [--concurrency C] [--seed S]
                 [--only SCENARIO[,SCENARIO]] [--servers NAME[,NAME]] [--modes pasv,...] [--bad-ports FIRST] [--timeout S]
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

SERVERS = {"vsftpd": 21, "pyftpd": 2121, "pureftpd": 2122}
SERVER_WEIGHTS = {"vsftpd": 5, "pureftpd": 3, "pyftpd": 2}
MODES = {4: ["pasv", "epsv", "port", "eprt"], 6: ["epsv", "eprt"]}
UPLOAD_USER = ("ftplab", "ftplab")

# Misbehaving servers of soak.d/badserver.py, by offset from --bad-ports.
BAD_MODES = ["silent", "junk-greeting", "close-after-227", "endless-multiline", "rst-on-pasv", "bad-227"]

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


class Unexpected(Exception):
    """The session saw something its scenario must not see."""


class Ctl:
    """An FTP control connection: latin1 lines, whole (multi-line) replies."""

    def __init__(self, reader, writer, timeout):
        self.r = reader
        self.w = writer
        self.timeout = timeout
        self.transcript = []

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
        return s

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
        self.w.transport.abort()

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

    def __init__(self, c, mode, family):
        self.c = c
        self.mode = mode
        self.family = family
        self.listener = None
        self.r = self.w = None

    async def prepare(self):
        c = self.c
        if self.mode in ("pasv", "epsv"):
            verb = "PASV" if self.mode == "pasv" else "EPSV"
            code, text = await c.cmd(verb)
            if verb == "EPSV" and code == 502 and self.family == 4:
                # The relay in outbound mode refuses IPv4 EPSV: use PASV, as curl and lftp do.
                verb = "PASV"
                code, text = await c.cmd(verb)
            if not str(code).startswith("2"):
                raise Unexpected(f"{verb}: {text[:100]!r}")
            if verb == "PASV":
                m = re.search(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", text)
                if not m or code != 227:
                    raise Unexpected(f"PASV: {text[:100]!r}")
                n = [int(x) for x in m.groups()]
                host, port = ".".join(map(str, n[:4])), n[4] * 256 + n[5]
            else:
                m = re.search(r"\(([!-~])\1\1(\d+)\1\)", text)
                if not m or code != 229:
                    raise Unexpected(f"EPSV: {text[:100]!r}")
                host, port = c.peer, int(m.group(2))
            self.r, self.w = await asyncio.wait_for(asyncio.open_connection(host, port, limit=1 << 20), c.timeout)
        else:
            fam = socket.AF_INET if self.family == 4 else socket.AF_INET6
            s = socket.socket(fam, socket.SOCK_STREAM)
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
            self.r, self.w = await asyncio.open_connection(sock=conn, limit=1 << 20)

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
            self.w.transport.abort()


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
    def __init__(self, args, index, sums):
        self.args = args
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
        self.c = None

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
        await c.cmd("QUIT", want=221)
        await c.fin()
        return c

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
        await c.cmd("QUIT", want=221)
        await c.fin()
        return c

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
        await c.cmd("QUIT", want=221)
        await c.fin()
        return c

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
        await c.cmd("QUIT", want=221)
        await c.fin()
        return c

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
        await c.cmd("QUIT", want=221)
        await c.fin()
        return c

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
        mode = self.rng.choice(BAD_MODES)
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
        elif mode in ("junk-greeting", "endless-multiline"):
            seen = await c.eof()
            if not any(l.startswith("421 ") for l in seen):
                raise Unexpected(f"expected 421 then close, saw {seen[:2]} ... {seen[-2:]}")
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
        }[scenario]
        return await fn()


async def one(args, index, scenario, sums, results):
    s = Session(args, index, sums)
    started = time.monotonic()
    entry = {"i": index, "scenario": scenario, "server": s.server, "family": s.family, "mode": s.mode}
    try:
        await asyncio.wait_for(s.run(scenario), args.timeout * 4)
        entry["ok"] = True
    except Unexpected as e:
        entry.update(ok=False, error=str(e))
    except asyncio.TimeoutError:
        entry.update(ok=False, error="timeout")
    except Exception as e:  # a reset, a refused connection: unexpected in every scenario
        entry.update(ok=False, error=f"{type(e).__name__}: {e}")
    entry["server"] = s.server
    if s.fault:
        entry["fault"] = s.fault
    entry["ms"] = round((time.monotonic() - started) * 1000)
    if not entry["ok"] and s.c is not None:
        entry["transcript"] = s.c.transcript[-12:]
    results.append(entry)


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--server4", required=True)
    ap.add_argument("--server6", required=True)
    ap.add_argument("--sums", required=True, help="SHA256SUMS of the lab's content")
    ap.add_argument("--sessions", type=int, required=True)
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
    only = [s for s in args.only.split(",") if s]
    for s in only:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s}")
    names = only or list(SCENARIOS)
    weights = [SCENARIOS[n] for n in names]
    pick = random.Random(args.seed)
    plan = [pick.choices(names, weights=weights)[0] for _ in range(args.sessions)]

    results = []
    sem = asyncio.Semaphore(args.concurrency)
    started = time.monotonic()

    async def guarded(i, scenario):
        async with sem:
            await one(args, i, scenario, sums, results)
            if args.progress and len(results) % args.progress == 0:
                bad = sum(1 for r in results if not r["ok"])
                print(f"driver: {len(results)}/{args.sessions} sessions, {bad} unexpected, {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)

    await asyncio.gather(*(guarded(i, s) for i, s in enumerate(plan)))

    by = {}
    for r in results:
        key = r["scenario"] + (f":{r['fault']}" if "fault" in r else "")
        b = by.setdefault(key, {"ok": 0, "unexpected": 0})
        b["ok" if r["ok"] else "unexpected"] += 1
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
        "ok": len(results) - len(failures),
        "unexpected": len(failures),
        "elapsed_s": round(time.monotonic() - started, 1),
        "by_scenario": dict(sorted(by.items())),
        "by_server": dict(sorted(by_server.items())),
        "causes": dict(sorted(causes.items(), key=lambda kv: -kv[1])),
        "failures": failures[:50],
    }))


if __name__ == "__main__":
    asyncio.run(main())
