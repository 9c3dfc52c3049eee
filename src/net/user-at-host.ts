// The USER name@host[:port] login (--user-at-host): parsing the argument (pure) and resolving
// its host through the system resolver, bounded by a timeout of our own (dns.lookup has none).

import dns from 'node:dns';
import ipaddr from 'ipaddr.js';
import { FtpProxyError, ProtocolError } from '../errors.js';
import { parseDecimalPort } from '../protocol/commands.js';
import { canonical } from './address.js';

export interface UserAtHost {
  /** The name the server gets in its USER. */
  readonly user: string;
  /** An address literal in canonical text, or a DNS name as given. */
  readonly host: string;
  readonly port: number;
  /** The host is an address: nothing to resolve. */
  readonly literal: boolean;
}

/** The server port when the login names none. */
export const FTP_PORT = 21;

/** What the syntax allows of a DNS name (RFC 1123 labels, at most 253 characters). */
const LABEL = /^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$/;

function bad(why: string): never {
  throw new ProtocolError('BAD_USER_AT_HOST', why);
}

function hostname(text: string): string {
  const name = text.endsWith('.') ? text.slice(0, -1) : text;
  if (name.length > 253 || !name.split('.').every((l) => LABEL.test(l))) bad(`'${text.slice(0, 80)}' is not a host name or address`);
  // All digits and dots, yet not a dotted quad: the resolver would read it as an address (inet_aton).
  if (/^[\d.]+$/.test(name)) bad(`'${text}' is not an IPv4 address`);
  return text;
}

/**
 * Parses the argument of USER as name@host, name@host:port or name@[IPv6]:port (the last @
 * separates: a name may hold one). ProtocolError 'NO_HOST' when there is no @ at all,
 * 'BAD_USER_AT_HOST' with the reason for anything else that is not that form.
 */
export function parseUserAtHost(arg: string): UserAtHost {
  const at = arg.lastIndexOf('@');
  if (at === -1) throw new ProtocolError('NO_HOST', 'no @host in the user name');
  const user = arg.slice(0, at);
  const rest = arg.slice(at + 1);
  if (user === '') bad('no user name before the @');
  if (rest === '') bad('no host after the @');
  let host: string;
  let portText: string | undefined;
  let literal: boolean;
  if (rest.startsWith('[')) {
    const close = rest.indexOf(']');
    if (close === -1) bad('the [ of an IPv6 address is not closed');
    const inner = rest.slice(1, close);
    if (!ipaddr.IPv6.isValid(inner) || inner.includes('%')) bad(`'${inner.slice(0, 80)}' is not an IPv6 address`);
    const after = rest.slice(close + 1);
    if (after !== '' && !after.startsWith(':')) bad('only :port may follow the ] of an IPv6 address');
    host = canonical(inner);
    portText = after === '' ? undefined : after.slice(1);
    literal = true;
  } else {
    const parts = rest.split(':');
    if (parts.length > 2) bad('an IPv6 address goes in brackets: name@[2001:db8::1]:21');
    const text = parts[0]!;
    portText = parts[1];
    literal = ipaddr.IPv4.isValidFourPartDecimal(text);
    host = literal ? ipaddr.IPv4.parse(text).toString() : hostname(text);
  }
  const port = portText === undefined ? FTP_PORT : parseDecimalPort(portText);
  if (port === undefined) bad(`'${(portText ?? '').slice(0, 20)}' is not a port from 1 to 65535`);
  return { user, host, port, literal };
}

/** A host name's addresses (canonical text, the resolver's order); rejects with its error. */
export type Lookup = (host: string) => Promise<string[]>;

export const systemLookup: Lookup = async (host) => {
  const found = await dns.promises.lookup(host, { all: true, verbatim: true });
  return found.map((a) => canonical(a.address));
};

/** Resolving a login's host failed: 'NOT_FOUND' (the name has no address), 'RESOLVE_TIMEOUT', 'RESOLVE_FAILED'. */
export class ResolveError extends FtpProxyError {}

const NOT_FOUND = new Set(['ENOTFOUND', 'ENODATA']);

/**
 * The addresses of the login's host: the literal itself, or what `lookup` finds within
 * `timeoutMs`. A lookup that never answers is left to finish on its own (getaddrinfo cannot be
 * cancelled): its thread stays busy until the system resolver gives up.
 */
export async function resolveHost(target: UserAtHost, timeoutMs: number, lookup: Lookup = systemLookup): Promise<string[]> {
  if (target.literal) return [target.host];
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new ResolveError('RESOLVE_TIMEOUT', `no answer from the resolver for ${target.host} in ${timeoutMs / 1000} s`)),
      timeoutMs,
    );
  });
  try {
    const found = await Promise.race([lookup(target.host), timeout]);
    if (found.length === 0) throw new ResolveError('NOT_FOUND', `${target.host} has no address`);
    return found;
  } catch (e) {
    if (e instanceof ResolveError) throw e;
    const code = (e as NodeJS.ErrnoException).code ?? '';
    throw new ResolveError(NOT_FOUND.has(code) ? 'NOT_FOUND' : 'RESOLVE_FAILED', `cannot resolve ${target.host}: ${code || String(e)}`, { cause: e });
  } finally {
    clearTimeout(timer);
  }
}
