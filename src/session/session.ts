// The I/O shell of one FTP session: the client and server sockets, line framing, named
// timers, backpressure, and the one idempotent teardown that releases what the session holds.

import net from 'node:net';
import { LineFramer } from '../protocol/lines.js';
import { ReplyAssembler } from '../protocol/replies.js';
import { DataPlaneError, FtpProxyError, ProtocolError } from '../errors.js';
import { canonical, familyOf } from '../net/address.js';
import { KEEPALIVE, sendUrgent, setOobInline } from '../net/libc.js';
import type { DataPlane, Endpoint } from '../dataplane/types.js';
import type { AppLogger } from '../log.js';
import type { AddressList } from '../net/policy.js';
import { SessionMachine, type Action, type Addressing } from './machine.js';

export interface SessionOptions {
  readonly sid: string;
  readonly mode: 'reverse' | 'outbound';
  /** Finds the server this client meant to reach (reverse: fixed; outbound: original destination). */
  readonly resolveServer: (client: net.Socket) => Promise<Endpoint>;
  readonly dataPlane: DataPlane;
  readonly logger: AppLogger;
  readonly proxyAddress?: string;
  readonly masqueradeAddress?: string;
  readonly anonymousOnly: boolean;
  readonly rewriteSourcePort: boolean;
  readonly tls: 'refuse' | 'pass';
  /** Servers this proxy may connect to. */
  readonly servers: AddressList;
  /** Seconds. */
  readonly connectTimeout: number;
  /** Seconds from accept to a successful login (also catches a server that never greets). */
  readonly loginTimeout: number;
  /** Seconds; 0 = none. */
  readonly idleTimeout: number;
  readonly maxLineLength: number;
  /**
   * The client socket came from a listener tuned with tuneListener(): it already has
   * TCP_NODELAY, keepalive and SO_OOBINLINE.
   */
  readonly clientTuned?: boolean;
  /** Called once, after teardown has released everything. */
  readonly onClose: (s: Session) => void;
}

/** A control line fit for a log: no passwords. */
function maskPass(line: string): string {
  return /^\s*PASS\b/i.test(line) ? 'PASS ****' : line;
}

/** End a socket after what was written is flushed; a peer that never reads is cut after a while. */
function finish(s: net.Socket): void {
  if (s.destroyed) return;
  if (s.writable) {
    s.end();
    setTimeout(() => s.destroy(), 2000).unref();
  } else {
    s.destroy();
  }
}

/** Commands in flight past which the client socket is paused until replies catch up. */
const PAUSE_OUTSTANDING = 64;
const RESUME_OUTSTANDING = 16;
const MAX_REPLY_LINES = 20000;

export class Session {
  readonly sid: string;
  readonly client: Endpoint;
  private server: net.Socket | null = null;
  private machine: SessionMachine | null = null;
  private readonly log: AppLogger;
  private connectTimer: NodeJS.Timeout | null = null;
  private loginTimer: NodeJS.Timeout | null = null;
  private opaque = false;
  private idleTimer: NodeJS.Timeout | null = null;
  private lastActivity = 0;
  private closing: string | null = null;
  private clientPausedForReplies = false;
  private readonly startedAt = Date.now();
  private readonly debug: boolean;
  /** Resolves when teardown has finished releasing. */
  readonly closed: Promise<void>;
  private resolveClosed!: () => void;

  constructor(
    private readonly sock: net.Socket,
    private readonly o: SessionOptions,
  ) {
    this.sid = o.sid;
    this.client = { address: canonical(sock.remoteAddress ?? '0.0.0.0'), port: sock.remotePort ?? 0 };
    this.log = o.logger.child({ sid: o.sid, client: `${this.client.address}:${this.client.port}` });
    this.closed = new Promise((r) => (this.resolveClosed = r));
    this.debug = this.log.isLevelEnabled('debug');
  }

