// The session fuzzer: many short sessions, each a seeded random interleaving of client bytes,
// server bytes and data-plane results pushed through the real LineFramer, ReplyAssembler and
// SessionMachine, with the I/O shell's rules (session.ts) emulated around them and every
// safety property checked after every input. Shared by test/fuzz/*.test.ts and scripts/fuzz.

import { SessionMachine, type Action, type Addressing } from '../../../src/session/machine.js';
import { LineFramer } from '../../../src/protocol/lines.js';
import { ReplyAssembler, parse227, parse229, type Reply } from '../../../src/protocol/replies.js';
import { formatEprt, formatPort } from '../../../src/protocol/format.js';
import { classifyCommand, removeTelnet } from '../../../src/protocol/commands.js';
import { DataPlaneError, ProtocolError } from '../../../src/errors.js';
import type { DataPathRequest } from '../../../src/dataplane/types.js';
import { Rng, sessionSeed } from './rng.js';
import { clientLine, decorate, junk, longLine, serverAnswer, serverNoise, unrulyAnswer, unrulyNoise, type Peers } from './inputs.js';

// session.ts's backpressure: the client is not read while more than PAUSE commands are in
// flight; its reply assembler holds at most the default reply size before handing on pieces.
const PAUSE_OUTSTANDING = 64;
const MAX_QUEUED_DEFAULT = 256;
/** The client's reading of what it receives: no bound of its own worth testing. */
const CLIENT_VIEW_LINES = 1_000_000;

/** What the framers may throw: anything else, or any throw from the machine, is a bug. */
const FRAMER_ERRORS = new Set(['LINE_TOO_LONG', 'NUL_IN_LINE', 'BAD_REPLY']);
const LOG_LEVELS = new Set(['debug', 'info', 'notice', 'warn', 'error']);

const CLIENT4 = '192.0.2.2';
const CLIENT6 = '2001:db8:1::2';
const SERVER4 = '198.51.100.2';
const SERVER6 = '2001:db8:2::2';
const GW_LAN = { 4: '192.0.2.1', 6: '2001:db8:1::1' } as const;
const GW_WAN = { 4: '198.51.100.1', 6: '2001:db8:2::1' } as const;
const MASQUERADE = '203.0.113.9';

/**
 * orderly: a well-behaved client and server (replies are counted); chaos: anything goes; lines:
 * lines straight into the machine; unruly: a well-behaved client and a server that speaks
 * valid FTP out of step (skips and adds replies, unsolicited 227/229 naming other hosts,
 * multi-line 227/229, a transfer ended by a 150 alone as pure-ftpd does after a data reset).
 */
export type Style = 'orderly' | 'chaos' | 'lines' | 'unruly';
/**
 * The three ways session.ts sets up addressing: reverse mode; outbound mode with the nftables
 * plane, or with a relay that can listen on the server's address (the same addressing); and
 * outbound mode with a relay that cannot (unprivileged, or --route-table 0).
 */
export type Mode = 'reverse' | 'outbound' | 'relay';

export interface Plan {
  readonly style: Style;
  readonly mode: Mode;
  readonly clientFamily: 4 | 6;
  readonly serverFamily: 4 | 6;
  readonly anonymousOnly: boolean;
  readonly rewriteSourcePort: boolean;
  readonly maxQueued: number | undefined;
  readonly maxLine: number;
  /** The reply assembler's byte bound (undefined: the session's default). */
  readonly maxReplyBytes: number | undefined;
  readonly masquerade: boolean;
  readonly steps: number;
}

export class Violation extends Error {}

export interface Stats {
  sessions: number;
  inputs: number;
  clientChunks: number;
  clientBytes: number;
  clientLines: number;
  serverChunks: number;
  serverBytes: number;
  replies: number;
  opens: { passive: number; active: number };
  opened: number;
  openFailed: number;
  lateResults: number;
  staleResults: number;
  releases: number;
  portCommands: number;
  generated227: number;
  generated229: number;
  orderlyChecked: number;
  maxOutstanding: number;
  maxHeld: number;
  /** Why sessions ended: framer error codes, the machine's close reasons, or the scenario. */
  ends: Record<string, number>;
  /** Log messages the machine emitted, by text: shows which paths the inputs reached. */
  logs: Record<string, number>;
  /** Hits of bugs the run was told are known (KnownBug), instead of failures. */
  knownBugs: Record<string, number>;
  /** Inputs that put reply pairing to the test, by kind (unruly servers, lines before the greeting). */
  pairing: Record<string, number>;
}

export function newStats(): Stats {
  return {
    sessions: 0,
    inputs: 0,
    clientChunks: 0,
    clientBytes: 0,
    clientLines: 0,
    serverChunks: 0,
    serverBytes: 0,
    replies: 0,
    opens: { passive: 0, active: 0 },
    opened: 0,
    openFailed: 0,
    lateResults: 0,
    staleResults: 0,
    releases: 0,
    portCommands: 0,
    generated227: 0,
    generated229: 0,
    orderlyChecked: 0,
    maxOutstanding: 0,
    maxHeld: 0,
    ends: {},
    logs: {},
    knownBugs: {},
    pairing: {},
  };
}

function bump(rec: Record<string, number>, key: string, n = 1): void {
  rec[key] = (rec[key] ?? 0) + n;
}

