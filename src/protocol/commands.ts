// Client commands: classifying one control line, and parsing the address arguments of
// PORT and EPRT.

import ipaddr from 'ipaddr.js';
import { ProtocolError } from '../errors.js';
import type { Endpoint } from '../dataplane/types.js';
import { IAC, skipTelnetCommand } from './telnet.js';

/** Commands that move data over a data connection. */
export const TRANSFER_VERBS = ['RETR', 'STOR', 'STOU', 'APPE', 'LIST', 'NLST', 'MLSD'] as const;
export type TransferVerb = (typeof TRANSFER_VERBS)[number];

export type Command =
  | { kind: 'PASV' }
  | { kind: 'EPSV'; family?: 1 | 2 }
  | { kind: 'EPSV_ALL' }
  | { kind: 'PORT'; endpoint: Endpoint }
  | { kind: 'EPRT'; family: 1 | 2; endpoint: Endpoint }
  | { kind: 'LPRT' }
  | { kind: 'LPSV' }
  | { kind: 'USER'; name: string }
  | { kind: 'AUTH'; mechanism: string }
  | { kind: 'CCC' }
  | { kind: 'ABOR' }
  | { kind: 'QUIT' }
  /** `arg`: the text after the verb, Telnet bytes and surrounding spaces removed. */
  | { kind: 'TRANSFER'; verb: TransferVerb; arg: string }
  | { kind: 'OTHER'; verb: string; arg: string }
  | { kind: 'INVALID'; verb: string; error: ProtocolError };

const TRANSFER_VERB_SET: ReadonlySet<string> = new Set<TransferVerb>(TRANSFER_VERBS);

const ANONYMOUS = new Set(['anonymous', 'ftp']);

/** USER names that ask for an anonymous login (RFC 1635). */
export function isAnonymous(user: string): boolean {
  return ANONYMOUS.has(user.toLowerCase());
}

// Servers split the verb from its argument on any of these (pure-ftpd uses isspace), so a
// PORT sent with a tab must still be seen as PORT, or it would reach the server unvetted.
function isSpace(c: number): boolean {
  return c === 0x20 || (c >= 0x09 && c <= 0x0d);
}

function isDigits(s: string): boolean {
  if (s.length === 0) return false;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x30 || c > 0x39) return false;
  }
  return true;
}

/** A TCP port written in decimal digits only, 1-65535; undefined for anything else. */
export function parseDecimalPort(s: string): number | undefined {
  if (!isDigits(s)) return undefined;
  const port = Number(s);
  return port >= 1 && port <= 65535 ? port : undefined;
}

/** The line without its leading Telnet command sequences (IAC IP, IAC DM, IAC WILL x, ...). */
export function stripTelnet(line: string): string {
  let i = 0;
  for (let next = skipTelnetCommand(line, i); next !== i; next = skipTelnetCommand(line, i)) i = next;
  return line.slice(i);
}

/**
 * The line with every Telnet command sequence removed, wherever it stands; IAC IAC (an
 * escaped 0xFF data byte) is kept as it is. The proxy classifies and forwards this form, so a
 * server that drops Telnet bytes reads the same command the proxy vetted.
 */
export function removeTelnet(line: string): string {
  if (!line.includes('\xff')) return line;
  let out = '';
  let i = 0;
  while (i < line.length) {
    const next = skipTelnetCommand(line, i);
    if (next !== i) {
      i = next;
      continue;
    }
    if (line.charCodeAt(i) === IAC && line.charCodeAt(i + 1) === IAC) {
      out += '\xff\xff';
      i += 2;
      continue;
    }
    out += line[i];
    i++;
  }
  return out;
}

/** 'h1,h2,h3,h4,p1,p2' in decimal, every number 0-255, port 1-65535; ProtocolError 'BAD_PORT'. */
export function parsePort(arg: string): Endpoint {
  const fields = arg.split(',');
  const bytes = fields.map((f) => (isDigits(f) ? Number(f) : NaN));
  if (bytes.length !== 6 || !bytes.every((b) => b <= 255)) {
    throw new ProtocolError('BAD_PORT', `bad host-port ${JSON.stringify(arg.slice(0, 80))}`);
  }
  const port = bytes[4]! * 256 + bytes[5]!;
  if (port === 0) throw new ProtocolError('BAD_PORT', `port 0 in ${JSON.stringify(arg)}`);
  return { address: bytes.slice(0, 4).join('.'), port };
}

