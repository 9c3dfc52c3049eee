// One validation pass over the raw command-line options: ranges, addresses, modes. The
// result is a frozen Config; nothing after this point re-checks a flag.

import ipaddr from 'ipaddr.js';
import type { RawClientOptions, RawOptions } from './cli.js';
import { DEFAULT_CONTROL_SOCKET } from './control/protocol.js';
import { ConfigError } from './errors.js';
import type { Endpoint } from './dataplane/types.js';
import { AddressList, parseCidr } from './net/policy.js';
import { CommandPolicy, isVerb } from './session/policy.js';
import { Masquerade, type MasqueradeRule } from './net/masquerade.js';

function cidrs(flag: string, raw: readonly string[]): ReturnType<typeof parseCidr>[] {
  return raw.flatMap((value, item) => {
    const r = value.trim();
    if (r === '') return [];
    try {
      return [parseCidr(r)];
    } catch {
      return fail(flag, `'${r}' is not an address or CIDR block`, item);
    }
  });
}

export type Backend = 'nftables' | 'relay';

export type TlsMode = 'refuse' | 'pass' | 'terminate';

export interface TlsTerminateConfig {
  /** PEM: the certificate, then its chain. Read (and checked against the key) by tls/context.ts. */
  readonly certFile: string;
  readonly keyFile: string;
  /** USER and PASS before AUTH get 530. */
  readonly required: boolean;
  /** PROT P data connections must resume their control connection's TLS session. */
  readonly reuseCheck: boolean;
  /** The listener speaks TLS from the first byte (implicit FTPS); data is PROT P from the start. */
  readonly implicit: boolean;
  /** Toward the server: AUTH TLS, PBSZ 0, PROT P (explicit); absent: plain FTP. */
  readonly server?: ServerTlsConfig;
}

export interface ServerTlsConfig {
  /** PEM CA certificates for the server's certificate; absent: the system's. */
  readonly caFile?: string;
  /** The server's certificate is not checked at all. */
  readonly insecure: boolean;
}

export interface Config {
  readonly mode: 'reverse' | 'outbound';
  readonly bind: string;
  readonly port: number;
  /** Reverse mode's fixed server. */
  readonly reverse?: Endpoint;
  readonly proxyAddress?: string;
  readonly masqueradeAddress?: string;
  /** Reverse mode: what 227 replies advertise to each client (--masquerade-for, --masquerade-address). */
  readonly masquerade: Masquerade;
  readonly dataPorts: { readonly low: number; readonly high: number };
  readonly backend: Backend;
  readonly rewriteSourcePort: boolean;
  readonly maxSessions: number;
  /** 0 = no per-client limit. */
  readonly maxSessionsPerClient: number;
  /** Seconds; 0 = no idle timeout. */
  readonly idleTimeout: number;
  readonly connectTimeout: number;
  readonly dataTimeout: number;
  /** Seconds a relayed data connection may carry nothing before it is cut. */
  readonly dataIdleTimeout: number;
  readonly anonymousOnly: boolean;
  /** --deny-command and --read-only. */
  readonly commandPolicy: CommandPolicy;
  /** syslog-style 0-7. */
  readonly debugLevel: number;
  readonly foreground: boolean;
  readonly logRules: boolean;
  readonly mark?: number;
  readonly maxLineLength: number;
  readonly nftTable: string;
  /** nftables: NFLOG group for counting data bytes; 0 = not counted. */
  readonly nflogGroup: number;
  /** Relay, outbound mode: policy routing table (and rule priority) for active data from the server's address; 0 = off. */
  readonly routeTable: number;
  readonly shutdownGrace: number;
  readonly printRuleset: boolean;
  /** Remove what a proxy with this configuration left in the kernel, and exit (cleanup.ts). */
  readonly cleanup: boolean;
  readonly loginTimeout: number;
  readonly tls: TlsMode;
  /** --tls terminate: the certificate the proxy presents and what it asks of clients. */
  readonly tlsTerminate?: TlsTerminateConfig;
  /** --server-mode: how data connections are asked of the server. */
  readonly serverMode: 'client' | 'passive' | 'active';
  readonly clients: AddressList;
  readonly servers: AddressList;
  /** A client that connects to the proxy itself logs in as USER name@host (outbound mode). */
  readonly userAtHost: boolean;
  /** Where GET /metrics is served; absent: no metrics listener. */
  readonly metrics?: Endpoint;
  /**
   * The control socket. `explicit`: the path was given, so failing to take it stops the start;
   * the default path is taken when it can be (not when another proxy holds it, or not as root).
   */
  readonly controlSocket: { readonly path: string; readonly explicit: boolean };
  /** File the xferlog lines are appended to; absent: none written. */
  readonly xferlog?: string;
}

