// Bytes of the data connections the kernel carries: the table's count rule logs their SYN, FIN
// and RST segments (and one segment per GiB of sequence space) to an NFLOG group; the
// sequence numbers give each direction's payload exactly, retransmissions or not.

import { endianness } from 'node:os';
import { loadLibc, type Libc } from '../../net/libc.js';
import type { Endpoint } from '../types.js';
import type { Moved } from '../../transfer.js';
import { NLMSG_ERROR, NLM_F_REQUEST, NLM_F_ACK } from '../../net/netlink-abi.js';
import { drainNetlink, openNetlink } from '../../net/netlink-socket.js';

// linux/netlink.h, linux/netfilter/nfnetlink.h, linux/netfilter/nfnetlink_log.h
const NETLINK_NETFILTER = 12;
const NFNL_SUBSYS_ULOG = 4;
const NFULNL_MSG_PACKET = 0;
const NFULNL_MSG_CONFIG = 1;
const NFULA_CFG_CMD = 1;
const NFULA_CFG_MODE = 2;
const NFULA_CFG_QTHRESH = 5;
const NFULNL_CFG_CMD_BIND = 1;
const NFULNL_COPY_PACKET = 2;
const NFULA_PAYLOAD = 9;

const LE = endianness() === 'LE';

/** Bytes of each logged packet the kernel copies: IPv6 (40) + TCP with options (60). */
export const SNAPLEN = 100;
/**
 * A segment whose sequence number falls in the first 64 KiB of each GiB is logged too, so that
 * no direction moves 2^31 bytes between two logged segments and sequence numbers can be
 * unwrapped past 4 GiB. (A segment, even a GRO aggregate, is at most 64 KiB.)
 */
export const LAP_MASK = 0x3fffffff;
export const LAP_WINDOW = 0x10000;

const FIN = 0x01;
const SYN = 0x02;
const RST = 0x04;
const ACK = 0x10;

/** The TCP facts of one logged packet. */
export interface Segment {
  readonly src: string;
  readonly dst: string;
  readonly sport: number;
  readonly dport: number;
  readonly seq: number;
  readonly ack: number;
  readonly flags: number;
  /** Payload bytes. */
  readonly len: number;
}

