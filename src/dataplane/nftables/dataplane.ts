// The nftables data plane: one table of ours on the gateway, and per data connection a few
// timed set/map elements that let the kernel admit, DNAT and SNAT exactly one connection.
// It recreates the table when someone else removes part of it (watch.ts tells).

import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import type { Logger } from 'pino';
import { DataPlaneError } from '../../errors.js';
import { canonical } from '../../net/address.js';
import type { PortAllocator } from '../../net/ports.js';
import type { DataPath, DataPathRequest, DataPlane } from '../types.js';
import type { Moved } from '../../transfer.js';
import { LibnftablesRunner } from './libnftables.js';
import { NetlinkRunner } from './netlink.js';
import { batch, type Batch, type Command } from './schema.js';
import {
  closeBatch,
  CHAIN,
  healBatches,
  listBatch,
  missingParts,
  openBatch,
  probeBatch,
  releaseBatch,
  snatKeyString,
  READD_CHUNK,
  startBatch,
  type PathSpec,
  type Readd,
  type TableOptions,
} from './rules.js';
import { hasNetAdmin, notPermitted, unavailable, type NftRunner, type RunnerChoice, type RunnerName, type RunOptions } from './runner.js';
import { ELEMENTS, featureMessage, missingFeature, type Feature } from './selftest.js';
import { SpawnRunner } from './spawn.js';
import { FlowTable, NflogReader, parseSegment } from './nflog.js';
import { ourThread, TableWatcher, type Ours, type Removal, type WatchEvent } from './watch.js';

export interface NftablesDataPlaneOptions {
  /** Name of our table (family inet). Default 'ftp_proxy'. */
  readonly table?: string;
  readonly ports: PortAllocator;
  /** Seconds an unused admission (and its NAT entries) lives in the kernel. Default 30. */
  readonly entryTimeoutSec?: number;
  /** Log each admitted connection with prefix `ftp-proxy #<sid> `. Default false. */
  readonly logRules?: boolean;
  /** Set this packet and conntrack mark on admitted connections. */
  readonly mark?: number;
  /** Count the bytes of data connections through NFLOG (rules.ts TableOptions.count). */
  readonly count?: TableOptions['count'];
  /**
   * 'auto' (default): the table through libnftables if it loads, else the nft command;
   * open/release over netlink if its start-up probe passes (never with logRules: those batches
   * insert and delete rules), else through that same runner. 'netlink': like 'auto', but start()
   * fails when netlink does not work. 'lib', 'spawn', or a runner object: that for everything.
   */
  readonly runner?: RunnerChoice | NftRunner;
  /**
   * Opens the netlink runner (default NetlinkRunner.open); a seam for tests. When given, netlink
   * is tried at start() even with a runner object.
   */
  readonly openNetlink?: () => NftRunner;
  /**
   * Watch the table and recreate it when another process removes part of it. Default: on with
   * the runners chosen by name, off with a runner object (a test's). A function opens the
   * watcher (a seam for tests; TableWatcher.open by default).
   */
  readonly watch?: boolean | OpenWatcher;
  /** Any pino logger (custom levels or not): only debug/info/warn/error are used. */
  readonly logger: Pick<Logger, 'debug' | 'info' | 'warn' | 'error'>;
  /** Where conntrack lists connections (which admissions were used before a table was lost). */
  readonly conntrackPath?: string;
}

/** Opens a table watcher: `ours` tells our own pids, `report` gets what others did. */
/** `quiet`: the port id of the netlink socket whose own notifications need not be read (0: none). */
export type OpenWatcher = (table: string, ours: Ours, report: (e: WatchEvent) => void, quiet: number) => { close(): void };

/**
 * Pick the runner: the library in-process if it loads, else `nft`; 'netlink' gives the
 * netlink runner, for element batches only. Throws DataPlaneError NFT_UNAVAILABLE when 'lib'
 * or 'netlink' is asked for and cannot load; a missing `nft` shows on first use.
 */
export function createRunner(choice: RunnerChoice = 'auto'): NftRunner {
  if (choice === 'spawn') return new SpawnRunner();
  if (choice === 'lib') return LibnftablesRunner.load();
  if (choice === 'netlink') return NetlinkRunner.open();
  try {
    return LibnftablesRunner.load();
  } catch {
    return new SpawnRunner();
  }
}

interface LivePath {
  readonly spec: PathSpec;
  readonly snatKey: string;
  readonly logHandle: number | undefined;
  /** When its entries were added (Date.now()): they live opts.timeoutSec from then. */
  readonly opened: number;
  readonly lost: DataPathRequest['lost'];
}

