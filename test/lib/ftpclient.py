"""A scriptable FTP client on Python's ftplib for the lab tests (run with /usr/bin/python3).

usage: ftpclient.py --host H [--port P] [--user U --password PW] [--mode pasv|epsv|port|eprt]
                    [--source ADDR] [--timeout S] [--skip-pasv-ip] [--latin1] [--tls [--no-reuse]] OP ...
  OP: login | get REMOTE [--out FILE] [--rest N] | put LOCAL REMOTE [--verb STOR|APPE|STOU] | list [PATH] | nlst [PATH]
      | abor REMOTE [--after BYTES] [--style ftplib|rfc959]
      | race REMOTE --thief ADDR... (--tls, passive: each thief connects to the advertised port
        from ADDR first, with a TLS session of its own, then the client fetches REMOTE)
      | session STEP... (one login: get=F, rest=F@OFFSET, put=LOCAL@REMOTE, list=DIR, abor=F,
        abor959=F: ABOR after Telnet IP + Synch, late=F@S: PASV/EPSV now, the data connection
        and RETR S seconds later) | raw CMD... (replies as they come)

Prints one JSON object: {"ok", "op", "mode", ..., "replies": [control transcript],
"data_peers": [[address, port] of each data connection's far end], "elapsed_ms"}
and exits 0 when ok, 1 on an FTP or network error (with "error" set).
"""
import argparse
import ftplib
import hashlib
import json
import socket
import ssl
import sys
import time

CHUNK = 65536


class LabFTP(ftplib.FTP):
    """ftplib with the data-connection command forced by --mode and a recorded transcript."""

    def __init__(self, mode: str, skip_pasv_ip: bool, **kw):
        self.mode = mode
        self.skip_pasv_ip = skip_pasv_ip
        self.transcript: list[str] = []
        self.data_peers: list[list] = []
        super().__init__(**kw)
        self.set_pasv(mode in ("pasv", "epsv"))

    def putline(self, line: str) -> None:
        self.transcript.append("> " + ("PASS ****" if line.startswith("PASS ") else line))
        super().putline(line)

    def getline(self) -> str:
        line = super().getline()
        self.transcript.append("< " + line)
        return line

    def makepasv(self):
        peer = self.sock.getpeername()
        if self.mode == "epsv":
            return ftplib.parse229(self.sendcmd("EPSV"), peer)
        host, port = ftplib.parse227(self.sendcmd("PASV"))
        # ftplib's own default ignores the 227 address; classic clients use it.
        return (peer[0] if self.skip_pasv_ip else host), port

    def ntransfercmd(self, cmd, rest=None):
        # In active mode this is who connected to us: careful clients check it is the server.
        conn, size = super().ntransfercmd(cmd, rest)
        self.data_peers.append(list(conn.getpeername()[:2]))
        return conn, size

    def makeport(self):
        local = self.sock.getsockname()[0]
        sock = socket.create_server((local, 0), family=self.af, backlog=1)
        port = sock.getsockname()[1]
        if self.mode == "port":
            self.sendport(local, port)
        else:
            self.sendeprt(local, port)
        if self.timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:
            sock.settimeout(self.timeout)
        return sock


class LabFTPTLS(LabFTP, ftplib.FTP_TLS):
    """FTP_TLS (AUTH TLS, then PROT P after login) without certificate checks (the lab's is
    self-signed). Its data connections resume the control connection's TLS session, as FileZilla,
    lftp and curl do and stock ftplib does not; with reuse False they make a new one."""

    def __init__(self, mode: str, skip_pasv_ip: bool, reuse: bool, **kw):
        self.reuse = reuse
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        super().__init__(mode, skip_pasv_ip, context=context, **kw)

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        self.data_peers.append(list(conn.getpeername()[:2]))
        if self._prot_p:
            session = self.sock.session if self.reuse else None
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=session)
        return conn, size


def op_get(ftp: LabFTP, a) -> dict:
    digest = hashlib.sha256()
    size = 0
    out = open(a.out, "wb") if a.out else None
    try:
        def sink(chunk: bytes) -> None:
            nonlocal size
            size += len(chunk)
            digest.update(chunk)
            if out:
                out.write(chunk)
        ftp.retrbinary("RETR " + a.remote, sink, blocksize=CHUNK, rest=a.rest)
    finally:
        if out:
            out.close()
    return {"bytes": size, "sha256": digest.hexdigest()}


