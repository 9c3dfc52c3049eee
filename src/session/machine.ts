// The pure FTP session state machine: client lines, server replies and data-plane results
// in; lines to send, data paths to open or release, and log records out. No I/O, no timers.

import { classifyCommand, isAnonymous, removeTelnet, stripTelnet, type Command, type TransferVerb } from '../protocol/commands.js';
import { format227, format229, formatEprt, formatPort } from '../protocol/format.js';
import { parse227, parse229, type Reply } from '../protocol/replies.js';
import type { DataPath, DataPathRequest, Endpoint } from '../dataplane/types.js';
import { ProtocolError, type FtpProxyError } from '../errors.js';
import { familyOf } from '../net/address.js';
import { nextDirectory, typeAfter } from '../transfer.js';

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
   * mode, IPv6 clients, with a relay that cannot listen on the server's address).
   */
  readonly passiveDirect?: boolean;
  /**
   * EPSV (and EPSV ALL) is answered with 502 so that the client falls back to PASV: an EPSV
   * client connects to the control connection's address (RFC 2428), which in outbound mode is
   * the real server (outbound mode, IPv4 clients, with a relay that cannot listen there).
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
  /**
   * `urgent`: applied before the next reply goes out where the data plane can (a refused
   * transfer's path: its client must not be able to race the reply to the port).
   */
  | { readonly type: 'release'; readonly id: string; readonly urgent?: boolean }
  | { readonly type: 'transfer'; readonly active: boolean }
  /** Transfer command `seq` was forwarded: the shell stamps its start time. */
  | { readonly type: 'transferStarted'; readonly seq: number }
  /**
   * Transfer command `seq` has its final reply (`code`), was skipped by the server or cut by the
   * session's end (`code` null). `path`: the data path negotiated for it, to ask the data plane
   * what it carried; `counted` false when data could have gone around the proxy (passive-direct).
   */
  | {
      readonly type: 'transferEnded';
      readonly seq: number;
      readonly verb: TransferVerb;
      readonly arg: string;
      readonly code: number | null;
      readonly abortSent: boolean;
      readonly path: { readonly id: string; readonly kind: 'passive' | 'active' } | null;
      readonly counted: boolean;
      /** How its data connection was negotiated (PASV/EPSV or PORT/EPRT; passive when none was). */
      readonly mode: 'passive' | 'active';
    }
  /** The server accepted the login (230/232): login-phase limits end. */
  | { readonly type: 'loggedIn' }
  /** TLS starts now: from here on the shell relays bytes without reading them. */
  | { readonly type: 'opaque' }
  | { readonly type: 'close'; readonly reason: string; readonly reply?: string }
  | { readonly type: 'log'; readonly level: LogLevel; readonly msg: string; readonly fields?: Record<string, unknown> };

/**
 * What a forwarded (or locally answered) command expects as its reply. `neg` numbers the
 * data-connection negotiation (PASV/EPSV/PORT/EPRT) a command belongs to: a transfer is tied
 * to the last one sent before it, whichever path that negotiation ends up with.
 */
type Pending =
  /** The server's greeting: nothing is sent to the server before it. */
  | { readonly kind: 'greeting' }
  | { readonly kind: 'passive'; readonly reply: 227 | 229; readonly neg: number }
  | { readonly kind: 'active'; readonly neg: number }
  /** `aborted`: an ABOR was forwarded while it was outstanding. */
  | {
      readonly kind: 'transfer';
      readonly verb: TransferVerb;
      readonly arg: string;
      readonly neg: number;
      readonly mode: 'passive' | 'active';
      readonly seq: number;
      aborted: boolean;
    }
  | { readonly kind: 'abor' }
  | { readonly kind: 'other'; readonly verb: string; readonly arg: string }
  | { readonly kind: 'auth' }
  /** Answered by the proxy itself; emitted in turn so replies stay in command order. */
  | { readonly kind: 'local'; readonly text: string };

type Waiting =
  | { readonly token: number; readonly kind: 'passive'; readonly reply: 227 | 229; readonly neg: number }
  | { readonly token: number; readonly kind: 'active'; readonly neg: number };

const DEFAULT_MAX_QUEUED = 256;

/**
 * Whether a final reply (2xx-5xx) can answer `p`. Only the proxy's own PASV/EPSV may take a
 * 227 or 229, and it takes nothing else but errors (RFC 959 5.4, RFC 2428): that is enough to
 * notice a server that skipped or added replies around a data-connection negotiation, which is
 * where pairing matters. Elsewhere the text goes to the client unchanged either way.
 */
