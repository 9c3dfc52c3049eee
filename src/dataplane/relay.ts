// The userspace relay data plane, for hosts without nftables and beside them for what the kernel
// cannot carry: a single-use listener per negotiated data connection that accepts only the
// expected peer and splices it to the target, the joined and met paths of mode translation, and
// the bounds on what it carries (per session, when idle, half-closed, or past its session).

import net from 'node:net';
import type { AppLogger } from '../log.js';
import { DataPlaneError } from '../errors.js';
import { canonical } from '../net/address.js';
import { tcpFlow, type TcpFlow } from '../net/libc.js';
import type { PortAllocator } from '../net/ports.js';
import { connectFrom, listenOn, TransparentSources } from '../net/transparent.js';
import type { DataPath, DataPathRequest, DataPlane, DataTls, JoinRequest, MeetRequest } from './types.js';
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
/** Pairs one session may hold: a new one beyond this cuts the session's oldest. */
export const MAX_PAIRS_PER_SESSION = 4;
/** TLS handshakes one passive PROT P path runs at once: connections beyond are closed. */
const MAX_HANDSHAKES = 4;

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
  readonly sid: string;
  readonly port: number;
  listener: net.Server | null;
  /** A met path's listener for the server (its port is what PORT/EPRT carry). */
  second: { readonly listener: net.Server; readonly port: number } | null;
  /**
   * A connection that waits for its other side: a joined path's to the server (until proceed()
   * connects to `joinTo`'s client), or the first of a met path's two to arrive.
   */
  held: net.Socket | null;
  readonly joinTo: JoinRequest | null;
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