function ipv6Text(b: Uint8Array, at: number): string {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((b[at + i]! << 8) | b[at + i + 1]!).toString(16));
  // Canonical text (RFC 5952): the longest run of two or more zero groups becomes '::'.
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen) (best = i), (bestLen = j - i);
    i = j === i ? i + 1 : j;
  }
  if (best < 0) return groups.join(':');
  return `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
}

/** The TCP segment in an IPv4 or IPv6 packet (no IPv6 extension headers), or null. */
export function parseSegment(p: Uint8Array): Segment | null {
  const v = new DataView(p.buffer, p.byteOffset, p.byteLength);
  if (p.length < 1) return null;
  let src: string;
  let dst: string;
  let tcp: number;
  let total: number;
  if (p[0]! >> 4 === 4) {
    const ihl = (p[0]! & 0xf) * 4;
    if (p.length < ihl + 20 || p[9] !== 6) return null;
    src = `${p[12]}.${p[13]}.${p[14]}.${p[15]}`;
    dst = `${p[16]}.${p[17]}.${p[18]}.${p[19]}`;
    tcp = ihl;
    total = v.getUint16(2);
  } else if (p[0]! >> 4 === 6) {
    if (p.length < 60 || p[6] !== 6) return null;
    src = ipv6Text(p, 8);
    dst = ipv6Text(p, 24);
    tcp = 40;
    total = 40 + v.getUint16(4);
  } else {
    return null;
  }
  const doff = (p[tcp + 12]! >> 4) * 4;
  return {
    src,
    dst,
    sport: v.getUint16(tcp),
    dport: v.getUint16(tcp + 2),
    seq: v.getUint32(tcp + 4),
    ack: v.getUint32(tcp + 8),
    flags: p[tcp + 13]!,
    len: Math.max(0, total - tcp - doff),
  };
}

/** One direction of a connection: where its sequence space starts and how far it is known to go. */
interface Half {
  /** The SYN's sequence number; null before it is seen. */
  isn: number | null;
  /** Payload bytes known so far (unwrapped past 2^32). */
  bytes: number;
  /** Set by a FIN: exact. */
  finished: boolean;
}

/** One counted connection: from the peer (original direction) and to it (reply direction). */
interface Flow {
  readonly sport: number;
  readonly from: Half;
  readonly to: Half;
  reset: boolean;
}

/** `x` (mod 2^32) as the offset from `isn` nearest to `near`. */
function unwrap(x: number, isn: number, near: number): number {
  const rel = (x - isn - 1) >>> 0;
  const d = ((rel - (near % 2 ** 32) + 2 ** 32 + 2 ** 31) % 2 ** 32) - 2 ** 31;
  return Math.max(0, near + d);
}

/**
 * Connections of registered paths, from their logged segments. Pure: the reader below feeds it.
 * A path is registered by its peer and target (the tuple its connection carries after DNAT,
 * which is what the forward hook sees); the first SYN from the peer binds it to that
 * connection's source port.
 */
export class FlowTable {
  /** peer|target|port -> path id, for paths waiting for or carrying their connection. */
  private readonly byTuple = new Map<string, string>();
  private readonly tupleOf = new Map<string, string>();
  private readonly flows = new Map<string, Flow>();
  /** Paths whose counts cannot be trusted (log messages were lost while they were open). */
  private readonly tainted = new Set<string>();

  expect(id: string, peer: string, target: Endpoint): void {
    const key = tupleKey(peer, target.address, target.port);
    this.byTuple.set(key, id);
    this.tupleOf.set(id, key);
  }

  forget(id: string): void {
    const key = this.tupleOf.get(id);
    // A later path of the same tuple has taken it over: that one stays.
    if (key !== undefined && this.byTuple.get(key) === id) this.byTuple.delete(key);
    this.tupleOf.delete(id);
    this.flows.delete(id);
    this.tainted.delete(id);
  }

  /** Messages were lost: every path registered now may have missed a segment. */
  taintAll(): void {
    for (const id of this.byTuple.values()) this.tainted.add(id);
  }

  /** Nothing was logged for a while: the connections already under way may have missed segments. */
  taintStarted(): void {
    for (const id of this.flows.keys()) this.tainted.add(id);
  }

  packet(s: Segment): void {
    const orig = this.byTuple.get(tupleKey(s.src, s.dst, s.dport));
    if (orig !== undefined) return this.side(orig, s, true);
    const reply = this.byTuple.get(tupleKey(s.dst, s.src, s.sport));
    if (reply !== undefined) this.side(reply, s, false);
  }

  private side(id: string, s: Segment, fromPeer: boolean): void {
    let flow = this.flows.get(id);
    if (!flow) {
      if (!fromPeer || (s.flags & (SYN | ACK)) !== SYN) return;
      flow = { sport: s.sport, from: { isn: null, bytes: 0, finished: false }, to: { isn: null, bytes: 0, finished: false }, reset: false };
      this.flows.set(id, flow);
    }
    if ((fromPeer ? s.sport : s.dport) !== flow.sport) return;
    const own = fromPeer ? flow.from : flow.to;
    const other = fromPeer ? flow.to : flow.from;
    if (s.flags & SYN) {
      own.isn ??= s.seq;
      return;
    }
    if (own.isn !== null && !own.finished) {
      own.bytes = Math.max(own.bytes, unwrap((s.seq + s.len) >>> 0, own.isn, own.bytes));
      if (s.flags & FIN) own.finished = true;
    }
    // What this side acknowledges of the other: the other's bytes when it never sends its FIN.
    if (s.flags & ACK && other.isn !== null && !other.finished) other.bytes = Math.max(other.bytes, unwrap(s.ack, other.isn, other.bytes));
    if (s.flags & RST) flow.reset = true;
  }

  /**
   * 'none': no connection came; 'open': neither side has ended it; 'done' once both sent their
   * FIN, or a reset ended it; 'half' once one side sent its FIN (exact for that side, acks so
   * far for the other); 'unknown' when segments were lost.
   */
  result(id: string): { state: 'none' | 'open' | 'unknown' } | { state: 'done' | 'half'; moved: Moved } {
    if (this.tainted.has(id)) return { state: 'unknown' };
    const f = this.flows.get(id);
    if (!f) return { state: 'none' };
    const moved = { fromPeer: f.from.bytes, toPeer: f.to.bytes };
    if (f.reset || (f.from.finished && f.to.finished)) return { state: 'done', moved };
    return f.from.finished || f.to.finished ? { state: 'half', moved } : { state: 'open' };
  }
}

function tupleKey(src: string, dst: string, dport: number): string {
  return `${src}|${dst}|${dport}`;
}

/** The NFLOG messages in one datagram: the packet of each. */
export function* packets(datagram: Uint8Array): Generator<Uint8Array> {
  const v = new DataView(datagram.buffer, datagram.byteOffset, datagram.byteLength);
  let at = 0;
  while (at + 16 <= datagram.length) {
    const len = v.getUint32(at, LE);
    if (len < 16 || at + len > datagram.length) return;
    if (v.getUint16(at + 4, LE) === ((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET)) {
      let a = at + 20;
      while (a + 4 <= at + len) {
        const alen = v.getUint16(a, LE);
        if (alen < 4) break;
        if ((v.getUint16(a + 2, LE) & 0x7fff) === NFULA_PAYLOAD) yield datagram.subarray(a + 4, a + alen);
        a += (alen + 3) & ~3;
      }
    }
    at += (len + 3) & ~3;
  }
}

/** The NFULNL_MSG_CONFIG messages that bind the socket to `group` and ask for packet copies. */
function configMessage(group: number, attrs: { type: number; data: Buffer }[], seq: number): Buffer {
  const body = attrs.map(({ type, data }) => {
    const a = Buffer.alloc((4 + data.length + 3) & ~3);
    a.writeUInt16LE(4 + data.length, 0);
    a.writeUInt16LE(type, 2);
    data.copy(a, 4);
    return a;
  });
  const head = Buffer.alloc(20);
  const len = 20 + body.reduce((n, b) => n + b.length, 0);
  head.writeUInt32LE(len, 0);
  head.writeUInt16LE((NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG, 4);
  head.writeUInt16LE(NLM_F_REQUEST | NLM_F_ACK, 6);
  head.writeUInt32LE(seq, 8);
  head[16] = 0; // AF_UNSPEC
  head.writeUInt16BE(group, 18);
  return Buffer.concat([head, ...body]);
}

/** A bound NFLOG socket, read without blocking. */
export class NflogReader {
  private readonly rx = Buffer.alloc(256 * 1024);

  private constructor(
    private readonly libc: Libc,
    private readonly fd: number,
  ) {}

  /** Binds NFLOG `group`; throws an Error saying why it cannot. */
  static open(group: number, rcvbuf = 4 * 1024 * 1024): NflogReader {
    // Netlink headers are in host order; the messages here are written little-endian.
    if (!LE) throw new Error('NFLOG reader: little-endian hosts only');
    const libc = loadLibc();
    if (!libc) throw new Error('cannot load libc through koffi');
    const fd = openNetlink(libc, NETLINK_NETFILTER, rcvbuf);
    const r = new NflogReader(libc, fd);
    try {
      const mode = Buffer.alloc(6);
      mode.writeUInt32BE(SNAPLEN, 0);
      mode[4] = NFULNL_COPY_PACKET;
      const msg = configMessage(group, [
        { type: NFULA_CFG_CMD, data: Buffer.from([NFULNL_CFG_CMD_BIND]) },
        { type: NFULA_CFG_MODE, data: mode },
        // Each message is sent as its packet passes (the default batches 100, or 1 s): a
        // transfer's FIN is then readable before its final reply reaches the proxy.
        { type: NFULA_CFG_QTHRESH, data: Buffer.from([0, 0, 0, 1]) },
      ], 1);
      if (libc.send(fd, msg, msg.length, 0) !== msg.length) throw new Error(`send: errno ${libc.errno()}`);
      const n = libc.recv(fd, r.rx, r.rx.length, 0);
      if (n < 36 || r.rx.readUInt16LE(4) !== NLMSG_ERROR) throw new Error('no answer to the NFLOG bind');
      const errno = -r.rx.readInt32LE(16);
      // EBUSY: another process has the group.
      if (errno !== 0) throw new Error(`NFLOG group ${group}: errno ${errno}${errno === 16 ? ' (in use by another process)' : ''}`);
    } catch (e) {
      libc.close(fd);
      throw e;
    }
    return r;
  }

  /** Hands every queued packet to `each`; returns false when some were lost (the socket overflowed). */
  drain(each: (packet: Uint8Array) => void): boolean {
    return drainNetlink(this.libc, this.fd, this.rx, (d) => {
      for (const p of packets(d)) each(p);
    });
  }

  close(): void {
    this.libc.close(this.fd);
  }
}
