"""Misbehaving FTP servers for scripts/soak, one per port from --first-port on (IPv4 and IPv6):

  +0 silent             accepts and never says anything
  +1 junk-greeting      greets with a line that is no FTP reply, then waits
  +2 close-after-227    logs in, answers PASV/EPSV and closes at once
  +3 endless-multiline  a multi-line greeting that does not end (25000 lines, then waits)
  +4 rst-on-pasv        logs in, answers PASV/EPSV with a TCP RST
  +5 bad-227            answers PASV/EPSV with a reply that carries no usable port

and servers that work (login, TYPE, PASV/EPSV, LIST, RETR of generated content, STAT, FEAT,
NOOP, ABOR, QUIT) but misbehave in one way each, for the hostile soak (scripts/soak --hostile):

  +6 skip-reply         answers the first RETR with 150 only and resets its data connection,
                        then answers ABOR with one 226 (pure-ftpd's habit): one reply short
  +7 extra-reply        adds an unsolicited 227 (192.168.1.10 port 22) after NOOP's 200 and an
                        unsolicited 229 (port 22) after TYPE's 200
  +8 big-multiline      answers STAT and FEAT with a 211- reply of --big-bytes (10 MB) in lines
                        of exactly --line-length bytes
  +9 multiline-227      answers PASV with `227-Entering Passive Mode` then the 227 line with the address
 +10 dribble            writes every reply one byte at a time

Every working server announces 192.168.1.10 in its 227 (a server behind its own NAT): a 227
that reaches a client unrewritten is told from the proxy's by its address. RETR NAME sends
payload(NAME): NAME bytes when NAME is a number (1000 otherwise), the same on every run.

Runs in the lab's server namespace with /usr/bin/python3; SIGTERM ends it.
"""
import argparse
import asyncio
import hashlib
import socket
import struct

MODES = ["silent", "junk-greeting", "close-after-227", "endless-multiline", "rst-on-pasv", "bad-227",
         "skip-reply", "extra-reply", "big-multiline", "multiline-227", "dribble"]
WORKING = MODES[MODES.index("skip-reply"):]
# What the working servers put in their 227 replies: not the address clients connect to.
PASV_HOST = "192,168,1,10"
# Seconds between the bytes of a dribbled reply.
DRIBBLE_GAP = 0.002