/** What the subcommands that talk to a running proxy need. */
export interface ClientConfig {
  readonly controlSocket: string;
  readonly json: boolean;
}

/** `item`: which value of a repeatable option is bad. */
function fail(flag: string, message: string, item?: number): never {
  throw new ConfigError('BAD_FLAG', `${flag}: ${message}`, { flag, detail: message, ...(item !== undefined ? { item } : {}) });
}

function integer(flag: string, raw: string, min: number, max: number): number {
  const s = raw.trim();
  const n = /^0x[0-9a-f]+$/i.test(s) ? Number.parseInt(s, 16) : /^\d+$/.test(s) ? Number(s) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    fail(flag, `'${raw}' is not a whole number from ${min} to ${max}`);
  }
  return n;
}

/** Canonical text of an IP address literal: dotted quad, or RFC 5952 for IPv6. */
export function canonicalAddress(flag: string, raw: string): string {
  const s = raw.trim().replace(/^\[(.*)\]$/, '$1');
  if (!ipaddr.isValid(s) || (ipaddr.IPv4.isValid(s) && !ipaddr.IPv4.isValidFourPartDecimal(s))) {
    fail(flag, `'${raw}' is not an IP address`);
  }
  const addr = ipaddr.parse(s);
  if (addr.kind() === 'ipv6') {
    const v6 = addr as ipaddr.IPv6;
    if (v6.zoneId) fail(flag, `'${raw}': zone ids are not supported`);
    // ::ffff:a.b.c.d is an IPv4 address: every socket reports it as one, so the config must too.
    if (v6.isIPv4MappedAddress()) return v6.toIPv4Address().toString();
    return v6.toRFC5952String();
  }
  return addr.toString();
}

function unicast(flag: string, raw: string): string {
  const a = canonicalAddress(flag, raw);
  const range = ipaddr.parse(a).range();
  if (range === 'unspecified' || range === 'multicast' || range === 'broadcast') {
    fail(flag, `'${raw}' is a ${range} address`);
  }
  return a;
}

function portRange(flag: string, raw: string): { low: number; high: number } {
  const m = /^\s*(\d+)\s*-\s*(\d+)\s*$/.exec(raw);
  if (!m) fail(flag, `'${raw}' is not a range LO-HI`);
  const low = integer(flag, m[1]!, 1024, 65535);
  const high = integer(flag, m[2]!, 1024, 65535);
  if (low > high) fail(flag, `'${raw}': ${low} is above ${high}`);
  return { low, high };
}

/** ADDR:PORT, an IPv6 address in brackets ([::1]:9464). */
function listenAddress(flag: string, raw: string): Endpoint {
  const m = /^\s*(\[[^\]]*\]|[^:\s]*):(\d+)\s*$/.exec(raw);
  if (!m || m[1] === '') fail(flag, `'${raw}' is not ADDR:PORT (an IPv6 address in brackets: [::1]:9464)`);
  return { address: canonicalAddress(flag, m[1]!), port: integer(flag, m[2]!, 1, 65535) };
}

/** sun_path holds 108 bytes with the terminating NUL. */
const MAX_SOCKET_PATH = 107;

function nonEmpty(flag: string, raw: string): string {
  if (raw.trim() === '') fail(flag, 'is empty');
  return raw;
}

function socketPath(flag: string, raw: string): string {
  nonEmpty(flag, raw);
  if (Buffer.byteLength(raw) > MAX_SOCKET_PATH) {
    fail(flag, `'${raw}' is longer than ${MAX_SOCKET_PATH} bytes, the limit of a unix socket path`);
  }
  return raw;
}