/** A release taken off the live map and waiting for the next flush. */
interface QueuedRelease {
  readonly id: string;
  readonly path: LivePath;
  /** This release dropped the last user of the path's SNAT entries: they go too. */
  readonly snat: boolean;
  readonly resolve: () => void;
  readonly reject: (e: DataPlaneError) => void;
}

/**
 * Most commands in one release transaction. The netlink runner needs room for one ack per
 * command in its socket's receive buffer: at the default 208 KiB, 250 went through here and 260
 * failed with ENOBUFS (after the kernel had applied them); `nft -j` takes the batch as one
 * argument, which fails past 128 KiB (about 90 paths). A release is at most 11 commands.
 */
export const MAX_RELEASE_COMMANDS = 128;
/** How long transferred() waits for a data connection to end before answering with what is known. */
const TRANSFER_WAIT_MS = 2000;
/** The NFLOG socket is read at least this often. */
const DRAIN_MS = 250;
/**
 * After a sign of damage the table is checked and rebuilt once the signs stop for HEAL_QUIET_MS
 * (a `flush ruleset` and the reload after it come as one burst), at most HEAL_MAX_WAIT_MS after
 * the first: with the watcher's tick, the table is back within a second.
 */
const HEAL_QUIET_MS = 150;
const HEAL_MAX_WAIT_MS = 700;
/** A failed rebuild is retried after this, doubling up to RETRY_MAX_MS. */
const RETRY_FIRST_MS = 250;
const RETRY_MAX_MS = 30_000;
/** The backup of the watcher: the table's shape is listed this often. */
const CHECK_MS = 30_000;

interface SnatUse {
  readonly source: string;
  readonly sourcePort: number | undefined;
  users: number;
}

export class NftablesDataPlane implements DataPlane {
  readonly name = 'nftables';
  readonly table: string;
  private readonly opts: TableOptions & { timeoutSec: number };
  /** Runs start and close, and open/release when netlink does not. */
  private readonly runner: TrackedRunner;
  private readonly netlinkWanted: 'no' | 'try' | 'required';
  private netlink: NftRunner | undefined;
  /** Whether release may use destroy (netlink on Linux 6.3+). */
  private destroy = false;
  /** Runs open/release: the netlink runner after a good probe, else `runner`. */
  private elements: NftRunner;
  private readonly paths = new Map<string, LivePath>();
  /** SNAT entries are keyed by the post-DNAT tuple, which two live paths may share. */
  private readonly snatUses = new Map<string, SnatUse>();
  private readonly quarantine = new Set<NodeJS.Timeout>();
  /** Releases of this event-loop turn, applied together by flushReleases(). */
  private queued: QueuedRelease[] = [];
  private flushSoon: NodeJS.Immediate | undefined;
  /** Release transactions sent and not yet settled, for close() to wait on. */
  private readonly applying = new Set<Promise<void>>();
  private seq = 0;
  /** The data connections' segments (count rule), while the NFLOG group is ours. */
  private nflog: NflogReader | null = null;
  private readonly flows = new FlowTable();
  /** Session of each path whose bytes may still be asked for (released paths included). */
  private readonly counted = new Map<string, string>();
  /** Paths a transferred() call is waiting on. */
  private readonly awaited = new Set<string>();
  private drainTimer: NodeJS.Timeout | null = null;
  private watcher: { close(): void } | null = null;
  /** Whether the table is watched and healed (the `watch` option). */
  private heals = false;
  private checkTimer: NodeJS.Timeout | null = null;
  /** The damage being repaired: from its first sign (and its one warning) until the table is back. */
  private incident: { readonly since: number } | null = null;
  /** Incidents so far: a release that failed while one began was undone by it. */
  private incidents = 0;
  /** Fired at the end of every check-and-rebuild, and at close(). */
  private readonly attempted = new Signal();
  /** Fired when the table is known whole again (or at close()). */
  private readonly whole = new Signal();
  private firstSign: number | null = null;
  private quietTimer: NodeJS.Timeout | null = null;
  /** A check-and-rebuild under way: open() waits for it, releases are held until it ends. */
  private healing: Promise<void> | null = null;
  /** Another sign came during `healing`: check again after it. */
  private again = false;
  /** The table is gone and could not be rebuilt yet: open() refuses (425) until it is. */
  private broken = false;
  private retries = 0;
  private retryTimer: NodeJS.Timeout | null = null;
  /** Open batches sent and not settled: a rebuild starts after them, so it re-adds their entries. */
  private readonly opening = new Set<Promise<unknown>>();
  private closed = false;