/**
 * RFC 2428 '<d>1<d>a.b.c.d<d>port<d>' or '<d>2<d>ipv6<d>port<d>', d in ASCII 33-126; IPv6
 * comes back in RFC 5952 text. ProtocolError 'BAD_EPRT'.
 */
export function parseEprt(arg: string): { family: 1 | 2; endpoint: Endpoint } {
  const bad = (why: string): never => {
    throw new ProtocolError('BAD_EPRT', `${why} in ${JSON.stringify(arg.slice(0, 80))}`);
  };
  const d = arg.charCodeAt(0);
  if (!(d >= 33 && d <= 126)) bad('bad delimiter');
  // A delimiter that also occurs in the address makes the split come out wrong, which is
  // the ambiguity RFC 2428 asks clients to avoid; it is rejected here, not guessed at.
  const fields = arg.split(arg.charAt(0));
  if (fields.length !== 5 || fields[0] !== '' || fields[4] !== '') bad('bad field count');
  const [, family, address, portText] = fields as [string, string, string, string, string];
  const port = parseDecimalPort(portText);
  if (port === undefined) return bad('bad port');
  if (family === '1') {
    if (!ipaddr.IPv4.isValidFourPartDecimal(address)) bad('bad IPv4 address');
    return { family: 1, endpoint: { address: ipaddr.IPv4.parse(address).toString(), port } };
  }
  if (family === '2') {
    if (!ipaddr.IPv6.isValid(address)) bad('bad IPv6 address');
    const ip = ipaddr.IPv6.parse(address);
    if (ip.zoneId !== undefined) bad('zone index');
    // An IPv4 peer named through family 2 would give a data path of the wrong family.
    if (ip.isIPv4MappedAddress()) bad('IPv4-mapped address');
    return { family: 2, endpoint: { address: ip.toRFC5952String(), port } };
  }
  return bad('bad address family');
}

/** The verb a classified command was sent with, upper case (P@SW as PASV, EPSV ALL as EPSV). */
export function verbOf(cmd: Command): string {
  if ('verb' in cmd) return cmd.verb;
  return cmd.kind === 'EPSV_ALL' ? 'EPSV' : cmd.kind;
}

function upperAscii(s: string): string {
  return s.replace(/[a-z]+/g, (m) => m.toUpperCase());
}

// parsePort and parseEprt throw nothing but ProtocolError.
function invalid(verb: string, error: unknown): Command {
  return { kind: 'INVALID', verb, error: error as ProtocolError };
}

/**
 * Classifies one client line; never throws. Verbs are case-insensitive; leading Telnet
 * sequences and white space are skipped for classification only.
 */
export function classifyCommand(line: string): Command {
  let i = 0;
  for (;;) {
    if (isSpace(line.charCodeAt(i))) i++;
    else {
      const next = skipTelnetCommand(line, i);
      if (next === i) break;
      i = next;
    }
  }
  let end = i;
  while (end < line.length && !isSpace(line.charCodeAt(end))) end++;
  const verb = upperAscii(line.slice(i, end));
  let from = end;
  while (isSpace(line.charCodeAt(from))) from++;
  let to = line.length;
  while (to > from && isSpace(line.charCodeAt(to - 1))) to--;
  const arg = line.slice(from, to);

  switch (verb) {
    case 'PASV':
    case 'P@SW':
      return { kind: 'PASV' };
    case 'EPSV':
      if (arg === '') return { kind: 'EPSV' };
      if (arg === '1' || arg === '2') return { kind: 'EPSV', family: arg === '1' ? 1 : 2 };
      if (upperAscii(arg) === 'ALL') return { kind: 'EPSV_ALL' };
      return invalid(verb, new ProtocolError('BAD_EPSV', `bad EPSV argument ${JSON.stringify(arg.slice(0, 80))}`));
    case 'PORT':
      try {
        return { kind: 'PORT', endpoint: parsePort(arg) };
      } catch (err) {
        return invalid(verb, err);
      }
    case 'EPRT':
      try {
        return { kind: 'EPRT', ...parseEprt(arg) };
      } catch (err) {
        return invalid(verb, err);
      }
    case 'LPRT':
    case 'LPSV':
    case 'CCC':
    case 'ABOR':
    case 'QUIT':
      return { kind: verb };
    case 'USER':
      return { kind: 'USER', name: arg };
    case 'AUTH':
      return { kind: 'AUTH', mechanism: upperAscii(arg) };
    default:
      if (TRANSFER_VERB_SET.has(verb)) return { kind: 'TRANSFER', verb: verb as TransferVerb, arg };
      return { kind: 'OTHER', verb, arg };
  }
}
