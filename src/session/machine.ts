// The pure FTP session state machine: client lines, server replies and data-plane results
// in; lines to send, data paths to open or release, and log records out. No I/O, no timers.

import { classifyCommand, removeTelnet, stripTelnet, type Command } from '../protocol/commands.js';
import { format227, format229, formatEprt, formatPort } from '../protocol/format.js';
import { parse227, parse229, type Reply } from '../protocol/replies.js';
import type { DataPath, DataPathRequest, Endpoint } from '../dataplane/types.js';
import { ProtocolError, type FtpProxyError } from '../errors.js';
import { familyOf } from '../net/address.js';

/** Where data paths listen, what they advertise and whose address the far end sees. */
export interface Addressing {
  /** PASV/EPSV: the client connects to passiveListen:<port>; 227 carries passiveAdvertise. */
  readonly passiveListen: string;
  readonly passiveAdvertise: string;
  /** The server sees passive data connections come from here. */
  readonly passiveSource: string;
  /** PORT/EPRT: the server connects to activeListen:<port> (also what PORT/EPRT carry). */
  readonly activeListen: string;
  /** The client sees active data connections come from here (port 20 with -r). */
  readonly activeSource: string;
  /**
   * Passive data needs no data path: the client is sent straight to the server's announced
   * port on the control connection's server address, which plain NAT already carries (outbound
   * mode with the relay, IPv6 clients: nothing could intercept a connection to the server).
   */
  readonly passiveDirect?: boolean;
  /**
   * EPSV (and EPSV ALL) is answered with 502 so that the client falls back to PASV: an EPSV
   * client connects to the control connection's address (RFC 2428), which in outbound mode is
   * the real server, where no relay can catch it (outbound mode with the relay, IPv4 clients).
   */
  readonly epsvRefused?: boolean;
}

export interface MachineOptions {
  readonly sid: string;
  /** The client's control connection peer. */
  readonly client: Endpoint;
  /** The server's control connection endpoint. */
  readonly server: Endpoint;
  readonly addressing: Addressing;
  readonly anonymousOnly: boolean;
  readonly rewriteSourcePort: boolean;
  /**
   * AUTH TLS/SSL: 'refuse' answers 534 so the client goes on in plain FTP; 'pass' forwards it
   * and, once the server accepts (234), the session becomes an opaque byte relay.
   */
  readonly tls?: 'refuse' | 'pass';
  /** Pipelined lines held while a data-plane operation is under way; beyond this the session ends. */
  readonly maxQueued?: number;
}

export type LogLevel = 'debug' | 'info' | 'notice' | 'warn' | 'error';

export type Action =
  | { readonly type: 'toClient'; readonly text: string }
  /** `urgent`: an ABOR, to be sent with the Telnet Synch (TCP urgent data). */
  | { readonly type: 'toServer'; readonly text: string; readonly urgent?: boolean }
  | { readonly type: 'open'; readonly token: number; readonly request: DataPathRequest }
  | { readonly type: 'release'; readonly id: string }
  | { readonly type: 'transfer'; readonly active: boolean }
  /** The server accepted the login (230/232): login-phase limits end. */
  | { readonly type: 'loggedIn' }
  /** TLS starts now: from here on the shell relays bytes without reading them. */
  | { readonly type: 'opaque' }
  | { readonly type: 'close'; readonly reason: string; readonly reply?: string }
  | { readonly type: 'log'; readonly level: LogLevel; readonly msg: string; readonly fields?: Record<string, unknown> };

/** What a forwarded (or locally answered) command expects as its reply. */
type Pending =
  | { readonly kind: 'passive'; readonly reply: 227 | 229 }
  | { readonly kind: 'active'; readonly pathId: string }
  /** pathId: the data path the transfer was sent with, released when its final reply comes. */
  | { readonly kind: 'transfer'; readonly verb: string; readonly pathId: string | null }
  | { readonly kind: 'other'; readonly verb: string }
  | { readonly kind: 'auth' }
  /** Answered by the proxy itself; emitted in turn so replies stay in command order. */
  | { readonly kind: 'local'; readonly text: string };