export function mergeStats(into: Stats, from: Stats): void {
  for (const k of Object.keys(from) as (keyof Stats)[]) {
    const v = from[k];
    if (typeof v === 'number') {
      (into[k] as number) = k.startsWith('max') ? Math.max(into[k] as number, v) : (into[k] as number) + v;
    } else if (k === 'opens') {
      into.opens.passive += from.opens.passive;
      into.opens.active += from.opens.active;
    } else {
      for (const [key, n] of Object.entries(v)) bump(into[k] as Record<string, number>, key, n);
    }
  }
}

export function planFor(rng: Rng, styles: readonly Style[]): Plan {
  const style = rng.pick(styles);
  const mode = rng.pick<Mode>(['reverse', 'outbound', 'relay']);
  const clientFamily = rng.chance(0.7) ? 4 : 6;
  // Only reverse mode can bridge families: outbound redirects keep the client's.
  const serverFamily = mode === 'reverse' && rng.chance(0.3) ? (clientFamily === 4 ? 6 : 4) : clientFamily;
  return {
    style,
    mode,
    clientFamily,
    serverFamily,
    anonymousOnly: rng.chance(0.2),
    rewriteSourcePort: rng.chance(0.3),
    maxQueued: rng.chance(0.7) ? undefined : rng.range(1, 300),
    maxLine: rng.chance(0.7) ? 1024 : rng.pick([512, 513, 2048, 65536]),
    maxReplyBytes: rng.chance(0.7) ? undefined : rng.range(1, 2000),
    masquerade: rng.chance(0.5),
    steps: style === 'orderly' || style === 'unruly' ? rng.range(5, 400) : rng.chance(0.9) ? rng.range(1, 300) : rng.range(300, 3000),
  };
}

/** session.ts's addressing(), for the fuzzer's fixed addresses. */
function addressingFor(plan: Plan, server: string): Addressing {
  const clientLocal = GW_LAN[plan.clientFamily];
  const serverLocal = GW_WAN[plan.serverFamily];
  if (plan.mode === 'reverse') {
    return {
      passiveListen: clientLocal,
      passiveAdvertise: plan.masquerade ? MASQUERADE : clientLocal,
      passiveSource: serverLocal,
      activeListen: serverLocal,
      activeSource: clientLocal,
    };
  }
  if (plan.mode === 'relay' && plan.clientFamily === 4) {
    return {
      passiveListen: clientLocal,
      passiveAdvertise: clientLocal,
      passiveSource: serverLocal,
      activeListen: serverLocal,
      activeSource: server,
      epsvRefused: true,
    };
  }
  if (plan.mode === 'relay') {
    return {
      passiveListen: clientLocal,
      passiveAdvertise: server,
      passiveSource: serverLocal,
      passiveDirect: true,
      activeListen: serverLocal,
      activeSource: server,
    };
  }
  return { passiveListen: server, passiveAdvertise: server, passiveSource: serverLocal, activeListen: serverLocal, activeSource: server };
}

/** A data path as the fake data plane tracks it. */
interface LivePath {
  readonly token: number;
  readonly port: number;
  /** Handed to the machine (or to the shell's late-result path), not just created. */
  delivered: boolean;
}

function isTelnetCommand(b: number): boolean {
  return b >= 0xf0 && b < 0xff;
}

/**
 * Verb and argument of a line as a server may read it. 'project': leading Telnet commands
 * and white space skipped as the proxy's classifier does; 'iac-any': IAC and any byte after
 * it dropped anywhere, as a server with a cruder Telnet filter would.
 */
export function serverView(line: string, how: 'project' | 'iac-any'): { verb: string; arg: string } {
  let s = line;
  if (how === 'iac-any') {
    let out = '';
    for (let i = 0; i < s.length; i++) {
      if (s.charCodeAt(i) !== 0xff) out += s[i];
      else if (s.charCodeAt(i + 1) === 0xff) out += s[++i];
      else i += s.charCodeAt(i + 1) >= 0xfb && s.charCodeAt(i + 1) < 0xff ? 2 : 1;
    }
    s = out;
  }
  let i = 0;
  for (;;) {
    const c = s.charCodeAt(i);
    if (c === 0x20 || (c >= 0x09 && c <= 0x0d)) i++;
    else if (c === 0xff && isTelnetCommand(s.charCodeAt(i + 1))) i += s.charCodeAt(i + 1) >= 0xfb ? 3 : 2;
    else break;
  }
  const m = /^([^\t-\r ]*)[\t-\r ]*(.*?)[\t-\r ]*$/s.exec(s.slice(i))!;
  return { verb: m[1]!.toUpperCase(), arg: m[2]! };
}

/** Verbs that make a server open a connection to an address of the client's choosing. */
const ADDRESS_VERBS = new Set(['PORT', 'EPRT', 'LPRT']);

/**
 * Bugs in src that a run may be told to count instead of failing on, so that CI stays useful
 * until they are fixed (test/fuzz/regressions.test.ts holds their reproducers):
 *
 * telnet-option-lf: LineFramer takes the option byte of IAC WILL/WONT/DO/DONT as opaque even
 * when it is LF, so the line goes on past that LF and is forwarded whole; vsftpd and pure-ftpd
 * end the line at the LF and run what follows (an unvetted PORT) as a command of its own.
 */
export type KnownBug = 'telnet-option-lf';

export interface SessionOptions {
  readonly knownBugs?: ReadonlySet<KnownBug>;
  /** Also fail when a server that splits lines at a lone CR, or drops IAC + any byte, would see a foreign PORT. */
  readonly strictViews?: boolean;
  /** Keep a transcript of the session (for the failure report). */
  readonly trace?: boolean;
}