export function buildClientConfig(o: RawClientOptions): ClientConfig {
  return Object.freeze({
    controlSocket: o.controlSocket !== undefined ? socketPath('--control-socket', o.controlSocket) : DEFAULT_CONTROL_SOCKET,
    json: o.json === true,
  });
}

/** A rule's priority must come before the main table's (32766); 253-255 are the kernel's tables. */
function routeTable(raw: string): number {
  const n = integer('--route-table', raw, 0, 32765);
  if (n >= 253 && n <= 255) fail('--route-table', `${n} is one of the kernel's own tables (253-255)`);
  return n;
}

function tlsMode(raw: string): TlsMode {
  const v = raw.trim().toLowerCase();
  if (v !== 'refuse' && v !== 'pass' && v !== 'terminate') fail('--tls', `'${raw}' is not one of refuse, pass, terminate`);
  return v;
}

/** CIDR=ADDR: clients in CIDR (IPv4: 227 replies go to IPv4 clients only) are told ADDR. */
function masqueradeRules(flag: string, raw: readonly string[]): MasqueradeRule[] {
  return raw.flatMap((value, item) => {
    const r = value.trim();
    if (r === '') return [];
    const m = /^([^=]+)=([^=]+)$/.exec(r);
    if (!m) return fail(flag, `'${r}' is not CIDR=ADDR`, item);
    let block: ReturnType<typeof parseCidr>;
    try {
      block = parseCidr(m[1]!);
    } catch {
      return fail(flag, `'${m[1]!.trim()}' is not an address or CIDR block`, item);
    }
    if (block[0].kind() !== 'ipv4') fail(flag, `'${m[1]!.trim()}' is not IPv4 (227 replies go to IPv4 clients only)`, item);
    const address = unicast(flag, m[2]!);
    if (ipaddr.parse(address).kind() !== 'ipv4') fail(flag, `'${m[2]!.trim()}' is not an IPv4 address (227 replies carry IPv4 only)`, item);
    return [{ block, address }];
  });
}

function verbs(flag: string, raw: readonly string[]): string[] {
  return raw.flatMap((value, item) => {
    const v = value.trim();
    if (v === '') return [];
    if (!isVerb(v)) fail(flag, `'${v}' is not an FTP command verb`, item);
    return [v];
  });
}

/** The --tls-* flags: only with --tls terminate, which needs reverse mode and both files. */
function tlsTerminate(o: RawOptions, mode: TlsMode, reverse: boolean): TlsTerminateConfig | undefined {
  if (mode !== 'terminate') {
    for (const [flag, given] of [
      ['--tls-cert', o.tlsCert !== undefined],
      ['--tls-key', o.tlsKey !== undefined],
      ['--tls-required', o.tlsRequired === true],
      ['--tls-no-reuse-check', o.tlsNoReuseCheck === true],
      ['--implicit-tls', o.implicitTls === true],
      ['--server-tls', o.serverTls !== 'off'],
      ['--server-ca', o.serverCa !== undefined],
      ['--server-tls-insecure', o.serverTlsInsecure === true],
    ] as const) {
      if (given) fail(flag, 'only has a meaning with --tls terminate');
    }
    return undefined;
  }
  // Outbound mode fronts other people's servers: holding a certificate for them is interception.
  if (!reverse) fail('--tls', "'terminate' needs reverse mode (-R): in outbound mode the servers are not this proxy's to speak for");
  if (o.tlsCert === undefined) fail('--tls-cert', 'is needed with --tls terminate');
  if (o.tlsKey === undefined) fail('--tls-key', 'is needed with --tls terminate');
  return {
    certFile: nonEmpty('--tls-cert', o.tlsCert),
    keyFile: nonEmpty('--tls-key', o.tlsKey),
    required: o.tlsRequired === true,
    reuseCheck: o.tlsNoReuseCheck !== true,
    implicit: o.implicitTls === true,
    ...serverTls(o),
  };
}