type Waiting =
  | { readonly token: number; readonly kind: 'passive'; readonly reply: 227 | 229 }
  | { readonly token: number; readonly kind: 'active' };

const ANONYMOUS = new Set(['anonymous', 'ftp']);

const DEFAULT_MAX_QUEUED = 256;

const EPSV_REFUSED = '502 EPSV not available through this gateway, use PASV';

export class SessionMachine {
  private readonly pending: Pending[] = [];
  private readonly heldClient: string[] = [];
  private readonly heldServer: Reply[] = [];
  private waiting: Waiting | null = null;
  private nextToken = 1;
  /** The session's current data path; a new negotiation or the end of a transfer releases it. */
  private path: DataPath | null = null;
  private transferring = false;
  private epsvAll = false;
  private loggedIn = false;
  private closed = false;
  private readonly clientFamily: 4 | 6;
  private readonly serverFamily: 4 | 6;
  private readonly maxQueued: number;

  constructor(private readonly o: MachineOptions) {
    this.clientFamily = familyOf(o.client.address);
    this.serverFamily = familyOf(o.server.address);
    this.maxQueued = o.maxQueued ?? DEFAULT_MAX_QUEUED;
  }

  /** Commands forwarded or answered but not yet replied to: the shell pauses the client above a bound. */
  get outstanding(): number {
    return this.pending.length + this.heldClient.length;
  }

  get transferActive(): boolean {
    return this.transferring;
  }

  /** The data path currently held, for teardown. */
  get currentPath(): DataPath | null {
    return this.path;
  }

  /** Token of the data-plane operation under way, if any (teardown releases what it yields). */
  get waitingToken(): number | null {
    return this.waiting?.token ?? null;
  }

  clientLine(line: string): Action[] {
    const out: Action[] = [];
    if (this.closed) return out;
    if (this.waiting) {
      this.hold(this.heldClient, line, out);
      return out;
    }
    this.handleClient(line, out);
    return out;
  }

  serverReply(reply: Reply): Action[] {
    const out: Action[] = [];
    if (this.closed) return out;
    if (this.waiting) {
      this.hold(this.heldServer, reply, out);
      return out;
    }
    this.handleServer(reply, out);
    return out;
  }

  dataOpened(token: number, path: DataPath): Action[] {
    const out: Action[] = [];
    const w = this.waiting;
    if (!w || w.token !== token || this.closed) {
      // Nobody waits for it any more: give it straight back.
      out.push({ type: 'release', id: path.id });
      return out;
    }
    this.waiting = null;
    this.replacePath(path, out);
    if (w.kind === 'passive') {
      const text =
        w.reply === 227
          ? format227({ address: this.o.addressing.passiveAdvertise, port: path.port })
          : format229(path.port);
      out.push({ type: 'log', level: 'info', msg: 'passive data path', fields: { dataPort: path.port } });
      out.push({ type: 'toClient', text });
    } else {
      const ep = { address: this.o.addressing.activeListen, port: path.port };
      out.push({ type: 'log', level: 'info', msg: 'active data path', fields: { dataPort: path.port } });
      this.pending.push({ kind: 'active', pathId: path.id });
      out.push({ type: 'toServer', text: this.serverFamily === 4 ? formatPort(ep) : formatEprt(ep) });
    }
    this.flushLocal(out);
    this.drain(out);
    return out;
  }

  dataFailed(token: number, error: FtpProxyError): Action[] {
    const out: Action[] = [];
    const w = this.waiting;
    if (!w || w.token !== token || this.closed) return out;
    this.waiting = null;
    const exhausted = error.code === 'PORTS_EXHAUSTED';
    out.push({
      type: 'log',
      level: exhausted ? 'warn' : 'error',
      msg: exhausted ? 'data port range exhausted' : 'data plane failed',
      fields: { code: error.code, err: error.message },
    });
    const text = exhausted
      ? "425 Can't open data connection: no free data port on the proxy, try again later"
      : "425 Can't open data connection: the proxy could not set it up";
    if (w.kind === 'passive') {
      out.push({ type: 'toClient', text });
    } else {
      this.answerLocally(text, out);
    }
    this.flushLocal(out);
    this.drain(out);
    return out;
  }

