"""FTP load driver for scripts/bench: many sessions in one process, run in the lab's client netns.

Owns the client side of every benchmark workload (Python ftplib, /usr/bin/python3, stdlib only).
usage: load.py JOB_JSON       -> one JSON object on stdout
  {"op": "seq",  "host", "port", "mode": "pasv"|"port", "n", "file"}     sessions one after another
  {"op": "conc", "host", "port", "concurrency", "seconds", "ramp", "file"}   c workers, closed loop
  {"op": "retr", "host", "port", "mode", "file", "count"}                big RETRs on one session, discarded
  {"op": "list", "host", "port", "path", "count"}                        LISTs on one logged-in session
  {"op": "idle", "host", "port", "levels": [1000, 10000], "parallel"}    hold logged-in idle sessions:
      prints {"level", "open", ...} per level, waits for a line on stdin before the next level,
      then closes everything and prints the summary.
A session is: connect, USER anonymous, PASS, TYPE I, PASV|PORT, RETR file, QUIT.
"tls": true (seq, conc, retr) makes every session explicit FTPS: AUTH TLS before USER, PBSZ 0 and
PROT P after login, and data connections that resume the control connection's TLS session.
"""
import ftplib
import functools
import json
import os
import resource
import socket
import ssl
import sys
import threading
import time

TIMEOUT = 15.0
BUF = bytearray(1 << 20)
ERR_KEEP = 10


class Ftp(ftplib.FTP):
    """ftplib with the 227 address honoured (as classic clients do) and PASV/PORT timed."""

    trust_server_pasv_ipv4_address = True

    def __init__(self, **kw):
        super().__init__(**kw)
        self.pasv_ns: list[int] = []
        self.port_ns: list[int] = []

    def makepasv(self):
        t0 = time.perf_counter_ns()
        reply = self.sendcmd("PASV")
        self.pasv_ns.append(time.perf_counter_ns() - t0)
        return ftplib.parse227(reply)

    def sendport(self, host, port):
        t0 = time.perf_counter_ns()
        reply = super().sendport(host, port)
        self.port_ns.append(time.perf_counter_ns() - t0)
        return reply


