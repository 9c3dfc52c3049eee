// The server's address, used by the relay in outbound mode although this host does not own it:
// connections from it (active data) and listeners on it (passive data), as IP_TRANSPARENT sockets
// plus one policy routing rule each that delivers their packets here; each rule goes with its
// socket, all at exit.

import net from 'node:net';
import { networkInterfaces } from 'node:os';
import ipaddr from 'ipaddr.js';
import type { AppLogger } from '../log.js';
import type { Endpoint } from '../dataplane/types.js';
import { canonical, familyOf } from './address.js';
import { int32, loadLibc, type Libc } from './libc.js';
import { AF, RouteSocket, deleteDumpedRule, errnoName, localRouteMessage, ruleMessage, ruleTable, type Rule } from './rtnetlink.js';

const SOCK_STREAM = 1;
const SOCK_NONBLOCK = 0o4000;
const SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1;
const SO_REUSEADDR = 2;
/** IP_TRANSPARENT at SOL_IP, IPV6_TRANSPARENT at SOL_IPV6: bind to an address that is not ours. */
const TRANSPARENT: Readonly<Record<4 | 6, readonly [number, number]>> = { 4: [0, 19], 6: [41, 75] };
const EPERM = 1;
const EEXIST = 17;
const EADDRINUSE = 98;
const ENOENT = 2;
const ESRCH = 3;
const EACCES = 13;

/**
 * How long a rule outlives its socket: the kernel finishes the closing handshake (FIN, ACK)
 * after Node has let go of the descriptor, and the peer's last segments need the rule to come
 * back here instead of being forwarded to the real server. (Every segment is routed by the
 * rules, not only the first: measured, a connection froze when its rule went mid-transfer.)
 */
const LINGER_MS = 3000;
/**
 * Lingering rules kept at most; beyond, the oldest goes early. Every packet the host routes is
 * checked against every rule in turn: measured in the lab, forwarding slowed by about 40% at
 * 1000 rules and 80% at 4000 (none measurable at 300), and one client fetching small files in
 * a loop left 1000 rules lingering. What an early removal risks is only the last segment of a
 * handshake that has all but ended (the data was delivered before the relay closed).
 */
const MAX_LINGERING = 128;

/** The kernel refuses a rule port range that ends at 65535 (fib_rule_port_range_valid). */
const NO_RULE_PORT = 65535;

const denied = (errno: number): boolean => errno === EPERM || errno === EACCES;

let local: { readonly at: number; readonly addresses: ReadonlySet<string> } | null = null;

/**
 * Is `address` one of this host's interface addresses? Listing them costs about 0.2 ms, so the
 * list is reused for a second. (Not a test bind: with net.ipv4.ip_nonlocal_bind, which HA
 * setups turn on, any address binds, but replies to one that is not ours never come back.)
 */
export function isLocalAddress(address: string): boolean {
  const now = Date.now();
  if (!local || now - local.at > 1000) {
    const all = Object.values(networkInterfaces()).flatMap((list) => (list ?? []).map((a) => canonical(a.address)));
    local = { at: now, addresses: new Set(all) };
  }
  return local.addresses.has(address);
}

/** struct sockaddr_in / sockaddr_in6 for address:port. */
function sockaddr(address: string, port: number): Buffer {
  const family = familyOf(address);
  const b = Buffer.alloc(family === 4 ? 16 : 28);
  b.writeUInt16LE(AF[family], 0);
  b.writeUInt16BE(port, 2);
  Buffer.from(ipaddr.parse(address).toByteArray()).copy(b, family === 4 ? 4 : 8);
  return b;
}

interface Installed {
  readonly rule: Rule;
  /** Sockets that need it. */
  users: number;
  /** Until when a closed connection's closing handshake needs it (ms since the epoch; 0: none). */
  lingerUntil: number;
  /** Set once the last user has closed, until lingerUntil. */
  linger: NodeJS.Timeout | undefined;
}

export interface TransparentOptions {
  /** Routing table and rule priority owned by the proxy (1-32765, not 253-255). */
  readonly table: number;
  readonly logger: AppLogger;
}

/** A rule's key: the four-tuple it matches, `*` for a listener's any source port. */
const keyOf = (r: Rule): string => `${r.from} ${r.sport ?? '*'} ${r.to} ${r.dport}`;

export class TransparentSources {
  /** Rules installed, by keyOf. */
  private readonly rules = new Map<string, Installed>();
  /** Keys of the rules lingering now, oldest first. */
  private readonly lingering = new Set<string>();

