// Policy routing over NETLINK_ROUTE for the relay's transparent sources: the messages that add
// and delete one rule or a table's `local` default route (pure), and the socket that sends them.

import { endianness } from 'node:os';
import { getSystemErrorName } from 'node:util';
import ipaddr from 'ipaddr.js';
import { loadLibc, type Libc } from './libc.js';
import { AF_NETLINK, SOCK_RAW, SOCK_CLOEXEC, MSG_DONTWAIT, NLMSG_HDRLEN, NLMSG_ERROR, NLMSG_DONE, NLM_F_REQUEST, NLM_F_ACK, NLM_F_CREATE } from './netlink-abi.js';

// linux/netlink.h, linux/rtnetlink.h, linux/fib_rules.h
const NETLINK_ROUTE = 0;
const NLM_F_REPLACE = 0x100;
const NLM_F_EXCL = 0x200;
const NLM_F_DUMP = 0x300;
const RTM_NEWROUTE = 24;
const RTM_DELROUTE = 25;
const RTM_NEWRULE = 32;
const RTM_DELRULE = 33;
const RTM_GETRULE = 34;
const FR_ACT_TO_TBL = 1;
const FRA_DST = 1;
const FRA_SRC = 2;
const FRA_PRIORITY = 6;
const FRA_TABLE = 15;
const FRA_IP_PROTO = 22;
const FRA_SPORT_RANGE = 23;
const FRA_DPORT_RANGE = 24;
const RTA_OIF = 4;
const RTA_TABLE = 15;
const RTPROT_STATIC = 4;
const RT_SCOPE_HOST = 254;
const RTN_LOCAL = 2;
/** The loopback device is always interface 1 (LOOPBACK_IFINDEX), in every namespace. */
const LOOPBACK_IFINDEX = 1;
const IPPROTO_TCP = 6;
const EINTR = 4;
const EBADF = 9;
const ENOBUFS = 105;
const EPROTO = 71;

export const AF: Readonly<Record<4 | 6, number>> = { 4: 2, 6: 10 };

const LE = endianness() === 'LE';

/**
 * One rule that sends a single TCP connection's packets (or, without `sport`, those of every
 * connection from one host to one address and port: a listener's) to `table`, checked at
 * priority `table` (the proxy's table number is also its rules' place in the rule list):
 *   ip rule add pref T from <from> to <to> ipproto tcp [sport <sport>] dport <dport> lookup T
 */
export interface Rule {
  readonly family: 4 | 6;
  readonly from: string;
  readonly to: string;
  readonly sport?: number;
  readonly dport: number;
  readonly table: number;
}

export type Verb = 'add' | 'delete';

/** A netlink attribute: header, payload, padding to 4 bytes. Headers are in host byte order. */
function attr(type: number, payload: Buffer): Buffer {
  const b = Buffer.alloc((4 + payload.length + 3) & ~3);
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  v.setUint16(0, 4 + payload.length, LE);
  v.setUint16(2, type, LE);
  payload.copy(b, 4);
  return b;
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  new DataView(b.buffer, b.byteOffset, 4).setUint32(0, n, LE);
  return b;
}

/** struct fib_rule_port_range { __u16 start, end; } in host byte order: one port. */
function port(n: number): Buffer {
  const b = Buffer.alloc(4);
  const v = new DataView(b.buffer, b.byteOffset, 4);
  v.setUint16(0, n, LE);
  v.setUint16(2, n, LE);
  return b;
}

function message(type: number, flags: number, seq: number, head: Buffer, attrs: readonly Buffer[]): Buffer {
  const b = Buffer.concat([Buffer.alloc(NLMSG_HDRLEN), head, ...attrs]);
  const v = new DataView(b.buffer, b.byteOffset, NLMSG_HDRLEN);
  v.setUint32(0, b.length, LE);
  v.setUint16(4, type, LE);
  v.setUint16(6, flags, LE);
  v.setUint32(8, seq >>> 0, LE);
  return b;
}

/** The table byte of a header: the number itself below 256, else RT_TABLE_UNSPEC and the attribute decides. */
const tableByte = (table: number): number => (table < 256 ? table : 0);