  start(): void {
    const c = this.sock;
    if (!this.o.clientTuned) {
      c.setNoDelay(true);
      c.setKeepAlive(true, KEEPALIVE.idle * 1000);
      if (!setOobInline(c)) this.log.debug({}, 'SO_OOBINLINE not set: urgent ABOR bytes may be lost');
    }
    // Nothing is read from the client until its server is connected.
    c.pause();
    c.on('error', (err) => this.teardown(`client error: ${err.message}`));
    c.on('close', () => this.teardown('client closed'));
    c.on('end', () => this.teardown('client closed'));
    this.connectTimer = setTimeout(
      () => this.teardown('server connect timeout', '421 Service not available: the server did not answer in time'),
      this.o.connectTimeout * 1000,
    );
    this.loginTimer = setTimeout(
      () => this.teardown('login timeout', '421 Login timeout: closing control connection'),
      this.o.loginTimeout * 1000,
    );
    this.o
      .resolveServer(c)
      .then((server) => this.connect(server))
      .catch((err: unknown) => {
        const e = err instanceof FtpProxyError ? err : null;
        this.log.warn({ code: e?.code, err: err instanceof Error ? err.message : String(err) }, 'cannot find the server for this session');
        this.teardown('no server', `421 Service not available: ${err instanceof Error ? err.message : 'no server'}`);
      });
  }

  private connect(server: Endpoint): void {
    if (this.closing) return;
    const refusal = this.o.servers.refusal(server.address);
    if (refusal) {
      this.log.notice({ server: `${server.address}:${server.port}`, policy: refusal }, 'server refused by policy');
      this.teardown('server refused by policy', `530 Access to ${server.address} is not permitted through this proxy`);
      return;
    }
    this.log.info({ server: `${server.address}:${server.port}` }, 'session started');
    const s = net.connect({
      host: server.address,
      port: server.port,
      ...(this.o.proxyAddress && familyOf(this.o.proxyAddress) === familyOf(server.address)
        ? { localAddress: this.o.proxyAddress }
        : {}),
    });
    this.server = s;
    s.on('error', (err) => {
      const connecting = this.machine === null;
      this.teardown(
        `server error: ${err.message}`,
        connecting ? `421 Service not available: cannot connect to the server (${(err as NodeJS.ErrnoException).code ?? err.message})` : undefined,
      );
    });
    s.on('close', () => this.teardown('server closed'));
    s.on('end', () => this.teardown('server closed'));
    s.once('connect', () => this.connected(server, s));
  }

  private connected(server: Endpoint, s: net.Socket): void {
    if (this.closing) return;
    if (this.connectTimer) clearTimeout(this.connectTimer);
    this.connectTimer = null;
    s.setNoDelay(true);
    s.setKeepAlive(true, KEEPALIVE.idle * 1000);
    const clientLocal = canonical(this.sock.localAddress ?? '');
    const serverLocal = canonical(s.localAddress ?? '');
    this.log.debug({ via: `${serverLocal}:${s.localPort}` }, 'server connected');
    const addressing = this.addressing(clientLocal, serverLocal, server);
    this.machine = new SessionMachine({
      sid: this.sid,
      client: this.client,
      server,
      addressing,
      anonymousOnly: this.o.anonymousOnly,
      rewriteSourcePort: this.o.rewriteSourcePort,
      tls: this.o.tls,
    });
    const clientLines = new LineFramer(this.o.maxLineLength);
    const serverLines = new LineFramer(this.o.maxLineLength);
    const replies = new ReplyAssembler(MAX_REPLY_LINES);
    this.sock.on('data', (chunk: Buffer) => {
      if (this.opaque) return;
      let lines: string[];
      try {
        lines = clientLines.push(chunk);
      } catch (e) {
        return this.protocolFailure('client', e);
      }
      // Only whole lines count as activity: a client dribbling bytes (slowloris) is idle.
      if (lines.length > 0) this.touch();
      for (const line of lines) {
        if (this.debug) this.log.debug({ line: maskPass(line) }, 'client line');
        this.run(this.machine!.clientLine(line));
        if (this.closing) return;
      }
      this.throttleClient();
    });
    s.on('data', (chunk: Buffer) => {
      if (this.opaque) return;
      try {
        for (const line of serverLines.push(chunk)) {
          const reply = replies.push(line);
          if (reply) {
            this.touch();
            if (this.debug) this.log.debug({ reply: reply.lines[0] }, 'server reply');
            this.run(this.machine!.serverReply(reply));
          }
          if (this.closing) return;
        }
      } catch (e) {
        return this.protocolFailure('server', e);
      }
      this.throttleClient();
    });
    this.touch();
    this.sock.resume();
  }

