// The userspace relay data plane, for hosts without nftables: a single-use listener per
// negotiated data connection that accepts only the expected peer and splices it to the target.

import net from 'node:net';
import type { AppLogger } from '../log.js';
import { DataPlaneError } from '../errors.js';
import { canonical } from '../net/address.js';
import type { PortAllocator } from '../net/ports.js';
import { connectFrom, TransparentSources } from '../net/transparent.js';
import type { DataPath, DataPathRequest, DataPlane } from './types.js';
import { Splicer, type SpliceResult } from './splice.js';

export interface RelayOptions {
  readonly ports: PortAllocator;
  /** Seconds a listener waits for its one connection. */
  readonly dataTimeout: number;
  /** Seconds a relayed connection may carry nothing before it is cut (default 300). */
  readonly dataIdleTimeout?: number;
  readonly logger: AppLogger;
  /**
   * Carry bytes with splice(2) in a worker thread (default), or through Node streams. Streams
   * are also the fallback where the worker cannot start or has died.
   */
  readonly splice?: boolean;
  /**
   * Routing table (and rule priority) for connections whose source is not this host's (the
   * server's address, for active data in outbound mode); unset: such connections come from
   * this host's own address.
   */
  readonly routeTable?: number;
}

interface RelayPath {
  readonly req: DataPathRequest;
  readonly port: number;
  listener: net.Server | null;
  timer: NodeJS.Timeout | null;
  /** One entry per connection being relayed: what cuts it. */
  readonly cutters: Set<() => void>;
}

export class RelayDataPlane implements DataPlane {
  readonly name = 'relay';
  private readonly paths = new Map<string, RelayPath>();
  private seq = 0;
  private splicer: Splicer | null = null;
  private transparent: TransparentSources | null = null;

  constructor(private readonly o: RelayOptions) {}

  async start(): Promise<void> {
    if (this.o.routeTable && !this.transparent) {
      this.transparent = TransparentSources.open({ table: this.o.routeTable, logger: this.o.logger });
    }
    if (this.o.splice === false || this.splicer) return;
    const splicer = Splicer.start({
      onFailure: (err) => this.o.logger.error({ err: err.message }, 'splice worker failed; relaying through streams from now on'),
    });
    // Wait for the worker's loop: the log line below then says how bytes will really go.
    const ok = splicer !== null && (await splicer.ready);
    if (splicer && !ok) await splicer.close();
    this.splicer = ok ? splicer : null;
    this.o.logger.info({ copy: this.copyMode }, 'relay data plane ready');
  }

  /** How bytes are carried now: 'splice' (kernel pipes, worker thread) or 'streams'. */
  get copyMode(): 'splice' | 'streams' {
    return this.splicer?.usable ? 'splice' : 'streams';
  }

  /** Live paths (listening or relaying), for tests and stats. */
  get size(): number {
    return this.paths.size;
  }

  async open(req: DataPathRequest): Promise<DataPath> {
    let listener: net.Server | null = null;
    const port = await this.o.ports.take(async (p) => {
      const l = net.createServer({ allowHalfOpen: true, pauseOnConnect: true });
      const ok = await new Promise<boolean>((resolve, reject) => {
        // A port in use (or reserved) means: try the next one. Anything else, such as a listen
        // address that is not ours, fails the same for every port: say so at once.
        l.once('error', (err: NodeJS.ErrnoException) =>
          err.code === 'EADDRINUSE' || err.code === 'EACCES' ? resolve(false) : reject(err),
        );
        l.listen({ host: req.listen, port: p, exclusive: true, backlog: 4 }, () => resolve(true));
      });
      if (ok) listener = l;
      return ok;
    }).catch((e: unknown) => {
      throw e instanceof DataPlaneError
        ? e
        : new DataPlaneError('BACKEND_FAILED', `relay cannot listen on ${req.listen}: ${(e as Error).message}`, { cause: e });
    });
    const id = `relay-${++this.seq}`;
    const path: RelayPath = { req, port, listener, timer: null, cutters: new Set() };
    this.paths.set(id, path);
    const log = this.o.logger.child({ sid: req.sid, dataPath: id, dataPort: port });
    path.timer = setTimeout(() => {
      log.info({ timeout: this.o.dataTimeout }, 'data connection did not arrive in time');
      this.stopListening(path);
      this.forget(id, path);
    }, this.o.dataTimeout * 1000);
    path.timer.unref();
    listener!.on('connection', (sock) => this.accept(id, path, sock, log));
    listener!.on('error', (err) => log.warn({ err: err.message }, 'data listener error'));
    return { id, port };
  }

