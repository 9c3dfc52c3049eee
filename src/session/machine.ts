// The pure FTP session state machine: client lines, server replies and data-plane results
// in; lines to send, data paths to open or release, and log records out. No I/O, no timers.

import { classifyCommand, isAnonymous, removeTelnet, stripTelnet, verbOf, type Command, type TransferVerb } from '../protocol/commands.js';
import { format227, format229, formatEprt, formatPort } from '../protocol/format.js';
import { parse227, parse229, type Reply } from '../protocol/replies.js';
import type { DataPath, DataPathRequest, Endpoint, JoinRequest, MeetRequest } from '../dataplane/types.js';
import { ProtocolError, type FtpProxyError } from '../errors.js';
import { familyOf } from '../net/address.js';
import { nextDirectory, typeAfter } from '../transfer.js';
import type { CommandPolicy } from './policy.js';

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
  /** Verbs the proxy refuses itself (--deny-command, --read-only); absent: none. */
  readonly policy?: CommandPolicy;
  readonly rewriteSourcePort: boolean;
  /**
   * AUTH TLS/SSL: 'refuse' answers 534 so the client goes on in plain FTP; 'pass' forwards it
   * and, once the server accepts (234), the session becomes an opaque byte relay; 'terminate'
   * answers 234 itself (the shell then does the handshake), and PBSZ, PROT and CCC too: the
   * server never sees them and stays plain FTP.
   */
  readonly tls?: 'refuse' | 'pass' | 'terminate';
  /**
   * --user-at-host: the client was greeted by the proxy and logged in as name@host. The server's
   * greeting is not passed on; a 220 is answered with USER `loginAs` as if the client had sent
   * it, and the reply to that goes to the client as the reply to its own USER.
   */
  readonly loginAs?: string;
  /** 'terminate': USER and PASS before AUTH get 530. */
  readonly tlsRequired?: boolean;
  /** 'terminate', implicit FTPS: the control connection is TLS from the start, data PROT P. */
  readonly implicitTls?: boolean;
  /**
   * --server-tls explicit: after the server's greeting the proxy sends it AUTH TLS (the shell
   * then does the handshake), PBSZ 0 and PROT P; the client's lines wait until then.
   */
  readonly serverTls?: boolean;
  /** Pipelined lines held while a data-plane operation is under way; beyond this the session ends. */
  readonly maxQueued?: number;
  /**
   * How data connections are asked of the server. 'client' (default): as the client asked.
   * 'passive': a client's PORT/EPRT is answered by the proxy, which asks the server for PASV/EPSV
   * and joins the two data connections (a gateway that cannot take inbound connections).
   * 'active': a client's PASV/EPSV is answered from the proxy's own listener, and the server is
   * sent PORT/EPRT to another (a server that takes no inbound data connections).
   */
  readonly serverMode?: 'client' | 'passive' | 'active';
}

export type LogLevel = 'debug' | 'info' | 'notice' | 'warn' | 'error';

export type Action =
  | { readonly type: 'toClient'; readonly text: string }
  /** `urgent`: an ABOR, to be sent with the Telnet Synch (TCP urgent data). */
  | { readonly type: 'toServer'; readonly text: string; readonly urgent?: boolean }
  /** `protect`: PROT P is in force: the client's side of this data connection is TLS. */
  | { readonly type: 'open'; readonly token: number; readonly request: DataPathRequest; readonly protect?: true }
  /** Mode translation: connect to the server's passive port now, to the client on `proceed`. */
  | { readonly type: 'join'; readonly token: number; readonly request: JoinRequest }
  /** The other translation: listen for both the client and the server. */
  | { readonly type: 'meet'; readonly token: number; readonly request: MeetRequest }
  /** The server started the transfer on joined path `id`: connect to the client. */
  | { readonly type: 'proceed'; readonly id: string }
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
  /**
   * 'terminate': the 234 is out; the shell turns the client's socket into a TLS server socket
   * now, and drops whatever it read after AUTH (plaintext a client may not send there).
   */
  | { readonly type: 'startTls' }
  /** --server-tls explicit: the server said 234; the shell starts TLS toward it, then calls serverSecured(). */
  | { readonly type: 'startServerTls' }
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
  /** The proxy's PASV/EPSV for a client's PORT/EPRT (serverMode 'passive'): `client` is where it listens. */
  | { readonly kind: 'convert'; readonly neg: number; readonly verb: 'PORT' | 'EPRT'; readonly client: Endpoint }
  /** The proxy's PORT/EPRT for a client's PASV/EPSV (serverMode 'active'); `port` is the client's. */
  | { readonly kind: 'met'; readonly neg: number; readonly reply: 227 | 229; readonly port: number }
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
  | { readonly kind: 'local'; readonly text: string }
  /** --server-tls explicit: the proxy's own AUTH, PBSZ and PROT toward the server; never seen by the client. */
  | { readonly kind: 'internal'; readonly verb: 'AUTH' | 'PBSZ' | 'PROT' };

