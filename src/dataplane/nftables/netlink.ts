// The fast path for set elements: open/release batches sent as one nfnetlink batch over a raw
// NETLINK_NETFILTER socket (libc through koffi), without libnftables' JSON parsing and cache.

import { createRequire } from 'node:module';
import { isIP } from 'node:net';
import { endianness } from 'node:os';
import { getSystemErrorMap } from 'node:util';
import type * as Koffi from 'koffi';
import { DataPlaneError } from '../../errors.js';
import { commandText } from './render.js';
import { nftFailure, unavailable, type NftRunner, type RunOptions } from './runner.js';
import type { Batch, Command, ConcatExpr, Element, ElemExpr, Expr, Literal, TableFamily } from './schema.js';
import { AF_NETLINK, SOCK_RAW, SOCK_CLOEXEC, MSG_DONTWAIT, NLMSG_HDRLEN, NLMSG_ERROR, NLM_F_REQUEST, NLM_F_ACK, NLM_F_CREATE } from '../../net/netlink-abi.js';

// linux/netlink.h
const NETLINK_NETFILTER = 12;
const SOL_NETLINK = 270;
/** Error acks carry the failed message's header only, not all of it. */
const NETLINK_CAP_ACK = 10;
const NLA_F_NESTED = 0x8000;
const EAGAIN = 11;
const EINTR = 4;
const ENOBUFS = 105;
const EPERM = 1;
const EACCES = 13;

// linux/netfilter/nfnetlink.h, linux/netfilter.h
const NFNL_MSG_BATCH_BEGIN = 0x10;
const NFNL_MSG_BATCH_END = 0x11;
const NFNL_SUBSYS_NFTABLES = 10;
const NFPROTO: Readonly<Record<TableFamily, number>> = { inet: 1, ip: 2, ip6: 10 };

// linux/netfilter/nf_tables.h
const NFT_MSG_NEWSETELEM = 12;
const NFT_MSG_DELSETELEM = 14;
const NFT_MSG_DESTROYSETELEM = 30;
const NFTA_SET_ELEM_LIST_TABLE = 1;
const NFTA_SET_ELEM_LIST_SET = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS = 3;
const NFTA_LIST_ELEM = 1;
const NFTA_SET_ELEM_KEY = 1;
const NFTA_SET_ELEM_DATA = 2;
const NFTA_SET_ELEM_TIMEOUT = 4;
const NFTA_DATA_VALUE = 1;

const LE = endianness() === 'LE';

