// The userspace relay data plane, for hosts without nftables: a single-use listener per
// negotiated data connection that accepts only the expected peer and splices it to the target,
// and the bounds on what it carries (per session, when idle, half-closed, or past its session).

import net from 'node:net';
import type { AppLogger } from '../log.js';
import { DataPlaneError } from '../errors.js';
import { canonical } from '../net/address.js';
import { tcpFlow, type TcpFlow } from '../net/libc.js';
import type { PortAllocator } from '../net/ports.js';
import { connectFrom, listenOn, TransparentSources } from '../net/transparent.js';
import type { DataPath, DataPathRequest, DataPlane } from './types.js';
import { Splicer, type SpliceResult } from './splice.js';
import type { Moved } from '../transfer.js';

/** How often relayed connections are looked at: their kernel byte counters and TCP states. */
const TICK_MS = 1000;
/** A pair moved within this long is still carrying (two looks, so a late tick is no gap). */
const CARRYING_MS = 2 * TICK_MS;
/** A pair finished and delivered one way is ended after the other way carried nothing this long. */
export const HALF_CLOSED_LINGER_MS = 2000;
/** After its session has ended, a pair still flushing what a finished side sent gets this long. */
export const SESSION_END_LINGER_MS = 5000;
/** TLS handshakes one passive PROT P path runs at once: connections beyond are closed. */
const MAX_HANDSHAKES = 4;
/** Pairs one session may hold: a new one beyond this cuts the session's oldest. */
export const MAX_PAIRS_PER_SESSION = 4;

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
   * Outbound mode: the routing table (and rule priority) that lets data paths use the server's
   * address, which this host does not own (passive paths listen on it, active data comes from
   * it); 0: they cannot. Unset in reverse mode, where nothing needs it.
   */
  readonly routeTable?: number;
  /** Paths are named `<idPrefix>-N` (default 'relay'), so a plane beside another can tell its own. */
  readonly idPrefix?: string;
}

/** One relayed connection: the accepted peer and the connection to the target. */
interface Pair {
  readonly sid: string;
  /** The sockets that carry the plaintext (a TLS side's TLS socket, on the same descriptor). */
  readonly peer: net.Socket;
  target: net.Socket;
  /** Ends it now (idempotent); `why` goes to the log. */
  readonly cut: (why: string) => void;
  /** Both sockets' kernel byte counters at the last look, and when they last changed. */
  moved: number;
  movedAt: number;
  /** Set when its session ended while it was flushing: it is cut then, flushed or not. */
  deadline: number | null;
}

interface RelayPath {
  readonly req: DataPathRequest;
  readonly port: number;
  listener: net.Server | null;
  timer: NodeJS.Timeout | null;
  /** The one connection it relays, once accepted. */
  pair: Pair | null;
  /** TLS handshakes under way on this passive PROT P path (each one a candidate). */
  handshakes: number;
  /**
   * Passive PROT P: the connection to the target, made when the first candidate arrived; the
   * first candidate that passes the TLS check takes it, and it is reset if none does (so that
   * the server sees a failed transfer, not an empty file).
   */
  early: net.Socket | null;
  /** Released with abort (or its session ended): a handshake finishing later carries nothing. */
  aborted: boolean;
  /** Settles what transferred() answers: the pair's bytes when it ends, zeros when none came. */
  readonly settle: (m: Moved) => void;
}

/** A socket's flow from TCP_INFO, or, where that cannot be read, what Node itself saw. */
function flowOf(s: net.Socket): TcpFlow {
  return tcpFlow(s) ?? { finReceived: s.readableEnded, finAcked: s.writableFinished, moved: s.bytesRead + s.bytesWritten };
}

export class RelayDataPlane implements DataPlane {
  readonly name = 'relay';
  private readonly paths = new Map<string, RelayPath>();
  /** Every pair being relayed, oldest first. */
  private readonly pairs = new Set<Pair>();
  /** Looks at the pairs while there are any. */
  private ticker: NodeJS.Timeout | null = null;
  private seq = 0;
  /** What each path's connection carried, until its session asks (or ends). */
  private readonly results = new Map<string, { readonly sid: string; readonly moved: Promise<Moved> }>();
  private splicer: Splicer | null = null;
  /** Undefined until start() has looked (outbound mode); null where it cannot be had. */
  private transparent: TransparentSources | null | undefined;
  private readonly idleMs: number;