  private constructor(
    private readonly libc: Libc,
    private readonly rt: RouteSocket,
    private readonly o: TransparentOptions,
    /** Families whose `local` route is in the table. */
    private readonly families: ReadonlySet<4 | 6>,
  ) {}

  /**
   * Removes what an earlier run left in the table, installs the table's `local` routes and
   * checks that IP_TRANSPARENT is allowed. Where that cannot be done (it needs CAP_NET_ADMIN),
   * says why, with nothing left installed.
   */
  static open(o: TransparentOptions): TransparentSources | string {
    const libc = loadLibc();
    if (!libc) return 'libc cannot be loaded through koffi';
    let rt: RouteSocket;
    try {
      rt = RouteSocket.open();
    } catch (e) {
      return (e as Error).message;
    }
    const families = new Set<4 | 6>();
    const undo = (why: string): string => {
      for (const f of families) rt.request((seq) => localRouteMessage('delete', f, o.table, seq));
      rt.close();
      return why;
    };
    const left = removeLeftovers(rt, o.table);
    if (typeof left === 'string') return undo(left);
    if (left > 0) o.logger.notice({ table: o.table, rules: left }, 'removed policy routing rules left by an earlier run');
    for (const f of [4, 6] as const) {
      const errno = rt.request((seq) => localRouteMessage('add', f, o.table, seq));
      if (errno === 0) families.add(f);
      // A host without IPv6 refuses the ::/0 route; IPv4 alone is still worth having.
      else if (denied(errno) || f === 4) return undo(`ip route add local default table ${o.table}: ${errnoName(errno)}`);
    }
    const probe = libc.socket(AF[4], SOCK_STREAM | SOCK_CLOEXEC, 0);
    const allowed = probe >= 0 && libc.setsockopt(probe, TRANSPARENT[4][0], TRANSPARENT[4][1], int32(1), 4) === 0;
    const errno = libc.errno();
    if (probe >= 0) libc.close(probe);
    if (!allowed) return undo(`IP_TRANSPARENT: ${errnoName(errno)}`);
    return new TransparentSources(libc, rt, o, families);
  }

  /**
   * Removes what a run that ended without closing left in `table` (its rules and `local`
   * routes), for `ftp-proxy --cleanup`: the number of rules removed, or why it failed.
   */
  static removeLeftovers(table: number): number | string {
    let rt: RouteSocket;
    try {
      rt = RouteSocket.open();
    } catch (e) {
      return (e as Error).message;
    }
    try {
      return removeLeftovers(rt, table);
    } finally {
      rt.close();
    }
  }

  /** Whether addresses of `family` can be used (the table has its `local` route). */
  serves(family: 4 | 6): boolean {
    return this.families.has(family);
  }

  /**
   * A connection to `to` that carries `source` (and `sourcePort`, else one the kernel picks)
   * although this host does not own `source`, with the rule that brings its replies here.
   * Throws, with nothing left installed, if the socket or its rule cannot be made.
   */
  connect(to: Endpoint, source: string, sourcePort: number | undefined): net.Socket {
    const c = this.libc;
    // SO_REUSEADDR as Node does for a bound port: another connection may already use port 20.
    const bound = this.bind(source, sourcePort ?? 0, sourcePort !== undefined);
    if (!bound) throw new Error(`bind ${source}:${sourcePort ?? 0}: EADDRINUSE`);
    const { fd, port } = bound;
    let key: string;
    try {
      // ip rule add pref T from <client> to <server> ipproto tcp sport <client's data port> dport <bound port> lookup T
      // (without sport for a client's port 65535: the bound port alone still names one connection)
      const sport = to.port === NO_RULE_PORT ? undefined : to.port;
      key = this.hold({ family: familyOf(source), from: to.address, to: source, ...(sport ? { sport } : {}), dport: port, table: this.o.table });
    } catch (e) {
      c.close(fd);
      throw e;
    }
    let sock: net.Socket;
    try {
      // Node's own option for accepted sockets (net.Server's pauseOnConnect): without it the
      // constructor starts reading at once, and bytes the client sends first (an upload) would
      // sit in Node's buffer where the splice worker, which reads the descriptor, never sees them.
      sock = new net.Socket({ fd, allowHalfOpen: true, pauseOnCreate: true } as net.SocketConstructorOpts);
    } catch (e) {
      this.letGo(key, false);
      c.close(fd);
      throw e;
    }
    sock.once('close', () => this.letGo(key, true));
    return sock.connect({ host: to.address, port: to.port });
  }