/** RTM_NEWRULE (create, exclusive: an identical rule is EEXIST) or RTM_DELRULE for `r`. */
export function ruleMessage(verb: Verb, r: Rule, seq: number): Buffer {
  const bits = r.family === 4 ? 32 : 128;
  // struct fib_rule_hdr { family, dst_len, src_len, tos, table, res1, res2, action; u32 flags }
  const head = Buffer.from([AF[r.family], bits, bits, 0, tableByte(r.table), 0, 0, FR_ACT_TO_TBL, 0, 0, 0, 0]);
  const attrs = [
    attr(FRA_PRIORITY, u32(r.table)),
    attr(FRA_TABLE, u32(r.table)),
    attr(FRA_SRC, Buffer.from(ipaddr.parse(r.from).toByteArray())),
    attr(FRA_DST, Buffer.from(ipaddr.parse(r.to).toByteArray())),
    attr(FRA_IP_PROTO, Buffer.from([IPPROTO_TCP])),
    ...(r.sport === undefined ? [] : [attr(FRA_SPORT_RANGE, port(r.sport))]),
    attr(FRA_DPORT_RANGE, port(r.dport)),
  ];
  const flags = verb === 'add' ? NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL : NLM_F_REQUEST | NLM_F_ACK;
  return message(verb === 'add' ? RTM_NEWRULE : RTM_DELRULE, flags, seq, head, attrs);
}

/**
 * RTM_NEWROUTE (replacing an identical one) or RTM_DELROUTE for the route that makes every
 * destination looked up in `table` this host's own:
 *   ip route add local 0.0.0.0/0 dev lo table T    (::/0 for IPv6)
 */
export function localRouteMessage(verb: Verb, family: 4 | 6, table: number, seq: number): Buffer {
  // struct rtmsg { family, dst_len, src_len, tos, table, protocol, scope, type; u32 flags }
  const head = Buffer.from([AF[family], 0, 0, 0, tableByte(table), RTPROT_STATIC, RT_SCOPE_HOST, RTN_LOCAL, 0, 0, 0, 0]);
  const attrs = [attr(RTA_TABLE, u32(table)), attr(RTA_OIF, u32(LOOPBACK_IFINDEX))];
  const flags = verb === 'add' ? NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE : NLM_F_REQUEST | NLM_F_ACK;
  return message(verb === 'add' ? RTM_NEWROUTE : RTM_DELROUTE, flags, seq, head, attrs);
}

/** RTM_GETRULE dump of every family's rules. */
export function dumpRulesMessage(seq: number): Buffer {
  return message(RTM_GETRULE, NLM_F_REQUEST | NLM_F_DUMP, seq, Buffer.alloc(12), []);
}

/** RTM_DELRULE for a rule as a dump reported it (its header and attributes, sent back). */
export function deleteDumpedRule(payload: Buffer, seq: number): Buffer {
  return message(RTM_DELRULE, NLM_F_REQUEST | NLM_F_ACK, seq, payload, []);
}

export interface NlMessage {
  readonly type: number;
  readonly seq: number;
  /** What follows the netlink header. */
  readonly payload: Buffer;
}

/** The messages of one received datagram. */
export function parseMessages(datagram: Buffer): NlMessage[] {
  const v = new DataView(datagram.buffer, datagram.byteOffset, datagram.byteLength);
  const out: NlMessage[] = [];
  let at = 0;
  while (at + NLMSG_HDRLEN <= datagram.length) {
    const len = v.getUint32(at, LE);
    if (len < NLMSG_HDRLEN || at + len > datagram.length) break;
    out.push({ type: v.getUint16(at + 4, LE), seq: v.getUint32(at + 8, LE), payload: datagram.subarray(at + NLMSG_HDRLEN, at + len) });
    at += (len + 3) & ~3;
  }
  return out;
}

/** The errno an NLMSG_ERROR carries (0 for an ack); EPROTO if it is too short to say. */
function ackErrno(m: NlMessage): number {
  if (m.payload.length < 4) return EPROTO;
  return -new DataView(m.payload.buffer, m.payload.byteOffset, 4).getInt32(0, LE);
}