def payload(name):
    """The content RETR NAME sends: deterministic, NAME bytes long when NAME is a number."""
    n = int(name) if name.isdigit() and len(name) < 10 else 1000
    block = hashlib.sha256(name.encode("latin1")).digest()
    return (block * (n // len(block) + 1))[:n]


def rst(writer):
    sock = writer.get_extra_info("socket")
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    writer.transport.abort()


async def drain_forever(reader):
    while await reader.read(65536):
        pass


async def serve(mode, reader, writer, args):
    if mode in WORKING:
        return await Working(mode, reader, writer, args).run()
    try:
        if mode == "silent":
            return await drain_forever(reader)
        if mode == "junk-greeting":
            writer.write(b"hello, this is not FTP\r\n")
            return await drain_forever(reader)
        if mode == "endless-multiline":
            writer.write(b"220-welcome\r\n")
            for i in range(25000):
                writer.write(b"220-line %d\r\n" % i)
                if i % 1000 == 0:
                    await writer.drain()
            await writer.drain()
            return await drain_forever(reader)
        writer.write(b"220 misbehaving server ready\r\n")
        while True:
            raw = await reader.readline()
            if not raw:
                return
            verb = raw.split(b" ")[0].strip().upper()
            if verb == b"USER":
                writer.write(b"331 password please\r\n")
            elif verb == b"PASS":
                writer.write(b"230 logged in\r\n")
            elif verb in (b"PASV", b"EPSV"):
                if mode == "close-after-227":
                    writer.write(b"227 Entering Passive Mode (198,51,100,2,195,80).\r\n" if verb == b"PASV" else b"229 Entering Extended Passive Mode (|||50000|)\r\n")
                    await writer.drain()
                    writer.close()
                    return
                if mode == "rst-on-pasv":
                    return rst(writer)
                writer.write(b"227 Entering Passive Mode (1,2,3,4,0,0).\r\n" if verb == b"PASV" else b"229 Entering Extended Passive Mode (|||0|)\r\n")
            elif verb == b"NOOP":
                writer.write(b"200 NOOP ok\r\n")
            elif verb == b"QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                writer.close()
                return
            else:
                writer.write(b"502 not implemented\r\n")
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.transport.abort()


class Working:
    """One session of a working server that misbehaves as its mode says."""

    def __init__(self, mode, reader, writer, args):
        self.mode = mode
        self.r = reader
        self.w = writer
        self.args = args
        self.listener = None
        self.retrs = 0

    async def say(self, *lines):
        data = "".join(l + "\r\n" for l in lines).encode("latin1")
        if self.mode != "dribble":
            self.w.write(data)
            return await self.w.drain()
        for i in range(len(data)):
            self.w.write(data[i:i + 1])
            await self.w.drain()
            await asyncio.sleep(DRIBBLE_GAP)

    async def passive(self, verb):
        if self.listener is not None:
            self.listener.close()
        local = self.w.get_extra_info("sockname")[0]
        s = socket.socket(socket.AF_INET6 if ":" in local else socket.AF_INET, socket.SOCK_STREAM)
        s.bind((local, 0))
        s.listen(1)
        s.setblocking(False)
        self.listener = s
        port = s.getsockname()[1]
        if verb == "EPSV":
            return await self.say(f"229 Entering Extended Passive Mode (|||{port}|)")
        last = f"227 Entering Passive Mode ({PASV_HOST},{port >> 8},{port & 255})."
        await self.say(*(["227-Entering Passive Mode"] if self.mode == "multiline-227" else []), last)

    async def data(self):
        """The client's data connection on the passive listener, or None (425 said)."""
        if self.listener is None:
            await self.say("425 Use PASV or EPSV first")
            return None
        s, self.listener = self.listener, None
        try:
            conn, _ = await asyncio.wait_for(asyncio.get_running_loop().sock_accept(s), 10)
        except asyncio.TimeoutError:
            await self.say("425 No data connection")
            return None
        finally:
            s.close()
        return conn

    async def send_data(self, content):
        conn = await self.data()
        if conn is None:
            return
        await self.say("150 Opening BINARY mode data connection")
        if self.mode == "skip-reply" and self.retrs == 1:
            # The data connection is reset and no final reply ever comes.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            return
        try:
            await asyncio.get_running_loop().sock_sendall(conn, content)
            conn.shutdown(socket.SHUT_WR)
            await self.say("226 Transfer complete")
        except OSError:
            await self.say("426 Connection closed; transfer aborted")
        finally:
            conn.close()

    async def big(self):
        """A 211 reply of about --big-bytes in lines of exactly --line-length bytes."""
        n = max(1, self.args.big_bytes // (self.args.line_length + 2))
        line = b"211-" + b"x" * (self.args.line_length - 4) + b"\r\n"
        self.w.write(b"211-Status follows\r\n")
        for i in range(n):
            self.w.write(line)
            if i % 64 == 63:
                await self.w.drain()
        await self.say(f"211 End of status: {n} lines")

    async def run(self):
        try:
            await self.say("220 misbehaving server ready")
            while True:
                raw = await self.r.readline()
                if not raw:
                    return
                cmd = raw.decode("latin1").strip()
                verb, _, arg = cmd.partition(" ")
                verb = verb.upper()
                if verb == "USER":
                    await self.say("331 password please")
                elif verb == "PASS":
                    await self.say("230 logged in")
                elif verb == "TYPE":
                    await self.say("200 TYPE set", *(["229 Entering Extended Passive Mode (|||22|)"] if self.mode == "extra-reply" else []))
                elif verb == "NOOP":
                    await self.say("200 NOOP ok", *([f"227 Entering Passive Mode ({PASV_HOST},0,22)."] if self.mode == "extra-reply" else []))
                elif verb in ("PASV", "EPSV"):
                    await self.passive(verb)
                elif verb in ("LIST", "NLST"):
                    await self.send_data(b"".join(b"file%d\r\n" % i for i in range(100)))
                elif verb == "RETR":
                    self.retrs += 1
                    await self.send_data(payload(arg))
                elif verb in ("STAT", "FEAT") and self.mode == "big-multiline":
                    await self.big()
                elif verb == "FEAT":
                    await self.say("211-Features:", " EPSV", " PASV", " SIZE", "211 End")
                elif verb == "ABOR":
                    await self.say("226 ABOR successful" if self.mode == "skip-reply" else "225 No transfer to abort")
                elif verb == "QUIT":
                    await self.say("221 bye")
                    return
                else:
                    await self.say("502 not implemented")
        except (ConnectionError, OSError):
            pass
        finally:
            if self.listener is not None:
                self.listener.close()
            self.w.transport.abort()


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--first-port", type=int, default=2190)
    ap.add_argument("--line-length", type=int, default=1024, help="the proxy's --max-line-length (big-multiline)")
    ap.add_argument("--big-bytes", type=int, default=10_000_000, help="size of big-multiline's 211 reply")
    args = ap.parse_args()
    servers = []
    for i, mode in enumerate(MODES):
        servers.append(await asyncio.start_server(lambda r, w, m=mode: serve(m, r, w, args), host=["0.0.0.0", "::"], port=args.first_port + i, reuse_address=True))
    print(f"badserver: {len(servers)} modes on ports {args.first_port}-{args.first_port + len(MODES) - 1}", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    asyncio.run(main())
