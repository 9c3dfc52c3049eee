// The I/O shell of one FTP session: the client and server sockets, line framing, named
// timers, backpressure, and the one idempotent teardown that releases what the session holds.

import net from 'node:net';
import { LineFramer } from '../protocol/lines.js';
import { ReplyAssembler } from '../protocol/replies.js';
import { DataPlaneError, FtpProxyError, OrigDstError, ProtocolError } from '../errors.js';
import { canonical, familyOf } from '../net/address.js';
import { KEEPALIVE, sendUrgent, setOobInline } from '../net/libc.js';
import type { DataPath, DataPlane, Endpoint } from '../dataplane/types.js';
import type { AppLogger } from '../log.js';
import type { AddressList } from '../net/policy.js';
import { SessionMachine, type Action, type Addressing } from './machine.js';
import type { Metrics } from '../metrics/metrics.js';
import type { CommandPolicy } from './policy.js';
import type { Masquerade } from '../net/masquerade.js';
import { isLocalAddress } from '../net/transparent.js';
import { resolveHost, type Lookup, type UserAtHost } from '../net/user-at-host.js';
import { DIRECT_GREETING, directLine } from './direct-login.js';
import type { TlsMode } from '../config.js';
import type { SessionTls, TlsTerminator } from '../tls/context.js';
import type { ServerSessionTls, ServerTlsClient } from '../tls/server-side.js';
import { hostPort, type SessionView } from '../control/protocol.js';
import { isFileTransfer, transferBytes, transferResult, type TransferRecord } from '../transfer.js';

export interface SessionOptions {
  readonly sid: string;
  readonly mode: 'reverse' | 'outbound';
  /** Finds the server this client meant to reach (reverse: fixed; outbound: original destination). */
  readonly resolveServer: (client: net.Socket) => Promise<Endpoint>;
  readonly dataPlane: DataPlane;
  readonly logger: AppLogger;
  readonly proxyAddress?: string;
  /** Reverse mode: the address 227 replies advertise to this client. */
  readonly masquerade: Masquerade;
  readonly anonymousOnly: boolean;
  readonly policy: CommandPolicy;
  readonly rewriteSourcePort: boolean;
  readonly tls: TlsMode;
  /** --tls terminate: the proxy's certificate, and whether USER/PASS need AUTH first. */
  readonly terminator?: TlsTerminator;
  readonly tlsRequired?: boolean;
  /** --implicit-tls: the client's connection is TLS from its first byte. */
  readonly implicitTls?: boolean;
  /** --server-tls explicit: how TLS toward the server is checked. */
  readonly serverTls?: ServerTlsClient;
  /** --server-mode: how data connections are asked of the server (machine.ts MachineOptions). */
  readonly serverMode?: 'client' | 'passive' | 'active';
  /** Servers this proxy may connect to. */
  readonly servers: AddressList;
  /** --user-at-host: a client that connected to the proxy itself logs in as USER name@host. */
  readonly userAtHost: boolean;
  /** How a name@host login's host is resolved (default: the system resolver). */
  readonly lookup?: Lookup;
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
  readonly metrics: Metrics;
  /** Gets one line per finished file transfer (--xferlog). */
  readonly xferlog: { write(r: TransferRecord): void } | null;
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

/** Commands in flight past which the client is not read until replies catch up. */
const PAUSE_OUTSTANDING = 64;
/** Server replies held by the machine (during a data-plane operation) past which the server is not read. */
const PAUSE_HELD_REPLIES = 16;
/**
 * Bytes queued toward a socket past which the side whose input would add to them is not read
 * (Node's own default high-water mark for a socket).
 */
const HIGH_WATER = 16 * 1024;
/**
 * Bytes queued toward the client past which it is cut off. Reading stops long before (the
 * excess is at most one framed chunk's replies), so only a peer that never reads gets here.
 */
const MAX_BACKLOG = 1024 * 1024;
/**
 * Client lines run in one event-loop turn at most: a flood of commands the proxy answers
 * itself (each one cheap, but the kernel takes megabytes of replies before a write backs up)
 * must not keep the loop from other sessions.
 */
const LINES_PER_TURN = 128;

export class Session {
  readonly sid: string;
  readonly client: Endpoint;
  private server: net.Socket | null = null;
  private machine: SessionMachine | null = null;
  private readonly log: AppLogger;
  private connectTimer: NodeJS.Timeout | null = null;
  private loginTimer: NodeJS.Timeout | null = null;
  private opaque = false;
  /** --tls terminate: the client's TLS handshake is under way; nothing is read or run meanwhile. */
  private handshaking = false;
  /** --tls terminate: this control connection's TLS, which its PROT P data connections resume. */
  private clientTls: SessionTls | null = null;
  /** --server-tls explicit: the handshake with the server is under way; then its TLS, for data. */
  private serverHandshaking = false;
  private serverTls: ServerSessionTls | null = null;
  private serverLines: LineFramer;
  private replies = new ReplyAssembler();
  /** The client's side: the accepted socket, or its TLS socket after AUTH. */
  private sock: net.Socket;
  private clientLines: LineFramer;
  private idleTimer: NodeJS.Timeout | null = null;
  private lastActivity = 0;
  private closing: string | null = null;
  /** Client lines framed but not yet run: at most one read's worth, held while the client may not be read. */
  private inbox: string[] = [];
  private inboxAt = 0;
  /** The rest of the inbox runs in a later turn (LINES_PER_TURN). */
  private later: NodeJS.Immediate | null = null;
  private readonly startedAt = Date.now();
  private serverEndpoint: Endpoint | null = null;
  /** --user-at-host, before the server is known; `busy` while a login's host is resolved. */
  private login: { busy: boolean } | null = null;
  /** Kinds of bad name@host logins logged so far. */
  private readonly loginRefusals = new Set<string>();
  /** The name a name@host login gives the server. */
  private loginAs: string | undefined;
  /** Start times of transfer commands still outstanding, by the machine's sequence number. */
  private readonly transferStarts = new Map<number, number>();
  /** Data bytes of the transfers recorded so far. */
  private bytes = 0;
  private readonly debug: boolean;
  /** Resolves when teardown has finished releasing. */
  readonly closed: Promise<void>;
  private resolveClosed!: () => void;

