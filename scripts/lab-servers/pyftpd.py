"""pyftpdlib server for the namespace lab (run with /usr/bin/python3 and Debian's python3-pyftpdlib).

One dual-stack listener on [::]:PORT: anonymous read-only from --root, and one user that lands in
--upload with full rights. Runs in the foreground; SIGTERM (default action) ends it.
"""
import argparse
import logging
import sys

from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--host", default="::")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--root", required=True)
    ap.add_argument("--upload", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    args = ap.parse_args()

    logging.basicConfig(stream=sys.stderr, level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(message)s")

    authorizer = DummyAuthorizer()
    authorizer.add_anonymous(args.root, perm="elr")
    authorizer.add_user(args.user, args.password, args.upload, perm="elradfmwMT")

    handler = FTPHandler
    handler.authorizer = authorizer
    handler.banner = "pyftpdlib ready (ftp-proxy lab)"
    # Defaults kept on purpose: PORT/EPRT to an address other than the client's is refused,
    # as real servers do; that is what makes active mode fail behind plain masquerade.
    handler.permit_foreign_addresses = False

    server = FTPServer((args.host, args.port), handler)
    server.max_cons = 1024
    server.max_cons_per_ip = 0

    server.serve_forever(handle_exit=True)


if __name__ == "__main__":
    main()