  /**
   * Makes `server` listen on `at` although this host does not own its address (the server's,
   * for passive data in outbound mode), with the rule that brings `peer`'s connections to it
   * here; every other host's connections to `at` go on to the address's owner as before. The
   * rule stays while the server listens and while a connection it accepted is open, then
   * lingers. False if `at` is taken, or its port is 65535, which no rule can name; throws, with
   * nothing left installed, if anything else fails.
   */
  async listen(server: net.Server, at: Endpoint, peer: string, backlog: number): Promise<boolean> {
    if (at.port === NO_RULE_PORT) return false;
    const c = this.libc;
    const bound = this.bind(at.address, at.port, true);
    if (!bound) return false;
    const { fd } = bound;
    // Listening here, not in Node, so that a port taken after all is told apart from a failure.
    if (c.listen(fd, backlog) !== 0) {
      const errno = c.errno();
      c.close(fd);
      if (errno === EADDRINUSE) return false;
      throw new Error(`listen ${at.address}:${at.port}: ${errnoName(errno)}`);
    }
    // ip rule add pref T from <client> to <server> ipproto tcp dport <port> lookup T
    let key: string;
    try {
      key = this.hold({ family: familyOf(at.address), from: peer, to: at.address, dport: at.port, table: this.o.table });
    } catch (e) {
      c.close(fd);
      throw e;
    }
    try {
      await new Promise<void>((resolve, reject) => {
        server.once('error', reject);
        server.listen({ fd, backlog }, () => {
          server.off('error', reject);
          resolve();
        });
      });
    } catch (e) {
      // Node owns the descriptor only once it listens.
      c.close(fd);
      this.letGo(key, false);
      throw e;
    }
    // A net.Server emits 'close' once it has stopped listening and every connection it
    // accepted has closed: the rule is needed until then, and lingers only if there was one.
    let accepted = false;
    server.once('connection', () => (accepted = true));
    server.once('close', () => this.letGo(key, accepted));
    return true;
  }

  /** Rules installed now (in use or lingering), for tests and stats. */
  get size(): number {
    return this.rules.size;
  }

  /** Removes every rule and the table's routes. Idempotent. */
  close(): void {
    for (const key of [...this.rules.keys()]) this.remove(key);
    for (const f of this.families) this.rt.request((seq) => localRouteMessage('delete', f, this.o.table, seq));
    this.rt.close();
  }

  /**
   * A non-blocking TCP socket bound to `address`:`port` (0: the kernel picks) although this
   * host does not own `address`, and the port it got. Null if that address and port are taken;
   * throws for anything else, with the socket closed.
   */
  private bind(address: string, port: number, reuse: boolean): { fd: number; port: number } | null {
    const family = familyOf(address);
    if (!this.families.has(family)) throw new Error(`no IPv${family} route in table ${this.o.table}`);
    const c = this.libc;
    const fd = c.socket(AF[family], SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) throw new Error(`socket: ${errnoName(c.errno())}`);
    const fail = (what: string, errno: number): never => {
      c.close(fd);
      throw new Error(`${what}: ${errnoName(errno)}`);
    };
    const [level, name] = TRANSPARENT[family];
    if (c.setsockopt(fd, level, name, int32(1), 4) !== 0) fail('IP_TRANSPARENT', c.errno());
    if (reuse && c.setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, int32(1), 4) !== 0) fail('SO_REUSEADDR', c.errno());
    const addr = sockaddr(address, port);
    if (c.bind(fd, addr, addr.length) !== 0) {
      const errno = c.errno();
      if (errno !== EADDRINUSE) fail(`bind ${address}:${port}`, errno);
      c.close(fd);
      return null;
    }
    const len = [addr.length];
    if (c.getsockname(fd, addr, len) !== 0) fail('getsockname', c.errno());
    return { fd, port: addr.readUInt16BE(2) };
  }

  /**
   * Installs `rule`, or, if it is installed already (lingering, or serving another socket with
   * the same four-tuple, such as one about to fail with EADDRNOTAVAIL), counts one more user of
   * it. Its key; throws if it cannot be installed.
   */
  private hold(rule: Rule): string {
    const key = keyOf(rule);
    const held = this.rules.get(key);
    if (held) {
      clearTimeout(held.linger);
      held.linger = undefined;
      this.lingering.delete(key);
      held.users += 1;
      return key;
    }
    const errno = this.rt.request((seq) => ruleMessage('add', rule, seq));
    if (errno !== 0 && errno !== EEXIST) throw new Error(`ip rule add ${key}: ${errnoName(errno)}`);
    this.rules.set(key, { rule, users: 1, lingerUntil: 0, linger: undefined });
    return key;
  }

  /**
   * A socket using the rule has closed; `linger`: it was (or accepted) a connection, whose
   * closing handshake needs the rule a while longer (a listener that accepted nothing has
   * nothing to finish). The rule goes once its last user has closed and every linger is over.
   */
  private letGo(key: string, linger: boolean): void {
    const held = this.rules.get(key);
    if (!held) return;
    if (linger) held.lingerUntil = Date.now() + LINGER_MS;
    if (--held.users > 0) return;
    const left = held.lingerUntil - Date.now();
    if (left <= 0) return this.remove(key);
    held.linger = setTimeout(() => this.remove(key), left);
    held.linger.unref();
    this.lingering.add(key);
    if (this.lingering.size > MAX_LINGERING) this.remove(this.lingering.values().next().value!);
  }

  private remove(key: string): void {
    const held = this.rules.get(key);
    if (!held) return;
    clearTimeout(held.linger);
    this.rules.delete(key);
    this.lingering.delete(key);
    // ip rule del pref T from <client> to <server> ipproto tcp [sport <port>] dport <port> lookup T
    const errno = this.rt.request((seq) => ruleMessage('delete', held.rule, seq));
    if (errno !== 0 && errno !== ENOENT) this.o.logger.warn({ rule: key, table: this.o.table, err: errnoName(errno) }, 'cannot remove policy routing rule');
  }
}