/** One simulated session; run() returns normally or throws Violation. */
class SessionSim {
  private readonly machine: SessionMachine;
  private readonly client: string;
  private readonly server: string;
  private readonly addressing: Addressing;
  private readonly clientFramer: LineFramer;
  private readonly serverFramer: LineFramer;
  private readonly assembler: ReplyAssembler;
  private readonly live = new Map<string, LivePath>();
  /** Opens issued by the machine whose result the data plane has not given yet. */
  private readonly unresolved = new Map<number, DataPathRequest>();
  private readonly issuedTokens = new Set<number>();
  /** Commands the server has received and not answered yet (what the server model answers). */
  private readonly toAnswer: string[] = [];
  private readonly activePorts = new Set<number>();
  /** The client's reading of what it was sent, reply by reply. */
  private readonly clientView = new ReplyAssembler(CLIENT_VIEW_LINES);
  /** PASV (P@SW) and EPSV commands the client sent, and 227 and 229 replies it got. */
  private readonly asked = { 227: 0, 229: 0 };
  private readonly answered = { 227: 0, 229: 0 };
  /** Ports of passive data paths handed to the machine and not yet advertised to the client. */
  private readonly unadvertised = new Set<number>();
  /** Ports the server announced in any line of its 227/229 replies (passive-direct passes them on). */
  private readonly announced = new Set<number>();
  private greeted = false;
  private clientOut = '';
  private serverOut = '';
  private closing: string | null = null;
  private paused = false;
  private pathSeq = 0;
  private inputs = 0;
  private step = 0;
  /** Orderly sessions: lines the machine took while open, and final replies it sent the client. */
  private linesTaken = 0;
  private finals = 0;
  private readonly transcript: string[] = [];
  private readonly peers: Peers;

  constructor(
    private readonly rng: Rng,
    private readonly plan: Plan,
    private readonly stats: Stats,
    private readonly opts: SessionOptions,
  ) {
    this.client = plan.clientFamily === 4 ? CLIENT4 : CLIENT6;
    this.server = plan.serverFamily === 4 ? SERVER4 : SERVER6;
    this.addressing = addressingFor(plan, this.server);
    this.machine = new SessionMachine({
      sid: 'fuzz',
      client: { address: this.client, port: 40000 },
      server: { address: this.server, port: 21 },
      addressing: this.addressing,
      anonymousOnly: plan.anonymousOnly,
      rewriteSourcePort: plan.rewriteSourcePort,
      ...(plan.maxQueued !== undefined ? { maxQueued: plan.maxQueued } : {}),
    });
    this.clientFramer = new LineFramer(plan.maxLine);
    this.serverFramer = new LineFramer(plan.maxLine);
    this.assembler = new ReplyAssembler(plan.maxReplyBytes);
    this.peers = {
      client: this.client,
      clientFamily: plan.clientFamily,
      server: this.server,
      serverFamily: plan.serverFamily,
      others: [SERVER4, SERVER6, GW_LAN[4], GW_LAN[6], GW_WAN[4], GW_WAN[6], '192.0.2.3', '2001:db8:1::3', '10.0.0.1'],
    };
  }

  get inputCount(): number {
    return this.inputs;
  }

  get log(): readonly string[] {
    return this.transcript;
  }

  /** A transcript line, built only when tracing (a replay after a failure). */
  private note(what: () => string): void {
    if (this.opts.trace) this.transcript.push(`#${this.step} ${what()}`);
  }

  private fail(what: string): never {
    throw new Violation(`step ${this.step}: ${what}`);
  }

  run(): void {
    const { rng, plan } = this;
    const orderly = plan.style === 'orderly';
    const unruly = plan.style === 'unruly';
    // Unruly sessions have a well-behaved client and data plane: only the server is out of step.
    const wellBehaved = orderly || unruly;
    this.serverOut = unruly && rng.chance(0.3) ? '220-Welcome\r\n220-You are user number 1\r\n220 ready\r\n' : wellBehaved || rng.chance(0.8) ? '220 fuzz ready\r\n' : '';
    for (this.step = 0; this.step < plan.steps && this.closing === null; this.step++) {
      const before = this.machine.outstanding;
      const owed = this.serverOut.length > 0 || this.toAnswer.length > 0;
      const weights = [
        this.paused ? 0 : 10, // client bytes
        owed || !wellBehaved ? 8 : unruly ? 1 : 0, // server bytes (unruly: unasked replies when nothing is owed)
        this.unresolved.size > 0 ? 6 : 0, // a data-plane result
        wellBehaved ? 0 : 0.3, // a result for a token nobody waits for
        wellBehaved ? 0 : 0.4, // an end from outside (RST, idle timeout, SIGTERM)
      ];
      if (weights.every((w) => w === 0)) this.fail(`stalled: client paused at ${before} outstanding with nothing left to answer`);
      const ev = rng.weighted(weights);
      this.inputs++;
      switch (ev) {
        case 0: {
          const lines = plan.style === 'lines' ? this.clientLinesDirect() : this.clientBytes();
          if (this.machine.outstanding > before + lines) this.fail(`${lines} client lines raised outstanding ${before} -> ${this.machine.outstanding}`);
          break;
        }
        case 1:
          this.serverBytes();
          if (this.machine.outstanding > before) this.fail(`server input raised outstanding ${before} -> ${this.machine.outstanding}`);
          break;
        case 2:
          this.resolve(rng.pick([...this.unresolved.keys()]), wellBehaved ? rng.chance(0.9) : rng.chance(0.75));
          if (this.machine.outstanding > before + 1) this.fail(`a data-plane result raised outstanding ${before} -> ${this.machine.outstanding}`);
          break;
        case 3:
          this.stale();
          break;
        default:
          this.teardown(rng.pick(['client reset', 'server reset', 'idle timeout', 'shutdown']));
      }
      this.throttle();
      this.checkState();
    }
    if (orderly && this.closing === null) this.settle();
    this.teardown('end of script');
    this.afterClose();
  }