  constructor(
    sock: net.Socket,
    private readonly o: SessionOptions,
  ) {
    this.sock = sock;
    this.clientLines = new LineFramer(o.maxLineLength);
    this.serverLines = new LineFramer(o.maxLineLength);
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
    if (this.o.implicitTls) this.secureClient(c, false);
    c.on('error', (err) => this.teardown(`client error: ${err.message}`));
    c.on('close', () => this.teardown('client closed'));
    c.on('end', () => this.teardown('client closed'));
    // Lines are read from the start (a --user-at-host client logs in before its server is
    // known); from the TLS socket with --implicit-tls. What stopped reading may go on once what
    // was queued has gone out.
    this.sock.on('data', this.clientData);
    this.sock.on('drain', this.drained);
    this.armConnectTimer();
    this.loginTimer = setTimeout(
      () => this.teardown('login timeout', '421 Login timeout: closing control connection'),
      this.o.loginTimeout * 1000,
    );
    this.o
      .resolveServer(c)
      .then((server) => this.connect(server))
      .catch((err: unknown) => {
        // Not redirected: with --user-at-host the client names its server in USER.
        if (this.o.userAtHost && err instanceof OrigDstError && (err.code === 'LOOP' || err.code === 'NO_ORIGINAL_DST')) {
          return this.startDirect();
        }
        const e = err instanceof FtpProxyError ? err : null;
        this.log.warn({ code: e?.code, err: err instanceof Error ? err.message : String(err) }, 'cannot find the server for this session');
        if (!this.closing) this.o.metrics.refused('no_server');
        this.teardown('no server', `421 Service not available: ${err instanceof Error ? err.message : 'no server'}`);
      });
  }

  /** The connect phase: from the start of the session, or from a name@host login, to the server connected. */
  private armConnectTimer(): void {
    this.connectTimer = setTimeout(
      () => this.teardown('server connect timeout', '421 Service not available: the server did not answer in time'),
      this.o.connectTimeout * 1000,
    );
  }