  private accept(id: string, path: RelayPath, peer: net.Socket, log: AppLogger): void {
    const from = canonical(peer.remoteAddress ?? '');
    if (from !== path.req.peer || path.listener === null) {
      // Only the negotiated peer, and only once.
      log.notice({ from, expected: path.req.peer }, 'data connection from unexpected source refused');
      peer.destroy();
      return;
    }
    this.stopListening(path);
    const target = connectFrom(path.req.target, path.req.source, path.req.sourcePort, this.transparent, log);
    // Nothing is read from either side before both are connected: the first bytes go to
    // whichever carrier (splice or streams) takes the pair.
    target.pause();
    peer.setNoDelay(true);
    target.setNoDelay(true);
    let closed = 0;
    let over = false;
    /** While the splice worker holds the pair, its descriptors must stay open. */
    let spliced: number | null = null;
    /** Why the pair was cut while the worker held it. */
    let cutWhile: { why: string; err: Error | undefined } | null = null;
    const done = (why: string, err?: Error, result?: SpliceResult): void => {
      if (over) return;
      if (spliced !== null) {
        // Ask the worker to let go; its answer comes back here with spliced = null.
        cutWhile ??= { why, err };
        this.splicer?.abort(spliced);
        return;
      }
      over = true;
      path.cutters.delete(cut);
      peer.destroy();
      target.destroy();
      // Bytes counted by the sockets (or the worker): no per-chunk listener on the hot path.
      const bytes = result
        ? { toTarget: result.aToB, toPeer: result.bToA, copy: 'splice' }
        : { toTarget: target.bytesWritten, toPeer: peer.bytesWritten };
      log[err ? 'warn' : 'debug']({ ...bytes, ...(err ? { err: err.message } : {}) }, `data relay ended: ${why}`);
      this.forget(id, path);
    };
    const cut = (): void => done('aborted');
    path.cutters.add(cut);
    peer.on('error', (err) => done('peer error', err));
    target.on('error', (err) => done('target error', err));
    // Streams: pipe() gives backpressure both ways and passes each side's FIN on to the
    // other once its data is written; a side is only gone when it has closed both ways.
    const closedOne = (): void => {
      if (++closed === 2) done('both sides closed');
    };
    peer.on('close', closedOne);
    target.on('close', closedOne);
    const stream = (): void => {
      peer.pipe(target);
      target.pipe(peer);
      peer.resume();
      target.resume();
    };
    target.once('connect', () => {
      if (over) return;
      const splicer = this.splicer?.usable ? this.splicer : null;
      if (!splicer) return stream();
      const handle = splicer.relay(peer, target);
      spliced = handle.id;
      void handle.done.then((r) => {
        spliced = null;
        if (r.untouched && !cutWhile) {
          // The worker never took the pair (e.g. no file descriptor left for its pipes).
          log.info({ err: r.error }, 'splice unavailable for this connection; relaying through streams');
          return stream();
        }
        // A cut asked for while the worker held the pair is what ended it; else the worker's word.
        const failed = r.error !== undefined && r.error !== 'aborted';
        if (cutWhile) done(cutWhile.why, cutWhile.err, r);
        else done(r.error ?? 'both sides closed', failed ? new Error(r.error) : undefined, r);
      });
    });
  }

  /** Close the listener (the one connection has come, or it never will). */
  private stopListening(path: RelayPath): void {
    if (path.timer) clearTimeout(path.timer);
    path.timer = null;
    if (path.listener) {
      path.listener.close();
      path.listener = null;
      this.o.ports.put(path.port);
    }
  }

  /** Drop the path once it neither listens nor relays. */
  private forget(id: string, path: RelayPath): void {
    if (path.listener === null && path.cutters.size === 0) this.paths.delete(id);
  }

  async release(id: string, abort: boolean): Promise<void> {
    const path = this.paths.get(id);
    if (!path) return;
    this.stopListening(path);
    if (abort) for (const cut of [...path.cutters]) cut();
    this.forget(id, path);
  }

  async endSession(sid: string): Promise<void> {
    for (const [id, path] of [...this.paths]) if (path.req.sid === sid) await this.release(id, true);
  }

  carrying(sid: string): boolean {
    for (const path of this.paths.values()) if (path.req.sid === sid && path.cutters.size > 0) return true;
    return false;
  }

  async close(): Promise<void> {
    for (const id of [...this.paths.keys()]) await this.release(id, true);
    await this.splicer?.close();
    this.splicer = null;
    this.transparent?.close();
    this.transparent = null;
  }
}