  // --- inputs ---------------------------------------------------------------------------

  private clientBytes(): number {
    const { rng } = this;
    if (this.clientOut.length === 0) this.clientOut = this.clientScript();
    const n = rng.chance(0.5) ? this.clientOut.length : rng.range(1, this.clientOut.length);
    const chunk = this.clientOut.slice(0, n);
    this.clientOut = this.clientOut.slice(n);
    this.stats.clientChunks++;
    this.stats.clientBytes += n;
    this.note(() => `client bytes ${JSON.stringify(chunk.length > 200 ? chunk.slice(0, 200) + '...' : chunk)}`);
    let lines: string[];
    try {
      lines = this.clientFramer.push(Buffer.from(chunk, 'latin1'));
    } catch (e) {
      this.framerError(e, 'client');
      return 0;
    }
    for (const line of lines) {
      this.clientLine(line);
      if (this.closing !== null) break;
    }
    return lines.length;
  }

  private clientLinesDirect(): number {
    const n = this.rng.range(1, 4);
    for (let i = 0; i < n && this.closing === null; i++) {
      // The framer's contract: a line holds no LF (Telnet option bytes included).
      const line = (this.rng.chance(0.1) ? junk(this.rng, 600, true) : decorate(this.rng, clientLine(this.rng, this.peers, false))).replaceAll('\n', ' ');
      this.note(() => `client line ${JSON.stringify(line.slice(0, 200))}`);
      this.clientLine(line);
    }
    return n;
  }

  private clientLine(line: string): void {
    this.stats.clientLines++;
    this.linesTaken++;
    // What the machine will read it as: a PASV or EPSV of the client's own may get one 227 or 229.
    const bare = removeTelnet(line);
    if (!bare.includes('\r')) {
      const kind = classifyCommand(bare).kind;
      if (kind === 'PASV') this.asked[227]++;
      else if (kind === 'EPSV') this.asked[229]++;
    }
    if (!this.greeted) bump(this.stats.pairing, 'client line before the greeting');
    this.apply(this.call(() => this.machine.clientLine(line)));
  }

  /** The bytes a client sends next: a few command lines, or a hostile burst. */
  private clientScript(): string {
    const { rng, plan, peers } = this;
    const wellBehaved = plan.style === 'orderly' || plan.style === 'unruly';
    const term = (): string => (wellBehaved || rng.chance(0.8) ? '\r\n' : rng.pick(['\n', '\r\r\n', '\r\n\r\n']));
    if (wellBehaved) {
      let s = '';
      for (let i = rng.skewed(8) + 1; i > 0; i--) s += clientLine(rng, peers, true) + term();
      return s;
    }
    switch (rng.weighted([10, 3, 1, 1, 1, 1, 1])) {
      case 0: {
        let s = '';
        for (let i = rng.skewed(6) + 1; i > 0; i--) s += clientLine(rng, peers, false) + term();
        return s;
      }
      case 1:
        return decorate(rng, clientLine(rng, peers, true)) + term();
      case 2:
        return junk(rng, 3000, true) + (rng.chance(0.5) ? term() : '');
      case 3:
        return '\r'.repeat(rng.skewed(Math.min(4 * plan.maxLine, 8192)) + 1) + (rng.chance(0.5) ? '\n' : '');
      case 4:
        return longLine(rng, plan.maxLine, rng.pick(['PORT', 'NOOP', 'USER', 'RETR'])) + term();
      case 5: {
        const line = clientLine(rng, peers, true);
        const at = rng.int(line.length + 1);
        return line.slice(0, at) + '\0' + line.slice(at) + term();
      }
      default:
        // Many tiny commands in one chunk: pipelining past the shell's pause threshold.
        return (rng.pick(['NOOP', 'PASV', 'PORT 192,0,2,2,4,1', '', 'LPSV']) + term()).repeat(rng.skewed(700) + 1);
    }
  }