  /** A client of the proxy itself (--user-at-host): greeted here, it names its server in USER. */
  private startDirect(): void {
    if (this.closing) return;
    if (this.connectTimer) clearTimeout(this.connectTimer);
    this.connectTimer = null;
    this.login = { busy: false };
    this.log.info({}, 'direct connection: waiting for USER name@host');
    this.sock.write(DIRECT_GREETING + '\r\n', 'latin1');
    this.flow();
  }

  /** Client lines before a name@host login; the client is read while its replies go out. */
  private loginFlow(login: { busy: boolean }): void {
    const c = this.sock;
    for (let n = 0; n < LINES_PER_TURN && !login.busy && this.inboxAt < this.inbox.length && c.writableLength <= HIGH_WATER; n++) {
      const line = this.inbox[this.inboxAt++]!;
      if (this.debug) this.log.debug({ line: maskPass(line) }, 'client line');
      const step = directLine(line);
      if (step.kind === 'quit') return this.teardown('client quit before logging in', step.text);
      if (step.kind === 'login') {
        login.busy = true;
        void this.loginTo(step.target);
        break;
      }
      // Once per kind, as the machine logs its refusals: a client repeating one must not flood the log.
      if (step.refusal && !this.loginRefusals.has(step.refusal.code)) {
        this.loginRefusals.add(step.refusal.code);
        this.log.notice(step.refusal, 'user@host login refused');
      }
      c.write(step.text + '\r\n', 'latin1');
    }
    if (this.inboxAt === this.inbox.length) (this.inbox = []), (this.inboxAt = 0);
    const waitingLines = this.inbox.length > 0;
    if (!login.busy && !waitingLines && c.writableLength <= HIGH_WATER) c.resume();
    else c.pause();
    if (waitingLines && !login.busy && c.writableLength <= HIGH_WATER) this.later ??= setImmediate(() => ((this.later = null), this.flow()));
  }

  /**
   * USER name@host: resolve the host, pick the first address --allow-server/--deny-server
   * admit, of the client's family where there is one (connect() refuses, before connecting,
   * when none is admitted), and connect. A name that does not resolve gets 530 and the client
   * may try again; a resolver that fails or does not answer within --connect-timeout ends the
   * session with 421.
   */
  private async loginTo(target: UserAtHost): Promise<void> {
    const where = { host: target.host, port: target.port, user: target.user };
    let addresses: string[];
    try {
      addresses = await resolveHost(target, this.o.connectTimeout * 1000, this.o.lookup);
    } catch (e) {
      if (this.closing) return;
      const err = e as FtpProxyError;
      this.log.notice({ ...where, code: err.code, err: err.message }, 'user@host: cannot resolve the host');
      if (err.code === 'NOT_FOUND') {
        this.sock.write(`530 Cannot log in: ${err.message}\r\n`, 'latin1');
        this.login = { busy: false };
        return this.flow();
      }
      this.o.metrics.refused('no_server');
      return this.teardown('cannot resolve the server', `421 Service not available: ${err.message}`);
    }
    if (this.closing) return;
    // The client's own family first: a data path carries one family end to end.
    const admitted = addresses.filter((a) => this.o.servers.refusal(a) === null);
    const address = admitted.find((a) => familyOf(a) === familyOf(this.client.address)) ?? admitted[0] ?? addresses[0]!;
    this.log.info({ ...where, address, resolved: addresses.length }, 'user@host login');
    this.login = null;
    this.loginAs = target.user;
    this.armConnectTimer();
    this.connect({ address, port: target.port });
  }