  constructor(private readonly o: NftablesDataPlaneOptions) {
    this.table = o.table ?? 'ftp_proxy';
    if (!/^[A-Za-z_][A-Za-z0-9_]{0,31}$/.test(this.table)) throw new RangeError(`bad nftables table name '${this.table}'`);
    const timeoutSec = o.entryTimeoutSec ?? 30;
    if (!(Number.isInteger(timeoutSec) && timeoutSec >= 1)) throw new RangeError(`bad entry timeout ${timeoutSec}`);
    if (o.mark !== undefined && !(Number.isInteger(o.mark) && o.mark > 0 && o.mark <= 0xffffffff)) {
      throw new RangeError(`bad mark ${o.mark}`);
    }
    this.opts = {
      table: this.table,
      logRules: o.logRules ?? false,
      ...(o.mark !== undefined ? { mark: o.mark } : {}),
      ...(o.count !== undefined ? { count: o.count } : {}),
      timeoutSec,
    };
    const choice = o.runner ?? 'auto';
    if (choice === 'netlink' && this.opts.logRules) throw new RangeError('the netlink runner cannot install log rules');
    const tryNetlink = (choice === 'auto' || o.openNetlink !== undefined) && !this.opts.logRules;
    this.netlinkWanted = choice === 'netlink' ? 'required' : tryNetlink ? 'try' : 'no';
    this.runner = new TrackedRunner(typeof choice === 'object' ? choice : createRunner(choice === 'netlink' ? 'auto' : choice));
    this.elements = this.runner;
  }

  /**
   * What opens and releases paths: 'netlink' (after start), 'libnftables' (in-process) or
   * 'nft' (spawned per batch), for the start-up log line.
   */
  get runnerName(): RunnerName {
    return this.elements.name;
  }

  /** Live paths, for tests and stats. */
  get size(): number {
    return this.paths.size;
  }

  async start(): Promise<void> {
    if (!hasNetAdmin(await readFile('/proc/self/status', 'utf8').catch(() => null))) throw notPermitted();
    // One transaction: add table, delete table, add table and everything in it (rules.ts).
    await this.runner.run(startBatch(this.opts)).catch(async (e: unknown) => {
      // The self-test: which feature the kernel lacks, where that is the reason.
      const missing = isPlainFailure(e) ? await missingFeature((b) => this.runner.run(b), this.opts) : null;
      throw missing ? featureError(missing, e) : startError(e);
    });
    if (this.netlinkWanted !== 'no') this.elements = await this.probeNetlink();
    else {
      // The elements every open adds (rules.ts probeBatch), tried once now.
      await this.runner.run(probeBatch(this.table, false)).catch((e: unknown) => {
        throw isPlainFailure(e) ? featureError(ELEMENTS, e) : startError(e);
      });
    }
    if (this.opts.count) this.openNflog(this.opts.count.group);
    const watch = this.o.watch ?? typeof this.o.runner !== 'object';
    if (watch) this.startWatching(watch === true ? TableWatcher.open : watch);
    this.o.logger.info(
      {
        table: `inet ${this.table}`,
        runner: this.elements.name,
        tableRunner: this.runner.name,
        ...(this.elements === this.netlink ? { destroy: this.destroy } : {}),
      },
      'nftables table installed',
    );
  }

  /**
   * The netlink runner if a socket opens and a probe batch that touches every set and map
   * (rules.ts probeBatch) goes through; else `runner`, or, when netlink is required, an error.
   * The first probe removes with destroy; a kernel without it (before 6.3) refuses the batch,
   * and a second probe without destroy decides.
   */
  private async probeNetlink(): Promise<NftRunner> {
    try {
      const netlink = (this.netlink ??= (this.o.openNetlink ?? NetlinkRunner.open)());
      this.destroy = await netlink.run(probeBatch(this.table, true)).then(
        () => true,
        () => netlink.run(probeBatch(this.table, false)).then(() => false),
      );
      return netlink;
    } catch (e) {
      await this.netlink?.close();
      this.netlink = undefined;
      if (this.netlinkWanted === 'required') throw isPlainFailure(e) ? featureError(ELEMENTS, e) : startError(e);
      this.o.logger.warn({ err: (e as Error).message, runner: this.runner.name }, 'netlink unusable; open/release fall back');
      return this.runner;
    }
  }

