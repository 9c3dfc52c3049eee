// The listener: admission (session limits, per-client limits), the registry of live
// sessions, and graceful close (stop accepting, wait, then 421 what is left).

import net from 'node:net';
import type { Config } from './config.js';
import type { DataPlane, Endpoint } from './dataplane/types.js';
import type { AppLogger } from './log.js';
import { canonical } from './net/address.js';
import { tuneListener } from './net/libc.js';
import { Session } from './session/session.js';
import type { Metrics, RefusalReason } from './metrics/metrics.js';
import type { SessionProvider } from './control/protocol.js';
import type { TransferRecord } from './transfer.js';
import type { Lookup } from './net/user-at-host.js';
import type { TlsTerminator } from './tls/context.js';
import type { ServerTlsClient } from './tls/server-side.js';

export interface ServerDeps {
  /** The start's configuration; reconfigure() replaces it for new connections. */
  readonly config: Config;
  readonly dataPlane: DataPlane;
  readonly logger: AppLogger;
  readonly resolveServer: (client: net.Socket) => Promise<Endpoint>;
  readonly metrics: Metrics;
  readonly xferlog: { write(r: TransferRecord): void } | null;
  /** How name@host logins are resolved (tests); default: the system resolver. */
  readonly lookup?: Lookup;
  /** --tls terminate: the proxy's certificate. */
  readonly terminator?: TlsTerminator;
  /** --server-tls explicit: how TLS toward the server is checked. */
  readonly serverTls?: ServerTlsClient;
}

export class ProxyServer {
  private readonly listener: net.Server;
  readonly sessions = new Map<string, Session>();
  private readonly perClient = new Map<string, number>();
  private seq = 0;
  private stopping = false;
  private drainWaiters: (() => void)[] = [];
  /**
   * Accepted sockets inherit the control-connection socket options (tuneListener), but for
   * this many first ones (Infinity: the listener could not be tuned).
   */
  private untuned = Infinity;
  private config: Config;

  /** What the control socket sees and may end: the live sessions. */
  readonly provider: SessionProvider = {
    list: () => [...this.sessions.values()].map((s) => s.view()),
    kill: (id) => {
      const s = this.sessions.get(id);
      if (!s) return false;
      s.teardown('killed by the administrator', '421 Service not available: session ended by the administrator');
      return true;
    },
  };

  constructor(private readonly d: ServerDeps) {
    this.config = d.config;
    this.listener = net.createServer((sock) => this.admit(sock));
    this.listener.on('error', (err) => d.logger.error({ err: err.message }, 'listener error'));
  }

  /** Resolves once listening; rejects (e.g. EADDRINUSE) otherwise. */
  listen(): Promise<net.AddressInfo> {
    const { bind, port } = this.config;
    return new Promise((resolve, reject) => {
      const onError = (err: Error): void => reject(err);
      this.listener.once('error', onError);
      this.listener.listen({ host: bind, port, backlog: 1024 }, () => {
        this.listener.off('error', onError);
        // Before the first accept (the loop has not polled since listen(2)): connections the
        // kernel created in between, first in its queue, are tuned one by one.
        this.untuned = tuneListener(this.listener) ?? Infinity;
        resolve(this.listener.address() as net.AddressInfo);
      });
    });
  }

  /**
   * Admission and new sessions use `config` from now on; running sessions keep what they
   * copied at their start. (A reload changes only what reload.ts LIVE lists.)
   */
  reconfigure(config: Config): void {
    this.config = config;
  }

  private admit(sock: net.Socket): void {
    // Counted for every accepted connection, refused ones too: the queue is in order.
    const clientTuned = this.untuned === 0;
    if (!clientTuned) this.untuned--;
    const cfg = this.config;
    const client = canonical(sock.remoteAddress ?? '0.0.0.0');
    const refuse = (reason: RefusalReason, why: string, reply: string): void => {
      this.d.logger.notice({ client, sessions: this.sessions.size }, why);
      this.d.metrics.refused(reason);
      sock.on('error', () => undefined);
      sock.end(reply + '\r\n');
      setTimeout(() => sock.destroy(), 2000).unref();
    };
    if (this.stopping) return refuse('shutdown', 'connection refused: shutting down', '421 Service not available, proxy shutting down');
    const policy = cfg.clients.refusal(client);
    if (policy) return refuse('client_policy', `client refused by policy (${policy})`, '530 Access denied: your address may not use this proxy');
    if (this.sessions.size >= cfg.maxSessions) {
      return refuse('limit', 'session limit reached', `421 Too many sessions (${cfg.maxSessions}), try again later`);
    }
    const mine = this.perClient.get(client) ?? 0;
    if (cfg.maxSessionsPerClient > 0 && mine >= cfg.maxSessionsPerClient) {
      return refuse('per_client_limit', 'per-client session limit reached', `421 Too many sessions from your address (${cfg.maxSessionsPerClient}), try again later`);
    }
    const sid = String(++this.seq);
    const session = new Session(sock, {
      sid,
      mode: cfg.mode,
      resolveServer: this.d.resolveServer,
      dataPlane: this.d.dataPlane,
      logger: this.d.logger,
      ...(cfg.proxyAddress !== undefined ? { proxyAddress: cfg.proxyAddress } : {}),
      masquerade: cfg.masquerade,
      anonymousOnly: cfg.anonymousOnly,
      policy: cfg.commandPolicy,
      rewriteSourcePort: cfg.rewriteSourcePort,
      tls: cfg.tls,
      ...(this.d.terminator
        ? { terminator: this.d.terminator, tlsRequired: cfg.tlsTerminate?.required === true, implicitTls: cfg.tlsTerminate?.implicit === true }
        : {}),
      ...(this.d.serverTls ? { serverTls: this.d.serverTls } : {}),
      serverMode: cfg.serverMode,
      servers: cfg.servers,
      userAtHost: cfg.userAtHost,
      ...(this.d.lookup ? { lookup: this.d.lookup } : {}),
      connectTimeout: cfg.connectTimeout,
      loginTimeout: cfg.loginTimeout,
      idleTimeout: cfg.idleTimeout,
      maxLineLength: cfg.maxLineLength,
      clientTuned,
      metrics: this.d.metrics,
      xferlog: this.d.xferlog,
      onClose: (s) => this.forget(s, client),
    });
    this.sessions.set(sid, session);
    this.perClient.set(client, mine + 1);
    this.d.metrics.sessionStarted();
    session.start();
  }

  private forget(s: Session, client: string): void {
    this.sessions.delete(s.sid);
    this.d.metrics.sessionEnded();
    const n = (this.perClient.get(client) ?? 1) - 1;
    if (n > 0) this.perClient.set(client, n);
    else this.perClient.delete(client);
    if (this.sessions.size === 0) {
      for (const w of this.drainWaiters.splice(0)) w();
    }
  }

  /**
   * Graceful close: stop accepting, give sessions `graceSec` to finish, then end the rest
   * with 421. Resolves when every session has released what it held.
   */
  async close(graceSec: number): Promise<void> {
    this.stopping = true;
    this.listener.close();
    if (this.sessions.size > 0 && graceSec > 0) {
      this.d.logger.notice({ sessions: this.sessions.size, graceSec }, 'shutting down: waiting for sessions');
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, graceSec * 1000);
        this.drainWaiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    const left = [...this.sessions.values()];
    for (const s of left) s.teardown('shutdown', '421 Service not available, proxy shutting down');
    await Promise.all(left.map((s) => s.closed));
  }
}