function serverTls(o: RawOptions): { server?: ServerTlsConfig } {
  const mode = o.serverTls.trim().toLowerCase();
  if (mode !== 'off' && mode !== 'explicit') fail('--server-tls', `'${o.serverTls}' is not one of off, explicit`);
  if (mode === 'off') {
    if (o.serverCa !== undefined) fail('--server-ca', 'only has a meaning with --server-tls explicit');
    if (o.serverTlsInsecure) fail('--server-tls-insecure', 'only has a meaning with --server-tls explicit');
    return {};
  }
  if (o.serverCa !== undefined && o.serverTlsInsecure) fail('--server-tls-insecure', 'give either --server-ca or --server-tls-insecure, not both');
  return { server: { ...(o.serverCa !== undefined ? { caFile: nonEmpty('--server-ca', o.serverCa) } : {}), insecure: o.serverTlsInsecure === true } };
}

function serverMode(raw: string): 'client' | 'passive' | 'active' {
  const v = raw.trim().toLowerCase();
  if (v !== 'client' && v !== 'passive' && v !== 'active') fail('--server-mode', `'${raw}' is not one of client, passive, active`);
  return v;
}

export function buildConfig(o: RawOptions): Config {
  const reverseAddr = o.reverse !== undefined ? unicast('-R/--reverse', o.reverse) : undefined;
  const serverPort = integer('-P/--server-port', o.serverPort, 1, 65535);
  const backend = o.backend.trim().toLowerCase();
  if (backend !== 'nftables' && backend !== 'relay') {
    fail('--backend', `'${o.backend}' is not one of nftables, relay`);
  }
  if (o.tag !== undefined && o.mark !== undefined) {
    fail('-T/--tag', 'give either -T/--tag or --mark, not both');
  }
  const mark =
    o.tag !== undefined
      ? integer('-T/--tag', o.tag, 1, 0xffffffff)
      : o.mark !== undefined
        ? integer('--mark', o.mark, 1, 0xffffffff)
        : undefined;
  const table = o.nftTable.trim();
  if (!/^[A-Za-z][A-Za-z0-9_]{0,31}$/.test(table)) {
    fail('--nft-table', `'${o.nftTable}' is not a name of letters, digits and _ (at most 32, starting with a letter)`);
  }
  const bind = o.bind !== undefined ? canonicalAddress('-b/--bind', o.bind) : o.ipv6 ? '::1' : '127.0.0.1';
  if (o.checkConfig && o.printRuleset) fail('--check-config', 'give either --check-config or --print-ruleset, not both');
  if (o.cleanup && (o.checkConfig || o.printRuleset)) fail('--cleanup', 'give it without --check-config and --print-ruleset');
  if (o.reverse === undefined && o.serverPort !== '21') {
    fail('-P/--server-port', 'only has a meaning with -R/--reverse');
  }
  if (o.reverse === undefined && o.serverMode.trim().toLowerCase() === 'active') {
    // Outbound clients send passive data to the server's own address, where only the kernel
    // plane (or a relay with policy routing) can catch it, not the relay beside nftables.
    fail('--server-mode', "'active' only has a meaning with -R/--reverse");
  }
  if (o.reverse === undefined && o.masqueradeAddress !== undefined) {
    fail('--masquerade-address', 'only has a meaning with -R/--reverse');
  }
  if (o.reverse === undefined && o.masqueradeFor.some((v) => v.trim() !== '')) {
    fail('--masquerade-for', 'only has a meaning with -R/--reverse');
  }
  const masqueradeAddress = o.masqueradeAddress !== undefined ? unicast('--masquerade-address', o.masqueradeAddress) : undefined;
  const tls = tlsMode(o.tls);
  const terminate = tlsTerminate(o, tls, reverseAddr !== undefined);
  const cfg: Config = {
    mode: reverseAddr !== undefined ? 'reverse' : 'outbound',
    bind,
    port: integer('-p/--port', o.port, 1, 65535),
    ...(reverseAddr !== undefined ? { reverse: { address: reverseAddr, port: serverPort } } : {}),
    ...(o.proxyAddress !== undefined ? { proxyAddress: unicast('-a/--proxy-address', o.proxyAddress) } : {}),
    ...(masqueradeAddress !== undefined ? { masqueradeAddress } : {}),
    masquerade: new Masquerade(masqueradeRules('--masquerade-for', o.masqueradeFor), masqueradeAddress),
    dataPorts: portRange('--data-ports', o.dataPorts),
    backend: backend as Backend,
    rewriteSourcePort: o.rewriteSourcePort === true,
    maxSessions: integer('-m/--max-sessions', o.maxSessions, 1, 100000),
    maxSessionsPerClient: integer('--max-sessions-per-client', o.maxSessionsPerClient, 0, 100000),
    idleTimeout: integer('-t/--timeout', o.timeout, 0, 86400),
    connectTimeout: integer('--connect-timeout', o.connectTimeout, 1, 300),
    dataTimeout: integer('--data-timeout', o.dataTimeout, 1, 3600),
    dataIdleTimeout: integer('--data-idle-timeout', o.dataIdleTimeout, 1, 86400),
    anonymousOnly: o.anonymousOnly === true,
    commandPolicy: new CommandPolicy(verbs('--deny-command', o.denyCommand), o.readOnly === true),
    debugLevel: integer('-D/--debug-level', o.debugLevel, 0, 7),
    foreground: o.foreground === true,
    logRules: o.logRules === true,
    ...(mark !== undefined ? { mark } : {}),
    maxLineLength: integer('--max-line-length', o.maxLineLength, 512, 65536),
    nftTable: table,
    nflogGroup: integer('--nflog-group', o.nflogGroup, 0, 65535),
    routeTable: routeTable(o.routeTable),
    shutdownGrace: integer('--shutdown-grace', o.shutdownGrace, 0, 3600),
    printRuleset: o.printRuleset === true,
    cleanup: o.cleanup === true,
    loginTimeout: integer('--login-timeout', o.loginTimeout, 1, 3600),
    tls,
    ...(terminate ? { tlsTerminate: terminate } : {}),
    serverMode: serverMode(o.serverMode),
    clients: new AddressList(cidrs('--allow-client', o.allowClient), cidrs('--deny-client', o.denyClient)),
    servers: new AddressList(cidrs('--allow-server', o.allowServer), cidrs('--deny-server', o.denyServer)),
    userAtHost: o.userAtHost === true,
    ...(o.metrics !== undefined ? { metrics: listenAddress('--metrics', o.metrics) } : {}),
    controlSocket:
      o.controlSocket !== undefined
        ? { path: socketPath('--control-socket', o.controlSocket), explicit: true }
        : { path: DEFAULT_CONTROL_SOCKET, explicit: false },
    ...(o.xferlog !== undefined ? { xferlog: nonEmpty('--xferlog', o.xferlog) } : {}),
  };
  if (cfg.tlsTerminate && cfg.serverMode !== 'client') {
    // A translated path joins two connections the relay opens itself; neither does TLS yet.
    fail('--server-mode', `'${cfg.serverMode}' cannot be combined with --tls terminate (translated data connections carry no TLS)`);
  }
  if (cfg.anonymousOnly && cfg.tls === 'pass') {
    // After AUTH the login is inside TLS: -A could not see USER, so it would promise nothing.
    fail('--tls', "'pass' cannot be combined with -A/--anonymous-only (the login would be encrypted and unchecked)");
  }
  if (cfg.userAtHost && cfg.mode === 'reverse') fail('--user-at-host', 'only has a meaning in outbound mode (without -R/--reverse)');
  if (cfg.userAtHost && cfg.servers.allow.length === 0) {
    // Any host a client names would do: an open relay, a tool for FTP bounce and port scans.
    fail('--user-at-host', 'needs --allow-server (without it the proxy would connect anywhere a client names)');
  }
  if (!cfg.commandPolicy.empty && cfg.tls === 'pass') {
    // Inside TLS the commands cannot be seen, so the policy could not hold.
    fail('--tls', "'pass' cannot be combined with --read-only or --deny-command (the commands would be encrypted and unchecked)");
  }
  if (cfg.masqueradeAddress !== undefined && ipaddr.parse(cfg.masqueradeAddress).kind() !== 'ipv4') {
    fail('--masquerade-address', 'must be an IPv4 address (227 replies carry IPv4 only; EPSV needs no address)');
  }
  return Object.freeze(cfg);
}