  async open(req: DataPathRequest): Promise<DataPath> {
    // NAT cannot change the address family (no NAT64 here): say so rather than let the
    // kernel refuse a value of the wrong length.
    const mixed = [req.peer, req.listen, req.target.address, req.source].find((a) => isIP(a) !== req.family);
    if (mixed !== undefined) {
      throw new DataPlaneError(
        'BACKEND_FAILED',
        `nftables cannot carry an IPv${req.family} data connection to or from ${mixed}; use --backend relay for mixed IPv4/IPv6`,
      );
    }
    const port = await this.o.ports.take();
    // The table is damaged or being rebuilt: this path goes in after it (or is refused if that failed).
    while (!this.closed && !this.broken && (this.healing || this.incident)) await this.attempted.wait();
    if (this.broken) {
      this.o.ports.put(port);
      throw new DataPlaneError('BACKEND_FAILED', `the nftables table inet ${this.table} is gone and not recreated yet`);
    }
    const spec: PathSpec = { ...req, port };
    const key = snatKeyString(spec);
    const use = this.snatUses.get(key);
    if (use && (use.source !== spec.source || use.sourcePort !== spec.sourcePort)) {
      this.o.ports.put(port);
      throw new DataPlaneError(
        'BACKEND_FAILED',
        `another data path to ${spec.target.address} port ${spec.target.port} from ${spec.peer} needs a different source`,
      );
    }
    // Counted before the batch is queued, so a concurrent release of the other user sees it.
    this.claimSnat(key, spec);
    // Queued releases reach the kernel first: one of them may have dropped the last user of
    // this SNAT key and so delete the entry this batch adds. Every runner applies batches in
    // the order run() is called, and nothing below yields before the open batch's run().
    this.flushReleases();
    let echoed: unknown[];
    const opened = Date.now();
    // add element inet T admit4 { peer . listen . port timeout Ns }, dnat4, dnatport4, snat4
    // [, snatport4] [; insert rule inet T admit_log ... log prefix "ftp-proxy #sid "]
    const sent = this.elements.run(openBatch(this.opts, spec), { echo: this.opts.logRules });
    this.opening.add(sent);
    try {
      echoed = await sent;
    } catch (e) {
      this.dropSnat(key);
      this.o.ports.put(port);
      // Perhaps the table is damaged and no event said so (the watcher's queue overflowed).
      this.schedule();
      throw new DataPlaneError('BACKEND_FAILED', `cannot admit data connection: ${(e as Error).message}`, { cause: e });
    } finally {
      this.opening.delete(sent);
    }
    const id = `nft-${++this.seq}`;
    const logHandle = this.opts.logRules ? logRuleHandle(echoed) : undefined;
    if (this.opts.logRules && logHandle === undefined) {
      this.o.logger.warn({ sid: req.sid, dataPath: id }, 'nft echoed no handle for the log rule; it stays until exit');
    }
    this.paths.set(id, { spec, snatKey: key, logHandle, opened, lost: req.lost });
    if (this.nflog) {
      this.flows.expect(id, spec.peer, spec.target);
      this.counted.set(id, spec.sid);
    }
    this.o.logger.debug(
      { sid: req.sid, dataPath: id, kind: req.kind, peer: req.peer, dataPort: port, target: `${req.target.address}:${req.target.port}` },
      'data path admitted',
    );
    return { id, port };
  }

  /**
   * Takes the path out of the live map at once (size and SNAT sharing count without it) and
   * queues its removal: every release of one event-loop turn goes to the kernel in one
   * transaction, after the turn's replies are written. Resolves once it is applied; the port
   * is free again only then.
   */
  release(id: string, _abort: boolean, urgent = false): Promise<void> {
    // abort changes nothing here: the kernel carries an established connection, and removing
    // the entries does not touch its conntrack binding.
    const path = this.paths.get(id);
    if (!path) return Promise.resolve();
    this.paths.delete(id);
    // Nobody asked what it carried before letting it go (a PASV replaced by the next one):
    // nobody will, so its count goes now, not at the session's end (a client repeating PASV
    // must not grow it).
    if (!this.awaited.has(id)) (this.counted.delete(id), this.flows.forget(id));
    const snat = this.dropSnat(path.snatKey);
    return new Promise((resolve, reject) => {
      this.queued.push({ id, path, snat, resolve, reject });
      // The netlink runner sends its batch within run(), and the kernel applies it there.
      if (urgent) return this.flushReleases();
      // Left referenced: a queued release is applied even when nothing else keeps the loop up.
      // close() cancels it.
      this.flushSoon ??= setImmediate(() => this.flushReleases());
    });
  }