/** Appends netlink messages and attributes (host byte order headers, 4-byte alignment). */
export class Writer {
  private buf = Buffer.alloc(2048);
  private view = new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength);
  len = 0;

  reset(): void {
    this.len = 0;
  }

  private room(n: number): void {
    if (this.len + n <= this.buf.length) return;
    const next = Buffer.alloc(Math.max(this.buf.length * 2, this.len + n));
    this.buf.copy(next, 0, 0, this.len);
    this.buf = next;
    this.view = new DataView(next.buffer, next.byteOffset, next.byteLength);
  }

  /** Starts a message: nlmsghdr + nfgenmsg; returns its offset for end(). */
  begin(type: number, flags: number, seq: number, family: number, resId: number): number {
    const at = this.len;
    this.room(NLMSG_HDRLEN + 4);
    this.view.setUint16(at + 4, type, LE);
    this.view.setUint16(at + 6, flags, LE);
    this.view.setUint32(at + 8, seq, LE);
    this.view.setUint32(at + 12, 0, LE);
    this.view.setUint8(at + 16, family);
    this.view.setUint8(at + 17, 0); // NFNETLINK_V0
    this.view.setUint16(at + 18, resId, false);
    this.len += NLMSG_HDRLEN + 4;
    return at;
  }

  end(at: number): void {
    this.view.setUint32(at, this.len - at, LE);
  }

  /** A NUL-terminated string attribute (table and set names: ASCII). */
  string(type: number, s: string): void {
    const at = this.header(type, s.length + 1);
    for (let i = 0; i < s.length; i++) {
      const c = s.charCodeAt(i);
      if (c === 0 || c > 0x7e) throw unsupported(`name ${JSON.stringify(s)}`);
      this.buf[at + 4 + i] = c;
    }
    this.close(at);
  }

  /** A big-endian u64 attribute. */
  be64(type: number, v: bigint): void {
    const at = this.header(type, 8);
    this.view.setBigUint64(at + 4, v, false);
    this.close(at);
  }

  /**
   * A value attribute from address and port fields. In a concatenation each field fills whole
   * 32-bit registers, zero-padded (the kernel's NFT_REG32 layout: a port is 2 bytes + 2).
   */
  fields(type: number, fields: readonly Expr[], concat: boolean): void {
    const at = this.header(type, 0);
    let p = at + 4;
    for (const f of fields) {
      this.room(p - this.len + 16);
      this.zero(p, p + 16);
      const n = writeField(this.view, p, f);
      p += concat ? (n + 3) & ~3 : n;
    }
    this.view.setUint16(at, p - at, LE);
    this.len = p;
    this.pad();
  }

  nest(type: number): number {
    return this.header(type | NLA_F_NESTED, 0);
  }

  unnest(at: number): void {
    this.view.setUint16(at, this.len - at, LE);
  }

  bytes(): Buffer {
    return this.buf.subarray(0, this.len);
  }

  /** Writes an attribute header for `n` bytes of payload (zeroed), returns its offset. */
  private header(type: number, n: number): number {
    const at = this.len;
    this.room(4 + n + 3);
    this.view.setUint16(at, 4 + n, LE);
    this.view.setUint16(at + 2, type, LE);
    this.zero(at + 4, at + 4 + ((n + 3) & ~3));
    this.len += 4 + n;
    return at;
  }

  private close(at: number): void {
    this.len = at + this.view.getUint16(at, LE);
    this.pad();
  }

  // A few bytes at a time: a loop beats Buffer's fill (a call into C++) and a borrowed
  // TypedArray fill (a generic call) at this size.
  private zero(from: number, to: number): void {
    const b = this.buf;
    for (let i = from; i < to; i++) b[i] = 0;
  }

  private pad(): void {
    const end = (this.len + 3) & ~3;
    this.room(end - this.len);
    this.zero(this.len, end);
    this.len = end;
  }
}

/** Writes one field in network byte order (an address, or a port as inet_service); its length. */
function writeField(view: DataView, at: number, v: Expr): number {
  if (typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= 0xffff) {
    view.setUint16(at, v, false);
    return 2;
  }
  if (typeof v === 'string') {
    if (writeIPv4(view, at, v)) return 4;
    if (isIP(v) === 6) {
      ipv6Groups(v).forEach((g, i) => view.setUint16(at + 2 * i, g, false));
      return 16;
    }
  }
  throw unsupported(`element value ${JSON.stringify(v)} (only addresses and ports)`);
}

/**
 * Writes a dotted-quad IPv4 address (four decimal parts of 0-255, no leading zeros, as
 * node:net's isIP accepts them) at `at`; false, and nothing meaningful written, for other text.
 * Parsed in place: splitting the text cost more than the rest of a message's encoding.
 */
function writeIPv4(view: DataView, at: number, text: string): boolean {
  let part = 0;
  let value = 0;
  let digits = 0;
  for (let i = 0; i <= text.length; i++) {
    const c = i < text.length ? text.charCodeAt(i) : 0x2e;
    if (c >= 0x30 && c <= 0x39) {
      if (digits === 1 && value === 0) return false;
      value = value * 10 + (c - 0x30);
      if (++digits > 3 || value > 255) return false;
    } else if (c === 0x2e && digits > 0 && part < 4) {
      view.setUint8(at + part++, value);
      value = digits = 0;
    } else return false;
  }
  return part === 4;
}

/** The eight 16-bit groups of a valid IPv6 address text (`::` and a dotted IPv4 tail too). */
function ipv6Groups(text: string): number[] {
  const groups = (part: string): number[] =>
    part === ''
      ? []
      : part.split(':').flatMap((g) => {
          if (!g.includes('.')) return [parseInt(g, 16)];
          const [a, b, c, d] = g.split('.').map(Number) as [number, number, number, number];
          return [(a << 8) | b, (c << 8) | d];
        });
  const gap = text.indexOf('::');
  if (gap < 0) return groups(text);
  const head = groups(text.slice(0, gap));
  const tail = groups(text.slice(gap + 2));
  return [...head, ...Array<number>(8 - head.length - tail.length).fill(0), ...tail];
}

