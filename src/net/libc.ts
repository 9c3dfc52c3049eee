// The few libc calls Node does not offer, through koffi: getsockopt (SO_ORIGINAL_DST, and
// TCP_INFO for the relay's bounds), setsockopt (SO_OOBINLINE, listener options), send (urgent
// data), eventfd, write and close (waking the splice worker), socket, bind, listen,
// getsockname and recv (transparent sockets, rtnetlink), and SO_ATTACH_FILTER (netlink
// sockets). Loaded once, lazily; null where koffi or libc cannot be loaded, and callers fall back.

import { createRequire } from 'node:module';
import type net from 'node:net';

export interface Libc {
  getsockopt(fd: number, level: number, name: number, val: Buffer, len: number[]): number;
  setsockopt(fd: number, level: number, name: number, val: Buffer, len: number): number;
  send(fd: number, buf: Buffer, len: number, flags: number): number;
  eventfd(initval: number, flags: number): number;
  write(fd: number, buf: Buffer, len: number): number;
  close(fd: number): number;
  socket(domain: number, type: number, protocol: number): number;
  bind(fd: number, addr: Buffer, len: number): number;
  listen(fd: number, backlog: number): number;
  getsockname(fd: number, addr: Buffer, len: number[]): number;
  recv(fd: number, buf: Buffer, len: number, flags: number): number;
  /** setsockopt(SOL_SOCKET, SO_ATTACH_FILTER) with a classic BPF program (8 bytes per instruction). */
  attachFilter(fd: number, program: Buffer): number;
  errno(): number;
}

let libc: Libc | null | undefined;

export function loadLibc(): Libc | null {
  if (libc !== undefined) return libc;
  try {
    const koffi = createRequire(import.meta.url)('koffi') as typeof import('koffi');
    const lib = koffi.load('libc.so.6');
    // struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    const fprog = koffi.struct('ftp_proxy_sock_fprog', { len: 'uint16_t', filter: 'const uint8_t *' });
    const setFprog = lib.func('int setsockopt(int, int, int, const ftp_proxy_sock_fprog *optval, uint32_t optlen)') as (
      fd: number,
      level: number,
      name: number,
      prog: { len: number; filter: Buffer },
      len: number,
    ) => number;
    libc = {
      getsockopt: lib.func('int getsockopt(int, int, int, _Out_ uint8_t *optval, _Inout_ uint32_t *optlen)') as Libc['getsockopt'],
      setsockopt: lib.func('int setsockopt(int, int, int, const uint8_t *optval, uint32_t optlen)') as Libc['setsockopt'],
      send: lib.func('long send(int, const uint8_t *buf, size_t len, int flags)') as Libc['send'],
      eventfd: lib.func('int eventfd(unsigned int initval, int flags)') as Libc['eventfd'],
      write: lib.func('intptr_t write(int fd, const void *buf, size_t len)') as Libc['write'],
      close: lib.func('int close(int fd)') as Libc['close'],
      socket: lib.func('int socket(int domain, int type, int protocol)') as Libc['socket'],
      bind: lib.func('int bind(int fd, const uint8_t *addr, uint32_t len)') as Libc['bind'],
      listen: lib.func('int listen(int fd, int backlog)') as Libc['listen'],
      getsockname: lib.func('int getsockname(int fd, _Out_ uint8_t *addr, _Inout_ uint32_t *len)') as Libc['getsockname'],
      recv: lib.func('long recv(int fd, _Out_ uint8_t *buf, size_t len, int flags)') as Libc['recv'],
      attachFilter: (fd, program) => setFprog(fd, SOL_SOCKET, SO_ATTACH_FILTER, { len: program.length / 8, filter: program }, koffi.sizeof(fprog)),
      errno: () => koffi.errno(),
    };
  } catch {
    libc = null;
  }
  return libc;
}