function accepts(p: Pending, code: number): boolean {
  const passiveCode = code === 227 || code === 229;
  if (p.kind === 'passive') return passiveCode || code >= 400;
  return p.kind !== 'local' && !passiveCode;
}

const EPSV_REFUSED = '502 EPSV not available through this gateway, use PASV';

export class SessionMachine {
  private readonly pending: Pending[] = [{ kind: 'greeting' }];
  private readonly heldClient: string[] = [];
  private readonly heldServer: Reply[] = [];
  private waiting: Waiting | null = null;
  private nextToken = 1;
  /** Negotiations sent so far; 0 = none yet. */
  private neg = 0;
  /** The session's current data path and the negotiation it answers. */
  private path: { readonly path: DataPath; readonly neg: number; readonly kind: 'passive' | 'active' } | null = null;
  /** The data plane lost the current path (dataLost): its transfer gets 425. */
  private pathLost = false;
  /** The last negotiation answered with the server's own port (passiveDirect): nothing to count. */
  private directNeg = 0;
  private transferSeq = 0;
  /** How the last negotiation was asked for. */
  private negMode: 'passive' | 'active' = 'passive';
  private transferring = false;
  private epsvAll = false;
  private greeted = false;
  private loggedIn = false;
  private closed = false;
  /** What the server accepted, for the session's records and view. */
  private userName: string | null = null;
  private cwd: string | null = null;
  private repType: 'ascii' | 'binary' = 'ascii';
  private ended = 0;
  /**
   * A reply being forwarded in pieces (see Reply.partial): whether it is dropped, and whether
   * it is the final reply of the command at the head of `pending`.
   */
  private streaming: { readonly drop: boolean; readonly head: boolean } | null = null;
  /** Refusals and anomalies by kind: each is logged the first time, then only counted. */
  private readonly repeats = new Map<string, number>();
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
    return this.pending.length - (this.pending[0]?.kind === 'greeting' ? 1 : 0) + this.heldClient.length;
  }

  /** Server replies (or pieces of one) held while a data-plane operation is under way. */
  get heldReplies(): number {
    return this.heldServer.length;
  }

  get transferActive(): boolean {
    return this.transferring;
  }

  /** The name of the last USER command forwarded (null after REIN). */
  get user(): string | null {
    return this.userName;
  }

  /** The server's working directory, when its replies made it known. */
  get directory(): string | null {
    return this.cwd;
  }

  /** The representation type the server accepted last (FTP starts in ASCII). */
  get type(): 'ascii' | 'binary' {
    return this.repType;
  }

  /** Transfer commands that have ended. */
  get transfers(): number {
    return this.ended;
  }

  get state(): 'login' | 'idle' | 'transfer' {
    return this.transferring ? 'transfer' : this.loggedIn ? 'idle' : 'login';
  }

  /** The data path currently held and how it was negotiated, for the session's view. */
  get currentPathMode(): 'passive' | 'active' | null {
    return this.path?.kind ?? null;
  }

  /** The data path currently held, for teardown. */
  get currentPath(): DataPath | null {
    return this.path?.path ?? null;
  }

  /** Token of the data-plane operation under way, if any (teardown releases what it yields). */
  get waitingToken(): number | null {
    return this.waiting?.token ?? null;
  }

  /** How often each refusal or anomaly that was logged once happened in all (counts above 1). */
  get repeated(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [kind, n] of this.repeats) if (n > 1) out[kind] = n;
    return out;
  }

  clientLine(line: string): Action[] {
    const out: Action[] = [];
    if (this.closed) return out;
    if (this.waiting || !this.greeted) {
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
    this.drain(out);
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
    this.replacePath({ path, neg: w.neg, kind: w.kind }, out);
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
      this.pending.push({ kind: 'active', neg: w.neg });
      out.push({ type: 'toServer', text: this.serverFamily === 4 ? formatPort(ep) : formatEprt(ep) });
    }
    this.flushLocal(out);
    this.drain(out);
    return out;
  }

  /**
   * The data plane lost path `id` and could not put it back (its firewall table was removed):
   * the transfer that would use it is answered 425 by the proxy, and a new PASV or PORT works.
   */
  dataLost(id: string): Action[] {
    if (this.path?.path.id === id) this.pathLost = true;
    return [];
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

  /**
   * The session is ending: nothing more is emitted but the end of each transfer still
   * outstanding, which the session's end cuts off.
   */
  close(): Action[] {
    const out: Action[] = [];
    if (this.closed && this.pending.length === 0) return out;
    this.closed = true;
    this.heldClient.length = 0;
    this.heldServer.length = 0;
    for (const p of this.pending.splice(0)) if (p.kind === 'transfer') this.transferEnded(p, null, out);
    return out;
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
      if (!this.greeted) break;
      const line = this.heldClient.shift();
      if (line === undefined) break;
      this.handleClient(line, out);
    }
  }

  /**
   * Log the first occurrence of `kind` in this session; later ones are only counted (a client
   * repeating a refused command must not flood the log, nor the event loop with log lines).
   */
  private once(kind: string, level: LogLevel, msg: string, fields: Record<string, unknown>, out: Action[]): void {
    const n = (this.repeats.get(kind) ?? 0) + 1;
    this.repeats.set(kind, n);
    if (n === 1) out.push({ type: 'log', level, msg, fields });
  }

  /** A command the proxy refuses itself: logged once per kind, answered in turn. */
  private refuse(kind: string, text: string, out: Action[], log?: { msg: string; fields?: Record<string, unknown> }): void {
    this.once(kind, 'notice', log?.msg ?? 'command refused', { refusal: kind, ...log?.fields }, out);
    this.answerLocally(text, out);
  }

  private handleClient(raw: string, out: Action[]): void {
    // What the server gets is exactly what was classified: Telnet bytes removed everywhere,
    // and no bare CR (a server that ends lines at CR would see a second, unvetted command).
    const line = removeTelnet(raw);
    if (line.includes('\r')) {
      return this.refuse('bare CR', '500 Bare CR in command line', out, { msg: 'bare CR in a command refused' });
    }
    const cmd = classifyCommand(line);
    switch (cmd.kind) {
      case 'PASV':
        return this.passive(227, out);
      case 'EPSV':
        if (this.o.addressing.epsvRefused) return this.answerLocally(EPSV_REFUSED, out);
        if (cmd.family !== undefined && cmd.family !== (this.clientFamily === 4 ? 1 : 2)) {
          return this.refuse('EPSV family', `522 Network protocol not supported, use (${this.clientFamily === 4 ? 1 : 2})`, out);
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
        return this.refuse(cmd.kind, `502 ${cmd.kind} is not supported, use ${cmd.kind === 'LPRT' ? 'EPRT' : 'EPSV'}`, out);
      case 'INVALID':
        return this.refuse(`invalid ${cmd.verb}`, `501 ${cmd.error.message}`, out, {
          msg: 'bad command from client',
          fields: { verb: cmd.verb, code: cmd.error.code },
        });
      case 'USER':
        if (this.o.anonymousOnly && !isAnonymous(cmd.name)) {
          return this.refuse('non-anonymous login', '530 Only anonymous logins are allowed through this proxy', out, {
            msg: 'non-anonymous login refused',
            fields: { user: cmd.name },
          });
        }
        out.push({ type: 'log', level: 'info', msg: 'login', fields: { user: cmd.name } });
        this.userName = cmd.name;
        this.cwd = null;
        return this.forward(line, { kind: 'other', verb: 'USER', arg: cmd.name }, out);
      case 'AUTH':
        if (this.o.tls === 'pass') {
          this.once(
            'AUTH passed',
            'warn',
            'AUTH passed through: if the server accepts, this session is encrypted and its data connections are not admitted',
            { mechanism: cmd.mechanism },
            out,
          );
          return this.forward(line, { kind: 'auth' }, out);
        }
        // No ALG can rewrite PORT/PASV inside TLS; refusing lets the client fall back to plain FTP.
        return this.refuse('AUTH', '534 AUTH not available through this proxy, continue without TLS', out, {
          msg: 'AUTH refused: TLS cannot pass an FTP proxy',
          fields: { mechanism: cmd.mechanism },
        });
      case 'TRANSFER': {
        if (this.pathLost && this.path?.neg === this.neg) {
          this.releaseNegotiated(this.neg, out);
          return this.refuse('data path lost', "425 Can't open data connection: the proxy lost it (firewall reloaded), negotiate again", out, {
            msg: 'transfer refused: its data path was lost with the nftables table',
          });
        }
        const seq = ++this.transferSeq;
        out.push({ type: 'transferStarted', seq });
        return this.forward(line, { kind: 'transfer', verb: cmd.verb, arg: cmd.arg, neg: this.neg, mode: this.negMode, seq, aborted: false }, out);
      }
      case 'ABOR':
        // Sent clean, and urgent (Telnet IP and the Synch) only when the client's own ABOR
        // came that way: the server sees what it would see without the proxy. (pure-ftpd
        // drops a line with Telnet bytes once its transfer has ended, so always adding them
        // loses ABORs; a server that needs them mid-transfer gets them from such clients.)
        for (const p of this.pending) if (p.kind === 'transfer') p.aborted = true;
        this.pending.push({ kind: 'abor' });
        out.push({ type: 'toServer', text: 'ABOR', urgent: raw.startsWith('\xff\xf4') });
        return;
      case 'QUIT':
      case 'CCC':
        return this.forward(line, { kind: 'other', verb: cmd.kind, arg: '' }, out);
      case 'OTHER':
        if (cmd.verb === 'REIN') (this.userName = null), (this.cwd = null);
        return this.forward(line, { kind: 'other', verb: cmd.verb, arg: cmd.arg }, out);
    }
  }

  private forward(line: string, pending: Pending, out: Action[]): void {
    this.pending.push(pending);
    out.push({ type: 'toServer', text: line });
  }

  /** Reply from the proxy itself, in turn with the server's replies to earlier commands. */
  private answerLocally(text: string, out: Action[]): void {
    if (this.pending.length === 0 && !this.streaming) {
      out.push({ type: 'toClient', text });
    } else {
      this.pending.push({ kind: 'local', text });
    }
  }

  private passive(reply: 227 | 229, out: Action[]): void {
    if (this.epsvAll && reply === 227) {
      return this.refuse('PASV after EPSV ALL', '503 Only EPSV is allowed after EPSV ALL', out);
    }
    if (reply === 227 && this.clientFamily === 6) {
      return this.refuse('PASV from IPv6', '500 PASV carries IPv4 addresses only, use EPSV', out);
    }
    // IPv4 servers all understand PASV; IPv6 ones need EPSV. The server's address in its
    // reply is never used, only its port.
    this.negMode = 'passive';
    this.forward(this.serverFamily === 4 ? 'PASV' : 'EPSV', { kind: 'passive', reply, neg: ++this.neg }, out);
  }

  private active(cmd: Extract<Command, { kind: 'PORT' | 'EPRT' }>, out: Action[]): void {
    if (this.epsvAll) {
      return this.refuse(`${cmd.kind} after EPSV ALL`, '503 Only EPSV is allowed after EPSV ALL', out);
    }
    const family = cmd.kind === 'PORT' ? 4 : cmd.family === 1 ? 4 : 6;
    if (family !== this.clientFamily) {
      return this.refuse(
        `${cmd.kind} family`,
        cmd.kind === 'EPRT'
          ? `522 Network protocol not supported, use (${this.clientFamily === 4 ? 1 : 2})`
          : '500 PORT carries IPv4 addresses only, use EPRT',
        out,
      );
    }
    const { address, port } = cmd.endpoint;
    // RFC 2577: data goes only to the client's own address and to an unprivileged port.
    if (address !== this.o.client.address) {
      return this.refuse('bounce', `501 ${cmd.kind} refused: address is not the client's own`, out, {
        msg: 'bounce attempt refused',
        fields: { verb: cmd.kind, announced: address, dataPort: port },
      });
    }
    if (port < 1024) {
      return this.refuse('privileged port', `501 ${cmd.kind} refused: ports below 1024 are not allowed`, out, {
        msg: 'privileged data port refused',
        fields: { verb: cmd.kind, dataPort: port },
      });
    }
    const a = this.o.addressing;
    this.negMode = 'active';
    this.startOpen(
      { kind: 'active', neg: ++this.neg },
      {
        sid: this.o.sid,
        kind: 'active',
        family: this.serverFamily,
        peer: this.o.server.address,
        listen: a.activeListen,
        target: { address: this.o.client.address, port },
        source: a.activeSource,
        ...(this.o.rewriteSourcePort ? { sourcePort: 20 } : {}),
      },
      out,
    );
  }

  private startOpen(
    w: { kind: 'passive'; reply: 227 | 229; neg: number } | { kind: 'active'; neg: number },
    request: DataPathRequest,
    out: Action[],
  ): void {
    const token = this.nextToken++;
    this.waiting = { ...w, token };
    out.push({ type: 'open', token, request });
  }

  private replacePath(path: SessionMachine['path'], out: Action[], urgent = false): void {
    if (this.path) out.push({ type: 'release', id: this.path.path.id, ...(urgent ? { urgent } : {}) });
    this.path = path;
    this.pathLost = false;
  }

  /** The path negotiated by `neg` admits nothing more (its transfer is over or refused). */
  private releaseNegotiated(neg: number, out: Action[], urgent = false): void {
    if (this.path?.neg === neg) this.replacePath(null, out, urgent);
  }

  private handleServer(reply: Reply, out: Action[]): void {
    if (this.streaming) {
      // The rest of a reply whose pairing was settled on its first piece.
      const { drop, head } = this.streaming;
      if (!drop) out.push({ type: 'toClient', text: reply.lines.join('\r\n') });
      if (reply.partial) return;
      this.streaming = null;
      const ended = head ? this.pending.shift() : undefined;
      if (ended) this.complete(ended, { code: reply.code, lines: [] }, out);
      else this.flushLocal(out);
      return;
    }
    if (reply.code < 200) return this.preliminary(reply, out);
    const at = this.pending.findIndex((p) => accepts(p, reply.code));
    if (at === -1) return this.unpaired(reply, out);
    this.skip(at, out);
    if (reply.partial) {
      // A long reply goes out as it comes; its command stays at the head (so that local
      // answers queue behind it) until the last piece, and then ends as usual.
      this.streaming = { drop: false, head: true };
      out.push({ type: 'toClient', text: reply.lines.join('\r\n') });
      return;
    }
    this.complete(this.pending.shift()!, reply, out);
  }

  /** 1xx: forwarded; it starts a transfer, and the greeting (120) waits for its 220. */
  private preliminary(reply: Reply, out: Action[]): void {
    const head = this.pending.find((p) => p.kind !== 'local');
    if (head?.kind === 'transfer' && !this.transferring) {
      this.transferring = true;
      out.push({ type: 'transfer', active: true });
    }
    if (reply.partial) this.streaming = { drop: false, head: false };
    out.push({ type: 'toClient', text: reply.lines.join('\r\n') });
  }

  /**
   * A final reply that no outstanding command can take: one the server added. A 227/229 never
   * reaches the client unless it answers the proxy's own PASV/EPSV (it could steer the client
   * anywhere); an error with nothing outstanding (421 before closing) is passed on.
   */
  private unpaired(reply: Reply, out: Action[]): void {
    const passiveCode = reply.code === 227 || reply.code === 229;
    if (passiveCode || this.pending.some((p) => p.kind !== 'local')) {
      this.once(`extra ${reply.code}`, 'warn', 'reply from the server that answers no command dropped', {
        reply: stripTelnet(reply.lines[0] ?? '').slice(0, 120),
      }, out);
      if (reply.partial) this.streaming = { drop: true, head: false };
      return;
    }
    if (reply.partial) this.streaming = { drop: false, head: false };
    out.push({ type: 'toClient', text: reply.lines.join('\r\n') });
  }

  /**
   * Replies are in command order (RFC 959), so a reply that only a later command can take
   * means the server skipped the ones before it (pure-ftpd answers a RETR whose data
   * connection was reset with a 150 alone, then ABOR with one 226). The client saw the same
   * replies as the proxy and pairs them as it would without it; only the proxy's own record
   * catches up: those commands end here without a reply, and their data paths go.
   */
  private skip(at: number, out: Action[]): void {
    const target = this.pending[at];
    while (this.pending[0] !== target) {
      const p = this.pending.shift()!;
      if (p.kind === 'local') {
        out.push({ type: 'toClient', text: p.text });
        continue;
      }
      this.once(`skipped ${p.kind}`, 'warn', 'the server skipped a reply', { command: p.kind }, out);
      this.complete(p, { code: 0, lines: [] }, out);
    }
  }

  /**
   * `head` has its final reply: forward it (no lines: already forwarded, or skipped by the
   * server; code 0: skipped) and do what the end of that command means.
   */
  private complete(head: Pending, reply: Reply, out: Action[]): void {
    const text = reply.lines.join('\r\n');
    const send = (): void => {
      if (reply.lines.length > 0) out.push({ type: 'toClient', text });
    };
    switch (head.kind) {
      case 'greeting':
        this.greeted = true;
        send();
        break;
      case 'passive':
        if (reply.code === 227 || reply.code === 229) this.passiveReply(head, reply, out);
        else send();
        break;
      case 'active':
        // Refused: the path goes before the reply, so that nobody can use it after reading it.
        if (reply.code >= 400 || reply.code === 0) this.releaseNegotiated(head.neg, out, true);
        send();
        break;
      case 'transfer':
        if (this.transferring) {
          this.transferring = false;
          out.push({ type: 'transfer', active: false });
        }
        // The transfer is over (or never started): the path negotiated for it admits nothing
        // more. Only that one: a path negotiated after it stays. After a success the reply goes
        // first (releasing is housekeeping the client need not wait for); after a failure the
        // path goes first, so that the client cannot race the reply to it. The transfer ends
        // before the release, so that the data plane can still be asked about the path.
        if (reply.code >= 400 || reply.code === 0) {
          this.transferEnded(head, reply.code === 0 ? null : reply.code, out);
          this.releaseNegotiated(head.neg, out, true);
          send();
        } else {
          send();
          this.transferEnded(head, reply.code, out);
          this.releaseNegotiated(head.neg, out);
        }
        break;
      case 'abor':
      case 'other':
      case 'local':
        if (head.kind === 'other' && reply.code >= 200 && reply.code < 300) this.accepted(head, reply);
        if (!this.loggedIn && (reply.code === 230 || reply.code === 232)) {
          this.loggedIn = true;
          out.push({ type: 'loggedIn' });
        }
        send();
        break;
      case 'auth':
        send();
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

  private transferEnded(head: Extract<Pending, { kind: 'transfer' }>, code: number | null, out: Action[]): void {
    this.ended++;
    const p = this.path?.neg === head.neg && head.neg > 0 ? this.path : null;
    out.push({
      type: 'transferEnded',
      seq: head.seq,
      verb: head.verb,
      arg: head.arg,
      code,
      abortSent: head.aborted,
      path: p ? { id: p.path.id, kind: p.kind } : null,
      counted: head.neg === 0 || head.neg !== this.directNeg,
      mode: head.mode,
    });
  }

  /** A command the server accepted (2xx) that changes what the session's records say. */
  private accepted(head: Extract<Pending, { kind: 'other' }>, reply: Reply): void {
    if (head.verb === 'TYPE') this.repType = typeAfter(head.arg);
    else this.cwd = nextDirectory(this.cwd, head.verb, head.arg, reply.lines.join('\n'));
  }

  private flushLocal(out: Action[]): void {
    while (!this.waiting && !this.streaming) {
      const head = this.pending[0];
      if (head?.kind !== 'local') return;
      this.pending.shift();
      out.push({ type: 'toClient', text: head.text });
    }
  }

  private passiveReply(head: Extract<Pending, { kind: 'passive' }>, reply: Reply, out: Action[]): void {
    let port: number;
    try {
      if (reply.truncated) throw new ProtocolError('REPLY_TOO_LONG', 'passive reply too long');
      port = passivePort(reply);
    } catch (e) {
      const err = e instanceof ProtocolError ? e : new ProtocolError('BAD_REPLY', String(e));
      this.once('bad passive reply', 'warn', 'bad passive reply from server', { code: err.code, reply: stripTelnet(reply.lines[0] ?? '').slice(0, 120) }, out);
      out.push({ type: 'toClient', text: "425 Can't open data connection: the server's passive reply was not understood" });
      return;
    }
    const a = this.o.addressing;
    if (a.passiveDirect) {
      this.directNeg = head.neg;
      out.push({ type: 'log', level: 'info', msg: 'passive data direct to server', fields: { dataPort: port } });
      out.push({
        type: 'toClient',
        text: head.reply === 227 ? format227({ address: this.o.server.address, port }) : format229(port),
      });
      return;
    }
    this.startOpen(
      { kind: 'passive', reply: head.reply, neg: head.neg },
      {
        sid: this.o.sid,
        kind: 'passive',
        family: this.clientFamily,
        peer: this.o.client.address,
        listen: a.passiveListen,
        target: { address: this.o.server.address, port },
        source: a.passiveSource,
      },
      out,
    );
  }
}

/**
 * The data port of a 227 or 229 reply: the first line of it that carries one (real servers
 * send `227-Entering Passive Mode` and put the numbers on the closing line).
 */
function passivePort(reply: Reply): number {
  const code = String(reply.code);
  let first: unknown;
  for (const raw of reply.lines) {
    const line = raw.startsWith(code) ? raw : `${code} ${raw}`;
    try {
      return reply.code === 227 ? parse227(line).port : parse229(line);
    } catch (e) {
      first ??= e;
    }
  }
  throw first;
}
