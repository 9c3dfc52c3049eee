// A raw netlink socket that Node reads without blocking (NFLOG, the nftables watcher): opened
// with a large receive buffer and its multicast groups, filtered, and drained of what is queued.

import type { Libc } from './libc.js';
import { AF_NETLINK, SOCK_RAW, SOCK_CLOEXEC, MSG_DONTWAIT } from './netlink-abi.js';

const SOL_SOCKET = 1;
const SO_RCVBUF = 8;
const SO_RCVBUFFORCE = 33;
const EAGAIN = 11;
const EINTR = 4;
const ENOBUFS = 105;
// linux/filter.h: the instruction classes and modes of ignoreSender's filter.
const BPF_LD = 0x00;
const BPF_W = 0x00;
const BPF_ABS = 0x20;
const BPF_JMP = 0x05;
const BPF_JEQ = 0x10;
const BPF_K = 0x00;
const BPF_RET = 0x06;

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
 * Has the kernel drop, before queueing them, the datagrams on `fd` whose first message carries
 * `portid` as nlmsg_pid: notifications caused by that socket's own requests. (The kernel puts
 * the notifications of one transaction in datagrams of their own, all with its port id.)
 * Returns false where the filter cannot be attached; the datagrams are then queued as before.
 */
export function ignoreSender(libc: Libc, fd: number, portid: number): boolean {
  // A classic BPF program: A = nlmsg_pid (offset 12, loaded in network byte order, while
  // netlink headers are in host order: compared with the swapped id); drop on equal, else keep.
  const swapped = Buffer.alloc(4);
  swapped.writeUInt32LE(portid >>> 0);
  const program = Buffer.alloc(4 * 8);
  const insn = (i: number, code: number, jt: number, jf: number, k: number): void => {
    program.writeUInt16LE(code, i * 8);
    program[i * 8 + 2] = jt;
    program[i * 8 + 3] = jf;
    program.writeUInt32LE(k >>> 0, i * 8 + 4);
  };
  insn(0, BPF_LD | BPF_W | BPF_ABS, 0, 0, 12);
  insn(1, BPF_JMP | BPF_JEQ | BPF_K, 0, 1, swapped.readUInt32BE(0));
  insn(2, BPF_RET | BPF_K, 0, 0, 0);
  insn(3, BPF_RET | BPF_K, 0, 0, 0xffffffff);
  return libc.attachFilter(fd, program) === 0;
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
