"""Misbehaving FTP servers for scripts/soak, one per port from --first-port on (IPv4 and IPv6):

  +0 silent             accepts and never says anything
  +1 junk-greeting      greets with a line that is no FTP reply, then waits
  +2 close-after-227    logs in, answers PASV/EPSV and closes at once
  +3 endless-multiline  a multi-line greeting that does not end (25000 lines, then waits)
  +4 rst-on-pasv        logs in, answers PASV/EPSV with a TCP RST
  +5 bad-227            answers PASV/EPSV with a reply that carries no usable port

Runs in the lab's server namespace with /usr/bin/python3; SIGTERM ends it.
"""
import argparse
import asyncio
import socket
import struct

MODES = ["silent", "junk-greeting", "close-after-227", "endless-multiline", "rst-on-pasv", "bad-227"]


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


async def serve(mode, reader, writer):
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


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--first-port", type=int, default=2190)
    args = ap.parse_args()
    servers = []
    for i, mode in enumerate(MODES):
        servers.append(await asyncio.start_server(lambda r, w, m=mode: serve(m, r, w), host=["0.0.0.0", "::"], port=args.first_port + i, reuse_address=True))
    print(f"badserver: {len(servers)} modes on ports {args.first_port}-{args.first_port + len(MODES) - 1}", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    asyncio.run(main())
