// The nftables data plane: one table of ours on the gateway, and per data connection a few
// timed set/map elements that let the kernel admit, DNAT and SNAT exactly one connection.

import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import type { Logger } from 'pino';
import { DataPlaneError } from '../../errors.js';
import type { PortAllocator } from '../../net/ports.js';
import type { DataPath, DataPathRequest, DataPlane } from '../types.js';
import { LibnftablesRunner } from './libnftables.js';
import { NetlinkRunner } from './netlink.js';
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
  private seq = 0;

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
    this.o.logger.debug(
      { sid: req.sid, dataPath: id, kind: req.kind, peer: req.peer, dataPort: port, target: `${req.target.address}:${req.target.port}` },
      'data path admitted',
    );
    return { id, port };
  }

  async release(id: string, _abort: boolean): Promise<void> {
    // abort changes nothing here: the kernel carries an established connection, and removing
    // the entries does not touch its conntrack binding.
    const path = this.paths.get(id);
    if (!path) return;
    this.paths.delete(id);
    const lastSnatUser = this.dropSnat(path.snatKey);
    try {
      // add element inet T admit4 { peer . listen . port }; delete element inet T admit4 { ... }
      // (over netlink on Linux 6.3+: destroy element inet T admit4 { peer . listen . port })
      // and the same for dnat4, dnatport4, [snat4, snatport4 if no other path uses them]
      // [; delete rule inet T admit_log handle H]
      await this.elements.run(
        releaseBatch(this.opts, path.spec, {
          snat: lastSnatUser,
          destroy: this.destroy && this.elements === this.netlink,
          ...(path.logHandle !== undefined ? { logHandle: path.logHandle } : {}),
        }),
      );
    } catch (e) {
      // What is left times out in the kernel; the port stays out of use until then.
      this.quarantinePort(path.spec.port);
      throw new DataPlaneError('BACKEND_FAILED', `cannot remove data path ${id}: ${(e as Error).message}`, { cause: e });
    }
    this.o.ports.put(path.spec.port);
    this.o.logger.debug({ sid: path.spec.sid, dataPath: id, dataPort: path.spec.port }, 'data path released');
  }

  async close(): Promise<void> {
    for (const t of this.quarantine) clearTimeout(t);
    this.quarantine.clear();
    for (const p of this.paths.values()) this.o.ports.put(p.spec.port);
    this.paths.clear();
    this.snatUses.clear();
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