  private serverBytes(): void {
    const { rng, plan } = this;
    const orderly = plan.style === 'orderly';
    if (this.serverOut.length === 0 && plan.style === 'unruly') {
      const { lines, did } = this.toAnswer.length > 0 ? unrulyAnswer(rng, this.toAnswer.shift()!) : unrulyNoise(rng);
      for (const d of did) bump(this.stats.pairing, d);
      if (did.length > 0) this.note(() => `server out of step: ${did.join(', ')}`);
      this.serverOut = lines.map((l) => l + '\r\n').join('');
      if (this.serverOut.length === 0) return;
    }
    if (this.serverOut.length === 0) {
      let lines: string[] = [];
      if (this.toAnswer.length > 0 && (orderly || rng.chance(0.8))) {
        const command = this.toAnswer.shift()!;
        // A misbehaving server skips a command now and then, or answers it twice.
        if (orderly || !rng.chance(0.05)) lines = serverAnswer(rng, command, orderly);
        if (!orderly && rng.chance(0.03)) lines = lines.concat(serverAnswer(rng, command, false));
      } else if (!orderly) {
        lines = serverNoise(rng, plan.maxLine);
      }
      const term = orderly || rng.chance(0.9) ? '\r\n' : rng.pick(['\n', '\r\r\n']);
      this.serverOut = lines.map((l) => l + term).join('');
      if (!orderly && rng.chance(0.05)) this.serverOut += rng.pick(['\0', '\xff\xf4', junk(rng, 100, true)]);
      if (this.serverOut.length === 0) return;
    }
    if (plan.style === 'lines') return this.serverRepliesDirect();
    const n = rng.chance(0.6) ? this.serverOut.length : rng.range(1, this.serverOut.length);
    const chunk = this.serverOut.slice(0, n);
    this.serverOut = this.serverOut.slice(n);
    this.stats.serverChunks++;
    this.stats.serverBytes += n;
    this.note(() => `server bytes ${JSON.stringify(chunk.length > 200 ? chunk.slice(0, 200) + '...' : chunk)}`);
    this.assemble(() => this.serverFramer.push(Buffer.from(chunk, 'latin1')));
  }

  /** 'lines' style: the server's lines go through the assembler only, no framer. */
  private serverRepliesDirect(): void {
    const lines = this.serverOut.split(/\r?\n/);
    this.serverOut = '';
    this.assemble(() => lines.slice(0, -1));
  }

  /** Server lines into replies, as the session does; framing errors (thrown by `lines`) too. */
  private assemble(lines: () => Iterable<string>): void {
    try {
      for (const line of lines()) {
        const reply = this.assembler.push(line);
        if (reply) this.serverReply(reply);
        if (this.closing !== null) return;
      }
    } catch (e) {
      if (e instanceof Violation) throw e;
      this.framerError(e, 'server');
    }
  }

  private serverReply(reply: Reply): void {
    this.stats.replies++;
    this.greeted = true;
    if (reply.code === 227 || reply.code === 229) {
      for (const line of reply.lines) {
        // Loosely, as any reading of the line could take it (a 229's delimiter may be a digit).
        const asReply = `${reply.code} ${line}`;
        try {
          this.announced.add(reply.code === 227 ? parse227(asReply).port : parse229(asReply));
        } catch {
          // Not this line.
        }
        for (const m of line.matchAll(/\d+,\d+,\d+,\d+,(\d+),(\d+)/g)) this.announced.add(Number(m[1]) * 256 + Number(m[2]));
      }
    }
    this.note(() => `reply ${JSON.stringify(reply.lines.join('|').slice(0, 200))}`);
    this.apply(this.call(() => this.machine.serverReply(reply)));
  }

  private framerError(e: unknown, side: string): void {
    if (!(e instanceof ProtocolError) || !FRAMER_ERRORS.has(e.code)) {
      this.fail(`the ${side} framing threw something other than a ProtocolError: ${e instanceof Error ? e.stack : String(e)}`);
    }
    this.note(() => `${side} framing: ${e.code}`);
    bump(this.stats.ends, `${side} ${e.code}`);
    this.teardown(`${side} protocol error`);
  }

  /** The data plane answers an open: a path (port and id) or a DataPlaneError. */
  private resolve(token: number, ok: boolean): void {
    const request = this.unresolved.get(token);
    if (!request) return;
    this.unresolved.delete(token);
    if (this.closing !== null) this.stats.lateResults++;
    if (ok) {
      const id = `path-${++this.pathSeq}`;
      const port = this.rng.range(1024, 65535);
      this.live.set(id, { token, port, delivered: true });
      if (request.kind === 'active') this.activePorts.add(port);
      this.stats.opened++;
      this.note(() => `data plane: token ${token} opened ${id} port ${port}${this.closing ? ' (late)' : ''}`);
      if (this.closing !== null) {
        // session.ts gives a late path straight back; the machine must say the same.
        if (this.rng.chance(0.5)) return this.release(id);
        const acts = this.call(() => this.machine.dataOpened(token, { id, port }));
        const released = acts.filter((a) => a.type === 'release');
        if (released.length !== 1 || (released[0] as { id: string }).id !== id || acts.some((a) => a.type === 'toClient' || a.type === 'toServer' || a.type === 'open')) {
          this.fail(`late dataOpened after close answered ${JSON.stringify(acts)}`);
        }
        return this.release(id);
      }
      if (request.kind === 'passive') this.unadvertised.add(port);
      this.apply(this.call(() => this.machine.dataOpened(token, { id, port })));
    } else {
      const code = this.rng.chance(0.5) ? 'PORTS_EXHAUSTED' : 'BACKEND_FAILED';
      this.stats.openFailed++;
      this.note(() => `data plane: token ${token} failed ${code}${this.closing ? ' (late)' : ''}`);
      if (this.closing !== null) {
        const acts = this.call(() => this.machine.dataFailed(token, new DataPlaneError(code, 'fuzz')));
        if (acts.length > 0) this.fail(`late dataFailed after close answered ${JSON.stringify(acts)}`);
        return;
      }
      this.apply(this.call(() => this.machine.dataFailed(token, new DataPlaneError(code, 'fuzz'))));
    }
  }