/** The table a dumped rule looks up: FRA_TABLE when present, else the header's byte. */
export function ruleTable(payload: Buffer): number {
  const v = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  for (let at = 12; at + 4 <= payload.length; ) {
    const len = v.getUint16(at, LE);
    if (len < 4) break;
    if ((v.getUint16(at + 2, LE) & 0x3fff) === FRA_TABLE && len >= 8) return v.getUint32(at + 4, LE);
    at += (len + 3) & ~3;
  }
  return payload[4] ?? 0;
}

/** An errno as text: 'EPERM'. */
export const errnoName = (errno: number): string => {
  try {
    return getSystemErrorName(-errno);
  } catch {
    return `errno ${errno}`;
  }
};

/**
 * One NETLINK_ROUTE socket. Synchronous like the nftables netlink runner: the kernel handles
 * a routing request inside send(), so its ack is queued when send() returns; a rule costs
 * tens of microseconds of the event loop.
 */
export class RouteSocket {
  private seq = Math.floor(Math.random() * 0x7fffffff);
  private readonly rx = Buffer.alloc(65536);

  private constructor(
    private readonly libc: Libc,
    private fd: number,
  ) {}

  /** Throws with the errno's name when no socket can be had. */
  static open(): RouteSocket {
    const libc = loadLibc();
    if (!libc) throw new Error('libc cannot be loaded through koffi');
    const fd = libc.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (fd < 0) throw new Error(`socket(AF_NETLINK, NETLINK_ROUTE): ${errnoName(libc.errno())}`);
    return new RouteSocket(libc, fd);
  }

  /** Sends one request built for the next sequence number; its errno (0: done). */
  request(build: (seq: number) => Buffer): number {
    const seq = this.next();
    const sent = this.send(build(seq));
    if (sent) return sent;
    let errno: number | undefined;
    this.drain((m) => {
      if (m.type === NLMSG_ERROR && m.seq === seq) errno = ackErrno(m);
      return false;
    });
    // An ack can only be missing if the socket's buffer overflowed: report that as ENOBUFS.
    return errno ?? ENOBUFS;
  }

  /** The rules of every family, as the payloads of a dump. Throws with the errno's name. */
  dumpRules(): Buffer[] {
    const seq = this.next();
    const sent = this.send(dumpRulesMessage(seq));
    if (sent) throw new Error(`rule dump: ${errnoName(sent)}`);
    const rules: Buffer[] = [];
    let failed = 0;
    const done = this.drain((m) => {
      if (m.seq !== seq) return false;
      if (m.type === NLMSG_ERROR) failed = ackErrno(m);
      else if (m.type === RTM_NEWRULE) rules.push(Buffer.from(m.payload));
      return m.type === NLMSG_DONE || m.type === NLMSG_ERROR;
    });
    if (failed) throw new Error(`rule dump: ${errnoName(failed)}`);
    if (!done) throw new Error('rule dump: incomplete');
    return rules;
  }

  close(): void {
    if (this.fd >= 0) this.libc.close(this.fd);
    this.fd = -1;
  }

  private next(): number {
    this.seq = (this.seq + 1) >>> 0;
    return this.seq;
  }

  /** 0, or the errno of a failed send. */
  private send(msg: Buffer): number {
    if (this.fd < 0) return EBADF;
    const n = this.libc.send(this.fd, msg, msg.length, 0);
    return n === msg.length ? 0 : n < 0 ? this.libc.errno() : ENOBUFS;
  }

  /**
   * Reads what is queued (the kernel queues a dump's next part while we read the last), handing
   * each message to `each` until it returns true; true if it did.
   */
  private drain(each: (m: NlMessage) => boolean): boolean {
    for (;;) {
      const n = this.libc.recv(this.fd, this.rx, this.rx.length, MSG_DONTWAIT);
      if (n < 0) {
        const errno = this.libc.errno();
        // EAGAIN: nothing more is queued; anything else will not go away by reading on.
        if (errno === EINTR) continue;
        return false;
      }
      for (const m of parseMessages(this.rx.subarray(0, n))) if (each(m)) return true;
    }
  }
}