def op_put(ftp: LabFTP, a) -> dict:
    digest = hashlib.sha256()
    size = 0
    with open(a.local, "rb") as f:
        def seen(chunk: bytes) -> None:
            nonlocal size
            size += len(chunk)
            digest.update(chunk)
        # STOU names the file itself: its final reply says which.
        verb = getattr(a, "verb", "STOR")
        cmd = verb if verb == "STOU" else f"{verb} {a.remote}"
        final = ftp.storbinary(cmd, f, blocksize=CHUNK, callback=seen)
    return {"bytes": size, "sha256": digest.hexdigest(), "final": final}


def op_lines(ftp: LabFTP, a) -> dict:
    lines: list[str] = []
    cmd = ("LIST" if a.op == "list" else "NLST") + (" " + a.path if a.path else "")
    ftp.retrlines(cmd, lines.append)
    return {"count": len(lines), "lines": lines}


def op_abor(ftp: LabFTP, a) -> dict:
    """Start RETR, read --after bytes, abort; report the replies and whether NOOP still works."""
    ftp.voidcmd("TYPE I")
    conn = ftp.transfercmd("RETR " + a.remote)
    got = 0
    while got < a.after:
        chunk = conn.recv(CHUNK)
        if not chunk:
            break
        got += len(chunk)
    if isinstance(ftp.sock, ssl.SSLSocket):
        # No urgent data inside TLS: the ABOR is an ordinary line.
        ftp.putcmd("ABOR")
    elif a.style == "rfc959":
        # Telnet IP, then IAC DM as urgent data (the "synch"), then ABOR: what BSD ftp sends.
        ftp.sock.sendall(b"\xff\xf4\xff")
        ftp.sock.sendall(b"\xf2", socket.MSG_OOB)
        ftp.sock.sendall(b"ABOR\r\n")
    else:
        ftp.sock.sendall(b"ABOR\r\n", socket.MSG_OOB)
    conn.close()
    first = ftp.getmultiline()
    abort_replies = [first]
    if first.startswith("426"):
        abort_replies.append(ftp.getmultiline())
    # NOOP re-synchronises: any late reply to ABOR arrives before NOOP's own 200.
    ftp.putcmd("NOOP")
    while not (reply := ftp.getmultiline()).startswith("200"):
        abort_replies.append(reply)
    return {"bytes_before_abort": got, "abort_replies": abort_replies, "noop_ok": True}


def op_race(ftp: LabFTPTLS, a) -> dict:
    """PASV, then third parties race to the advertised port before the client's RETR: what each
    one read, then what the client itself got."""
    ftp.voidcmd("TYPE I")
    host, port = ftp.makepasv()
    thieves = []
    for source in a.thief:
        got, error = 0, None
        try:
            raw = socket.create_connection((host, port), timeout=5, source_address=(source, 0))
            with ftp.context.wrap_socket(raw, server_hostname=ftp.host) as t:
                while chunk := t.recv(CHUNK):
                    got += len(chunk)
        except (OSError, ssl.SSLError) as e:
            error = f"{type(e).__name__}: {e}"
        thieves.append({"source": source, "bytes": got, "error": error})
    conn = socket.create_connection((host, port), timeout=ftp.timeout)
    ftp.sendcmd("RETR " + a.remote)
    digest = hashlib.sha256()
    size = 0
    with ftp.context.wrap_socket(conn, server_hostname=ftp.host, session=ftp.sock.session) as t:
        while chunk := t.recv(CHUNK):
            size += len(chunk)
            digest.update(chunk)
    ftp.voidresp()
    return {"thieves": thieves, "bytes": size, "sha256": digest.hexdigest()}


def op_late(ftp: LabFTP, remote: str, secs: float) -> dict:
    """A passive negotiation that outlives something: PASV (EPSV) now, connect and RETR `secs`
    later. A refusal of the RETR is a result ("reply"), not an error; a failed connect is one."""
    ftp.voidcmd("TYPE I")
    host, port = ftp.makepasv()
    time.sleep(secs)
    conn = socket.create_connection((host, port), ftp.timeout)
    ftp.data_peers.append(list(conn.getpeername()[:2]))
    try:
        ftp.sendcmd("RETR " + remote)
    except ftplib.error_temp as e:
        conn.close()
        return {"reply": str(e)}
    digest = hashlib.sha256()
    size = 0
    with conn:
        while chunk := conn.recv(CHUNK):
            size += len(chunk)
            digest.update(chunk)
    ftp.voidresp()
    return {"bytes": size, "sha256": digest.hexdigest()}