@functools.cache
def tls_context() -> ssl.SSLContext:
    """One per process, as a client program keeps it: making one per session (ssl's default
    context loads the CA store, ~20 ms) would be counted as the proxy's session time."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class FtpTls(Ftp, ftplib.FTP_TLS):
    """Explicit FTPS without certificate checks (the bench's certificate is self-signed). Data
    connections resume the control connection's TLS session, as FileZilla, lftp and curl do and
    stock ftplib does not (the proxy refuses one that does not, like vsftpd's require_ssl_reuse)."""

    def __init__(self, **kw):
        super().__init__(context=tls_context(), **kw)

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host, session=self.sock.session)
        return conn, size


def client(tls: bool) -> Ftp:
    return FtpTls(timeout=TIMEOUT) if tls else Ftp(timeout=TIMEOUT)


def secure_data(ftp: Ftp) -> None:
    """After login on an FTPS session: PBSZ 0 and PROT P (a no-op for plain FTP)."""
    if isinstance(ftp, FtpTls):
        ftp.prot_p()


def drain(conn: socket.socket) -> int:
    """Read a data connection to EOF into a scratch buffer; return the byte count. A TLS one is
    shut down with its close_notify, as ftplib does."""
    view = memoryview(BUF)
    total = 0
    while n := conn.recv_into(view):
        total += n
    if isinstance(conn, ssl.SSLSocket):
        conn.unwrap()
    return total


def login(host: str, port: int, tls: bool = False) -> Ftp:
    """Connect and log in; FTPS: AUTH TLS first (FTP_TLS.login sends it), PROT P after."""
    ftp = client(tls)
    ftp.connect(host, port)
    ftp.login("anonymous", "bench@example.org")
    secure_data(ftp)
    return ftp


def retr(ftp: Ftp, path: str) -> int:
    with ftp.transfercmd("RETR " + path) as conn:
        got = drain(conn)
    ftp.voidresp()
    return got


STEPS = ("connect", "login", "type", "pasv_port", "retr_150", "data_226", "quit")


def session(host: str, port: int, passive: bool, path: str, tls: bool = False) -> tuple[int, list[int], list[int]]:
    """One full session; returns (bytes, PASV->227 ns, per-step ns in STEPS order); with TLS,
    login includes AUTH TLS, the handshake, PBSZ and PROT."""
    t = [time.perf_counter_ns()]
    ftp = client(tls)
    try:
        ftp.connect(host, port)  # TCP connect and the 220 banner
        t.append(time.perf_counter_ns())
        ftp.login("anonymous", "bench@example.org")
        secure_data(ftp)
        t.append(time.perf_counter_ns())
        ftp.set_pasv(passive)
        ftp.voidcmd("TYPE I")
        t.append(time.perf_counter_ns())
        conn = ftp.transfercmd("RETR " + path)  # PASV|PORT, RETR, data connection, 150
        t.append(time.perf_counter_ns())
        with conn:
            got = drain(conn)
        ftp.voidresp()
        t.append(time.perf_counter_ns())
        ftp.quit()
        t.append(time.perf_counter_ns())
    finally:
        ftp.close()
    pp = (ftp.pasv_ns or ftp.port_ns or [0])[0]
    steps = [t[1] - t[0], t[2] - t[1], t[3] - t[2], pp, t[4] - t[3] - pp, t[5] - t[4], t[6] - t[5]]
    return got, ftp.pasv_ns, steps


class Errors:
    def __init__(self) -> None:
        self.count = 0
        self.first: list[str] = []
        self.lock = threading.Lock()

    def add(self, e: BaseException) -> None:
        with self.lock:
            self.count += 1
            if len(self.first) < ERR_KEEP:
                self.first.append(f"{type(e).__name__}: {e}")

    def json(self) -> dict:
        return {"errors": self.count, "error_samples": self.first}


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def op_seq(j: dict) -> dict:
    errs = Errors()
    durations, pasv = [], []
    steps: list[list[float]] = [[] for _ in STEPS]
    passive = j["mode"] == "pasv"
    c0, t0 = cpu_s(), time.perf_counter()
    for _ in range(j["n"]):
        s = time.perf_counter_ns()
        try:
            got, p, st = session(j["host"], j["port"], passive, j["file"], j.get("tls", False))
            if got != j.get("size", got):
                raise RuntimeError(f"short RETR: {got} bytes")
            durations.append(time.perf_counter_ns() - s)
            pasv += p
            for acc, v in zip(steps, st):
                acc.append(v / 1e6)
        except Exception as e:  # noqa: BLE001 -- every failure is counted and reported
            errs.add(e)
    elapsed = time.perf_counter() - t0
    ok = len(durations)
    return {"ok": ok, "elapsed_s": elapsed, "sessions_per_s": ok / elapsed,
            "session_ms": [d / 1e6 for d in durations], "pasv_ms": [p / 1e6 for p in pasv],
            "steps_ms": dict(zip(STEPS, steps)), "client_cpu_s": cpu_s() - c0, **errs.json()}


def op_conc(j: dict) -> dict:
    """Closed loop: c workers run sessions back to back; counted are the sessions that end
    within `seconds` after a `ramp` (the opening burst of c connects is not the steady state)."""
    errs = Errors()
    lock = threading.Lock()
    durations: list[int] = []
    outside = [0]
    start = threading.Barrier(j["concurrency"] + 1)
    window = [0.0, 0.0]

    def worker() -> None:
        start.wait()
        while time.perf_counter() < window[1]:
            s = time.perf_counter_ns()
            try:
                got, _, _ = session(j["host"], j["port"], True, j["file"], j.get("tls", False))
                if got != j.get("size", got):
                    raise RuntimeError(f"short RETR: {got} bytes")
                d = time.perf_counter_ns() - s
                now = time.perf_counter()
                with lock:
                    if window[0] <= now <= window[1]:
                        durations.append(d)
                    else:
                        outside[0] += 1
            except Exception as e:  # noqa: BLE001
                if window[0] <= time.perf_counter() <= window[1]:
                    errs.add(e)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(j["concurrency"])]
    for t in threads:
        t.start()
    c0 = cpu_s()
    t0 = time.perf_counter()
    window[:] = [t0 + j.get("ramp", 1.0), t0 + j.get("ramp", 1.0) + j["seconds"]]
    start.wait()
    grace_end = window[1] + j.get("grace", 0.5)
    for t in threads:
        t.join(max(0.0, grace_end - time.perf_counter()))
    unfinished = sum(t.is_alive() for t in threads)
    ok = len(durations)
    return {"ok": ok, "window_s": j["seconds"], "sessions_per_s": ok / j["seconds"],
            "session_ms": sorted(d / 1e6 for d in durations), "outside_window": outside[0],
            "unfinished_at_end": unfinished, "client_cpu_s": cpu_s() - c0, **errs.json()}