  /** The session is ending: nothing more is emitted. */
  close(): void {
    this.closed = true;
    this.heldClient.length = 0;
    this.heldServer.length = 0;
  }

  private hold<T>(queue: T[], item: T, out: Action[]): void {
    if (this.heldClient.length + this.heldServer.length >= this.maxQueued) {
      this.closed = true;
      out.push({
        type: 'close',
        reason: 'too many pipelined lines',
        reply: '421 Too many pipelined commands, closing control connection',
      });
      return;
    }
    queue.push(item);
  }

  /** Run what was held while a data-plane operation was under way, until the next one starts. */
  private drain(out: Action[]): void {
    while (!this.waiting && !this.closed) {
      const reply = this.heldServer.shift();
      if (reply) {
        this.handleServer(reply, out);
        continue;
      }
      const line = this.heldClient.shift();
      if (line === undefined) break;
      this.handleClient(line, out);
    }
  }

  private handleClient(raw: string, out: Action[]): void {
    // What the server gets is exactly what was classified: Telnet bytes removed everywhere,
    // and no bare CR (a server that ends lines at CR would see a second, unvetted command).
    const line = removeTelnet(raw);
    if (line.includes('\r')) {
      out.push({ type: 'log', level: 'notice', msg: 'bare CR in a command refused', fields: {} });
      return this.answerLocally('500 Bare CR in command line', out);
    }
    const cmd = classifyCommand(line);
    switch (cmd.kind) {
      case 'PASV':
        return this.passive(227, out);
      case 'EPSV':
        if (this.o.addressing.epsvRefused) return this.answerLocally(EPSV_REFUSED, out);
        if (cmd.family !== undefined && cmd.family !== (this.clientFamily === 4 ? 1 : 2)) {
          return this.answerLocally(`522 Network protocol not supported, use (${this.clientFamily === 4 ? 1 : 2})`, out);
        }
        return this.passive(229, out);
      case 'EPSV_ALL':
        if (this.o.addressing.epsvRefused) return this.answerLocally(EPSV_REFUSED, out);
        this.epsvAll = true;
        return this.answerLocally('200 EPSV ALL ok', out);
      case 'PORT':
      case 'EPRT':
        return this.active(cmd, out);
      case 'LPRT':
      case 'LPSV':
        return this.answerLocally(`502 ${cmd.kind} is not supported, use ${cmd.kind === 'LPRT' ? 'EPRT' : 'EPSV'}`, out);
      case 'INVALID':
        out.push({ type: 'log', level: 'notice', msg: 'bad command from client', fields: { verb: cmd.verb, code: cmd.error.code } });
        return this.answerLocally(`501 ${cmd.error.message}`, out);
      case 'USER':
        if (this.o.anonymousOnly && !ANONYMOUS.has(cmd.name.toLowerCase())) {
          out.push({ type: 'log', level: 'notice', msg: 'non-anonymous login refused', fields: { user: cmd.name } });
          return this.answerLocally('530 Only anonymous logins are allowed through this proxy', out);
        }
        out.push({ type: 'log', level: 'info', msg: 'login', fields: { user: cmd.name } });
        return this.forward(line, { kind: 'other', verb: 'USER' }, out);
      case 'AUTH':
        if (this.o.tls === 'pass') {
          out.push({
            type: 'log',
            level: 'warn',
            msg: 'AUTH passed through: if the server accepts, this session is encrypted and its data connections are not admitted',
            fields: { mechanism: cmd.mechanism },
          });
          return this.forward(line, { kind: 'auth' }, out);
        }
        // No ALG can rewrite PORT/PASV inside TLS; refusing lets the client fall back to plain FTP.
        out.push({ type: 'log', level: 'notice', msg: 'AUTH refused: TLS cannot pass an FTP proxy', fields: { mechanism: cmd.mechanism } });
        return this.answerLocally('534 AUTH not available through this proxy, continue without TLS', out);
      case 'TRANSFER':
        return this.forward(line, { kind: 'transfer', verb: cmd.verb, pathId: this.path?.id ?? null }, out);
      case 'ABOR':
        // Sent clean, and urgent (Telnet IP and the Synch) only when the client's own ABOR
        // came that way: the server sees what it would see without the proxy. (pure-ftpd
        // drops a line with Telnet bytes once its transfer has ended, so always adding them
        // loses ABORs; a server that needs them mid-transfer gets them from such clients.)
        this.pending.push({ kind: 'other', verb: 'ABOR' });
        out.push({ type: 'toServer', text: 'ABOR', urgent: raw.startsWith('\xff\xf4') });
        return;
      case 'QUIT':
      case 'CCC':
        return this.forward(line, { kind: 'other', verb: cmd.kind }, out);
      case 'OTHER':
        return this.forward(line, { kind: 'other', verb: cmd.verb }, out);
    }
  }

