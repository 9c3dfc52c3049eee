// Notices when another process removes part of our table: a NETLINK_NETFILTER socket in the
// nftables multicast group, whose notifications are grouped by transaction and told apart by pid.

import { existsSync } from 'node:fs';
import { endianness } from 'node:os';
import { loadLibc, type Libc } from '../../net/libc.js';
import { NLMSG_HDRLEN } from '../../net/netlink-abi.js';
import { drainNetlink, ignoreSender, openNetlink } from '../../net/netlink-socket.js';

// linux/netlink.h, linux/netfilter/nfnetlink.h
const NETLINK_NETFILTER = 12;
const NFNLGRP_NFTABLES = 7;
const NFNL_SUBSYS_NFTABLES = 10;
const NFPROTO_INET = 1;

// linux/netfilter/nf_tables.h: the messages that remove something (the kernel reports a
// destroy as the matching delete), and the one that closes every transaction.
const NFT_MSG_DELTABLE = 2;
const NFT_MSG_DELCHAIN = 5;
const NFT_MSG_DELRULE = 8;
const NFT_MSG_DELSET = 11;
const NFT_MSG_DELSETELEM = 14;
const NFT_MSG_NEWGEN = 15;
const REMOVALS = new Set([NFT_MSG_DELTABLE, NFT_MSG_DELCHAIN, NFT_MSG_DELRULE, NFT_MSG_DELSET, NFT_MSG_DELSETELEM]);
/** Attribute 1 of each of those is the table's name (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, ...). */
const NFTA_TABLE = 1;
const NFTA_GEN_PROC_PID = 2;
const NFTA_GEN_PROC_NAME = 3;

const LE = endianness() === 'LE';

/**
 * Whether a transaction was this process's own, from the committing task's id (NFTA_GEN_PROC_PID,
 * as the kernel's initial pid namespace numbers it) and the committing socket's port id.
 */
export type Ours = (pid: number, portid: number) => boolean;

/** A transaction of another process that removed something from our table. */
export interface Removal {
  readonly pid: number;
  /** The process's name, as the kernel gives it (`nft`, `firewalld`, ...). */
  readonly comm: string;
  /** What it removed: `table`, `chain`, `rule`, `set`, `element`, each once. */
  readonly what: readonly string[];
}

const KIND: Readonly<Record<number, string>> = {
  [NFT_MSG_DELTABLE]: 'table',
  [NFT_MSG_DELCHAIN]: 'chain',
  [NFT_MSG_DELRULE]: 'rule',
  [NFT_MSG_DELSET]: 'set',
  [NFT_MSG_DELSETELEM]: 'element',
};

/**
 * Groups notifications into transactions (each ends with NEWGEN, which carries the committing
 * process's pid) and reports those that removed part of `table` (family inet) and were not
 * committed by a process `ours` says is this one. Pure: the watcher feeds it datagrams.
 */
export class EventDigest {
  private removed = new Set<string>();

  constructor(
    private readonly table: string,
    private readonly ours: Ours,
  ) {}

  /** The removals by others that `datagram` completes. */
  feed(datagram: Uint8Array): Removal[] {
    const out: Removal[] = [];
    const v = new DataView(datagram.buffer, datagram.byteOffset, datagram.byteLength);
    let at = 0;
    while (at + NLMSG_HDRLEN + 4 <= datagram.length) {
      const len = v.getUint32(at, LE);
      if (len < NLMSG_HDRLEN + 4 || at + len > datagram.length) break;
      const type = v.getUint16(at + 4, LE);
      if (type >> 8 === NFNL_SUBSYS_NFTABLES) {
        const msg = type & 0xff;
        const attrs = readAttrs(datagram.subarray(at + NLMSG_HDRLEN + 4, at + len));
        if (msg === NFT_MSG_NEWGEN) {
          const pidAttr = attrs.get(NFTA_GEN_PROC_PID);
          const pid = pidAttr && pidAttr.length >= 4 ? new DataView(pidAttr.buffer, pidAttr.byteOffset, 4).getUint32(0, false) : 0;
          // The committing socket's port id is the message's nlmsg_pid.
          if (this.removed.size > 0 && !this.ours(pid, v.getUint32(at + 12, LE))) out.push({ pid, comm: cString(attrs.get(NFTA_GEN_PROC_NAME)), what: [...this.removed] });
          this.removed = new Set();
        } else if (REMOVALS.has(msg) && datagram[at + NLMSG_HDRLEN] === NFPROTO_INET && cString(attrs.get(NFTA_TABLE)) === this.table) {
          this.removed.add(KIND[msg]!);
        }
      }
      at += (len + 3) & ~3;
    }
    return out;
  }
}

