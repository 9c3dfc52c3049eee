// Outgoing connections from an address this host does not own (the server's, for the relay's
// active data in outbound mode): IP_TRANSPARENT sockets plus one policy routing rule per
// connection that delivers its replies here; each rule goes with its connection, all at exit.

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
const ENOENT = 2;
const ESRCH = 3;
const EACCES = 13;

/**
 * How long a rule outlives its socket: the kernel finishes the closing handshake (FIN, ACK)
 * after Node has let go of the descriptor, and the peer's last segments need the rule to come
 * back here instead of being forwarded to the real server.
 */
const LINGER_MS = 3000;

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
  /** Set once the last one has closed. */
  linger: NodeJS.Timeout | undefined;
}

export interface TransparentOptions {
  /** Routing table and rule priority owned by the proxy (1-32765, not 253-255). */
  readonly table: number;
  readonly logger: AppLogger;
}

export class TransparentSources {
  /** Rules installed, by connection four-tuple. */
  private readonly rules = new Map<string, Installed>();

  private constructor(
    private readonly libc: Libc,
    private readonly rt: RouteSocket,
    private readonly o: TransparentOptions,
    /** Families whose `local` route is in the table. */
    private readonly families: ReadonlySet<4 | 6>,
  ) {}

  /**
   * Removes what an earlier run left in the table, installs the table's `local` routes and
   * checks that IP_TRANSPARENT is allowed. Null (after one log line saying why, and with
   * nothing left installed) where that cannot be done: data then comes from this host.
   */
  static open(o: TransparentOptions): TransparentSources | null {
    const refuse = (why: string): null => {
      o.logger.warn(
        { table: o.table, err: why },
        "active data cannot come from the server's address (needs CAP_NET_ADMIN); it comes from this host's, and clients that check (ncftp) refuse it",
      );
      return null;
    };
    const libc = loadLibc();
    if (!libc) return refuse('libc cannot be loaded through koffi');
    let rt: RouteSocket;
    try {
      rt = RouteSocket.open();
    } catch (e) {
      return refuse((e as Error).message);
    }
    const families = new Set<4 | 6>();
    const undo = (why: string): null => {
      for (const f of families) rt.request((seq) => localRouteMessage('delete', f, o.table, seq));
      rt.close();
      return refuse(why);
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
    o.logger.info({ table: o.table, families: [...families] }, "active data comes from the server's address (policy routing)");
    return new TransparentSources(libc, rt, o, families);
  }

  /**
   * A connection to `to` that carries `source` (and `sourcePort`, else one the kernel picks)
   * although this host does not own `source`, with the rule that brings its replies here.
   * Throws, with nothing left installed, if the socket or its rule cannot be made.
   */
  connect(to: Endpoint, source: string, sourcePort: number | undefined): net.Socket {
    const family = familyOf(source);
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
    // As Node does for a bound port: another connection may already use port 20 of this address.
    if (sourcePort !== undefined && c.setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, int32(1), 4) !== 0) fail('SO_REUSEADDR', c.errno());
    const addr = sockaddr(source, sourcePort ?? 0);
    if (c.bind(fd, addr, addr.length) !== 0) fail(`bind ${source}:${sourcePort ?? 0}`, c.errno());
    const len = [addr.length];
    if (c.getsockname(fd, addr, len) !== 0) fail('getsockname', c.errno());
    const rule: Rule = { family, from: to.address, to: source, sport: to.port, dport: addr.readUInt16BE(2), table: this.o.table };
    const key = `${rule.from} ${rule.sport} ${rule.to} ${rule.dport}`;
    const held = this.rules.get(key);
    if (held) {
      // The same four-tuple again while its rule is still installed (lingering, or in use by a
      // connection about to fail with EADDRNOTAVAIL): the rule serves both.
      clearTimeout(held.linger);
      held.linger = undefined;
      held.users += 1;
    } else {
      // ip rule add pref T from <client> to <server> ipproto tcp sport <client's data port> dport <bound port> lookup T
      const errno = this.rt.request((seq) => ruleMessage('add', rule, seq));
      if (errno !== 0 && errno !== EEXIST) fail(`ip rule add ${key}`, errno);
      this.rules.set(key, { rule, users: 1, linger: undefined });
    }
    let sock: net.Socket;
    try {
      // Node's own option for accepted sockets (net.Server's pauseOnConnect): without it the
      // constructor starts reading at once, and bytes the client sends first (an upload) would
      // sit in Node's buffer where the splice worker, which reads the descriptor, never sees them.
      sock = new net.Socket({ fd, allowHalfOpen: true, pauseOnCreate: true } as net.SocketConstructorOpts);
    } catch (e) {
      this.letGo(key);
      c.close(fd);
      throw e;
    }
    sock.once('close', () => this.letGo(key));
    return sock.connect({ host: to.address, port: to.port });
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

  /** A socket using the rule has closed: the last one leaves it to linger, then to go. */
  private letGo(key: string): void {
    const held = this.rules.get(key);
    if (!held || --held.users > 0) return;
    held.linger = setTimeout(() => this.remove(key), LINGER_MS);
    held.linger.unref();
  }

  private remove(key: string): void {
    const held = this.rules.get(key);
    if (!held) return;
    clearTimeout(held.linger);
    this.rules.delete(key);
    // ip rule del pref T from <client> to <server> ipproto tcp sport <port> dport <port> lookup T
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
