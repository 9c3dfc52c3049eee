// The nftables data plane: one table of ours on the gateway, and per data connection a few
// timed set/map elements that let the kernel admit, DNAT and SNAT exactly one connection.

import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import type { Logger } from 'pino';
import { DataPlaneError } from '../../errors.js';
import type { PortAllocator } from '../../net/ports.js';
import type { DataPath, DataPathRequest, DataPlane } from '../types.js';
import type { Moved } from '../../transfer.js';
import { LibnftablesRunner } from './libnftables.js';
import { NetlinkRunner } from './netlink.js';
import { batch, type Command } from './schema.js';
import {
  closeBatch,
  CHAIN,
  openBatch,
  probeBatch,
  releaseBatch,
  snatKeyString,
  startBatch,
  type PathSpec,
  type TableOptions,
} from './rules.js';
import { hasNetAdmin, notPermitted, type NftRunner, type RunnerChoice, type RunnerName } from './runner.js';
import { SpawnRunner } from './spawn.js';
import { FlowTable, NflogReader, parseSegment } from './nflog.js';

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
  /** Any pino logger (custom levels or not): only debug/info/warn are used. */
  readonly logger: Pick<Logger, 'debug' | 'info' | 'warn'>;
}

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
  private readonly runner: NftRunner;
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
    this.runner = typeof choice === 'object' ? choice : createRunner(choice === 'netlink' ? 'auto' : choice);
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
    await this.runner.run(startBatch(this.opts)).catch((e: unknown) => {
      throw startError(e);
    });
    if (this.netlinkWanted !== 'no') this.elements = await this.probeNetlink();
    if (this.opts.count) this.openNflog(this.opts.count.group);
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
      if (this.netlinkWanted === 'required') throw startError(e);
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
    try {
      // add element inet T admit4 { peer . listen . port timeout Ns }, dnat4, dnatport4, snat4
      // [, snatport4] [; insert rule inet T admit_log ... log prefix "ftp-proxy #sid "]
      echoed = await this.elements.run(openBatch(this.opts, spec), { echo: this.opts.logRules });
    } catch (e) {
      this.dropSnat(key);
      this.o.ports.put(port);
      throw new DataPlaneError('BACKEND_FAILED', `cannot admit data connection: ${(e as Error).message}`, { cause: e });
    }
    const id = `nft-${++this.seq}`;
    const logHandle = this.opts.logRules ? logRuleHandle(echoed) : undefined;
    if (this.opts.logRules && logHandle === undefined) {
      this.o.logger.warn({ sid: req.sid, dataPath: id }, 'nft echoed no handle for the log rule; it stays until exit');
    }
    this.paths.set(id, { spec, snatKey: key, logHandle });
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
    // The executor calls run() at once, so batches keep the order of the calls (open() relies
    // on it), and a runner that throws becomes a rejection.
    const settled = new Promise<unknown>((resolve) => resolve(this.elements.run(batch(...cmds)))).then(
      () => {
        for (const q of group) {
          this.o.ports.put(q.path.spec.port);
          this.o.logger.debug({ sid: q.path.spec.sid, dataPath: q.id, dataPort: q.path.spec.port }, 'data path released');
          q.resolve();
        }
      },
      (e: unknown) => {
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