  private addressing(clientLocal: string, serverLocal: string, server: Endpoint): Addressing {
    if (this.o.mode === 'reverse') {
      return {
        passiveListen: clientLocal,
        passiveAdvertise: this.o.masqueradeAddress ?? clientLocal,
        passiveSource: serverLocal,
        activeListen: serverLocal,
        activeSource: clientLocal,
      };
    }
    if (this.o.dataPlane.name === 'relay') {
      if (familyOf(this.client.address) === 4) {
        // PASV carries an address: the gateway's own, where the relay admits only this client.
        // EPSV carries none (the client connects to the server's address): refused, use PASV.
        return {
          passiveListen: clientLocal,
          passiveAdvertise: clientLocal,
          passiveSource: serverLocal,
          activeListen: serverLocal,
          activeSource: clientLocal,
          epsvRefused: true,
        };
      }
      // IPv6 has only EPSV: nothing can catch the client's connection to the server's address
      // in userspace, and the gateway carries it (routing or NAT66). Nothing checks who connects
      // (README, Security); only active data needs the proxy.
      return {
        passiveListen: clientLocal,
        passiveAdvertise: server.address,
        passiveSource: serverLocal,
        passiveDirect: true,
        activeListen: serverLocal,
        activeSource: clientLocal,
      };
    }
    // The kernel carries data between client and server as if the gateway were not there:
    // the client connects to the server's own address, the server to the gateway's.
    return {
      passiveListen: server.address,
      passiveAdvertise: server.address,
      passiveSource: serverLocal,
      activeListen: serverLocal,
      activeSource: server.address,
    };
  }

  private protocolFailure(side: 'client' | 'server', e: unknown): void {
    const err = e instanceof ProtocolError ? e : new ProtocolError('BAD_INPUT', String(e));
    this.log.notice({ side, code: err.code, err: err.message }, `bad input from ${side}`);
    const reply =
      side === 'client'
        ? err.code === 'LINE_TOO_LONG'
          ? '500 Command line too long, closing control connection'
          : '500 Malformed command, closing control connection'
        : '421 Service not available: the server sent a malformed reply';
    this.teardown(`${side} protocol error: ${err.code}`, reply);
  }

  /** Pause the client while many of its commands wait for replies: bounded memory. */
  private throttleClient(): void {
    const m = this.machine;
    if (!m || this.closing) return;
    if (!this.clientPausedForReplies && m.outstanding > PAUSE_OUTSTANDING) {
      this.clientPausedForReplies = true;
      this.sock.pause();
    } else if (this.clientPausedForReplies && m.outstanding <= RESUME_OUTSTANDING) {
      this.clientPausedForReplies = false;
      this.sock.resume();
    }
  }

  private run(actions: readonly Action[]): void {
    for (const a of actions) {
      if (this.closing) return;
      switch (a.type) {
        case 'toClient':
          this.write(this.sock, this.server, a.text);
          break;
        case 'toServer':
          if (a.urgent && sendUrgent(this.server!, Buffer.from(a.text + '\r\n', 'latin1'))) break;
          this.write(this.server!, this.sock, a.text);
          break;
        case 'open':
          this.open(a.token, a.request);
          break;
        case 'release':
          this.release(a.id, false);
          break;
        case 'transfer':
          // The control connection is quiet during a long transfer: no idle timeout then.
          this.touch();
          break;
        case 'close':
          this.teardown(a.reason, a.reply);
          break;
        case 'loggedIn':
          if (this.loginTimer) clearTimeout(this.loginTimer);
          this.loginTimer = null;
          break;
        case 'opaque':
          this.goOpaque();
          break;
        case 'log':
          this.log[a.level](a.fields ?? {}, a.msg);
          break;
      }
    }
  }

