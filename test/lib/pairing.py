"""Raw control-connection probes for the reply-pairing tests (run with /usr/bin/python3).

usage: pairing.py HOST PORT reset-abor | pipelined-login USER PASS WAIT
  reset-abor       log in, RETR 100MiB.bin, read 64 KiB, reset the data connection, wait for
                   the server's reply that ends the transfer, ABOR, NOOP; then PASV + LIST and
                   PASV + RETR 1MiB.bin through the addresses the 227 replies give
  pipelined-login  USER, PASS and PASV in one write before the greeting is read; then
                   RETR 1MiB.bin through the address of that 227, WAIT seconds, NOOP

Prints one JSON object: "replies" (every reply's lines joined by "|", in order of arrival),
"pasv" (what each PASV got), "list"/"get" (the transfers), "noop", "error".
ftplib is no use here: it reads one reply per command, and these tests are about replies
that come out of step with the commands.
"""
import hashlib
import json
import re
import socket
import struct
import sys
import time

CHUNK = 65536


class Control:
    def __init__(self, host: str, port: int):
        self.sock = socket.create_connection((host, port), timeout=10)
        self.buf = b""
        self.replies: list[str] = []

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode("latin1"))

    def reply(self, wait: float = 5.0):
        """The next whole reply (RFC 959 multi-line aware) as a list of lines, or None."""
        end = time.monotonic() + wait
        while True:
            lines = self.buf.split(b"\r\n")
            if len(lines) > 1 and re.match(rb"^[1-5][0-9][0-9]", lines[0]):
                code = lines[0][:3]
                if lines[0][3:4] != b"-":
                    return self._take(1, lines)
                for i in range(1, len(lines) - 1):
                    if lines[i].startswith(code) and lines[i][3:4] in (b" ", b""):
                        return self._take(i + 1, lines)
            elif len(lines) > 1:
                return self._take(1, lines)
            left = end - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                d = self.sock.recv(CHUNK)
            except socket.timeout:
                return None
            if not d:
                return None
            self.buf += d

    def _take(self, n: int, lines: list):
        self.buf = b"\r\n".join(lines[n:])
        got = [l.decode("latin1") for l in lines[:n]]
        self.replies.append("|".join(got))
        return got

    def until(self, pattern: str, wait: float = 5.0):
        """Replies until one whose first line matches `pattern`; that reply, or None."""
        end = time.monotonic() + wait
        while True:
            r = self.reply(max(0.0, end - time.monotonic()))
            if r is None or re.match(pattern, r[0]):
                return r


def data_address(reply):
    """The address and port of a 227 reply, from whichever of its lines carries them."""
    for line in reply or []:
        m = re.search(r"(\d+),(\d+),(\d+),(\d+),(\d+),(\d+)", line[3:])
        if m:
            n = [int(x) for x in m.groups()]
            return ".".join(map(str, n[:4])), n[4] * 256 + n[5]
    return None


def login(c: Control) -> None:
    if c.until(r"^220") is None:
        raise RuntimeError("no greeting")
    c.send("USER anonymous\r\n")
    r = c.until(r"^[2-5]")
    if r and r[0].startswith("331"):
        c.send("PASS lab@example.org\r\n")
        r = c.until(r"^[2-5]")
    if not r or not r[0].startswith("230"):
        raise RuntimeError(f"login failed: {r}")


def fetch(c: Control, where, command: str) -> dict:
    """`command` with its data connection to `where`: the bytes and the final reply."""
    try:
        d = socket.create_connection(where, timeout=3)
    except OSError as e:
        return {"ok": False, "error": f"connect {where}: {e}"}
    c.send(command + "\r\n")
    digest, size = hashlib.sha256(), 0
    d.settimeout(10)
    try:
        while chunk := d.recv(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    except OSError as e:
        return {"ok": False, "error": f"data: {e}", "bytes": size}
    finally:
        d.close()
    final = c.until(r"^[2-5]")
    return {"ok": bool(final and final[0].startswith("226")), "final": final and final[0],
            "bytes": size, "sha256": digest.hexdigest()}


def transfer(c: Control, out: dict, command: str) -> dict:
    """PASV, then `command` through the address of its 227."""
    c.send("PASV\r\n")
    r = c.until(r"^[2-5]")
    out["pasv"].append("|".join(r) if r else None)
    where = data_address(r) if r and r[0].startswith("227") else None
    if where is None:
        return {"ok": False, "error": f"no 227: {r}"}
    return fetch(c, where, command)


def reset_abor(c: Control, out: dict) -> None:
    login(c)
    c.send("TYPE I\r\nPASV\r\n")
    c.until(r"^[2-5]")
    r = c.until(r"^[2-5]")
    where = data_address(r)
    if where is None:
        raise RuntimeError(f"no 227 for the first transfer: {r}")
    d = socket.create_connection(where, timeout=5)
    c.send("RETR 100MiB.bin\r\n")
    if c.until(r"^1") is None:
        raise RuntimeError("no 150 for RETR 100MiB.bin")
    got = 0
    while got < CHUNK:
        got += len(d.recv(CHUNK))
    d.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    d.close()
    # pure-ftpd ends the transfer with only a preliminary "150 ... (measured here)".
    c.reply(3.0)
    c.send("ABOR\r\n")
    c.reply(2.0)
    c.send("NOOP\r\n")
    c.until(r"^200", 3.0)
    out["list"] = transfer(c, out, "LIST")
    out["get"] = transfer(c, out, "RETR 1MiB.bin")


def pipelined_login(c: Control, out: dict, user: str, password: str, wait: float) -> None:
    c.send(f"USER {user}\r\nPASS {password}\r\nPASV\r\n")
    for _ in range(4):
        if c.reply(6.0) is None:
            break
    pasv = c.replies[3] if len(c.replies) > 3 else None
    out["pasv"].append(pasv)
    where = data_address(pasv.split("|")) if pasv and pasv.startswith("227") else None
    if where is None:
        out["get"] = {"ok": False, "error": "no 227 as the fourth reply"}
    else:
        c.send("TYPE I\r\n")
        c.until(r"^[2-5]")
        out["get"] = fetch(c, where, "RETR 1MiB.bin")
    # Past the proxy's login timeout: a session whose login the proxy missed is cut now.
    time.sleep(wait)
    c.send("NOOP\r\n")
    r = c.until(r"^[2-5]")
    out["noop"] = r and r[0]


def main() -> int:
    host, port, scenario = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    out: dict = {"scenario": scenario, "pasv": []}
    c = Control(host, port)
    try:
        if scenario == "reset-abor":
            reset_abor(c, out)
        else:
            pipelined_login(c, out, sys.argv[4], sys.argv[5], float(sys.argv[6]))
        c.send("QUIT\r\n")
        c.until(r"^[2-5]", 2.0)
    except (OSError, RuntimeError) as e:
        out["error"] = f"{type(e).__name__}: {e}"
    out["replies"] = c.replies
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
