// A raw netlink socket that Node reads without blocking (NFLOG, the nftables watcher): opened
// with a large receive buffer and its multicast groups, and drained of what is queued.

import type { Libc } from './libc.js';
import { AF_NETLINK, SOCK_RAW, SOCK_CLOEXEC, MSG_DONTWAIT } from './netlink-abi.js';

const SOL_SOCKET = 1;
const SO_RCVBUF = 8;
const SO_RCVBUFFORCE = 33;
const EAGAIN = 11;
const EINTR = 4;
const ENOBUFS = 105;

/**
 * socket(AF_NETLINK, `protocol`), a receive buffer of `rcvbuf` bytes (past the sysctl limit where
 * CAP_NET_ADMIN allows), bound to the multicast `groups` bit mask. Throws an Error saying which
 * step failed; nothing is left open then.
 */
export function openNetlink(libc: Libc, protocol: number, rcvbuf: number, groups = 0): number {
  const fd = libc.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol);
  if (fd < 0) throw new Error(`socket(AF_NETLINK, ${protocol}): errno ${libc.errno()}`);
  const size = Buffer.alloc(4);
  size.writeInt32LE(rcvbuf);
  if (libc.setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, size, 4) < 0) libc.setsockopt(fd, SOL_SOCKET, SO_RCVBUF, size, 4);
  // struct sockaddr_nl { nl_family; nl_pad; nl_pid = 0 (the kernel picks); nl_groups }
  const addr = Buffer.alloc(12);
  addr.writeUInt16LE(AF_NETLINK, 0);
  addr.writeUInt32LE(groups >>> 0, 8);
  if (libc.bind(fd, addr, 12) < 0) {
    const errno = libc.errno();
    libc.close(fd);
    throw new Error(`bind${groups ? ' to the multicast groups' : ''}: errno ${errno}`);
  }
  return fd;
}

/**
 * Hands each datagram queued on `fd` to `each` (read into `rx`, valid during the call); returns
 * false when the kernel dropped some because the socket was full (ENOBUFS). Throws on any other
 * receive error, which reading on would not cure.
 */
export function drainNetlink(libc: Libc, fd: number, rx: Buffer, each: (datagram: Buffer) => void): boolean {
  let complete = true;
  for (;;) {
    const n = libc.recv(fd, rx, rx.length, MSG_DONTWAIT);
    if (n < 0) {
      const errno = libc.errno();
      if (errno === EINTR) continue;
      if (errno === ENOBUFS) {
        complete = false;
        continue;
      }
      if (errno === EAGAIN) return complete;
      throw new Error(`netlink recv: errno ${errno}`);
    }
    each(rx.subarray(0, n));
  }
}