  /** A result for a token that is not the one waited for: the machine must hand the path back. */
  private stale(): void {
    this.stats.staleResults++;
    const waiting = this.machine.waitingToken;
    let token = 1_000_000 + this.rng.int(1000);
    const old = [...this.issuedTokens].filter((t) => t !== waiting && !this.unresolved.has(t));
    if (old.length > 0 && this.rng.chance(0.5)) token = this.rng.pick(old);
    if (this.rng.chance(0.3)) {
      this.note(() => `stale failure for token ${token}`);
      const acts = this.call(() => this.machine.dataFailed(token, new DataPlaneError('BACKEND_FAILED', 'stale')));
      if (acts.some((a) => a.type !== 'log')) this.fail(`dataFailed for a token nobody waits for answered ${JSON.stringify(acts)}`);
      return;
    }
    const id = `stale-${++this.pathSeq}`;
    this.live.set(id, { token, port: 1024, delivered: true });
    this.note(() => `stale path ${id} for token ${token}`);
    const acts = this.call(() => this.machine.dataOpened(token, { id, port: 1024 }));
    if (acts.length !== 1 || acts[0]!.type !== 'release' || acts[0]!.id !== id) {
      this.fail(`dataOpened for a token nobody waits for answered ${JSON.stringify(acts)}`);
    }
    this.apply(acts);
  }

  /** Orderly sessions: let the server answer everything and the data plane finish, then count replies. */
  private settle(): void {
    for (let guard = 0; this.closing === null; guard++) {
      if (guard > 100_000) this.fail('an orderly session never settled');
      this.paused = false;
      if (this.unresolved.size > 0) this.resolve([...this.unresolved.keys()][0]!, this.rng.chance(0.9));
      else if (this.serverOut.length > 0 || this.toAnswer.length > 0) this.serverBytes();
      else if (this.clientOut.length > 0) this.clientBytes();
      else break;
      this.checkState();
    }
    if (this.closing !== null) return;
    this.stats.orderlyChecked++;
    if (this.machine.outstanding !== 0) this.fail(`settled with ${this.machine.outstanding} commands outstanding`);
    // One final reply per client line, plus the greeting.
    if (this.finals !== this.linesTaken + 1) {
      this.fail(`${this.linesTaken} client lines and a greeting got ${this.finals} final replies`);
    }
  }

  // --- the shell ------------------------------------------------------------------------

  /** The machine never throws: anything it throws is a bug. */
  private call(fn: () => Action[]): Action[] {
    try {
      return fn();
    } catch (e) {
      throw new Violation(`step ${this.step}: the machine threw: ${e instanceof Error ? e.stack : String(e)}`);
    }
  }

  /** session.ts run(): actions in order, nothing after the session started closing. Every action is checked first. */
  private apply(actions: readonly Action[]): void {
    for (const a of actions) this.check(a);
    for (const a of actions) {
      if (this.closing !== null) return;
      switch (a.type) {
        case 'toClient':
          this.note(() => `to client ${JSON.stringify(a.text.slice(0, 200))}`);
          this.toClient(a.text);
          break;
        case 'toServer':
          this.toAnswer.push(a.text);
          this.note(() => `to server ${JSON.stringify(a.text.slice(0, 200))}`);
          break;
        case 'open':
          if (this.issuedTokens.has(a.token)) this.fail(`open reuses token ${a.token}`);
          if (this.unresolved.size > 0) this.fail(`open token ${a.token} while ${[...this.unresolved.keys()].join(',')} is in flight`);
          this.unresolved.set(a.token, a.request);
          this.issuedTokens.add(a.token);
          this.stats.opens[a.request.kind]++;
          this.note(() => `open token ${a.token} ${JSON.stringify(a.request)}`);
          break;
        case 'release':
          this.release(a.id);
          break;
        case 'transfer':
          break;
        case 'close':
          bump(this.stats.ends, `machine: ${a.reason}`);
          this.teardown(a.reason);
          break;
        case 'log':
          bump(this.stats.logs, a.msg);
          break;
      }
    }
  }

  /** session.ts throttleClient(). */
  private throttle(): void {
    if (this.closing !== null) return;
    const n = this.machine.outstanding;
    if (!this.paused && n > PAUSE_OUTSTANDING) this.paused = true;
    else if (this.paused && n <= PAUSE_OUTSTANDING) this.paused = false;
  }

  /** The fake data plane's release: unknown or already released ids are errors. */
  private release(id: string): void {
    if (!this.live.delete(id)) this.fail(`release of unknown or already released data path ${id}`);
    this.stats.releases++;
    this.note(() => `release ${id}`);
  }

  /** session.ts teardown(): once; releases the machine's current path. */
  private teardown(reason: string): void {
    if (this.closing !== null) return;
    this.closing = reason;
    this.note(() => `teardown: ${reason}`);
    const path = this.machine.currentPath;
    this.machine.close();
    if (path) this.release(path.id);
  }

  /** After teardown: late data-plane results arrive, late input is ignored, and nothing is left live. */
  private afterClose(): void {
    bump(this.stats.ends, this.closing === 'end of script' ? 'end of script' : 'ended early');
    for (const token of [...this.unresolved.keys()]) this.resolve(token, this.rng.chance(0.7));
    const late = [
      ...this.call(() => this.machine.clientLine('PORT 192,0,2,2,4,1')),
      ...this.call(() => this.machine.serverReply({ code: 227, lines: ['227 (198,51,100,2,4,1)'] })),
    ];
    if (late.length > 0) this.fail(`a closed machine answered ${JSON.stringify(late)}`);
    if (this.live.size > 0) this.fail(`data paths never released: ${[...this.live.keys()].join(', ')}`);
  }