/** The prefix of every path id this plane hands out (RelayDataPlane.owns). */
const ID_PREFIX = 'relay-';

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

  /** A single-use listener on `listen` for `peer`, on a port of the range. */
  private async listener(listen: string, peer: string): Promise<{ listener: net.Server; port: number }> {
    let listener: net.Server | null = null;
    const port = await this.o.ports.take(async (p) => {
      const l = net.createServer({ allowHalfOpen: true, pauseOnConnect: true });
      const ok = await listenOn(l, { address: listen, port: p }, peer, 4, this.transparent ?? null);
      if (ok) listener = l;
      return ok;
    }).catch((e: unknown) => {
      throw e instanceof DataPlaneError
        ? e
        : new DataPlaneError('BACKEND_FAILED', `relay cannot listen on ${listen}: ${(e as Error).message}`, { cause: e });
    });
    return { listener: listener!, port };
  }

  /** The path stops waiting after the data timeout. */
  private arm(id: string, path: RelayPath, log: AppLogger): void {
    path.timer = setTimeout(() => {
      log.info({ timeout: this.o.dataTimeout }, 'data connection did not arrive in time');
      this.stopListening(path);
      this.forget(id, path);
    }, this.o.dataTimeout * 1000);
    path.timer.unref();
  }

  async open(req: DataPathRequest): Promise<DataPath> {
    const { listener, port } = await this.listener(req.listen, req.peer);
    const { id, path, log } = this.register(req.sid, port, listener);
    this.arm(id, path, log);
    listener.on('connection', (sock) => this.accept(id, path, req, sock, log));
    listener.on('error', (err) => log.warn({ err: err.message }, 'data listener error'));
    return { id, port, via: this.name };
  }

  /** A new path of session `sid`: its id, its result to settle, its log. */
  private register(sid: string, port: number, listener: net.Server | null, joinTo: JoinRequest | null = null, held: net.Socket | null = null) {
    const id = `${ID_PREFIX}${++this.seq}`;
    let settle!: (m: Moved) => void;
    this.results.set(id, { sid, moved: new Promise<Moved>((r) => (settle = r)) });
    const path: RelayPath = { sid, port, listener, second: null, held, joinTo, timer: null, pair: null, handshakes: 0, early: null, aborted: false, settle };
    this.paths.set(id, path);
    const log = this.o.logger.child({ sid, dataPath: id, dataPort: port });
    return { id, path, log };
  }

  /**
   * --server-mode active: one listener for the client (its port goes into the 227/229) and one
   * for the server (into PORT/EPRT); whichever connection comes first waits, unread, for the
   * other. Counted with the client as the peer, as a passive path is.
   */
  async meet(req: MeetRequest): Promise<DataPath> {
    const client = await this.listener(req.client.listen, req.client.peer);
    const server = await this.listener(req.server.listen, req.server.peer).catch((e: unknown) => {
      client.listener.close();
      this.o.ports.put(client.port);
      throw e;
    });
    const { id, path, log } = this.register(req.sid, client.port, client.listener);
    path.second = server;
    this.arm(id, path, log);
    const came: { client?: net.Socket; server?: net.Socket } = {};
    const on = (side: 'client' | 'server', l: net.Server, peer: string): void => {
      l.on('error', (err) => log.warn({ err: err.message, side }, 'data listener error'));
      l.on('connection', (sock: net.Socket) => {
        const from = canonical(sock.remoteAddress ?? '');
        if (from !== peer || came[side] || !this.paths.has(id)) {
          log.notice({ from, expected: peer, side }, 'data connection from unexpected source refused');
          sock.destroy();
          return;
        }
        came[side] = sock;
        if (!came.client || !came.server) {
          // Unread while it waits, it can still fail (a reset): that must not go unheard.
          sock.on('error', (err) => log.debug({ err: err.message, side }, 'waiting data connection failed'));
          path.held = sock;
          return;
        }
        path.held = null;
        this.stopListening(path);
        this.carry(id, path, came.client, came.server, log);
      });
    };
    on('client', client.listener, req.client.peer);
    on('server', server.listener, req.server.peer);
    return { id, port: client.port, serverPort: server.port, via: this.name };
  }

  /** Whether `id` is one of this plane's path ids (a composite plane routes by it). */
  owns(id: string): boolean {
    return id.startsWith(ID_PREFIX);
  }

  /**
   * Mode translation: connect to the server's passive data port now (RFC 959: the passive side
   * waits for its peer before or after the transfer command, so the server never waits for the
   * proxy), and hold it unread until proceed().
   */
  async join(req: JoinRequest): Promise<DataPath> {
    const server = connectFrom(req.server, req.serverSource, undefined, this.transparent ?? null, this.o.logger);
    server.pause();
    server.setNoDelay(true);
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => fail(new Error('timed out')), this.o.dataTimeout * 1000);
      const fail = (err: Error): void => {
        clearTimeout(timer);
        server.destroy();
        reject(new DataPlaneError('BACKEND_FAILED', `cannot reach the server's data port ${req.server.address} port ${req.server.port}: ${err.message}`, { cause: err }));
      };
      server.once('error', fail);
      server.once('connect', () => {
        clearTimeout(timer);
        server.removeListener('error', fail);
        resolve();
      });
    });
    const { id, path, log } = this.register(req.sid, server.localPort ?? 0, null, req, server);
    // Unread until paired, the held leg notices little (a server's FIN waits in the kernel and
    // reaches the client as an empty transfer); it ends with release() or the session. An error
    // it does see ends it alone.
    server.on('error', (err) => {
      if (path.held !== server) return;
      log.info({ err: err.message }, "the server's data connection failed before the transfer started");
      this.stopListening(path);
      this.forget(id, path);
    });
    return { id, port: path.port, via: this.name };
  }

  proceed(id: string): void {
    const path = this.paths.get(id);
    const server = path?.held;
    const r = path?.joinTo;
    if (!path || !server || !r) return;
    path.held = null;
    server.removeAllListeners('error');
    const log = this.o.logger.child({ sid: path.sid, dataPath: id, dataPort: path.port });
    this.carry(id, path, server, connectFrom(r.client, r.clientSource, r.clientSourcePort, this.transparent ?? null, log), log);
  }

  private accept(id: string, path: RelayPath, req: DataPathRequest, peer: net.Socket, log: AppLogger): void {
    const from = canonical(peer.remoteAddress ?? '');
    if (from !== req.peer || path.listener === null) {
      // Only the negotiated peer, and only once.
      log.notice({ from, expected: req.peer }, 'data connection from unexpected source refused');
      peer.destroy();
      return;
    }
    // The target's side of TLS: the server's in passive mode, the client's in active mode.
    const secureTarget = req.kind === 'passive' ? req.serverTls : req.tls;
    if (req.tls && req.kind === 'passive') return this.candidate(id, path, req, req.tls, peer, from, log);
    this.stopListening(path);
    const serverTls = req.serverTls;
    if (serverTls && req.kind === 'active') {
      // The server connected; it is the TLS server all the same (RFC 4217).
      path.handshakes++;
      serverTls.secure(peer).then(
        (secured) => {
          path.handshakes--;
          if (path.aborted) {
            secured.destroy();
            return this.forget(id, path);
          }
          this.carry(id, path, peer, this.connectTarget(req, log), log, secured, secureTarget);
        },
        (err: unknown) => {
          path.handshakes--;
          log.warn({ code: (err as DataPlaneError).code, err: (err as Error).message }, "TLS with the server's data connection failed");
          this.forget(id, path);
        },
      );
      return;
    }
    this.carry(id, path, peer, this.connectTarget(req, log), log, peer, secureTarget);
  }

  /**
   * Passive PROT P: the client proves in its TLS handshake that it is the session's own
   * (tls/context.ts): the port stays open until one does, so that another connection from its
   * address (a host behind the same NAT) cannot take the path by arriving first. The server's
   * side is connected at once: vsftpd sends its 150 only when the data connection is there, and
   * Python's ftplib starts TLS only after that 150.
   */
  private candidate(id: string, path: RelayPath, req: DataPathRequest, tls: DataTls, peer: net.Socket, from: string, log: AppLogger): void {
    if (path.handshakes >= MAX_HANDSHAKES) {
      peer.destroy();
      return;
    }
    path.handshakes++;
    path.early ??= this.connectTarget(req, log);
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
        this.carry(id, path, peer, target, log, secured, req.serverTls);
      },
      (err: unknown) => {
        path.handshakes--;
        log.notice({ from, code: (err as DataPlaneError).code, err: (err as Error).message }, 'protected data connection refused');
        this.forget(id, path);
      },
    );
  }

  /** The connection to a path's target; errors before a pair owns it show as a destroyed socket there. */
  private connectTarget(req: DataPathRequest, log: AppLogger): net.Socket {
    const target = connectFrom(req.target, req.source, req.sourcePort, this.transparent ?? null, log);
    target.on('error', () => undefined);
    return target;
  }

  /**
   * Carry one connection between `peer` (connected) and `target` (connecting, or connected).
   * `peerIo` carries the peer's plaintext: `peer` itself, or its TLS socket; a target that must
   * speak TLS (`secureTarget`) is secured once connected. TLS pairs go through streams: splice
   * cannot see into TLS records.
   */
  private carry(id: string, path: RelayPath, peer: net.Socket, target: net.Socket, log: AppLogger, peerIo = peer, secureTarget?: DataTls): void {
    // Nothing is read from either side before both are connected: the first bytes go to
    // whichever carrier (splice or streams) takes the pair.
    target.pause();
    peer.setNoDelay(true);
    target.setNoDelay(true);
    let targetIo = target;
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
    const pair: Pair = { sid: path.sid, peer: peerIo, target, cut: (why) => done(why), moved: 0, movedAt: Date.now(), deadline: null };
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
    const start = (): void => {
      if (over) return;
      if (secureTarget) {
        secureTarget.secure(target).then(
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
    else if (target.connecting) target.once('connect', start);
    else start();
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

  /**
   * Close the listeners, and a connection still waiting for its other side (the one connection
   * has come, or it never will).
   */
  private stopListening(path: RelayPath): void {
    if (path.timer) clearTimeout(path.timer);
    path.timer = null;
    if (path.listener) {
      path.listener.close();
      path.listener = null;
      this.o.ports.put(path.port);
    }
    if (path.second) {
      path.second.listener.close();
      this.o.ports.put(path.second.port);
      path.second = null;
    }
    if (path.held) {
      path.held.destroy();
      path.held = null;
    }
  }

  /** Drop the path once it neither listens, holds, nor relays. */
  private forget(id: string, path: RelayPath): void {
    // A candidate still in its handshake may yet take the path: the server may have sent a
    // whole listing, and its 226 released the path, before the client's TLS was up.
    if (path.listener !== null || path.second !== null || path.held !== null || path.pair !== null || path.handshakes > 0) return;
    this.dropEarly(path);
    this.paths.delete(id);
    // No-op when the pair has settled it with its bytes.
    path.settle({ fromPeer: 0, toPeer: 0 });
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

  /** Reset the early target no candidate took (the server then sees a failed transfer). */
  private dropEarly(path: RelayPath): void {
    path.early?.resetAndDestroy();
    path.early = null;
  }

  /**
   * Called after the session's last reply is written. A pair carrying both ways is cut now,
   * and so is one finished and delivered one way; one flushing what a finished side sent
   * (the end of a file on its way to a slow reader) gets SESSION_END_LINGER_MS.
   */
  async endSession(sid: string): Promise<void> {
    const now = Date.now();
    for (const [id, path] of [...this.paths]) {
      if (path.sid !== sid) continue;
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