  /** Releases what the session still holds; the kernel's own flows go on (conntrack keeps them). */
  async endSession(sid: string): Promise<void> {
    for (const [id, s] of this.counted) {
      if (s === sid && !this.awaited.has(id)) (this.counted.delete(id), this.flows.forget(id));
    }
    const mine = [...this.paths].filter(([, p]) => p.spec.sid === sid).map(([id]) => id);
    await Promise.all(mine.map((id) => this.release(id, true)));
  }

  /** The kernel carries the bytes: the proxy cannot tell cheaply, so never. */
  carrying(_sid: string): boolean {
    return false;
  }

  /**
   * Bytes from the sequence numbers of the connection's logged segments, once it has ended
   * (both FINs, or a reset); a connection still open TRANSFER_WAIT_MS after the question (a
   * session killed mid-transfer: the kernel carries it on) gives what one finished side says, or
   * null. Null too without the NFLOG group, or when log messages were lost.
   */
  async transferred(id: string): Promise<Moved | null> {
    if (!this.nflog || !this.counted.has(id)) return null;
    this.awaited.add(id);
    try {
      const deadline = Date.now() + TRANSFER_WAIT_MS;
      for (;;) {
        this.drainNflog();
        const r = this.flows.result(id);
        // No connection: its SYN would have been logged before the server's final reply.
        if (r.state === 'none') return { fromPeer: 0, toPeer: 0 };
        if (r.state === 'unknown') return null;
        if (r.state === 'done') return r.moved;
        if (Date.now() >= deadline) return r.state === 'half' ? r.moved : null;
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    } finally {
      this.awaited.delete(id);
      this.counted.delete(id);
      this.flows.forget(id);
    }
  }

  private openNflog(group: number): void {
    try {
      this.nflog = NflogReader.open(group);
    } catch (e) {
      this.o.logger.warn({ group, err: (e as Error).message }, 'cannot read the NFLOG group: transfer bytes are not counted (null)');
      return;
    }
    // Drained on a coarse tick as well, so the socket never fills between transfers.
    this.drainTimer = setInterval(() => this.drainNflog(), DRAIN_MS).unref();
    this.o.logger.info({ group }, 'counting data bytes through NFLOG');
  }

  private drainNflog(): void {
    if (!this.nflog) return;
    let complete: boolean;
    try {
      complete = this.nflog.drain((p) => {
        const s = parseSegment(p);
        if (s) this.flows.packet(s);
      });
    } catch (e) {
      this.o.logger.warn({ err: (e as Error).message }, 'NFLOG read failed: transfer bytes are no longer counted');
      this.closeNflog();
      return;
    }
    if (!complete) {
      this.o.logger.warn({}, 'NFLOG messages lost (socket full): the bytes of transfers under way are not counted');
      this.flows.taintAll();
    }
  }

  private closeNflog(): void {
    if (this.drainTimer) clearInterval(this.drainTimer);
    this.drainTimer = null;
    this.nflog?.close();
    this.nflog = null;
  }

  /**
   * Sends the queued releases now, in transactions of whole paths of at most
   * MAX_RELEASE_COMMANDS commands: a transaction fails as a whole, and so does every release
   * in it (its port quarantined, its promise rejected).
   */
  private flushReleases(): void {
    if (this.flushSoon) clearImmediate(this.flushSoon);
    this.flushSoon = undefined;
    // A rebuild re-adds the entries of the paths live when it began: their releases go after it.
    if (!this.closed && (this.healing || this.incident)) {
      void this.whole.wait().then(() => this.flushReleases());
      return;
    }
    const queued = this.queued;
    if (queued.length === 0) return;
    this.queued = [];
    const destroy = this.destroy && this.elements === this.netlink;
    let group: QueuedRelease[] = [];
    let cmds: Command[] = [];
    for (const q of queued) {
      // add element inet T admit4 { peer . listen . port }; delete element inet T admit4 { ... }
      // (over netlink on Linux 6.3+: destroy element inet T admit4 { peer . listen . port })
      // and the same for dnat4, dnatport4, [snat4, snatport4 if no other path uses them]
      // [; delete rule inet T admit_log handle H]
      const mine = releaseBatch(this.opts, q.path.spec, {
        snat: q.snat,
        destroy,
        ...(q.path.logHandle !== undefined ? { logHandle: q.path.logHandle } : {}),
      }).nftables;
      if (group.length > 0 && cmds.length + mine.length > MAX_RELEASE_COMMANDS) {
        this.applyReleases(group, cmds);
        group = [];
        cmds = [];
      }
      group.push(q);
      cmds.push(...mine);
    }
    this.applyReleases(group, cmds);
  }

  private applyReleases(group: readonly QueuedRelease[], cmds: Command[]): void {
    const incidents = this.incidents;
    const released = (): void => {
      for (const q of group) {
        this.o.ports.put(q.path.spec.port);
        this.o.logger.debug({ sid: q.path.spec.sid, dataPath: q.id, dataPort: q.path.spec.port }, 'data path released');
        q.resolve();
      }
    };
    // The executor calls run() at once, so batches keep the order of the calls (open() relies
    // on it), and a runner that throws becomes a rejection.
    const settled = new Promise<unknown>((resolve) => resolve(this.elements.run(batch(...cmds)))).then(
      released,
      async (e: unknown) => {
        // Perhaps sent after another process removed the table and before the proxy knew: then
        // the entries went with the table, and the release is done.
        this.schedule();
        while (!this.closed && (this.quietTimer || this.healing)) await this.attempted.wait();
        if (this.incidents !== incidents) return released();
        for (const q of group) {
          // What is left times out in the kernel; the port stays out of use until then.
          this.quarantinePort(q.path.spec.port);
          q.reject(new DataPlaneError('BACKEND_FAILED', `cannot remove data path ${q.id}: ${(e as Error).message}`, { cause: e }));
        }
      },
    );
    this.applying.add(settled);
    void settled.finally(() => this.applying.delete(settled));
  }

  async close(): Promise<void> {
    this.closed = true;
    this.stopWatching();
    if (this.healing) await this.healing;
    this.attempted.fire();
    this.whole.fire();
    this.closeNflog();
    for (const p of this.paths.values()) this.o.ports.put(p.spec.port);
    this.paths.clear();
    this.snatUses.clear();
    // No release can be queued from here on (no path is left). Those already queued go out
    // while the runners are open, and settle (a failed one quarantines its port) before the
    // quarantine is cleared: then nothing is queued or timed any more.
    this.flushReleases();
    await Promise.all(this.applying);
    for (const t of this.quarantine) clearTimeout(t);
    this.quarantine.clear();
    try {
      // add table inet T; delete table inet T - whether or not start() got as far as creating it.
      await this.runner.run(closeBatch(this.table));
    } finally {
      await this.netlink?.close();
      this.netlink = undefined;
      this.elements = this.runner;
      await this.runner.close();
    }
  }

  // --- healing ----------------------------------------------------------------------------

  private startWatching(open: OpenWatcher): void {
    this.heals = true;
    const ours: Ours = (pid, portid) => ourThread(pid) || this.runner.spawned(pid) || (portid !== 0 && portid === this.netlink?.portid);
    try {
      this.watcher = open(
        this.table,
        ours,
        (e) => (e.kind === 'removed' ? this.damaged(e.removals, e.since) : this.schedule()),
        this.elements === this.netlink ? (this.netlink.portid ?? 0) : 0,
      );
    } catch (e) {
      this.o.logger.warn({ err: (e as Error).message }, `cannot watch the nftables table: damage is found by a check every ${CHECK_MS / 1000} s only`);
    }
    // The backup: a missed or unreadable notification is found here.
    this.checkTimer = setInterval(() => this.schedule(), CHECK_MS).unref();
  }

  private stopWatching(): void {
    this.watcher?.close();
    this.watcher = null;
    for (const t of [this.checkTimer, this.quietTimer, this.retryTimer]) if (t) clearTimeout(t);
    this.checkTimer = this.quietTimer = this.retryTimer = null;
  }

  /** Another process removed part of the table: the one warning of this incident, then a rebuild. */
  private damaged(removals: readonly Removal[], since: number): void {
    // Committed while a batch of our table runner was under way: perhaps our own (in another
    // pid namespace the kernel's pid is not one of ours). Checked, not taken for damage.
    if (!this.incident && this.runner.busySince(since)) return this.schedule();
    if (!this.incident) {
      this.beginIncident();
      this.o.logger.warn(
        {
          table: `inet ${this.table}`,
          by: removals.map((r) => `${r.comm || '?'}[${r.pid}]`).join(', '),
          removed: [...new Set(removals.flatMap((r) => r.what))].join(','),
        },
        'another process removed part of the nftables table: recreating it',
      );
    }
    this.schedule();
  }

  private beginIncident(): { readonly since: number } {
    this.incidents++;
    return (this.incident = { since: Date.now() });
  }

  /**
   * A sign that the table may be damaged: it is checked (and rebuilt if it is) once the signs
   * stop for a moment, and not too long after the first.
   */
  private schedule(): void {
    if (this.closed || !this.heals) return;
    const now = Date.now();
    this.firstSign ??= now;
    if (this.quietTimer) clearTimeout(this.quietTimer);
    const wait = Math.max(0, Math.min(HEAL_QUIET_MS, this.firstSign + HEAL_MAX_WAIT_MS - now));
    this.quietTimer = setTimeout(() => {
      this.quietTimer = this.firstSign = null;
      this.repair();
    }, wait);
  }

  /** One check-and-rebuild at a time; a sign during one means another after it. */
  private repair(): void {
    if (this.closed) return;
    if (this.healing) {
      this.again = true;
      return;
    }
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.retryTimer = null;
    this.healing = this.heal().finally(() => {
      this.healing = null;
      if (!this.incident) this.whole.fire();
      this.attempted.fire();
      if (this.again && !this.closed) {
        this.again = false;
        this.repair();
      }
    });
  }

  private async heal(): Promise<void> {
    // Opens already sent land first, so that the rebuild knows their paths.
    await Promise.all([...this.opening].map((p) => p.catch(() => undefined)));
    if (this.closed) return;
    let incident = this.incident;
    if (!incident) {
      const missing = await this.check();
      if (missing.length === 0) return;
      incident = this.beginIncident();
      this.o.logger.warn({ table: `inet ${this.table}`, missing: missing.join(', ') }, 'the nftables table is damaged: recreating it');
    }
    try {
      const { readded, lost } = await this.rebuild();
      this.o.logger.info(
        { table: `inet ${this.table}`, readded, lost, ms: Date.now() - incident.since, attempts: this.retries + 1 },
        'nftables table recreated',
      );
      this.incident = null;
      this.broken = false;
      this.retries = 0;
    } catch (e) {
      this.broken = true;
      if (this.closed) return;
      const delay = Math.min(RETRY_FIRST_MS * 2 ** this.retries, RETRY_MAX_MS);
      if (this.retries === 0) {
        this.o.logger.error(
          { table: `inet ${this.table}`, err: (e as Error).message },
          'cannot recreate the nftables table: data connections are refused (425) until it is back; retrying',
        );
      }
      this.retries++;
      this.retryTimer = setTimeout(() => {
        this.retryTimer = null;
        this.repair();
      }, delay).unref();
    }
  }

  /** What the table lacks now, [] when it is whole; a table that cannot be listed is missing. */
  private async check(): Promise<string[]> {
    try {
      return missingParts(this.opts, await this.runner.run(listBatch(this.table), { output: true }));
    } catch (e) {
      return [`table inet ${this.table} (${(e as Error).message})`];
    }
  }

  /**
   * The table again (start()'s transaction), with the entries of the paths still waiting for
   * their connection (conntrack has none from their peer to their port yet) and the time they
   * have left. Paths whose connection came need nothing (conntrack carries it); paths that cannot
   * be put back are lost: their ports are free and their sessions refuse the next transfer.
   * Throws when the table itself cannot be made.
   */
  private async rebuild(): Promise<{ readded: number; lost: number }> {
    const now = Date.now();
    const came = await readFile(this.o.conntrackPath ?? '/proc/net/nf_conntrack', 'latin1').then(tcpOriginals, () => null);
    const readd: { id: string; r: Readd }[] = [];
    const lost: string[] = [];
    for (const [id, p] of this.paths) {
      const left = Math.ceil((p.opened + this.opts.timeoutSec * 1000 - now) / 1000);
      // Expired: the kernel would have dropped it by now anyway.
      if (left <= 0) continue;
      if (came === null) lost.push(id);
      else if (!came.has(admissionKey(p.spec))) readd.push({ id, r: { spec: p.spec, timeoutSec: left } });
    }
    const batches = healBatches(this.opts, readd.map((x) => x.r));
    const chunk = (i: number): string[] => readd.slice(i * READD_CHUNK, (i + 1) * READD_CHUNK).map((x) => x.id);
    try {
      await this.runner.run(batches[0]!);
    } catch (e) {
      // Perhaps the entries' fault: the table alone then, and those paths are lost.
      if (readd.length === 0) throw e;
      await this.runner.run(startBatch(this.opts));
      lost.push(...chunk(0));
    }
    for (let i = 1; i < batches.length; i++) await this.runner.run(batches[i]!).catch(() => lost.push(...chunk(i)));
    // Every log rule went with the table. The connections open across the gap may have missed
    // segments; those still to come are counted whole.
    for (const [id, p] of this.paths) if (p.logHandle !== undefined) this.paths.set(id, { ...p, logHandle: undefined });
    this.flows.taintStarted();
    for (const id of lost) this.lose(id);
    return { readded: readd.length - lost.filter((id) => readd.some((x) => x.id === id)).length, lost: lost.length };
  }

  /** A path whose entries are gone for good: forgotten here, its session told. */
  private lose(id: string): void {
    const p = this.paths.get(id);
    if (!p) return;
    this.paths.delete(id);
    this.dropSnat(p.snatKey);
    this.counted.delete(id);
    this.flows.forget(id);
    this.o.ports.put(p.spec.port);
    this.o.logger.info({ sid: p.spec.sid, dataPath: id }, 'data path lost with the nftables table: its transfer will be refused');
    p.lost?.(id);
  }

  private claimSnat(key: string, spec: PathSpec): void {
    const use = this.snatUses.get(key);
    if (use) use.users++;
    else this.snatUses.set(key, { source: spec.source, sourcePort: spec.sourcePort, users: 1 });
  }

  /** Returns true when no live path uses the SNAT entry any more. */
  private dropSnat(key: string): boolean {
    const use = this.snatUses.get(key);
    if (!use || --use.users > 0) return false;
    this.snatUses.delete(key);
    return true;
  }

  private quarantinePort(port: number): void {
    const t = setTimeout(() => {
      this.quarantine.delete(t);
      this.o.ports.put(port);
    }, this.opts.timeoutSec * 1000 + 1000);
    t.unref();
    this.quarantine.add(t);
  }
}

/** A refusal by the kernel, not a missing nft, library or permission. */
function isPlainFailure(e: unknown): boolean {
  return !(e instanceof DataPlaneError && (e.code === 'NFT_UNAVAILABLE' || e.code === 'NFT_NOT_PERMITTED'));
}

function featureError(f: Feature, e: unknown): DataPlaneError {
  return unavailable(featureMessage(f, (e as Error).message), e);
}

/** `peer listen port` of a path's admission, as tcpOriginals gives connections. */
const admissionKey = (p: PathSpec): string => `${p.peer} ${p.listen} ${p.port}`;

/**
 * The original direction (`source destination dport`) of every TCP connection in conntrack's
 * text (/proc/net/nf_conntrack), addresses canonical.
 */
export function tcpOriginals(text: string): Set<string> {
  const out = new Set<string>();
  for (const line of text.split('\n')) {
    if (!line.includes(' tcp ')) continue;
    const m = /src=(\S+) dst=(\S+) sport=\d+ dport=(\d+)/.exec(line);
    if (m) out.add(`${canonical(m[1]!)} ${canonical(m[2]!)} ${m[3]}`);
  }
  return out;
}

/** start() failures keep their specific code; anything else is BACKEND_FAILED. */
function startError(e: unknown): DataPlaneError {
  if (e instanceof DataPlaneError && (e.code === 'NFT_UNAVAILABLE' || e.code === 'NFT_NOT_PERMITTED')) return e;
  return new DataPlaneError('BACKEND_FAILED', `cannot install the nftables table: ${(e as Error).message}`, { cause: e });
}

/** The handle of the log rule in the echo of an open batch. */
function logRuleHandle(echoed: readonly unknown[]): number | undefined {
  for (const c of echoed) {
    const rule = (c as { insert?: { rule?: { chain?: string; handle?: number } } }).insert?.rule;
    if (rule?.chain === CHAIN.log && typeof rule.handle === 'number') return rule.handle;
  }
  return undefined;
}

/**
 * The table runner, knowing when its batches ran: the watcher cannot always tell our own
 * transactions from others' (damaged()).
 */
class TrackedRunner implements NftRunner {
  private running = 0;
  private lastEnd = 0;

  constructor(private readonly inner: NftRunner) {}

  get name(): RunnerName {
    return this.inner.name;
  }

  run(b: Batch, o?: RunOptions): Promise<unknown[]> {
    this.running++;
    return new Promise<unknown[]>((resolve) => resolve(this.inner.run(b, o))).finally(() => {
      this.running--;
      this.lastEnd = Date.now();
    });
  }

  spawned(pid: number): boolean {
    return this.inner.spawned?.(pid) === true;
  }

  /** Whether a batch was under way at some time since `t` (a Date.now()). */
  busySince(t: number): boolean {
    return this.running > 0 || this.lastEnd >= t;
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/** Wakes every waiter at once; a wait begun after a fire() waits for the next. */
class Signal {
  private waiters: (() => void)[] = [];

  wait(): Promise<void> {
    return new Promise((resolve) => this.waiters.push(resolve));
  }

  fire(): void {
    for (const w of this.waiters.splice(0)) w();
  }
}