  // --- properties -----------------------------------------------------------------------

  private check(a: Action): void {
    const ad = this.addressing;
    switch (a.type) {
      case 'toServer':
        return this.checkToServer(a.text);
      case 'open': {
        const r = a.request;
        if (r.sid !== 'fuzz') this.fail(`open for session ${r.sid}`);
        if (!(r.target.port >= 1 && r.target.port <= 65535 && Number.isInteger(r.target.port))) this.fail(`open to port ${r.target.port}`);
        if (r.kind === 'active') {
          // RFC 2577: data only to the client's own control address, never to a privileged port.
          if (r.target.address !== this.client) this.fail(`active data path to ${r.target.address}, not the client ${this.client}`);
          if (r.target.port < 1024) this.fail(`active data path to privileged client port ${r.target.port}`);
          if (r.peer !== this.server) this.fail(`active data path admits ${r.peer}, not the server`);
          if (r.listen !== ad.activeListen || r.source !== ad.activeSource) this.fail(`active data path ${JSON.stringify(r)}`);
          if (r.family !== this.plan.serverFamily) this.fail(`active data path of family ${r.family}`);
          if ((r.sourcePort === 20) !== this.plan.rewriteSourcePort) this.fail(`active data path sourcePort ${r.sourcePort}`);
        } else {
          if (ad.passiveDirect) this.fail('a passive data path in passive-direct mode');
          if (r.target.address !== this.server) this.fail(`passive data path to ${r.target.address}, not the server ${this.server}`);
          if (r.peer !== this.client) this.fail(`passive data path admits ${r.peer}, not the client`);
          if (r.listen !== ad.passiveListen || r.source !== ad.passiveSource) this.fail(`passive data path ${JSON.stringify(r)}`);
          if (r.family !== this.plan.clientFamily) this.fail(`passive data path of family ${r.family}`);
        }
        return;
      }
      case 'log':
        if (!LOG_LEVELS.has(a.level)) this.fail(`log level ${a.level}`);
        return;
      case 'close':
        if (a.reply !== undefined && !/^[45][0-9][0-9] /.test(a.reply)) this.fail(`close reply ${a.reply}`);
        return;
      default:
        return;
    }
  }

  /** What the client reads, reply by reply: each must be an FTP reply, and a 227/229 the proxy's own. */
  private toClient(text: string): void {
    for (const line of text.split('\r\n')) {
      let reply: Reply | null;
      try {
        reply = this.clientView.push(line);
      } catch (e) {
        this.fail(`the client was sent something that is not an FTP reply: ${JSON.stringify(text.slice(0, 200))} (${e instanceof Error ? e.message : String(e)})`);
      }
      if (!reply) continue;
      if (reply.code >= 200) this.finals++;
      if (reply.code === 227 || reply.code === 229) this.passiveToClient(reply.code, reply.lines);
    }
  }