const isObject = (e: Expr): e is Exclude<Expr, Literal> => typeof e === 'object' && !Array.isArray(e);
const isConcat = (e: Expr): e is ConcatExpr => isObject(e) && 'concat' in e;
const isElem = (e: Expr): e is ElemExpr => isObject(e) && 'elem' in e;

/**
 * One set element (NFTA_LIST_ELEM): timeout, key, and a map's value when `withData`; as nft
 * does, a delete carries the key alone (the kernel would not look at the value anyway).
 */
function writeElement(w: Writer, item: Element['elem'][number], withData: boolean): void {
  // A map element is [key, value]; a bare array literal is never a key here.
  const [k, data] = Array.isArray(item) ? (item as unknown as readonly [Expr, Expr]) : [item as Expr, undefined];
  const key = isElem(k) ? k.elem.val : k;
  const nest = w.nest(NFTA_LIST_ELEM);
  if (isElem(k) && k.elem.timeout !== undefined) w.be64(NFTA_SET_ELEM_TIMEOUT, BigInt(k.elem.timeout) * 1000n);
  const keyAt = w.nest(NFTA_SET_ELEM_KEY);
  w.fields(NFTA_DATA_VALUE, isConcat(key) ? key.concat : [key], isConcat(key));
  w.unnest(keyAt);
  if (data !== undefined && withData) {
    const dataAt = w.nest(NFTA_SET_ELEM_DATA);
    w.fields(NFTA_DATA_VALUE, [data], false);
    w.unnest(dataAt);
  }
  w.unnest(nest);
}

/** One message of a batch, for error reports. */
export interface MessageInfo {
  readonly seq: number;
  /** `add element inet T admit4`. */
  readonly what: string;
  /** Whether it asked for an ack on success (NLM_F_ACK). */
  readonly acked: boolean;
}

export interface EncodedBatch {
  readonly bytes: Buffer;
  readonly beginSeq: number;
  readonly messages: readonly MessageInfo[];
}

type Verb = 'add' | 'delete' | 'destroy';
const MSG_TYPE: Readonly<Record<Verb, number>> = {
  add: NFT_MSG_NEWSETELEM,
  delete: NFT_MSG_DELSETELEM,
  destroy: NFT_MSG_DESTROYSETELEM,
};

function commandElement(c: Command): { verb: Verb; e: Element } {
  if ('add' in c && 'element' in c.add) return { verb: 'add', e: c.add.element };
  if ('delete' in c && 'element' in c.delete) return { verb: 'delete', e: c.delete.element };
  if ('destroy' in c && 'element' in c.destroy) return { verb: 'destroy', e: c.destroy.element };
  throw unsupported(`'${commandText(c)}'`);
}

/**
 * The nfnetlink batch for a JSON batch of element adds, deletes and destroys: BATCH_BEGIN, one
 * NEWSETELEM (add, as nft does it: NLM_F_CREATE without EXCL, so an identical element is no
 * error), DELSETELEM (ENOENT when missing) or DESTROYSETELEM (no error when missing, Linux
 * 6.3+) per command, BATCH_END. Only the last command asks for an ack: the kernel applies the
 * batch within send() and answers a failed message whether asked or not, so one ack says the
 * batch is done, and the socket is read twice per batch, not once per command. Sequence numbers
 * run from `seq`. The bytes live in `w` until its next use. Throws DataPlaneError
 * BACKEND_FAILED for anything else (nothing is sent).
 */
export function encodeBatch(batch: Batch, seq: number, w = new Writer()): EncodedBatch {
  w.reset();
  const next = (): number => (seq = (seq + 1) >>> 0);
  const beginSeq = seq >>> 0;
  w.end(w.begin(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, beginSeq, 0, NFNL_SUBSYS_NFTABLES));
  const messages: MessageInfo[] = [];
  const last = batch.nftables.length - 1;
  for (const [i, c] of batch.nftables.entries()) {
    const { verb, e } = commandElement(c);
    const family = NFPROTO[e.family];
    if (family === undefined) throw unsupported(`family ${String(e.family)}`);
    const s = next();
    const type = (NFNL_SUBSYS_NFTABLES << 8) | MSG_TYPE[verb];
    const flags = NLM_F_REQUEST | (i === last ? NLM_F_ACK : 0) | (verb === 'add' ? NLM_F_CREATE : 0);
    const at = w.begin(type, flags, s, family, 0);
    w.string(NFTA_SET_ELEM_LIST_TABLE, e.table);
    w.string(NFTA_SET_ELEM_LIST_SET, e.name);
    const list = w.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
    for (const item of e.elem) writeElement(w, item, verb === 'add');
    w.unnest(list);
    w.end(at);
    messages.push({ seq: s, what: `${verb} element ${e.family} ${e.table} ${e.name}`, acked: i === last });
  }
  w.end(w.begin(NFNL_MSG_BATCH_END, NLM_F_REQUEST, next(), 0, NFNL_SUBSYS_NFTABLES));
  return { bytes: w.bytes(), beginSeq, messages };
}

