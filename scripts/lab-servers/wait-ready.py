"""Wait until every HOST:PORT ([V6]:PORT) answers with an FTP 220 greeting, or give up.

usage: wait-ready.py TIMEOUT_SECONDS TARGET...   (exit 0 when all are ready, 1 otherwise)
"""
import socket
import sys
import time


def parse(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


def greets(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1) as s:
            s.settimeout(2)
            buf = b""
            while b"\n" not in buf:
                chunk = s.recv(512)
                if not chunk:
                    return False
                buf += chunk
            # Continuation lines of a multi-line greeting also start with "220".
            ok = buf.startswith(b"220")
            s.sendall(b"QUIT\r\n")
            return ok
    except OSError:
        return False


def main() -> int:
    deadline = time.monotonic() + float(sys.argv[1])
    pending = [parse(t) for t in sys.argv[2:]]
    while True:
        pending = [hp for hp in pending if not greets(*hp)]
        if not pending:
            return 0
        if time.monotonic() > deadline:
            for host, port in pending:
                print(f"wait-ready: no FTP greeting from {host} port {port}", file=sys.stderr)
            return 1
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(main())