def op_retr(j: dict) -> dict:
    """`count` RETRs of one big file on one logged-in session (one session's control cost
    spread over all of them), each timed from RETR to its 226."""
    errs = Errors()
    samples = []
    c0 = cpu_s()
    ftp = login(j["host"], j["port"], j.get("tls", False))
    try:
        ftp.set_pasv(j["mode"] == "pasv")
        ftp.voidcmd("TYPE I")
        for _ in range(j["count"]):
            try:
                t0 = time.perf_counter()
                got = retr(ftp, j["file"])
                secs = time.perf_counter() - t0
                if got != j.get("size", got):
                    raise RuntimeError(f"short RETR: {got} bytes")
                samples.append({"bytes": got, "s": secs, "mib_per_s": got / secs / 1048576})
            except Exception as e:  # noqa: BLE001
                errs.add(e)
        ftp.quit()
    finally:
        ftp.close()
    return {"transfers": samples, "client_cpu_s": cpu_s() - c0, **errs.json()}


def op_list(j: dict) -> dict:
    errs = Errors()
    ms, sizes = [], []
    ftp = login(j["host"], j["port"])
    try:
        ftp.voidcmd("TYPE A")
        for _ in range(j["count"]):
            try:
                t0 = time.perf_counter_ns()
                with ftp.transfercmd("LIST " + j["path"]) as conn:
                    got = drain(conn)
                ftp.voidresp()
                ms.append((time.perf_counter_ns() - t0) / 1e6)
                sizes.append(got)
            except Exception as e:  # noqa: BLE001
                errs.add(e)
        ftp.quit()
    finally:
        ftp.close()
    return {"list_ms": ms, "bytes": sizes, "pasv_ms": [p / 1e6 for p in ftp.pasv_ns], **errs.json()}


def op_idle(j: dict) -> dict:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    errs = Errors()
    held: list[socket.socket] = []
    lock = threading.Lock()

    def open_one() -> None:
        s = socket.create_connection((j["host"], j["port"]), timeout=TIMEOUT)
        try:
            f = s.makefile("rb")

            def reply() -> bytes:
                while True:  # skip continuation lines of multi-line replies
                    line = f.readline()
                    if not line:
                        raise ConnectionError("closed during login")
                    if line[:3].isdigit() and line[3:4] == b" ":
                        return line

            line = reply()
            if line.startswith(b"220"):
                s.sendall(b"USER anonymous\r\n")
                line = reply()
            if line.startswith(b"331"):  # vsftpd with no_anon_password answers USER with 230
                s.sendall(b"PASS bench@example.org\r\n")
                line = reply()
            if not line.startswith(b"230"):
                raise ConnectionError(line.decode(errors="replace").strip())
            f.close()
        except BaseException:
            s.close()
            raise
        with lock:
            held.append(s)

    def fill(target: int) -> None:
        todo = [target - len(held)]

        def worker() -> None:
            while True:
                with lock:
                    if todo[0] <= 0:
                        return
                    todo[0] -= 1
                try:
                    open_one()
                except Exception as e:  # noqa: BLE001
                    errs.add(e)

        ts = [threading.Thread(target=worker, daemon=True) for _ in range(j.get("parallel", 16))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()

    levels = []
    for level in j["levels"]:
        t0 = time.perf_counter()
        fill(level)
        row = {"level": level, "open": len(held), "fill_s": time.perf_counter() - t0, **errs.json()}
        levels.append(row)
        print(json.dumps(row), flush=True)
        if not sys.stdin.readline():
            break
    # A held session must still answer after the wait: check a sample of them.
    alive = 0
    for s in held[:: max(1, len(held) // 50)]:
        try:
            s.sendall(b"NOOP\r\n")
            if s.recv(256).startswith(b"200"):
                alive += 1
        except OSError:
            pass
    for s in held:
        s.close()
    return {"levels": levels, "noop_checked": len(held[:: max(1, len(held) // 50)]), "noop_ok": alive}


OPS = {"seq": op_seq, "conc": op_conc, "retr": op_retr, "list": op_list, "idle": op_idle}


def main() -> int:
    j = json.loads(sys.argv[1])
    out = OPS[j["op"]](j)
    out["op"] = j["op"]
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    # Workers still stuck in a session past the grace must not hold the exit.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