/** Acks by sequence number (0 = success, else a positive errno), from received datagrams. */
export function readAcks(datagram: Uint8Array, into: Map<number, number>): void {
  const view = new DataView(datagram.buffer, datagram.byteOffset, datagram.byteLength);
  let at = 0;
  while (at + NLMSG_HDRLEN <= datagram.length) {
    const len = view.getUint32(at, LE);
    if (len < NLMSG_HDRLEN || at + len > datagram.length) break;
    if (view.getUint16(at + 4, LE) === NLMSG_ERROR && len >= NLMSG_HDRLEN + 4) {
      into.set(view.getUint32(at + 8, LE), -view.getInt32(at + NLMSG_HDRLEN, LE));
    }
    at += (len + 3) & ~3;
  }
}

const errnoText = (errno: number): string => {
  const known = getSystemErrorMap().get(-errno);
  return known ? `${known[1]} (${known[0]})` : `errno ${errno}`;
};

/**
 * What the acks say about a batch: nothing when the message that asked for an ack has it, with 0,
 * and no other message failed;
 * else a DataPlaneError naming each failed message and its errno (EPERM -> NFT_NOT_PERMITTED).
 */
export function batchOutcome(b: EncodedBatch, acks: ReadonlyMap<number, number>): DataPlaneError | undefined {
  const whole = acks.get(b.beginSeq);
  if (whole) return failure(`batch: ${errnoText(whole)}`, whole);
  let denied = 0;
  const failed = b.messages.flatMap((m) => {
    const errno = acks.get(m.seq);
    if (errno === undefined) return m.acked ? [`${m.what}: no ack`] : [];
    if (errno === EPERM || errno === EACCES) denied = errno;
    return errno === 0 ? [] : [`${m.what}: ${errnoText(errno)}`];
  });
  return failed.length === 0 ? undefined : failure(failed.join('; '), denied);
}

/** EPERM or EACCES: NFT_NOT_PERMITTED with its hint, as from nft; anything else BACKEND_FAILED. */
function failure(text: string, errno: number): DataPlaneError {
  if (errno === EPERM || errno === EACCES) return nftFailure(`netlink: ${text}`);
  return new DataPlaneError('BACKEND_FAILED', `netlink: ${text}`);
}

function unsupported(what: string): DataPlaneError {
  return new DataPlaneError('BACKEND_FAILED', `netlink runner: ${what} is not supported (element add, delete and destroy only)`);
}

type Fn = Koffi.KoffiFunction;

interface Libc {
  readonly errno: () => number;
  readonly socket: Fn;
  readonly bind: Fn;
  readonly setsockopt: Fn;
  readonly send: Fn;
  readonly recv: Fn;
  readonly getsockname: Fn;
  readonly close: Fn;
}

/**
 * Sends each batch with one send() and reads its acks before returning. Synchronous: the
 * kernel handles a netlink message in the sender's send() call, so when it returns every ack
 * is already queued on the socket. The event loop waits for the kernel's transaction: tens of
 * microseconds, where a hop through the thread pool (koffi's .async) would add about 50 of
 * wall and CPU time; longer while another process holds the nftables commit lock, and about
 * 4 ms for a batch the kernel refuses (its abort waits for an RCU grace period), which only
 * happens when our table is gone.
 */
export class NetlinkRunner implements NftRunner {
  readonly name = 'netlink' as const;
  private fd: number;
  private seq = Math.floor(Math.random() * 0x7fffffff);
  private readonly rx = Buffer.alloc(65536);
  private readonly tx = new Writer();

  private constructor(
    private readonly libc: Libc,
    fd: number,
    readonly portid: number,
  ) {
    this.fd = fd;
  }