def op_session(ftp: LabFTP, a) -> dict:
    """Several operations on one control connection, e.g. get=F rest=F@N abor=F put=L@R list=D."""
    steps = []
    for step in a.steps:
        kind, _, arg = step.partition("=")
        ns = argparse.Namespace(out=None, rest=None, after=CHUNK, style="ftplib", path=None, op=kind)
        if kind == "get":
            ns.remote = arg
            r = op_get(ftp, ns)
        elif kind == "rest":
            ns.remote, _, offset = arg.partition("@")
            ns.rest = int(offset)
            r = op_get(ftp, ns)
        elif kind == "put":
            ns.local, _, ns.remote = arg.partition("@")
            r = op_put(ftp, ns)
        elif kind in ("list", "nlst"):
            ns.path = arg or None
            r = op_lines(ftp, ns)
            r.pop("lines")
        elif kind == "late":
            remote, _, secs = arg.partition("@")
            r = op_late(ftp, remote, float(secs))
        elif kind in ("abor", "abor959"):
            ns.remote = arg
            ns.style = "rfc959" if kind == "abor959" else "ftplib"
            r = op_abor(ftp, ns)
        else:
            raise ValueError(f"unknown step {step!r}")
        steps.append({"step": step, **r})
    return {"steps": steps}


def op_raw(ftp: LabFTP, a) -> dict:
    """Send each command as is, after login; collect the replies (errors are replies too).
    A command 'SLEEP=S' waits S seconds instead."""
    out = []
    for cmd in a.commands:
        if cmd.startswith("SLEEP="):
            time.sleep(float(cmd[6:]))
            continue
        ftp.putcmd(cmd)
        out.append(ftp.getmultiline())
    return {"raw_replies": out}


OPS = {"raw": op_raw, "login": lambda ftp, a: {}, "get": op_get, "put": op_put, "list": op_lines,
       "nlst": op_lines, "abor": op_abor, "session": op_session, "race": op_race}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="FTP client for the ftp-proxy lab")
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, default=21)
    ap.add_argument("--user", default="anonymous")
    ap.add_argument("--password", default="lab@example.org")
    ap.add_argument("--mode", choices=("pasv", "epsv", "port", "eprt"), default="pasv")
    ap.add_argument("--source", help="local address to bind the control connection to")
    ap.add_argument("--timeout", type=float, default=20)
    ap.add_argument("--skip-pasv-ip", action="store_true",
                    help="connect to the control peer instead of the 227 address")
    ap.add_argument("--latin1", action="store_true",
                    help="control lines in latin-1, one byte per character (raw Telnet or UTF-8 bytes)")
    ap.add_argument("--tls", action="store_true", help="AUTH TLS before login, PROT P after it")
    ap.add_argument("--no-reuse", action="store_true",
                    help="with --tls: data connections do not resume the control connection's TLS session")
    sub = ap.add_subparsers(dest="op", required=True)
    sub.add_parser("login")
    g = sub.add_parser("get")
    g.add_argument("remote")
    g.add_argument("--out")
    g.add_argument("--rest", type=int)
    p = sub.add_parser("put")
    p.add_argument("local")
    p.add_argument("remote")
    p.add_argument("--verb", choices=("STOR", "APPE", "STOU"), default="STOR",
                   help="APPE appends to REMOTE; STOU ignores it and lets the server name the file")
    for name in ("list", "nlst"):
        sub.add_parser(name).add_argument("path", nargs="?")
    b = sub.add_parser("abor")
    b.add_argument("remote")
    b.add_argument("--after", type=int, default=CHUNK)
    b.add_argument("--style", choices=("ftplib", "rfc959"), default="ftplib")
    sub.add_parser("session").add_argument("steps", nargs="+")
    r = sub.add_parser("race")
    r.add_argument("remote")
    r.add_argument("--thief", action="append", required=True, help="source address of a third party")
    sub.add_parser("raw").add_argument("commands", nargs="+")
    return ap.parse_args()


def main() -> int:
    a = parse_args()
    started = time.monotonic()
    result: dict = {"op": a.op, "mode": a.mode, "host": a.host, "port": a.port}
    kw = {"timeout": a.timeout, "source_address": (a.source, 0) if a.source else None}
    ftp = LabFTPTLS(a.mode, a.skip_pasv_ip, not a.no_reuse, **kw) if a.tls else LabFTP(a.mode, a.skip_pasv_ip, **kw)
    if a.latin1:
        ftp.encoding = "latin-1"
    try:
        result["welcome"] = ftp.connect(a.host, a.port)
        ftp.login(a.user, a.password)
        if a.tls:
            ftp.prot_p()
            result["tls"] = ftp.sock.version()
        result.update(OPS[a.op](ftp, a))
        ftp.quit()
        result["ok"] = True
    except (ftplib.Error, OSError, EOFError) as e:
        result["ok"] = False
        result["error"] = f"{type(e).__name__}: {e}"
        ftp.close()
    result["replies"] = ftp.transcript
    result["data_peers"] = ftp.data_peers
    result["elapsed_ms"] = round((time.monotonic() - started) * 1000, 1)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