  /**
   * TLS has started: relay bytes both ways without reading them, until either side closes.
   * Replies already written are flushed first by the sockets' own ordering.
   */
  private goOpaque(): void {
    const s = this.server!;
    this.opaque = true;
    if (this.loginTimer) clearTimeout(this.loginTimer);
    this.loginTimer = null;
    this.log.warn({}, 'TLS started: relaying the control connection blindly; data connections are not admitted');
    this.sock.on('data', () => this.touch());
    s.on('data', () => this.touch());
    this.sock.pipe(s);
    s.pipe(this.sock);
    this.sock.resume();
  }

  /** Write with backpressure: when `to` is full, stop reading from `from` until it drains. */
  private write(to: net.Socket, from: net.Socket | null, text: string): void {
    if (!to.write(text + '\r\n', 'latin1') && from) {
      from.pause();
      to.once('drain', () => {
        if (!this.closing && !(from === this.sock && this.clientPausedForReplies)) from.resume();
      });
    }
  }

  private open(token: number, request: Parameters<DataPlane['open']>[0]): void {
    this.o.dataPlane.open(request).then(
      (path) => {
        if (this.closing || !this.machine) {
          this.release(path.id, true);
          return;
        }
        this.run(this.machine.dataOpened(token, path));
        this.throttleClient();
      },
      (err: unknown) => {
        if (this.closing || !this.machine) return;
        const e = err instanceof FtpProxyError ? err : new DataPlaneError('BACKEND_FAILED', String(err), { cause: err });
        this.run(this.machine.dataFailed(token, e));
        this.throttleClient();
      },
    );
  }

  private release(id: string, abort: boolean): void {
    this.o.dataPlane.release(id, abort).catch((err: unknown) => {
      this.log.error({ dataPath: id, err: err instanceof Error ? err.message : String(err) }, 'data path release failed');
    });
  }

  /**
   * Any control line, or a transfer starting or ending, restarts the idle period. Only a
   * timestamp moves on the hot path; the one timer re-arms itself for what is left.
   */
  private touch(): void {
    if (this.closing || this.o.idleTimeout === 0) return;
    this.lastActivity = Date.now();
    if (!this.idleTimer) this.armIdle(this.o.idleTimeout * 1000);
  }

  private armIdle(ms: number): void {
    this.idleTimer = setTimeout(() => {
      this.idleTimer = null;
      if (this.closing) return;
      const left = this.lastActivity + this.o.idleTimeout * 1000 - Date.now();
      // A long transfer keeps the control connection quiet: that is not idleness, and a
      // transfer runs until its data connection has ended, not until the server's final reply.
      if (this.machine?.transferActive || this.o.dataPlane.carrying(this.sid)) this.armIdle(this.o.idleTimeout * 1000);
      else if (left > 0) this.armIdle(left);
      else this.teardown('idle timeout', '421 Timeout: closing control connection');
    }, ms);
  }

  /**
   * The one way a session ends. Records the first reason, says `reply` to the client when
   * given, closes both sockets, releases the data path and tells the server registry.
   */
  teardown(reason: string, reply?: string): void {
    if (this.closing) return;
    this.closing = reason;
    for (const timer of [this.connectTimer, this.loginTimer, this.idleTimer]) if (timer) clearTimeout(timer);
    this.connectTimer = this.loginTimer = this.idleTimer = null;
    this.machine?.close();
    if (reply && this.sock.writable) this.sock.write(reply + '\r\n', 'latin1');
    finish(this.sock);
    if (this.server) finish(this.server);
    // After the reply above: a relayed transfer that has finished is flushed, not truncated.
    const releasing = this.o.dataPlane.endSession(this.sid).catch((err: unknown) => {
      this.log.error({ err: err instanceof Error ? err.message : String(err) }, 'data plane could not end the session');
    });
    this.log.info({ reason, durationMs: Date.now() - this.startedAt }, 'session ended');
    void releasing.then(() => {
      this.resolveClosed();
      this.o.onClose(this);
    });
  }
}