type Waiting =
  | { readonly token: number; readonly kind: 'passive'; readonly reply: 227 | 229; readonly neg: number }
  | { readonly token: number; readonly kind: 'active'; readonly neg: number }
  | { readonly token: number; readonly kind: 'convert'; readonly verb: 'PORT' | 'EPRT'; readonly neg: number }
  | { readonly token: number; readonly kind: 'meet'; readonly reply: 227 | 229; readonly neg: number };

/**
 * The data path the session holds. `joined`: a mode-translated one, and whether the data
 * plane was told to proceed (connect to the client) yet.
 */
interface HeldPath {
  readonly path: DataPath;
  readonly neg: number;
  readonly kind: 'passive' | 'active';
  readonly joined?: { proceeded: boolean };
}

const DEFAULT_MAX_QUEUED = 256;

/**
 * Whether a final reply (2xx-5xx) can answer `p`. Only the proxy's own PASV/EPSV may take a
 * 227 or 229, and it takes nothing else but errors (RFC 959 5.4, RFC 2428): that is enough to
 * notice a server that skipped or added replies around a data-connection negotiation, which is
 * where pairing matters. Elsewhere the text goes to the client unchanged either way.
 */
function accepts(p: Pending, code: number): boolean {
  const passiveCode = code === 227 || code === 229;
  if (p.kind === 'passive' || p.kind === 'convert') return passiveCode || code >= 400;
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
  private path: HeldPath | null = null;
  /** The data plane lost the current path (dataLost): its transfer gets 425. */
  private pathLost = false;
  /** The last negotiation answered with the server's own port (passiveDirect): nothing to count. */
  private directNeg = 0;
  private transferSeq = 0;
  /** How the last negotiation was asked for. */
  private negMode: 'passive' | 'active' = 'passive';
  private transferring = false;
  private epsvAll = false;
  /** 'terminate': the client's control connection is TLS; PBSZ was accepted; PROT in force. */
  private secured = false;
  private pbsz = false;
  private prot: 'C' | 'P' = 'C';
  /** --server-tls explicit: the server's side is not yet protected; client lines wait. */
  private serverPending: boolean;
  /** PROT P handshakes on the path of negotiation `neg`: under way, and whether any passed or failed. */
  private readonly protectedData = { neg: 0, handshakes: 0, admitted: false, refused: false };
  /** Server replies are held until those handshakes are over (awaitsHandshake). */
  private tlsHeld = false;
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
    if (o.implicitTls) (this.secured = true), (this.pbsz = true), (this.prot = 'P');
    this.serverPending = o.serverTls === true;
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
    if (this.waiting || !this.greeted || this.serverPending) {
      this.hold(this.heldClient, line, out);
      return out;
    }
    this.handleClient(line, out);
    return out;
  }

  serverReply(reply: Reply): Action[] {
    const out: Action[] = [];
    if (this.closed) return out;
    if (this.waiting || this.tlsHeld || this.awaitsHandshake(reply)) {
      if (!this.waiting) this.tlsHeld = true;
      this.hold(this.heldServer, reply, out);
      return out;
    }
    this.handleServer(reply, out);
    this.drain(out);
    return out;
  }

  /**
   * A PROT P data connection of the current path started its TLS handshake, or passed or failed
   * the check (the shell hears it from the session's TLS). A transfer's final reply waits while
   * a handshake is under way: the server may have sent a whole file into a connection the
   * client will not get, and then its 226 (or 426) becomes 522, which says why.
   */
  protectedHandshake(event: 'start' | 'admitted' | 'refused'): Action[] {
    const out: Action[] = [];
    if (this.closed) return out;
    const p = this.protectedData;
    const neg = this.path?.neg ?? 0;
    if (p.neg !== neg) Object.assign(p, { neg, handshakes: 0, admitted: false, refused: false });
    if (event === 'start') {
      p.handshakes++;
      return out;
    }
    p.handshakes = Math.max(0, p.handshakes - 1);
    if (event === 'admitted') p.admitted = true;
    else p.refused = true;
    if (p.handshakes === 0 && this.tlsHeld) {
      this.tlsHeld = false;
      this.drain(out);
    }
    return out;
  }

  /** A final reply to a transfer while one of its PROT P data connections is in its handshake. */
  private awaitsHandshake(reply: Reply): boolean {
    if (reply.code < 200 || this.streaming || this.protectedData.handshakes === 0) return false;
    return this.pending.find((p) => p.kind !== 'local')?.kind === 'transfer';
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
    if (w.kind === 'convert') {
      this.replacePath({ path, neg: w.neg, kind: 'active', joined: { proceeded: false } }, out);
      out.push({
        type: 'log',
        level: 'info',
        msg: 'active data path',
        fields: { dataPort: path.port, plane: path.via, converted: true, toServer: this.serverFamily === 4 ? 'PASV' : 'EPSV' },
      });
      out.push({ type: 'toClient', text: `200 ${w.verb} command successful` });
      this.flushLocal(out);
      this.drain(out);
      return out;
    }
    if (w.kind === 'meet') {
      this.replacePath({ path, neg: w.neg, kind: 'passive' }, out);
      const ep = { address: this.o.addressing.activeListen, port: path.serverPort ?? path.port };
      const toServer = this.serverFamily === 4 ? formatPort(ep) : formatEprt(ep);
      out.push({
        type: 'log',
        level: 'info',
        msg: 'passive data path',
        fields: { dataPort: path.port, serverPort: ep.port, plane: path.via, converted: true, toServer: toServer.slice(0, 4) },
      });
      this.pending.push({ kind: 'met', neg: w.neg, reply: w.reply, port: path.port });
      out.push({ type: 'toServer', text: toServer });
      this.flushLocal(out);
      this.drain(out);
      return out;
    }
    this.replacePath({ path, neg: w.neg, kind: w.kind }, out);
    if (w.kind === 'passive') {
      const text = this.passiveText(w.reply, path.port);
      out.push({ type: 'log', level: 'info', msg: 'passive data path', fields: { dataPort: path.port, plane: path.via, converted: false } });
      out.push({ type: 'toClient', text });
    } else {
      const ep = { address: this.o.addressing.activeListen, port: path.port };
      out.push({ type: 'log', level: 'info', msg: 'active data path', fields: { dataPort: path.port, plane: path.via, converted: false } });
      this.pending.push({ kind: 'active', neg: w.neg });
      out.push({ type: 'toServer', text: this.serverFamily === 4 ? formatPort(ep) : formatEprt(ep) });
    }
    this.flushLocal(out);
    this.drain(out);
    return out;
  }

  /** The 227/229 that sends the client to the proxy's `port`. */
  private passiveText(reply: 227 | 229, port: number): string {
    return reply === 227 ? format227({ address: this.o.addressing.passiveAdvertise, port }) : format229(port);
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
    // A passive or joined negotiation's reply is the one now due; the others' come in turn.
    if (w.kind === 'active' || w.kind === 'meet') this.answerLocally(text, out);
    else out.push({ type: 'toClient', text });
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
    while (!this.waiting && !this.tlsHeld && !this.closed) {
      const reply = this.heldServer[0];
      if (reply) {
        if (this.awaitsHandshake(reply)) {
          this.tlsHeld = true;
          break;
        }
        this.heldServer.shift();
        this.handleServer(reply, out);
        continue;
      }
      if (!this.greeted || this.serverPending) break;
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
    // Before anything else looks at the command: a denied one never reaches the server.
    const denied = this.o.policy?.refusal(verbOf(cmd));
    if (denied) {
      return this.refuse(`policy ${denied.verb}`, denied.reply, out, {
        msg: 'command denied by policy',
        fields: { verb: denied.verb, policy: denied.policy },
      });
    }
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
        if (this.o.tlsRequired && !this.secured) return this.refuseCleartextLogin(out);
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
        if (this.o.tls === 'terminate') return this.auth(cmd.mechanism, out);
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
        // Never urgent inside TLS: out-of-band bytes would corrupt the record stream.
        out.push({ type: 'toServer', text: 'ABOR', urgent: raw.startsWith('\xff\xf4') && !this.o.serverTls });
        return;
      case 'CCC':
        if (this.o.tls === 'terminate') {
          // The server never saw AUTH: it has no TLS to clear. Back to plaintext is also what
          // this mode exists to prevent.
          return this.refuse('CCC', '534 CCC refused: the control connection stays protected', out);
        }
        return this.forward(line, { kind: 'other', verb: cmd.kind, arg: '' }, out);
      case 'QUIT':
        return this.forward(line, { kind: 'other', verb: cmd.kind, arg: '' }, out);
      case 'OTHER':
        if (this.o.tls === 'terminate' && (cmd.verb === 'PBSZ' || cmd.verb === 'PROT')) return this.protection(cmd.verb, cmd.arg, out);
        if (cmd.verb === 'PASS' && this.o.tlsRequired && !this.secured) return this.refuseCleartextLogin(out);
        if (cmd.verb === 'REIN') (this.userName = null), (this.cwd = null);
        return this.forward(line, { kind: 'other', verb: cmd.verb, arg: cmd.arg }, out);
    }
  }

  /**
   * AUTH with --tls terminate: 234 and the shell's handshake. Refused while replies are still
   * owed (they would come after the 234 in plaintext the client no longer reads).
   */
  private auth(mechanism: string, out: Action[]): void {
    if (this.secured) return this.answerLocally('503 Already using TLS', out);
    if (!['TLS', 'TLS-C', 'SSL', 'TLS-P'].includes(mechanism)) {
      return this.refuse('AUTH mechanism', '504 AUTH mechanism not supported, use AUTH TLS', out, { msg: 'AUTH mechanism refused', fields: { mechanism } });
    }
    if (this.pending.length > 0 || this.streaming) {
      return this.refuse('AUTH pipelined', '503 AUTH while other commands are outstanding', out);
    }
    this.secured = true;
    // Lines the client sent after AUTH without waiting for 234 are plaintext that must not be
    // taken as commands of the protected session (STARTTLS command injection).
    this.heldClient.length = 0;
    out.push({ type: 'log', level: 'info', msg: 'AUTH: TLS handshake with the client', fields: { mechanism } });
    out.push({ type: 'toClient', text: '234 Proceed with TLS negotiation' });
    out.push({ type: 'startTls' });
  }

  /** PBSZ and PROT (RFC 4217 section 9), answered by the proxy after its own AUTH. */
  private protection(verb: 'PBSZ' | 'PROT', arg: string, out: Action[]): void {
    if (!this.secured) return this.answerLocally(`503 ${verb} needs AUTH TLS first`, out);
    if (verb === 'PBSZ') {
      if (!/^\d+$/.test(arg)) return this.answerLocally('501 PBSZ needs a number', out);
      this.pbsz = true;
      return this.answerLocally('200 PBSZ=0', out);
    }
    if (!this.pbsz) return this.answerLocally('503 PROT needs PBSZ first', out);
    const level = arg.toUpperCase();
    if (level === 'P' || level === 'C') {
      this.prot = level;
      return this.answerLocally(`200 Protection level set to ${level}`, out);
    }
    if (level === 'S' || level === 'E') return this.answerLocally(`536 PROT ${level} not supported, use P or C`, out);
    return this.answerLocally('504 PROT takes C, S, E or P', out);
  }

  private refuseCleartextLogin(out: Action[]): void {
    this.refuse('login before AUTH', '530 TLS required: send AUTH TLS first', out, { msg: 'login without TLS refused' });
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
    this.negMode = 'passive';
    if (this.o.serverMode === 'active') {
      // The server is sent PORT/EPRT to a second listener; the client's 227/229 waits for its 200.
      const a = this.o.addressing;
      const token = this.nextToken++;
      this.waiting = { token, kind: 'meet', reply, neg: ++this.neg };
      out.push({
        type: 'meet',
        token,
        request: {
          sid: this.o.sid,
          client: { peer: this.o.client.address, listen: a.passiveListen },
          server: { peer: this.o.server.address, listen: a.activeListen },
        },
      });
      return;
    }
    // IPv4 servers all understand PASV; IPv6 ones need EPSV. The server's address in its
    // reply is never used, only its port.
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
    this.negMode = 'active';
    if (this.o.serverMode === 'passive') {
      // The server is asked for a passive port instead; the client's PORT/EPRT is answered
      // once the proxy has connected to it (dataOpened).
      return this.forward(this.serverFamily === 4 ? 'PASV' : 'EPSV', { kind: 'convert', neg: ++this.neg, verb: cmd.kind, client: { address, port } }, out);
    }
    const a = this.o.addressing;
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
    out.push({ type: 'open', token, request, ...(this.secured && this.prot === 'P' ? { protect: true as const } : {}) });
  }

  private replacePath(path: HeldPath | null, out: Action[], urgent = false): void {
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
    const at = this.pairing(reply);
    if (at === -1) return this.unpaired(reply, out);
    this.skip(at, out);
    if (reply.partial) {
      // A long reply goes out as it comes; its command stays at the head (so that local
      // answers queue behind it) until the last piece, and then ends as usual. (A long
      // greeting the client must not see goes nowhere.)
      const drop = this.pending[0]?.kind === 'greeting' && this.o.loginAs !== undefined;
      this.streaming = { drop, head: true };
      if (!drop) out.push({ type: 'toClient', text: reply.lines.join('\r\n') });
      return;
    }
    this.complete(this.pending.shift()!, reply, out);
  }

  /**
   * Which outstanding command a final reply answers: the first that can take it. One exception:
   * a 2xx naming PORT or EPRT answers the proxy's own PORT/EPRT for a met path even past
   * commands before it. A 200 alone cannot tell which command it answers, and a server that
   * answered two commands with one reply (pure-ftpd: a finished RETR and its ABOR) would leave
   * every later reply one command late, the client's 227 among them; this catches up (skip()).
   */
  private pairing(reply: Reply): number {
    if (reply.code >= 200 && reply.code < 300 && /\b(PORT|EPRT)\b/i.test(reply.lines[0] ?? '')) {
      const met = this.pending.findIndex((p) => p.kind === 'met');
      if (met !== -1) return met;
    }
    return this.pending.findIndex((p) => accepts(p, reply.code));
  }

  /** 1xx: forwarded; it starts a transfer, and the greeting (120) waits for its 220. */
  private preliminary(reply: Reply, out: Action[]): void {
    // A server's "120 ready in n minutes" is part of the greeting the client never sees.
    if (!this.greeted && this.o.loginAs !== undefined) {
      if (reply.partial) this.streaming = { drop: true, head: false };
      return;
    }
    const head = this.pending.find((p) => p.kind !== 'local');
    if (head?.kind === 'transfer' && !this.transferring) {
      this.transferring = true;
      out.push({ type: 'transfer', active: true });
      this.proceed(head.neg, out);
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
  private complete(head: Pending, answer: Reply, out: Action[]): void {
    const reply =
      head.kind === 'other' && head.verb === 'FEAT' && this.o.tls === 'terminate'
        ? withTlsFeatures(answer, this.o.implicitTls === true)
        : head.kind === 'transfer' && answer.code >= 200 && this.dataRefused(head.neg)
          ? NOT_RESUMED
          : answer;
    const text = reply.lines.join('\r\n');
    const send = (): void => {
      if (reply.lines.length > 0) out.push({ type: 'toClient', text });
    };
    switch (head.kind) {
      case 'greeting':
        this.greeted = true;
        if (this.o.loginAs !== undefined && reply.code === 220) this.handleClient(`USER ${this.o.loginAs}`, out);
        else send();
        // (--user-at-host is outbound mode only, --server-tls reverse mode only: never both.)
        if (this.serverPending && reply.code === 220) this.internal('AUTH', 'AUTH TLS', out);
        break;
      case 'internal':
        this.internalReply(head.verb, reply, out);
        break;
      case 'passive':
        if (reply.code === 227 || reply.code === 229) this.passiveReply(head, reply, out);
        else send();
        break;
      case 'convert':
        if (reply.code === 227 || reply.code === 229) this.convertReply(head, reply, out);
        else send();
        break;
      case 'met':
        // The server took the PORT/EPRT: only now may the client be sent to the port.
        if (reply.code >= 200 && reply.code < 300) {
          out.push({ type: 'toClient', text: this.passiveText(head.reply, head.port) });
        } else {
          this.releaseNegotiated(head.neg, out, true);
          send();
        }
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
          // A server that sent no 1xx: the data waits at the proxy until it reaches the client.
          this.proceed(head.neg, out);
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

  /** --server-tls explicit: the server's TLS is up; its data connections are protected next. */
  serverSecured(): Action[] {
    const out: Action[] = [];
    if (!this.closed) this.internal('PBSZ', 'PBSZ 0', out);
    return out;
  }

  private internal(verb: 'AUTH' | 'PBSZ' | 'PROT', line: string, out: Action[]): void {
    this.forward(line, { kind: 'internal', verb }, out);
  }

  /** AUTH 234, then (after serverSecured) PBSZ 200, PROT 200: only then do client lines run. */
  private internalReply(verb: 'AUTH' | 'PBSZ' | 'PROT', reply: Reply, out: Action[]): void {
    const ok = verb === 'AUTH' ? reply.code === 234 : reply.code >= 200 && reply.code < 300;
    if (!ok) {
      // The administrator asked for TLS toward the server: no falling back to plain FTP.
      this.closed = true;
      out.push({ type: 'log', level: 'error', msg: 'the server refused TLS', fields: { command: verb, reply: stripTelnet(reply.lines[0] ?? '').slice(0, 120) } });
      out.push({ type: 'close', reason: 'server refused TLS', reply: '421 Service not available: the server refused TLS' });
      return;
    }
    if (verb === 'AUTH') return void out.push({ type: 'startServerTls' });
    if (verb === 'PBSZ') return this.internal('PROT', 'PROT P', out);
    this.serverPending = false;
    out.push({ type: 'log', level: 'info', msg: 'server control connection secured, its data protected', fields: {} });
  }

  /** Every PROT P data connection of negotiation `neg` was refused: the client got nothing. */
  private dataRefused(neg: number): boolean {
    const p = this.protectedData;
    return neg > 0 && p.neg === neg && p.refused && !p.admitted;
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

  /** The server's passive data port, or null (then the client has its 425 already). */
  private serverPassivePort(reply: Reply, out: Action[]): number | null {
    try {
      if (reply.truncated) throw new ProtocolError('REPLY_TOO_LONG', 'passive reply too long');
      return passivePort(reply);
    } catch (e) {
      const err = e instanceof ProtocolError ? e : new ProtocolError('BAD_REPLY', String(e));
      this.once('bad passive reply', 'warn', 'bad passive reply from server', { code: err.code, reply: stripTelnet(reply.lines[0] ?? '').slice(0, 120) }, out);
      out.push({ type: 'toClient', text: "425 Can't open data connection: the server's passive reply was not understood" });
      return null;
    }
  }

  /**
   * The server's passive port for a client's PORT/EPRT: the proxy connects to it now (RFC 959:
   * the passive side may wait for its data connection before the transfer command, and some
   * servers answer the command only once it has come) and to the client on `proceed`.
   */
  private convertReply(head: Extract<Pending, { kind: 'convert' }>, reply: Reply, out: Action[]): void {
    const port = this.serverPassivePort(reply, out);
    if (port === null) return;
    const a = this.o.addressing;
    const token = this.nextToken++;
    this.waiting = { token, kind: 'convert', verb: head.verb, neg: head.neg };
    out.push({
      type: 'join',
      token,
      request: {
        sid: this.o.sid,
        server: { address: this.o.server.address, port },
        serverSource: a.passiveSource,
        client: head.client,
        clientSource: a.activeSource,
        ...(this.o.rewriteSourcePort ? { clientSourcePort: 20 } : {}),
      },
    });
  }

  /**
   * Negotiation `neg`'s transfer has started (its 1xx) or ended well without one: a joined path
   * connects to the client now, once. Not before: after a refusal (4xx/5xx) or an ABOR the
   * client is never connected to at all.
   */
  private proceed(neg: number, out: Action[]): void {
    const held = this.path;
    if (held?.neg !== neg || !held.joined || held.joined.proceeded) return;
    held.joined.proceeded = true;
    out.push({ type: 'proceed', id: held.path.id });
  }

  private passiveReply(head: Extract<Pending, { kind: 'passive' }>, reply: Reply, out: Action[]): void {
    const port = this.serverPassivePort(reply, out);
    if (port === null) return;
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

/** The final reply to a transfer whose data connections all failed the TLS check. */
const NOT_RESUMED: Reply = {
  code: 522,
  lines: ["522 Data connection refused: its TLS session is not this control connection's (session reuse required)"],
};

/**
 * A multi-line 211 FEAT reply with the proxy's TLS features (RFC 4217 section 6) in place of any
 * the server named (clients such as lftp look there before they send AUTH); no AUTH where the
 * connection is TLS from the start. Other replies are left alone.
 */
function withTlsFeatures(reply: Reply, implicit: boolean): Reply {
  if (reply.code !== 211 || reply.lines.length < 2) return reply;
  const features = reply.lines.slice(1, -1).filter((l) => !/^\s*(AUTH|PBSZ|PROT)\b/i.test(l));
  const ours = [...(implicit ? [] : [' AUTH TLS']), ' PBSZ', ' PROT'];
  return { ...reply, lines: [reply.lines[0]!, ...features, ...ours, reply.lines.at(-1)!] };
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