  constructor(private readonly o: RelayOptions) {
    this.idleMs = (o.dataIdleTimeout ?? 300) * 1000;
  }

  async start(): Promise<void> {
    if (this.o.routeTable !== undefined && this.transparent === undefined) this.transparent = this.openTransparent(this.o.routeTable);
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

  /** The server's address for data paths, or null; the one log line that says which it is. */
  private openTransparent(table: number): TransparentSources | null {
    const opened = table === 0 ? '--route-table 0' : TransparentSources.open({ table, logger: this.o.logger });
    if (typeof opened !== 'string') {
      const families = ([4, 6] as const).filter((f) => opened.serves(f));
      this.o.logger.info({ table, families }, "data paths use the server's address: passive data is caught there for the session's client alone, active data comes from it (policy routing)");
      return opened;
    }
    this.o.logger.warn(
      { table, err: opened },
      "data paths cannot use the server's address (needs CAP_NET_ADMIN and --route-table): IPv4 passive data goes through this host's address (clients must use the 227 address; EPSV gets 502), IPv6 passive data goes straight to the server unchecked, active data comes from this host's address (ncftp refuses it)",
    );
    return null;
  }

  /**
   * Whether a passive path of `family` can listen on the server's own address (outbound mode):
   * a transparent listener whose rule brings only its peer's connections here.
   */
  passiveAtServer(family: 4 | 6): boolean {
    return this.transparent?.serves(family) ?? false;
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
      const ok = await listenOn(l, { address: req.listen, port: p }, req.peer, 4, this.transparent ?? null);
      if (ok) listener = l;
      return ok;
    }).catch((e: unknown) => {
      throw e instanceof DataPlaneError
        ? e
        : new DataPlaneError('BACKEND_FAILED', `relay cannot listen on ${req.listen}: ${(e as Error).message}`, { cause: e });
    });
    const id = `${this.o.idPrefix ?? 'relay'}-${++this.seq}`;
    let settle!: (m: Moved) => void;
    this.results.set(id, { sid: req.sid, moved: new Promise<Moved>((r) => (settle = r)) });
    const path: RelayPath = { req, port, listener, timer: null, pair: null, handshakes: 0, early: null, aborted: false, settle };
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
    const tls = path.req.tls;
    if (tls && path.req.kind === 'passive') {
      // The client proves in its TLS handshake that it is the session's own (tls/context.ts):
      // the port stays open until one does, so that another connection from its address
      // (a host behind the same NAT) cannot take the path by arriving first. The server's
      // side is connected at once: vsftpd sends its 150 only when the data connection is
      // there, and Python's ftplib starts TLS only after that 150.
      if (path.handshakes >= MAX_HANDSHAKES) {
        peer.destroy();
        return;
      }
      path.handshakes++;
      path.early ??= this.connectTarget(path, log);
      tls.secure(peer).then(
        (secured) => {
          path.handshakes--;
          // Taken by an earlier candidate, or the path was aborted: nothing left to carry.
          const target = path.early;
          if (target === null) {
            secured.destroy();
            return this.forget(id, path);
          }
          path.early = null;
          this.stopListening(path);
          this.carry(id, path, peer, secured, log, target);
        },
        (err: unknown) => {
          path.handshakes--;
          log.notice({ from, code: (err as DataPlaneError).code, err: (err as Error).message }, 'protected data connection refused');
          this.forget(id, path);
        },
      );
      return;
    }
    this.stopListening(path);
    const serverTls = path.req.serverTls;
    if (serverTls && path.req.kind === 'active') {
      // The server connected; it is the TLS server all the same (RFC 4217).
      path.handshakes++;
      serverTls.secure(peer).then(
        (secured) => {
          path.handshakes--;
          if (path.aborted) {
            secured.destroy();
            return this.forget(id, path);
          }
          this.carry(id, path, peer, secured, log);
        },
        (err: unknown) => {
          path.handshakes--;
          log.warn({ code: (err as DataPlaneError).code, err: (err as Error).message }, "TLS with the server's data connection failed");
          this.forget(id, path);
        },
      );
      return;
    }
    this.carry(id, path, peer, peer, log);
  }

  /**
   * Connects `path`'s target and relays between it and the accepted `peer`. `peerIo` carries the
   * peer's plaintext: `peer` itself, or its TLS socket. A target that must speak TLS (active
   * PROT P: the client) is secured once connected. TLS pairs go through streams: splice cannot
   * see into TLS records.
   */
  private carry(id: string, path: RelayPath, peer: net.Socket, peerIo: net.Socket, log: AppLogger, target = this.connectTarget(path, log)): void {
    let targetIo = target;
    peer.setNoDelay(true);
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
      this.pairs.delete(pair);
      path.pair = null;
      if (this.pairs.size === 0 && this.ticker) {
        clearInterval(this.ticker);
        this.ticker = null;
      }
      for (const s of [peerIo, targetIo, peer, target]) s.destroy();
      // Bytes counted by the sockets (or the worker), as plaintext on a TLS side: no per-chunk
      // listener on the hot path.
      const bytes = result
        ? { toTarget: result.aToB, toPeer: result.bToA, copy: 'splice' }
        : { toTarget: targetIo.bytesWritten, toPeer: peerIo.bytesWritten };
      log[err ? 'warn' : 'debug']({ ...bytes, ...(err ? { err: err.message } : {}) }, `data relay ended: ${why}`);
      path.settle({ fromPeer: bytes.toTarget, toPeer: bytes.toPeer });
      this.forget(id, path);
    };
    const pair: Pair = { sid: path.req.sid, peer: peerIo, target, cut: (why) => done(why), moved: 0, movedAt: Date.now(), deadline: null };
    path.pair = pair;
    this.admit(pair, log);
    peer.on('error', (err) => done('peer error', err));
    target.on('error', (err) => done('target error', err));
    if (peerIo !== peer) peerIo.on('error', (err) => done('peer error', err));
    // Streams: pipe() gives backpressure both ways and passes each side's FIN on to the
    // other once its data is written; a side is only gone when it has closed both ways.
    const closedOne = (): void => {
      if (++closed === 2) done('both sides closed');
    };
    peerIo.on('close', closedOne);
    target.on('close', closedOne);
    const stream = (): void => {
      peerIo.pipe(targetIo);
      targetIo.pipe(peerIo);
      peerIo.resume();
      targetIo.resume();
    };
    const connected = (): void => {
      if (over) return;
      // The target's side of TLS: the server's in passive mode, the client's in active mode.
      const tls = path.req.kind === 'passive' ? path.req.serverTls : path.req.tls;
      if (tls) {
        tls.secure(target).then(
          (secured) => {
            if (over) return void secured.destroy();
            targetIo = pair.target = secured;
            secured.on('error', (err) => done('target error', err));
            stream();
          },
          (err: Error) => done('protected data connection refused', err),
        );
        return;
      }
      const splicer = this.splicer?.usable && peerIo === peer ? this.splicer : null;
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
    };
    // A target connected early (passive PROT P) may be connected, or have failed, already.
    if (target.destroyed) done('target error', new Error('the connection to the target failed'));
    else if (target.connecting) target.once('connect', connected);
    else connected();
  }

  /**
   * The connection to `path`'s target. Nothing is read from it before the pair is complete: the
   * first bytes go to whichever carrier (splice or streams) takes the pair.
   */
  private connectTarget(path: RelayPath, log: AppLogger): net.Socket {
    const target = connectFrom(path.req.target, path.req.source, path.req.sourcePort, this.transparent ?? null, log);
    target.pause();
    target.setNoDelay(true);
    // Errors before the pair owns it (an early target) show as a destroyed socket there.
    target.on('error', () => undefined);
    return target;
  }

  /** Count `pair` in; beyond its session's bound, the session's oldest pairs go. */
  private admit(pair: Pair, log: AppLogger): void {
    const mine = [...this.pairs].filter((p) => p.sid === pair.sid);
    this.pairs.add(pair);
    for (const old of mine.slice(0, Math.max(0, mine.length + 1 - MAX_PAIRS_PER_SESSION))) {
      log.notice({ max: MAX_PAIRS_PER_SESSION }, 'too many data connections in this session: cutting its oldest');
      old.cut('too many data connections in this session');
    }
    this.ticker ??= setInterval(() => this.tick(), TICK_MS).unref();
  }

  /**
   * Reads both sockets' TCP state and byte counters (two system calls, whoever carries the
   * bytes) and notes when anything moved. 'flushing': a side has finished and what it sent is
   * not all acknowledged yet; 'half-closed': one way is finished and delivered, nothing to
   * flush; 'open': neither side has finished.
   */
  private look(pair: Pair, now: number): 'open' | 'flushing' | 'half-closed' {
    const p = flowOf(pair.peer);
    const t = flowOf(pair.target);
    if (p.moved + t.moved !== pair.moved) {
      pair.moved = p.moved + t.moved;
      pair.movedAt = now;
    }
    if ((p.finReceived && !t.finAcked) || (t.finReceived && !p.finAcked)) return 'flushing';
    return p.finAcked || t.finAcked ? 'half-closed' : 'open';
  }

  /** The coarse timer: no per-chunk work anywhere, one look per pair per tick. */
  private tick(): void {
    const now = Date.now();
    for (const pair of [...this.pairs]) {
      const state = this.look(pair, now);
      const quiet = now - pair.movedAt;
      if (pair.deadline !== null) {
        if (state !== 'flushing' || now >= pair.deadline) pair.cut('session ended');
      } else if (state === 'half-closed' && quiet >= HALF_CLOSED_LINGER_MS) {
        pair.cut('half-closed');
      } else if (quiet >= this.idleMs) {
        pair.cut('idle');
      }
    }
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
    // A candidate still in its handshake may yet take the path: the server may have sent a
    // whole listing, and its 226 released the path, before the client's TLS was up.
    if (path.listener !== null || path.pair !== null || path.handshakes > 0) return;
    this.dropEarly(path);
    this.paths.delete(id);
    // No-op when the pair has settled it with its bytes.
    path.settle({ fromPeer: 0, toPeer: 0 });
  }

  /** Reset the early target no candidate took (the server then sees a failed transfer). */
  private dropEarly(path: RelayPath): void {
    path.early?.resetAndDestroy();
    path.early = null;
  }

  /**
   * Counted by the sockets (or the splice worker) when the pair ends, which may be after the
   * server's final reply (a slow reader still takes the end of a file).
   */
  transferred(id: string): Promise<Moved | null> {
    const r = this.results.get(id);
    if (!r) return Promise.resolve(null);
    this.results.delete(id);
    return r.moved;
  }

  async release(id: string, abort: boolean): Promise<void> {
    const path = this.paths.get(id);
    if (!path) return;
    this.stopListening(path);
    if (abort) {
      path.aborted = true;
      path.pair?.cut('aborted');
      this.dropEarly(path);
    }
    this.forget(id, path);
  }

  /**
   * Called after the session's last reply is written. A pair carrying both ways is cut now,
   * and so is one finished and delivered one way; one flushing what a finished side sent
   * (the end of a file on its way to a slow reader) gets SESSION_END_LINGER_MS.
   */
  async endSession(sid: string): Promise<void> {
    const now = Date.now();
    for (const [id, path] of [...this.paths]) {
      if (path.req.sid !== sid) continue;
      this.stopListening(path);
      const pair = path.pair;
      if (pair && this.look(pair, now) === 'flushing') pair.deadline ??= now + SESSION_END_LINGER_MS;
      else pair?.cut('session ended');
      path.aborted = true;
      this.dropEarly(path);
      this.forget(id, path);
    }
    for (const [id, r] of this.results) if (r.sid === sid) this.results.delete(id);
  }

  /** A pair of `sid` moved bytes (or had them acknowledged) within the last two looks. */
  carrying(sid: string): boolean {
    const now = Date.now();
    for (const pair of this.pairs) if (pair.sid === sid && pair.deadline === null && now - pair.movedAt < CARRYING_MS) return true;
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