/** Top-level attributes by type (the last of a type wins; none repeats in these messages). */
function readAttrs(b: Uint8Array): Map<number, Uint8Array> {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const out = new Map<number, Uint8Array>();
  let at = 0;
  while (at + 4 <= b.length) {
    const len = v.getUint16(at, LE);
    if (len < 4 || at + len > b.length) break;
    out.set(v.getUint16(at + 2, LE) & 0x3fff, b.subarray(at + 4, at + len));
    at += (len + 3) & ~3;
  }
  return out;
}

function cString(b: Uint8Array | undefined): string {
  if (!b) return '';
  const end = b.indexOf(0);
  return Buffer.from(b.subarray(0, end < 0 ? b.length : end)).toString('latin1');
}

/**
 * Whether `pid` is a thread of this process. The kernel gives the committing task's own id
 * (libnftables runs on a libuv worker thread, whose id is not process.pid), numbered in the
 * initial pid namespace: inside another one this never says yes (see the data plane's window).
 */
export function ourThread(pid: number): boolean {
  return pid === process.pid || (pid > 0 && existsSync(`/proc/self/task/${pid}`));
}

/** What the watcher reports: removals by others, or that notifications were lost (unknown). */
export type WatchEvent =
  /** Removals committed after `since` (Date.now() of the read before). */
  | { readonly kind: 'removed'; readonly removals: readonly Removal[]; readonly since: number }
  | { readonly kind: 'overflow' };

/**
 * The subscribed socket, read without blocking on a short tick: Node cannot wait on a netlink
 * descriptor in its event loop, and a thread blocked in recv() would hold one of libuv's four
 * workers for good. The kernel queues the notifications; the tick only bounds how late they are
 * read (WATCH_TICK_MS), at a cost of one recv() per tick when nothing happens.
 */
export class TableWatcher {
  private readonly rx = Buffer.alloc(256 * 1024);
  private readonly timer: NodeJS.Timeout;
  /** When the socket was last found empty: what is queued now was committed after it. */
  private lastRead = Date.now();

  private constructor(
    private readonly libc: Libc,
    private fd: number,
    private readonly digest: EventDigest,
    private readonly report: (e: WatchEvent) => void,
    tickMs: number,
  ) {
    this.timer = setInterval(() => this.read(), tickMs).unref();
  }

  /**
   * Subscribes to the nftables group and reads it every `tickMs`. `ours` tells the pids whose
   * transactions are this process's own. The notifications of the netlink socket `quiet` (the
   * port id of the one that opens and releases paths: 4 datagrams per session, measured) are
   * dropped by the kernel, not queued, read and parsed here. Throws an Error saying why it cannot.
   */
  static open(table: string, ours: Ours, report: (e: WatchEvent) => void, quiet = 0, tickMs = WATCH_TICK_MS): TableWatcher {
    // Netlink headers are in host order and read here as little-endian.
    if (!LE) throw new Error('nftables watcher: little-endian hosts only');
    const libc = loadLibc();
    if (!libc) throw new Error('cannot load libc through koffi');
    // Every element our own open/release adds or removes is announced too: room for bursts.
    const fd = openNetlink(libc, NETLINK_NETFILTER, 4 * 1024 * 1024, 1 << (NFNLGRP_NFTABLES - 1));
    // Best effort: unfiltered, they are read and found to be ours as before.
    if (quiet !== 0) ignoreSender(libc, fd, quiet);
    return new TableWatcher(libc, fd, new EventDigest(table, ours), report, tickMs);
  }

  /** Reads what is queued now (the tick does this too); reports at most one event per kind. */
  read(): void {
    if (this.fd < 0) return;
    const removals: Removal[] = [];
    const since = this.lastRead;
    this.lastRead = Date.now();
    let overflow: boolean;
    try {
      overflow = !drainNetlink(this.libc, this.fd, this.rx, (d) => removals.push(...this.digest.feed(d)));
    } catch {
      // It will not go away: say that nothing is known any more, and stop (the check goes on).
      this.close();
      overflow = true;
    }
    if (removals.length > 0) this.report({ kind: 'removed', removals, since });
    if (overflow) this.report({ kind: 'overflow' });
  }

  close(): void {
    clearInterval(this.timer);
    if (this.fd >= 0) this.libc.close(this.fd);
    this.fd = -1;
  }
}

/** How often the watcher reads its socket. */
export const WATCH_TICK_MS = 100;