/** The kernel file descriptor behind a connected net.Socket, or null. */
export function fdOf(sock: net.Socket): number | null {
  const fd = (sock as unknown as { _handle?: { fd?: number } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : null;
}

/** An int option value for setsockopt. */
export function int32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32LE(v);
  return b;
}

const SOL_SOCKET = 1;
const SO_OOBINLINE = 10;
const SO_ATTACH_FILTER = 26;

/**
 * Keep TCP urgent data in the normal byte stream. Clients send ABOR (or the Telnet Synch
 * before it) with MSG_OOB; without this the kernel takes the last byte of that send out of
 * the stream (often the LF of "ABOR\r\n") and Node never sees it. Returns false if it could
 * not be set.
 */
export function setOobInline(sock: net.Socket): boolean {
  const c = loadLibc();
  const fd = fdOf(sock);
  if (!c || fd === null) return false;
  const one = Buffer.alloc(4);
  one.writeInt32LE(1);
  return c.setsockopt(fd, SOL_SOCKET, SO_OOBINLINE, one, 4) === 0;
}

const IPPROTO_TCP = 6;
const SO_KEEPALIVE = 9;
const SO_SNDBUF = 7;
const SO_RCVBUF = 8;
const TCP_NODELAY = 1;
const TCP_KEEPIDLE = 4;
const TCP_KEEPINTVL = 5;
const TCP_KEEPCNT = 6;

/** Control-connection keepalive: first probe after a minute idle, then 6 every 10 s. */
export const KEEPALIVE = { idle: 60, interval: 10, count: 6 } as const;

/**
 * The kernel buffers of a control connection with its client (the kernel doubles the value).
 * Commands and replies are small; without a fixed size the kernel grows each to megabytes for a
 * client that floods commands and never reads, before the proxy's own backpressure can start.
 */
const CONTROL_SOCKBUF = 64 * 1024;

/**
 * Set on a listening socket what every accepted control connection needs: TCP_NODELAY,
 * keepalive (KEEPALIVE), SO_OOBINLINE and fixed buffer sizes (CONTROL_SOCKBUF). Linux copies
 * these into each connection it creates from then on, which saves eleven system calls per
 * session. Returns how many connections were already waiting to be accepted (created before:
 * the first ones accepted, the queue being in order, need the options set themselves), or null
 * if any option could not be set; the caller then sets them per connection.
 */
export function tuneListener(server: net.Server): number | null {
  const c = loadLibc();
  const fd = (server as unknown as { _handle?: { fd?: number } })._handle?.fd;
  if (!c || typeof fd !== 'number' || fd < 0) return null;
  const opts: [number, number, number][] = [
    [IPPROTO_TCP, TCP_NODELAY, 1],
    [SOL_SOCKET, SO_KEEPALIVE, 1],
    [IPPROTO_TCP, TCP_KEEPIDLE, KEEPALIVE.idle],
    [IPPROTO_TCP, TCP_KEEPINTVL, KEEPALIVE.interval],
    [IPPROTO_TCP, TCP_KEEPCNT, KEEPALIVE.count],
    [SOL_SOCKET, SO_OOBINLINE, 1],
    [SOL_SOCKET, SO_SNDBUF, CONTROL_SOCKBUF],
    [SOL_SOCKET, SO_RCVBUF, CONTROL_SOCKBUF],
  ];
  if (!opts.every(([level, name, value]) => c.setsockopt(fd, level, name, int32(value), 4) === 0)) return null;
  // For a listening socket, tcpi_unacked is the accept queue's length.
  const len = [tcpInfo.length];
  if (c.getsockopt(fd, IPPROTO_TCP, TCP_INFO, tcpInfo, len) !== 0 || len[0]! < TCPI_UNACKED + 4) return null;
  return tcpInfo.readUInt32LE(TCPI_UNACKED);
}

const TCP_INFO = 11;
/** Offsets in struct tcp_info (linux/tcp.h); the kernel fills at least up to bytes_received. */
const TCPI_UNACKED = 24;
const TCPI_BYTES_ACKED = 120;
const TCPI_BYTES_RECEIVED = 128;
const TCPI_MIN_LENGTH = 136;
/** tcpi_state values (include/net/tcp_states.h). */
const FIN_WAIT2 = 5;
const TIME_WAIT = 6;
const CLOSE = 7;
const CLOSE_WAIT = 8;
const LAST_ACK = 9;
const CLOSING = 11;
const tcpInfo = Buffer.alloc(256);

/** How far one TCP connection has got, as its kernel counts it. */
export interface TcpFlow {
  /** The peer has finished sending: its FIN has arrived. */
  readonly finReceived: boolean;
  /** Everything sent, our FIN included, is acknowledged by the peer. */
  readonly finAcked: boolean;
  /** Bytes the peer acknowledged plus bytes received: grows whenever anything is delivered. */
  readonly moved: number;
}

/**
 * TCP_INFO of a connected socket: one system call, whoever carries its bytes (Node streams or
 * the splice worker). Counting what the peer acknowledged, not what was written, sees a slow
 * reader still taking data that left the proxy long ago. Null where it cannot be read.
 */
export function tcpFlow(sock: net.Socket): TcpFlow | null {
  const c = loadLibc();
  const fd = fdOf(sock);
  if (!c || fd === null) return null;
  const len = [tcpInfo.length];
  if (c.getsockopt(fd, IPPROTO_TCP, TCP_INFO, tcpInfo, len) !== 0 || len[0]! < TCPI_MIN_LENGTH) return null;
  const state = tcpInfo[0];
  return {
    finReceived: state === CLOSE_WAIT || state === LAST_ACK || state === CLOSING || state === TIME_WAIT || state === CLOSE,
    finAcked: state === FIN_WAIT2 || state === TIME_WAIT || state === CLOSE,
    moved: Number(tcpInfo.readBigUInt64LE(TCPI_BYTES_ACKED) + tcpInfo.readBigUInt64LE(TCPI_BYTES_RECEIVED)),
  };
}

const MSG_OOB = 1;
const MSG_DONTWAIT = 0x40;
const TELNET_IP_IAC = Buffer.from([0xff, 0xf4, 0xff]);
const TELNET_DM = Buffer.from([0xf2]);

/**
 * Send `line` (ABOR) the way RFC 959 asks: Telnet IP, then the Synch (IAC with DM as TCP
 * urgent data), then the command. Servers busy sending a file watch for urgent data, not for
 * the next line (pure-ftpd ignores an in-band ABOR until the transfer ends). Only done when
 * nothing is queued on the socket, so the bytes cannot overtake earlier writes; returns
 * false (nothing sent) when it cannot, and the caller writes the line normally.
 */
export function sendUrgent(sock: net.Socket, line: Buffer): boolean {
  const c = loadLibc();
  const fd = fdOf(sock);
  if (!c || fd === null || sock.writableLength > 0 || sock.pending) return false;
  const parts: [Buffer, number][] = [
    [TELNET_IP_IAC, MSG_DONTWAIT],
    [TELNET_DM, MSG_DONTWAIT | MSG_OOB],
    [line, MSG_DONTWAIT],
  ];
  for (const [i, [buf, flags]] of parts.entries()) {
    const n = c.send(fd, buf, buf.length, flags);
    if (n === buf.length) continue;
    // The send buffer is full (rare for a few bytes): hand what is left to Node, in order.
    const rest = Buffer.concat([n > 0 ? buf.subarray(n) : buf, ...parts.slice(i + 1).map(([b]) => b)]);
    sock.write(rest);
    return true;
  }
  return true;
}
