"""Hostile and slow data-connection clients for the relay's lab tests (run with /usr/bin/python3).

usage: dataprobe.py --host H --port P [--user U --password PW] [--timeout S] PROBE ...
  hoard --count N            N x (PASV, LIST, read to EOF, keep the data socket open), then QUIT;
                             prints its result, then holds every socket until stdin closes
  slowget FILE --rcvbuf B --chunk C --pause S
                             PORT download read C bytes at a time with S s pauses through a
                             receive buffer of B bytes, then NOOP
  steal FILE --source A --thief B [--epsv]
                             the client at A gets a PASV (or EPSV) reply; the host at B connects
                             to that address and port first, then A connects and downloads FILE

Prints one JSON object per result; exits 0 when the probe ran to its end (the test judges it).
"""
import argparse
import ftplib
import hashlib
import json
import socket
import sys
import threading
import time


def login(a, source=None) -> ftplib.FTP:
    ftp = ftplib.FTP(timeout=a.timeout, source_address=(source, 0) if source else None)
    ftp.connect(a.host, a.port)
    ftp.login(a.user, a.password)
    return ftp


def read_all(sock: socket.socket, digest=None) -> tuple[int, str]:
    """Read to EOF; returns (bytes, how it ended: 'eof', 'reset' or 'timeout')."""
    n = 0
    try:
        while chunk := sock.recv(65536):
            n += len(chunk)
            if digest:
                digest.update(chunk)
        return n, "eof"
    except ConnectionResetError:
        return n, "reset"
    except socket.timeout:
        return n, "timeout"


def hoard(a) -> dict:
    ftp = login(a)
    held = []
    for _ in range(a.count):
        host, port = ftplib.parse227(ftp.sendcmd("PASV"))
        data = socket.create_connection((host, port), timeout=a.timeout)
        held.append(data)
        ftp.sendcmd("LIST")
        read_all(data)
        ftp.voidresp()
    quit_reply = ftp.quit()
    return {"lists": len(held), "quit": quit_reply, "held": held}


def slowget(a) -> dict:
    ftp = login(a)
    ftp.voidcmd("TYPE I")
    local = ftp.sock.getsockname()[0]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # Set before listen: the accepted socket inherits it, and its window starts small.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, a.rcvbuf)
    listener.bind((local, 0))
    listener.listen(1)
    listener.settimeout(a.timeout)
    ftp.sendport(local, listener.getsockname()[1])
    started = time.monotonic()
    ftp.sendcmd("RETR " + a.file)
    conn, _ = listener.accept()
    conn.settimeout(a.timeout)
    digest = hashlib.sha256()
    n = 0
    while chunk := conn.recv(a.chunk):
        n += len(chunk)
        digest.update(chunk)
        time.sleep(a.pause)
    conn.close()
    seconds = round(time.monotonic() - started, 1)
    result = {"bytes": n, "sha256": digest.hexdigest(), "seconds": seconds}
    for step, call in (("final", ftp.getresp), ("noop", lambda: ftp.sendcmd("NOOP"))):
        try:
            result[step] = call()
        except (ftplib.Error, OSError, EOFError) as e:
            result[step] = f"{type(e).__name__}: {e}"
            break
    ftp.close()
    return result


def steal(a) -> dict:
    ftp = login(a, a.source)
    ftp.voidcmd("TYPE I")
    if a.epsv:
        reply = ftp.sendcmd("EPSV")
        host, port = ftplib.parse229(reply, ftp.sock.getpeername())
    else:
        reply = ftp.sendcmd("PASV")
        host, port = ftplib.parse227(reply)
    thief = {"connect": "ok"}
    t = socket.socket(socket.AF_INET6 if ":" in a.thief else socket.AF_INET, socket.SOCK_STREAM)
    t.bind((a.thief, 0))
    t.settimeout(5)
    try:
        t.connect((host, port))
    except ConnectionRefusedError:
        thief["connect"] = "refused"
    except OSError as e:
        thief["connect"] = f"{type(e).__name__}: {e}"
    reader = None
    if thief["connect"] == "ok":
        t.settimeout(a.timeout)

        def read_thief():
            thief["bytes"], thief["end"] = read_all(t)

        reader = threading.Thread(target=read_thief)
        reader.start()
        # Let the thief's connection be the first one the far side sees.
        time.sleep(0.5)
    victim: dict = {"reply": reply, "host": host, "port": port}
    digest = hashlib.sha256()
    try:
        data = socket.create_connection((host, port), timeout=a.timeout, source_address=(a.source, 0))
        victim["retr"] = ftp.sendcmd("RETR " + a.file)
        victim["bytes"], victim["end"] = read_all(data, digest)
        victim["sha256"] = digest.hexdigest()
        data.close()
        victim["final"] = ftp.getresp()
    except (ftplib.Error, OSError, EOFError) as e:
        victim["error"] = f"{type(e).__name__}: {e}"
    if reader:
        reader.join()
    t.close()
    ftp.close()
    return {"thief": thief, "victim": victim}


def main() -> int:
    ap = argparse.ArgumentParser(description="data-connection probes for the relay's lab tests")
    ap.add_argument("--host", required=True)
    ap.add_argument("--port", type=int, default=21)
    ap.add_argument("--user", default="anonymous")
    ap.add_argument("--password", default="lab@example.org")
    ap.add_argument("--timeout", type=float, default=20)
    sub = ap.add_subparsers(dest="probe", required=True)
    sub.add_parser("hoard").add_argument("--count", type=int, default=200)
    s = sub.add_parser("slowget")
    s.add_argument("file")
    s.add_argument("--rcvbuf", type=int, default=8192)
    s.add_argument("--chunk", type=int, default=8192)
    s.add_argument("--pause", type=float, default=0.025)
    st = sub.add_parser("steal")
    st.add_argument("file")
    st.add_argument("--source", required=True)
    st.add_argument("--thief", required=True)
    st.add_argument("--epsv", action="store_true")
    a = ap.parse_args()
    try:
        result = {"hoard": hoard, "slowget": slowget, "steal": steal}[a.probe](a)
        result["ok"] = True
    except (ftplib.Error, OSError, EOFError) as e:
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    held = result.pop("held", [])
    print(json.dumps(result), flush=True)
    if held:
        # The data sockets stay open until the test has counted the proxy's descriptors.
        sys.stdin.read()
    return 0


if __name__ == "__main__":
    sys.exit(main())