  private forward(line: string, pending: Pending, out: Action[]): void {
    this.pending.push(pending);
    out.push({ type: 'toServer', text: line });
  }

  /** Reply from the proxy itself, in turn with the server's replies to earlier commands. */
  private answerLocally(text: string, out: Action[]): void {
    if (this.pending.length === 0) {
      out.push({ type: 'toClient', text });
    } else {
      this.pending.push({ kind: 'local', text });
    }
  }

  private passive(reply: 227 | 229, out: Action[]): void {
    if (this.epsvAll && reply === 227) {
      return this.answerLocally('503 Only EPSV is allowed after EPSV ALL', out);
    }
    if (reply === 227 && this.clientFamily === 6) {
      return this.answerLocally('500 PASV carries IPv4 addresses only, use EPSV', out);
    }
    // IPv4 servers all understand PASV; IPv6 ones need EPSV. The server's address in its
    // reply is never used, only its port.
    this.forward(this.serverFamily === 4 ? 'PASV' : 'EPSV', { kind: 'passive', reply }, out);
  }

  private active(cmd: Extract<Command, { kind: 'PORT' | 'EPRT' }>, out: Action[]): void {
    if (this.epsvAll) {
      return this.answerLocally('503 Only EPSV is allowed after EPSV ALL', out);
    }
    const family = cmd.kind === 'PORT' ? 4 : cmd.family === 1 ? 4 : 6;
    if (family !== this.clientFamily) {
      return this.answerLocally(
        cmd.kind === 'EPRT'
          ? `522 Network protocol not supported, use (${this.clientFamily === 4 ? 1 : 2})`
          : '500 PORT carries IPv4 addresses only, use EPRT',
        out,
      );
    }
    const { address, port } = cmd.endpoint;
    // RFC 2577: data goes only to the client's own address and to an unprivileged port.
    if (address !== this.o.client.address) {
      out.push({
        type: 'log',
        level: 'notice',
        msg: 'bounce attempt refused',
        fields: { verb: cmd.kind, announced: address, dataPort: port },
      });
      return this.answerLocally(`501 ${cmd.kind} refused: address is not the client's own`, out);
    }
    if (port < 1024) {
      out.push({ type: 'log', level: 'notice', msg: 'privileged data port refused', fields: { verb: cmd.kind, dataPort: port } });
      return this.answerLocally(`501 ${cmd.kind} refused: ports below 1024 are not allowed`, out);
    }
    const a = this.o.addressing;
    this.startOpen(
      {
        kind: 'active',
        request: {
          sid: this.o.sid,
          kind: 'active',
          family: this.serverFamily,
          peer: this.o.server.address,
          listen: a.activeListen,
          target: { address: this.o.client.address, port },
          source: a.activeSource,
          ...(this.o.rewriteSourcePort ? { sourcePort: 20 } : {}),
        },
      },
      out,
    );
  }

  private startOpen(
    w: { kind: 'passive'; reply: 227 | 229; request: DataPathRequest } | { kind: 'active'; request: DataPathRequest },
    out: Action[],
  ): void {
    const token = this.nextToken++;
    this.waiting = w.kind === 'passive' ? { token, kind: 'passive', reply: w.reply } : { token, kind: 'active' };
    out.push({ type: 'open', token, request: w.request });
  }