  /**
   * A 227 or 229 reaches the client only as the proxy's answer to a PASV or EPSV of the
   * client's own: one line in the proxy's format, the address it advertises, and the port
   * of a passive data path the data plane gave it and that was not advertised yet
   * (passive-direct: a port the server announced).
   * Anything else is server text passed on unrewritten, or a reply out of step.
   */
  private passiveToClient(code: 227 | 229, lines: readonly string[]): void {
    const ad = this.addressing;
    const text = lines.join('|');
    const verb = code === 227 ? 'PASV' : 'EPSV';
    this.answered[code]++;
    if (this.answered[code] > this.asked[code]) {
      this.fail(`${code} number ${this.answered[code]} reached the client after ${this.asked[code]} ${verb} commands: ${text}`);
    }
    if (lines.length !== 1) this.fail(`a multi-line ${code} reached the client: ${text}`);
    let address: string | null = null;
    let port: number;
    if (code === 227) {
      this.stats.generated227++;
      const m = /^227 Entering Passive Mode \((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)\.$/.exec(text);
      if (!m) this.fail(`a 227 not in the proxy's format reached the client: ${text}`);
      address = m.slice(1, 5).join('.');
      port = Number(m[5]) * 256 + Number(m[6]);
    } else {
      this.stats.generated229++;
      const m = /^229 Entering Extended Passive Mode \(\|\|\|(\d+)\|\)$/.exec(text);
      if (!m) this.fail(`a 229 not in the proxy's format reached the client: ${text}`);
      port = Number(m[1]);
    }
    const want = ad.passiveDirect ? this.server : ad.passiveAdvertise;
    if (address !== null && address !== want) this.fail(`227 advertises ${address}, not ${want}: ${text}`);
    if (ad.passiveDirect) {
      if (!this.announced.has(port)) this.fail(`${code} passes on port ${port}, which the server never announced: ${text}`);
    } else {
      // One reply per path.
      if (!this.unadvertised.delete(port)) this.fail(`${code} advertises port ${port}, not that of a passive data path yet to be advertised: ${text}`);
    }
  }

  /** No command to the server names any address but the proxy's own activeListen. */
  private checkToServer(text: string): void {
    if (text.includes('\n')) {
      if (!this.opts.knownBugs?.has('telnet-option-lf') || /(?<!\xff[\xfb-\xfe])\n/.test(text)) {
        this.fail(`line break inside a line to the server: ${JSON.stringify(text)}`);
      }
      bump(this.stats.knownBugs, 'telnet-option-lf');
      return;
    }
    const ad = this.addressing;
    const { verb } = serverView(text, 'project');
    if (ADDRESS_VERBS.has(verb)) {
      this.stats.portCommands++;
      // Exactly what the proxy formats for one of its active paths, nothing a client wrote.
      const format = this.plan.serverFamily === 4 ? formatPort : formatEprt;
      for (const port of this.activePorts) if (text === format({ address: ad.activeListen, port })) return;
      this.fail(`the server was sent ${JSON.stringify(text)}: not the proxy's ${ad.activeListen} with a port of an active path`);
    }
    if (!this.opts.strictViews) return;
    // Servers that read a lone CR as a line end, or drop IAC with whatever follows it.
    const pieces = text.split('\r');
    for (const piece of pieces) {
      for (const how of ['project', 'iac-any'] as const) {
        const v = serverView(piece, how);
        if (ADDRESS_VERBS.has(v.verb) && !v.arg.replaceAll(',', '.').includes(ad.activeListen)) {
          this.fail(`a server reading ${how === 'iac-any' ? 'IAC+any as Telnet' : 'CR as a line end'} would see ${v.verb} ${JSON.stringify(v.arg)} in ${JSON.stringify(text)}`);
        }
      }
    }
  }

  private checkState(): void {
    if (this.closing !== null) return;
    const m = this.machine;
    const out = m.outstanding;
    if (out > this.stats.maxOutstanding) this.stats.maxOutstanding = out;
    const held = heldCount(m);
    if (held !== null) {
      if (held > this.stats.maxHeld) this.stats.maxHeld = held;
      if (held > (this.plan.maxQueued ?? MAX_QUEUED_DEFAULT)) this.fail(`${held} lines held, bound ${this.plan.maxQueued ?? MAX_QUEUED_DEFAULT}`);
    }
    // The machine holds at most one path: every live one is its current one.
    const current = m.currentPath?.id ?? null;
    for (const id of this.live.keys()) {
      if (id !== current) this.fail(`data path ${id} is live but the machine's current path is ${current}`);
    }
    if (current !== null && !this.live.has(current)) this.fail(`the machine's current path ${current} was already released`);
    const w = m.waitingToken;
    if (w !== null && !this.unresolved.has(w)) this.fail(`the machine waits for token ${w}, which no open is pending for`);
    if (w === null && this.unresolved.size > 0) this.fail(`open ${[...this.unresolved.keys()].join(',')} pending but the machine waits for none`);
  }
}

/** Lines the machine holds while a data-plane operation is under way (private state; null if it moved). */
function heldCount(m: SessionMachine): number | null {
  const c = Reflect.get(m, 'heldClient') as unknown;
  const s = Reflect.get(m, 'heldServer') as unknown;
  return Array.isArray(c) && Array.isArray(s) ? c.length + s.length : null;
}

export interface RunOptions extends SessionOptions {
  readonly seed: number;
  /** Stop after at least this many inputs. */
  readonly inputs: number;
  readonly styles?: readonly Style[];
  /** Replay only this session of the run. */
  readonly session?: number;
  /** Called every ~1 s of work with the stats so far. */
  readonly progress?: (s: Stats) => void;
}

export class FuzzFailure extends Error {
  constructor(
    message: string,
    readonly seed: number,
    readonly session: number,
    readonly plan: Plan,
    readonly transcript: readonly string[],
  ) {
    super(message);
  }
}

export const ALL_STYLES: readonly Style[] = ['orderly', 'chaos', 'chaos', 'lines', 'unruly'];

function runSession(seed: number, index: number, styles: readonly Style[], stats: Stats, opts: SessionOptions): number {
  const rng = new Rng(sessionSeed(seed, index));
  const plan = planFor(rng, styles);
  const sim = new SessionSim(rng, plan, stats, opts);
  sim.run();
  return sim.inputCount;
}

/** Runs sessions until `inputs` inputs were given; throws FuzzFailure (with a replay transcript) on the first violation. */
export function runFuzz(o: RunOptions): Stats {
  const stats = newStats();
  const styles = o.styles ?? ALL_STYLES;
  let last = Date.now();
  for (let i = o.session ?? 0; o.session === undefined ? stats.inputs < o.inputs : i === o.session; i++) {
    try {
      stats.inputs += runSession(o.seed, i, styles, stats, o);
      stats.sessions++;
    } catch (e) {
      if (!(e instanceof Violation)) throw e;
      // Replay the session alone with a transcript: same seed, same inputs.
      const rng = new Rng(sessionSeed(o.seed, i));
      const plan = planFor(rng, styles);
      const sim = new SessionSim(rng, plan, newStats(), { ...o, trace: true });
      try {
        sim.run();
      } catch {
        // The same violation again; its transcript is what we want.
      }
      const flags = [
        ...(o.strictViews ? ['--strict-views'] : []),
        ...[...(o.knownBugs ?? [])].map((b) => `--known-bug ${b}`),
        ...(styles.join(',') !== ALL_STYLES.join(',') ? [`--styles ${styles.join(',')}`] : []),
      ];
      throw new FuzzFailure(
        `${e.message}\n  seed ${o.seed} session ${i} (replay: scripts/fuzz --seed ${o.seed} --session ${[i, ...flags].join(' ')})\n  plan ${JSON.stringify(plan)}`,
        o.seed,
        i,
        plan,
        sim.log,
      );
    }
    if (o.progress && Date.now() - last >= 1000) {
      last = Date.now();
      o.progress(stats);
    }
  }
  return stats;
}