  /** Opens and binds the socket; throws DataPlaneError NFT_UNAVAILABLE or NFT_NOT_PERMITTED. */
  static open(): NetlinkRunner {
    let libc: Libc;
    try {
      const koffi = createRequire(import.meta.url)('koffi') as typeof Koffi;
      const lib = koffi.load('libc.so.6');
      libc = {
        errno: () => koffi.errno(),
        socket: lib.func('int socket(int domain, int type, int protocol)'),
        bind: lib.func('int bind(int fd, const void *addr, uint32_t len)'),
        setsockopt: lib.func('int setsockopt(int fd, int level, int name, const void *value, uint32_t len)'),
        send: lib.func('intptr_t send(int fd, const void *buf, size_t len, int flags)'),
        recv: lib.func('intptr_t recv(int fd, void *buf, size_t len, int flags)'),
        getsockname: lib.func('int getsockname(int fd, _Out_ uint8_t *addr, _Inout_ uint32_t *len)'),
        close: lib.func('int close(int fd)'),
      };
    } catch (e) {
      throw unavailable(`cannot load libc through koffi: ${(e as Error).message}`, e);
    }
    const fd = libc.socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER) as number;
    if (fd < 0) throw socketError('socket(AF_NETLINK, NETLINK_NETFILTER)', libc.errno());
    const one = new Int32Array([1]);
    // struct sockaddr_nl { nl_family; nl_pad; nl_pid = 0 (the kernel picks); nl_groups = 0 }
    const addr = new Uint16Array(6);
    addr[0] = AF_NETLINK;
    if ((libc.setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, one, 4) as number) < 0 || (libc.bind(fd, addr, addr.byteLength) as number) < 0) {
      const errno = libc.errno();
      libc.close(fd);
      throw socketError('netlink socket setup', errno);
    }
    // The port the kernel gave it: notifications of our batches carry it (watch.ts).
    const bound = Buffer.alloc(12);
    const portid = (libc.getsockname(fd, bound, [bound.length]) as number) === 0 ? bound.readUInt32LE(4) : 0;
    return new NetlinkRunner(libc, fd, portid);
  }

  run(batch: Batch, opts: RunOptions = {}): Promise<unknown[]> {
    try {
      if (opts.echo || opts.output) throw unsupported(opts.echo ? 'echo' : 'output');
      if (this.fd < 0) throw unavailable('netlink runner is closed');
      this.apply(batch);
      return Promise.resolve([]);
    } catch (e) {
      return Promise.reject(e);
    }
  }

  private apply(batch: Batch): void {
    const b = encodeBatch(batch, this.seq, this.tx);
    this.seq = (b.beginSeq + b.messages.length + 2) >>> 0;
    const sent = this.libc.send(this.fd, b.bytes, b.bytes.length, 0) as number;
    if (sent !== b.bytes.length) {
      const errno = sent < 0 ? this.libc.errno() : 0;
      throw failure(`send: ${sent < 0 ? errnoText(errno) : `short write ${sent} of ${b.bytes.length}`}`, errno);
    }
    const acks = new Map<number, number>();
    // The first receive error (ENOBUFS: acks overflowed the socket, some are lost) fails the
    // batch, but only once the socket is empty: acks left behind would fill it for the next
    // batch, whose own ack would then be dropped.
    let recvError = 0;
    for (;;) {
      const n = this.libc.recv(this.fd, this.rx, this.rx.length, MSG_DONTWAIT) as number;
      if (n < 0) {
        const errno = this.libc.errno();
        if (errno === EINTR) continue;
        if (errno === EAGAIN) break;
        // Anything else will not go away by reading on.
        if (errno !== ENOBUFS) throw failure(`recv: ${errnoText(errno)}`, errno);
        recvError = errno;
        continue;
      }
      if (!recvError) readAcks(this.rx.subarray(0, n), acks);
    }
    if (recvError) throw failure(`recv: ${errnoText(recvError)}`, recvError);
    const outcome = batchOutcome(b, acks);
    if (outcome) throw outcome;
  }

  close(): Promise<void> {
    if (this.fd >= 0) this.libc.close(this.fd);
    this.fd = -1;
    return Promise.resolve();
  }
}

function socketError(what: string, errno: number): DataPlaneError {
  const text = `${what}: ${errnoText(errno)}`;
  return errno === EPERM || errno === EACCES ? nftFailure(text) : unavailable(text);
}