  private replacePath(path: DataPath | null, out: Action[]): void {
    if (this.path) out.push({ type: 'release', id: this.path.id });
    this.path = path;
  }

  private releaseIfCurrent(pathId: string | null, out: Action[]): void {
    if (pathId !== null && this.path?.id === pathId) this.replacePath(null, out);
  }

  private handleServer(reply: Reply, out: Action[]): void {
    const head = this.pending[0];
    if (reply.code < 200) {
      if (head?.kind === 'transfer' && !this.transferring) {
        this.transferring = true;
        out.push({ type: 'transfer', active: true });
      }
      out.push({ type: 'toClient', text: reply.lines.join('\r\n') });
      return;
    }
    if (!head || head.kind === 'local') {
      // Unsolicited (greeting, 421 before closing): pass it on.
      out.push({ type: 'toClient', text: reply.lines.join('\r\n') });
      return;
    }
    this.pending.shift();
    switch (head.kind) {
      case 'passive':
        if (reply.code === 227 || reply.code === 229) {
          this.passiveReply(head.reply, reply, out);
        } else {
          out.push({ type: 'toClient', text: reply.lines.join('\r\n') });
        }
        break;
      case 'active':
        // The reply goes first here and below: releasing is housekeeping the client need not
        // wait for.
        out.push({ type: 'toClient', text: reply.lines.join('\r\n') });
        if (reply.code >= 400) this.releaseIfCurrent(head.pathId, out);
        break;
      case 'transfer':
        if (this.transferring) {
          this.transferring = false;
          out.push({ type: 'transfer', active: false });
        }
        out.push({ type: 'toClient', text: reply.lines.join('\r\n') });
        // The transfer is over (or never started): its data path admits nothing more. Only
        // that path: a server that skips a reply (pure-ftpd after ABOR) must not make us
        // release a path negotiated after it.
        this.releaseIfCurrent(head.pathId, out);
        break;
      case 'other':
        if (!this.loggedIn && (reply.code === 230 || reply.code === 232)) {
          this.loggedIn = true;
          out.push({ type: 'loggedIn' });
        }
        out.push({ type: 'toClient', text: reply.lines.join('\r\n') });
        break;
      case 'auth':
        out.push({ type: 'toClient', text: reply.lines.join('\r\n') });
        if (reply.code === 234) {
          this.replacePath(null, out);
          this.closed = true;
          out.push({ type: 'opaque' });
          return;
        }
        break;
    }
    this.flushLocal(out);
  }

  private flushLocal(out: Action[]): void {
    while (!this.waiting) {
      const head = this.pending[0];
      if (head?.kind !== 'local') return;
      this.pending.shift();
      out.push({ type: 'toClient', text: head.text });
    }
  }

  private passiveReply(want: 227 | 229, reply: Reply, out: Action[]): void {
    let port: number;
    try {
      const first = reply.lines[0]!;
      port = reply.code === 227 ? parse227(first).port : parse229(first);
    } catch (e) {
      const err = e instanceof ProtocolError ? e : new ProtocolError('BAD_REPLY', String(e));
      out.push({ type: 'log', level: 'warn', msg: 'bad passive reply from server', fields: { code: err.code, reply: stripTelnet(reply.lines[0] ?? '') } });
      out.push({ type: 'toClient', text: "425 Can't open data connection: the server's passive reply was not understood" });
      return;
    }
    const a = this.o.addressing;
    if (a.passiveDirect) {
      out.push({ type: 'log', level: 'info', msg: 'passive data direct to server', fields: { dataPort: port } });
      out.push({
        type: 'toClient',
        text: want === 227 ? format227({ address: this.o.server.address, port }) : format229(port),
      });
      return;
    }
    this.startOpen(
      {
        kind: 'passive',
        reply: want,
        request: {
          sid: this.o.sid,
          kind: 'passive',
          family: this.clientFamily,
          peer: this.o.client.address,
          listen: a.passiveListen,
          target: { address: this.o.server.address, port },
          source: a.passiveSource,
        },
      },
      out,
    );
  }
}