  private connect(server: Endpoint): void {
    if (this.closing) return;
    const refusal = this.o.servers.refusal(server.address);
    if (refusal) {
      this.log.notice({ server: `${server.address}:${server.port}`, policy: refusal }, 'server refused by policy');
      this.o.metrics.refused('server_policy');
      this.teardown('server refused by policy', `530 Access to ${server.address} is not permitted through this proxy`);
      return;
    }
    this.log.info({ server: `${server.address}:${server.port}` }, 'session started');
    this.serverEndpoint = server;
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
      policy: this.o.policy,
      ...(this.loginAs !== undefined ? { loginAs: this.loginAs } : {}),
      rewriteSourcePort: this.o.rewriteSourcePort,
      tls: this.o.tls,
      tlsRequired: this.o.tlsRequired === true,
      implicitTls: this.o.implicitTls === true,
      serverTls: this.o.serverTls !== undefined,
      ...(this.o.serverMode ? { serverMode: this.o.serverMode } : {}),
    });
    s.on('data', this.serverData);
    s.on('drain', this.drained);
    this.touch();
    this.flow();
  }

  private readonly clientData = (chunk: Buffer): void => {
    if (this.opaque) return;
    let lines: string[];
    try {
      lines = this.clientLines.push(chunk);
    } catch (e) {
      return this.protocolFailure('client', e);
    }
    if (lines.length === 0) return;
    // Only whole lines count as activity: a client dribbling bytes (slowloris) is idle.
    this.touch();
    if (this.inboxAt < this.inbox.length) this.inbox.push(...lines);
    else (this.inbox = lines), (this.inboxAt = 0);
    this.flow();
  };

  private readonly serverData = (chunk: Buffer): void => {
    if (this.opaque) return;
    try {
      this.batch(() => {
        for (const line of this.serverLines.push(chunk)) {
          const reply = this.replies.push(line);
          if (reply) {
            this.touch();
            if (this.debug) this.log.debug({ reply: reply.lines[0] }, 'server reply');
            this.run(this.machine!.serverReply(reply));
          }
          // After the server's 234 only its handshake may follow.
          if (this.closing || this.serverHandshaking) return;
        }
        // The tail of a reply already going out in pieces goes on now, not when the server
        // goes on (a server may pause inside a long reply, or never end it).
        const tail = this.replies.pending();
        if (tail) this.run(this.machine!.serverReply(tail));
      });
    } catch (e) {
      return this.protocolFailure('server', e);
    }
    this.flow();
  };

  private readonly drained = (): void => this.flow();

  /**
   * --server-tls explicit, the server said 234 to the proxy's AUTH TLS: the server's socket
   * becomes a TLS client socket; the machine sends PBSZ and PROT once it is up. A failed
   * handshake (or certificate check) ends the session with 421.
   */
  private startServerTls(): void {
    const raw = this.server!;
    raw.off('data', this.serverData);
    raw.off('drain', this.drained);
    raw.pause();
    this.serverHandshaking = true;
    this.serverLines = new LineFramer(this.o.maxLineLength);
    this.replies = new ReplyAssembler();
    // After the batch that wrote AUTH TLS is uncorked.
    queueMicrotask(() => {
      if (this.closing) return;
      const serverTls = this.o.serverTls!.forSession(this.serverEndpoint!.address);
      this.serverTls = serverTls;
      const secure = serverTls.connect(raw);
      this.server = secure;
      secure.on('error', (err) => {
        if (this.serverHandshaking) this.log.warn({ err: err.message }, 'TLS handshake with the server failed');
        this.teardown(`server TLS error: ${err.message}`, '421 Service not available: TLS to the server failed');
      });
      secure.on('close', () => this.teardown('server closed'));
      secure.once('secureConnect', () => {
        this.serverHandshaking = false;
        this.log.info({ protocol: secure.getProtocol(), cipher: secure.getCipher().name, verified: secure.authorized }, 'server control connection secured');
        secure.on('data', this.serverData);
        secure.on('drain', this.drained);
        this.batch(() => this.run(this.machine!.serverSecured()));
        this.flow();
      });
    });
  }

  /**
   * --tls terminate, the 234 is written: the client's socket becomes a TLS server socket. What
   * was read after AUTH is dropped (the machine drops its own held lines): a client may send
   * nothing but its handshake there. Both sides wait until the handshake is over.
   */
  private startTls(): void {
    const raw = this.sock;
    raw.off('data', this.clientData);
    raw.off('drain', this.drained);
    raw.pause();
    this.server?.pause();
    this.handshaking = true;
    (this.inbox = []), (this.inboxAt = 0);
    this.clientLines = new LineFramer(this.o.maxLineLength);
    // After the batch that wrote the 234 is uncorked: the 234 goes out in plaintext first.
    queueMicrotask(() => {
      if (!this.closing) this.secureClient(raw, true);
    });
  }

  /**
   * The TLS server side over the client's socket: after AUTH, or from the first byte
   * (--implicit-tls, where connected() attaches the line reader itself: `attach` false).
   * Nothing is run while the handshake is under way; a failed one ends the session, logged.
   */
  private secureClient(raw: net.Socket, attach: boolean): void {
    const clientTls = this.o.terminator!.forSession();
    this.clientTls = clientTls;
    clientTls.onHandshake = (event) => {
      if (this.closing || !this.machine) return;
      this.batch(() => this.run(this.machine!.protectedHandshake(event)));
      this.flow();
    };
    this.handshaking = true;
    const secure = clientTls.wrap(raw);
    this.sock = secure;
    secure.on('error', (err) => {
      if (this.handshaking) this.log.notice({ err: err.message }, 'TLS handshake with the client failed');
      this.teardown(`client TLS error: ${err.message}`);
    });
    secure.on('close', () => this.teardown('client closed'));
    secure.once('secure', () => {
      this.handshaking = false;
      this.log.info({ protocol: secure.getProtocol(), cipher: secure.getCipher().name }, 'client control connection secured');
      if (attach) {
        secure.on('data', this.clientData);
        secure.on('drain', this.drained);
      }
      // Read again when flow() says so (not before the server is connected).
      secure.pause();
      this.flow();
    });
  }

  private addressing(clientLocal: string, serverLocal: string, server: Endpoint): Addressing {
    // A name@host login came to the proxy itself, not through it: like reverse mode, the data
    // paths are the proxy's own addresses on each side.
    if (this.o.mode === 'reverse' || this.loginAs !== undefined) {
      const told = this.o.masquerade.advertisedTo(this.client.address);
      const advertise = told !== undefined && familyOf(told) === familyOf(clientLocal) ? told : clientLocal;
      return {
        // A client told another of this host's addresses connects there: the data path waits
        // there too. An address that is not this host's is a NAT's in front of it, which
        // forwards to the address the client reached us on.
        passiveListen: advertise !== clientLocal && isLocalAddress(advertise) ? advertise : clientLocal,
        passiveAdvertise: advertise,
        passiveSource: serverLocal,
        activeListen: serverLocal,
        activeSource: clientLocal,
      };
    }
    const family = familyOf(this.client.address);
    if (this.o.dataPlane.name === 'relay' && !this.o.dataPlane.passiveAtServer?.(family)) {
      // The relay cannot listen on the server's address (that needs CAP_NET_ADMIN and a
      // --route-table); active data then comes from this host's address (connectFrom).
      if (family === 4) {
        // PASV carries an address: the gateway's own, where the relay admits only this client.
        // EPSV carries none (the client connects to the server's address): refused, use PASV.
        return {
          passiveListen: clientLocal,
          passiveAdvertise: clientLocal,
          passiveSource: serverLocal,
          activeListen: serverLocal,
          activeSource: server.address,
          epsvRefused: true,
        };
      }
      // IPv6 has only EPSV: the client is sent to the server's own data port, which the gateway
      // carries (routing or NAT66), and nothing checks who connects (README, Security).
      return {
        passiveListen: clientLocal,
        passiveAdvertise: server.address,
        passiveSource: serverLocal,
        passiveDirect: true,
        activeListen: serverLocal,
        activeSource: server.address,
      };
    }
    // Data goes between client and server as if the gateway were not there: the client connects
    // to the server's own address, the server to the gateway's. The nftables plane translates
    // those connections; the relay listens on the server's address (a transparent listener that
    // catches this client's connections alone) and sends active data from it.
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

  /**
   * Flow control, run after anything that changes what is queued: runs the client lines that
   * may run now, and reads from a side only while what its input produces can go somewhere.
   * The client is not read while many of its commands wait for replies or while either socket
   * is backed up (a command the proxy answers itself writes to the client, any other to the
   * server); the server is not read while the client is backed up. So memory per session is
   * bounded whatever either peer does or does not read.
   */
  private flow(): void {
    const m = this.machine;
    const s = this.server;
    if (this.closing || this.opaque || this.handshaking || this.serverHandshaking) return;
    if (!m || !s) {
      if (this.login) this.loginFlow(this.login);
      return;
    }
    const c = this.sock;
    const clientMayRun = (): boolean =>
      m.outstanding <= PAUSE_OUTSTANDING && c.writableLength <= HIGH_WATER && s.writableLength <= HIGH_WATER;
    this.batch(() => {
      for (let n = 0; n < LINES_PER_TURN && this.inboxAt < this.inbox.length && clientMayRun(); n++) {
        const line = this.inbox[this.inboxAt++]!;
        if (this.debug) this.log.debug({ line: maskPass(line) }, 'client line');
        this.run(m.clientLine(line));
        if (this.closing || this.handshaking) return;
      }
    });
    if (this.closing || this.handshaking) return;
    if (this.inboxAt === this.inbox.length) (this.inbox = []), (this.inboxAt = 0);
    if (c.writableLength > MAX_BACKLOG) return this.teardown('client does not read its replies');
    const waitingLines = this.inbox.length > 0;
    if (!waitingLines && clientMayRun()) c.resume();
    else c.pause();
    if (waitingLines && clientMayRun()) this.later ??= setImmediate(() => ((this.later = null), this.flow()));
    if (c.writableLength <= HIGH_WATER && m.heldReplies <= PAUSE_HELD_REPLIES) s.resume();
    else s.pause();
  }

  /**
   * Run `fn` with both sockets corked: the lines it writes toward a peer leave in one write,
   * not one system call per line of a multi-line reply or per pipelined command.
   */
  private batch(fn: () => void): void {
    const c = this.sock;
    const s = this.server;
    c.cork();
    s?.cork();
    try {
      fn();
    } finally {
      c.uncork();
      s?.uncork();
    }
  }

  private run(actions: readonly Action[]): void {
    for (const a of actions) {
      if (this.closing) return;
      switch (a.type) {
        case 'toClient':
          this.sock.write(a.text + '\r\n', 'latin1');
          break;
        case 'toServer':
          if (this.debug) this.log.debug({ line: maskPass(a.text) }, 'server line');
          if (a.urgent && sendUrgent(this.server!, Buffer.from(a.text + '\r\n', 'latin1'))) break;
          this.server!.write(a.text + '\r\n', 'latin1');
          break;
        case 'open':
          this.open(a.token, a.request.kind, () =>
            this.o.dataPlane.open({
              ...a.request,
              ...(a.protect && this.clientTls ? { tls: this.clientTls } : {}),
              ...(this.serverTls ? { serverTls: this.serverTls } : {}),
              lost: this.pathLost,
            }),
          );
          break;
        case 'join':
        case 'meet': {
          // Mode translation: only a plane that carries bytes itself can do it.
          const dp = this.o.dataPlane;
          const translated = (): Promise<DataPath> | undefined => (a.type === 'join' ? dp.join?.(a.request) : dp.meet?.(a.request));
          this.open(a.token, a.type === 'join' ? 'active' : 'passive', () =>
            translated() ?? Promise.reject(new DataPlaneError('BACKEND_FAILED', `the ${dp.name} data plane cannot translate data connections`)),
          );
          break;
        }
        case 'proceed':
          this.o.dataPlane.proceed?.(a.id);
          break;
        case 'release':
          this.release(a.id, false, a.urgent);
          break;
        case 'transfer':
          // The control connection is quiet during a long transfer: no idle timeout then.
          this.touch();
          break;
        case 'transferStarted':
          this.transferStarts.set(a.seq, Date.now());
          break;
        case 'transferEnded':
          this.transferEnded(a);
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
        case 'startTls':
          this.startTls();
          break;
        case 'startServerTls':
          this.startServerTls();
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

  /** The data plane lost an open path and could not put it back: its transfer gets 425. */
  private readonly pathLost = (id: string): void => {
    if (this.machine && !this.closing) this.run(this.machine.dataLost(id));
  };

  /** A data-plane operation (open, join or meet) whose path the machine waits for under `token`. */
  private open(token: number, kind: 'passive' | 'active', start: () => Promise<DataPath>): void {
    const t0 = performance.now();
    start().then(
      (path) => {
        this.o.metrics.dataPathOpened(kind, (performance.now() - t0) / 1000);
        if (this.closing || !this.machine) {
          this.release(path.id, true);
          return;
        }
        // Which plane carries it, for the path's log line (a composite plane says so itself).
        this.run(this.machine.dataOpened(token, path.via ? path : { ...path, via: this.o.dataPlane.name }));
        this.flow();
      },
      (err: unknown) => {
        const e = err instanceof FtpProxyError ? err : new DataPlaneError('BACKEND_FAILED', String(err), { cause: err });
        this.o.metrics.dataPlaneError(e.code);
        if (this.closing || !this.machine) return;
        this.run(this.machine.dataFailed(token, e));
        this.flow();
      },
    );
  }

  private release(id: string, abort: boolean, urgent?: boolean): void {
    this.o.dataPlane.release(id, abort, urgent).catch((err: unknown) => {
      if (err instanceof DataPlaneError) this.o.metrics.dataPlaneError(err.code);
      this.log.error({ dataPath: id, err: err instanceof Error ? err.message : String(err) }, 'data path release failed');
    });
  }

  /**
   * One transfer command has ended: its `transfer` log record, its metrics and, for a file, its
   * xferlog line, once the data plane says what its data connection carried (which may be after
   * the final reply: the relay may still be flushing the end of a file to a slow reader).
   */
  private transferEnded(a: Extract<Action, { type: 'transferEnded' }>): void {
    const now = Date.now();
    const startedAt = this.transferStarts.get(a.seq) ?? now;
    this.transferStarts.delete(a.seq);
    const m = this.machine!;
    const path = a.path;
    const base = {
      sid: this.sid,
      client: this.client,
      server: this.serverEndpoint!,
      user: m.user,
      command: a.verb,
      path: a.arg,
      directory: m.directory,
      type: m.type,
      mode: a.mode,
      startedAt,
      durationMs: now - startedAt,
      replyCode: a.code,
      result: transferResult(a.code, a.abortSent),
    } as const;
    // No path: no data connection came through the proxy (a 425, a refusal before any); bytes
    // 0, unless data could have gone around it (passive-direct), or the plane cannot count.
    const moved = path ? this.o.dataPlane.transferred(path.id).catch(() => null) : Promise.resolve(a.counted ? { fromPeer: 0, toPeer: 0 } : null);
    void moved.then((mv) => {
      const record: TransferRecord = { ...base, bytes: mv === null ? null : path ? transferBytes(path.kind, a.verb, mv) : 0 };
      // sid and client are the child logger's own fields.
      const { sid: _sid, client: _client, ...fields } = record;
      this.log.info(
        { ...fields, server: hostPort(record.server.address, record.server.port), startedAt: new Date(startedAt).toISOString() },
        'transfer',
      );
      this.o.metrics.transferEnded(record.command, record.result, record.bytes ?? 0);
      if (isFileTransfer(record.command)) this.o.xferlog?.write(record);
      this.bytes += record.bytes ?? 0;
    });
  }

  /** What `ftp-proxy sessions` shows of this session. */
  view(): SessionView {
    const m = this.machine;
    const s = this.serverEndpoint;
    const path = m?.currentPath ?? null;
    const mode = m?.currentPathMode ?? null;
    return {
      id: this.sid,
      client: hostPort(this.client.address, this.client.port),
      server: s ? hostPort(s.address, s.port) : null,
      user: m?.user ?? null,
      state: !m ? 'connect' : this.opaque ? 'tls' : m.state,
      ageSeconds: Math.round((Date.now() - this.startedAt) / 100) / 10,
      transfers: m?.transfers ?? 0,
      bytes: this.bytes,
      dataPath: path && mode ? { mode, port: path.port } : null,
    };
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
    if (this.later) clearImmediate(this.later);
    this.connectTimer = this.loginTimer = this.idleTimer = null;
    const repeated = this.machine?.repeated ?? {};
    if (Object.keys(repeated).length > 0) this.log.notice({ repeated }, 'refused or odd lines repeated in this session (logged once each)');
    // Transfers the session's end cuts off still get their records (aborted, no reply code).
    for (const a of this.machine?.close() ?? []) if (a.type === 'transferEnded') this.transferEnded(a);
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