/**
 * Whatever an earlier run of ours left (it ended without closing): every rule that looks up
 * `table`, and the table's `local` routes. The number of rules removed, or why it failed.
 */
function removeLeftovers(rt: RouteSocket, table: number): number | string {
  let rules: Buffer[];
  try {
    rules = rt.dumpRules().filter((r) => ruleTable(r) === table);
  } catch (e) {
    return (e as Error).message;
  }
  for (const r of rules) {
    const errno = rt.request((seq) => deleteDumpedRule(r, seq));
    if (errno !== 0 && errno !== ENOENT) return `ip rule del (left over) lookup ${table}: ${errnoName(errno)}`;
  }
  for (const f of [4, 6] as const) {
    const errno = rt.request((seq) => localRouteMessage('delete', f, table, seq));
    const gone = errno === 0 || errno === ESRCH || errno === ENOENT;
    // As for adding: only IPv6 may be missing altogether.
    if (!gone && (f === 4 || denied(errno))) return `ip route del local default table ${table}: ${errnoName(errno)}`;
  }
  return rules.length;
}

/**
 * Connects to `to` so that it sees the connection come from `source` (port `sourcePort` when
 * set). A source that is not one of this host's addresses (the server's, in outbound mode) takes
 * `transparent`; without it, or if it fails for this connection, the kernel picks this host's
 * own address, as it always did.
 */
export function connectFrom(
  to: Endpoint,
  source: string,
  sourcePort: number | undefined,
  transparent: TransparentSources | null,
  log: AppLogger,
): net.Socket {
  const local = isLocalAddress(source);
  if (transparent && !local) {
    try {
      return transparent.connect(to, source, sourcePort);
    } catch (e) {
      log.warn({ source, err: (e as Error).message }, "data connection cannot come from the server's address; it comes from this host's");
    }
  }
  return net.connect({
    host: to.address,
    port: to.port,
    ...(local ? { localAddress: source } : {}),
    ...(sourcePort !== undefined ? { localPort: sourcePort } : {}),
    allowHalfOpen: true,
  });
}

/**
 * Makes `server` listen on `at` for connections from `peer`. An address that is not one of this
 * host's (the server's, in outbound mode) takes `transparent`, which catches `peer`'s connections
 * to it alone. False if `at` cannot be had (taken, or a port this way of listening cannot use):
 * try another port.
 */
export async function listenOn(
  server: net.Server,
  at: Endpoint,
  peer: string,
  backlog: number,
  transparent: TransparentSources | null,
): Promise<boolean> {
  if (transparent && !isLocalAddress(at.address)) return transparent.listen(server, at, peer, backlog);
  return new Promise<boolean>((resolve, reject) => {
    // Anything but a taken port, such as a listen address that is not ours, fails the same for
    // every port.
    server.once('error', (err: NodeJS.ErrnoException) => (err.code === 'EADDRINUSE' || err.code === 'EACCES' ? resolve(false) : reject(err)));
    server.listen({ host: at.address, port: at.port, exclusive: true, backlog }, () => resolve(true));
  });
}
