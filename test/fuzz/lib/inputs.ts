// What the fuzzer feeds a session: client command lines and server reply lines, from
// plausible FTP through mangled PORT/EPRT/227/229 forms, Telnet sequences and raw junk.
// Strings are latin1 (one char per byte); terminators are added by the caller.

import ipaddr from 'ipaddr.js';
import type { Rng } from './rng.js';

/** The session's own addresses, from which the interesting arguments are built. */
export interface Peers {
  readonly client: string;
  readonly clientFamily: 4 | 6;
  readonly server: string;
  readonly serverFamily: 4 | 6;
  /** Addresses a bounce attempt may name: the gateway's, the server's, other hosts'. */
  readonly others: readonly string[];
}

const TELNET = [
  '\xff\xf4', // IP
  '\xff\xf2', // DM
  '\xff\xf1', // NOP
  '\xff\xf0', // SE
  '\xff\xfb\x01', // WILL ECHO
  '\xff\xfd\x18', // DO TERMINAL-TYPE
  '\xff\xfe\x0a', // DONT with an LF option byte: not a line end
  '\xff\xfc\x0d', // WONT with a CR option byte
  '\xff\xff', // escaped 0xFF data byte
  '\xffA', // stray IAC before a data byte
  '\xff', // lone IAC (a sequence cut short)
];

const SPACES = [' ', '  ', '\t', '\x0b', '\x0c', '\r', ' \t '];

const PLAIN = [
  'USER anonymous', 'USER ftp', 'USER ftplab', 'USER root', 'USER', 'PASS x@y', 'PASS ftplab', 'PASS',
  'SYST', 'FEAT', 'PWD', 'XPWD', 'CWD /', 'CWD dir1000', 'CDUP', 'TYPE I', 'TYPE A', 'MODE S', 'STRU F',
  'NOOP', 'HELP', 'STAT', 'STAT /', 'SIZE 1MiB.bin', 'MDTM small.txt', 'REST 0', 'REST 524288',
  'OPTS UTF8 ON', 'SITE CHMOD 644 f', 'MKD d', 'RMD d', 'DELE f', 'RNFR a', 'RNTO b', 'ALLO 100',
  'ACCT x', 'REIN', 'MLST f', 'AUTH TLS', 'AUTH SSL', 'auth tls', 'PBSZ 0', 'PROT P', 'CCC',
  'LPRT 4,4,192,0,2,2,2,4,1', 'LPSV', 'ABOR', 'QUIT', 'HOST example.org', 'CLNT x', 'XCRC f',
];

const TRANSFERS = ['RETR small.txt', 'RETR 1MiB.bin', 'STOR up', 'STOU', 'APPE up', 'LIST', 'LIST -la', 'NLST', 'MLSD', 'RETR', 'retr x'];

const PASSIVE = ['PASV', 'pasv', 'PaSv', 'P@SW', 'p@sw', 'PASV x', 'EPSV', 'epsv', 'EPSV 1', 'EPSV 2', 'EPSV ALL', 'epsv all', 'EPSV 3', 'EPSV x', 'EPSV  1', 'EPSV 01', 'LPSV'];

function randomV4(rng: Rng): string {
  return `${rng.int(256)}.${rng.int(256)}.${rng.int(256)}.${rng.int(256)}`;
}

function randomV6(rng: Rng): string {
  const parts: string[] = [];
  for (let i = 0; i < 8; i++) parts.push(rng.int(65536).toString(16));
  return parts.join(':');
}

/** A data port: mostly unprivileged, often an edge. */
export function dataPort(rng: Rng): number {
  switch (rng.weighted([8, 2, 3])) {
    case 0:
      return rng.range(1024, 65535);
    case 1:
      return rng.range(1, 1023);
    default:
      return rng.pick([0, 1, 20, 21, 1023, 1024, 1025, 65535, 65536, 70000, 131071]);
  }
}

function v4Text(rng: Rng, p: Peers): string {
  switch (rng.weighted([5, 3, 2, 1])) {
    case 0:
      return p.clientFamily === 4 ? p.client : '192.0.2.2';
    case 1:
      return rng.pick(p.others.filter((a) => !a.includes(':')).concat(['0.0.0.0', '255.255.255.255', '127.0.0.1']));
    case 2:
      return randomV4(rng);
    default:
      // Leading zeros: some parsers read them as octal.
      return (p.clientFamily === 4 ? p.client : '192.0.2.2')
        .split('.')
        .map((n) => n.padStart(rng.range(1, 4), '0'))
        .join('.');
  }
}

/** Other spellings of an IPv6 address: the client's own one must still be recognised. */
function v6Text(rng: Rng, p: Peers): string {
  const base =
    rng.chance(0.6) && p.clientFamily === 6
      ? p.client
      : rng.pick(p.others.filter((a) => a.includes(':')).concat(['::', '::1', '2001:db8:1::2', randomV6(rng)]));
  const ip = ipaddr.IPv6.parse(base);
  switch (rng.int(7)) {
    case 0:
      return ip.toNormalizedString();
    case 1:
      return ip
        .toNormalizedString()
        .split(':')
        .map((g) => g.padStart(4, '0'))
        .join(':')
        .toUpperCase();
    case 2:
      return `::ffff:${v4Text(rng, p)}`;
    case 3:
      return `${base}%eth0`;
    case 4:
      return `[${base}]`;
    default:
      return base;
  }
}

function portText(rng: Rng): string {
  switch (rng.weighted([10, 1, 1, 1])) {
    case 0:
      return String(dataPort(rng));
    case 1:
      return `0${dataPort(rng)}`;
    case 2:
      return rng.pick(['', '-1', '+2000', '0x400', '1e4', ' 2000', '2000 ', '\xb2\xb3\xb9\xb9']);
    default:
      return String(rng.int(1e7));
  }
}

/** PORT's argument: the client's own address, another (bounce), or mangled host-port text. */
export function portArg(rng: Rng, p: Peers): string {
  const port = dataPort(rng);
  const fields = [...v4Text(rng, p).split('.'), String((port >> 8) & 0x1ff), String(port & 0xff)];
  switch (rng.weighted([10, 2, 2, 2, 1])) {
    case 0:
      return fields.join(',');
    case 1: {
      // One field damaged.
      const i = rng.int(6);
      fields[i] = rng.pick(['256', '-1', '', ' 1', '1 ', '999999', 'a', '0x10', '\xb9', '1.5', '00000000000000000001']);
      return fields.join(',');
    }
    case 2:
      // Too few or too many fields.
      return rng.chance(0.5) ? fields.slice(0, rng.int(6)).join(',') : `${fields.join(',')},${rng.int(256)}`;
    case 3:
      return fields.join(rng.pick([', ', ' ,', '.', ';', ',,']));
    default:
      return fields.join(',') + rng.pick([',', ' ', 'x', '\r', '\t1']);
  }
}

/** EPRT's argument: RFC 2428 forms with odd delimiters, families, addresses and ports. */
export function eprtArg(rng: Rng, p: Peers): string {
  const d = rng.chance(0.7) ? '|' : String.fromCharCode(rng.chance(0.9) ? rng.range(33, 126) : rng.int(256));
  const family = rng.weighted([5, 1]) === 0 ? (rng.chance(0.5) ? '1' : '2') : rng.pick(['', '3', '0', '12', 'x']);
  const address =
    family === '1' ? v4Text(rng, p) : family === '2' ? v6Text(rng, p) : rng.chance(0.5) ? v4Text(rng, p) : v6Text(rng, p);
  const fields = ['', family, address, portText(rng), ''];
  if (rng.chance(0.1)) fields.splice(rng.int(fields.length), rng.chance(0.5) ? 1 : 0, rng.pick(['', '1', d]));
  return fields.join(d);
}

/** Telnet sequences and white space before a line, inside it, or a changed verb case. */
export function decorate(rng: Rng, line: string): string {
  let out = line;
  if (rng.chance(0.3)) {
    let pre = '';
    for (let i = rng.range(1, 3); i > 0; i--) pre += rng.chance(0.7) ? rng.pick(TELNET) : rng.pick(SPACES);
    out = pre + out;
  }
  if (rng.chance(0.15)) {
    const at = rng.int(out.length + 1);
    out = out.slice(0, at) + rng.pick(TELNET) + out.slice(at);
  }
  if (rng.chance(0.1)) out = out.toLowerCase();
  if (rng.chance(0.1)) out += rng.pick(SPACES);
  return out;
}

export function junk(rng: Rng, max: number, allowNul: boolean): string {
  const n = rng.skewed(max);
  let s = '';
  const printable = rng.chance(0.5);
  for (let i = 0; i < n; i++) {
    let c = printable ? rng.range(0x20, 0x7e) : rng.int(256);
    if (c === 0x0a || (c === 0 && !allowNul)) c = 0x20;
    s += String.fromCharCode(c);
  }
  return s;
}

/** A line of about the length limit: just under, at, just over, or far over it. */
export function longLine(rng: Rng, maxLine: number, verb: string): string {
  const n = rng.pick([maxLine - 1, maxLine, maxLine + 1, maxLine + 2, rng.range(1, 3 * maxLine)]);
  return (verb + ' ').padEnd(Math.max(0, n), rng.pick(['a', ' ', '\r', '\xff\xff', ',']));
}

/** One client command line; `orderly` keeps to lines a well-behaved client sends. */
export function clientLine(rng: Rng, p: Peers, orderly: boolean): string {
  const kind = orderly ? rng.weighted([6, 3, 3, 2, 2, 0, 0]) : rng.weighted([4, 2, 3, 3, 3, 2, 2]);
  switch (kind) {
    case 0:
      return rng.pick(PLAIN).replace(orderly ? /^(QUIT|REIN)$/ : /^$/, 'NOOP');
    case 1:
      return rng.pick(TRANSFERS);
    case 2:
      return rng.pick(PASSIVE);
    case 3:
      return `${rng.pick(['PORT', 'port', 'Port'])}${rng.pick([' ', ' ', '\t', '  '])}${portArg(rng, p)}`;
    case 4:
      return `${rng.pick(['EPRT', 'eprt'])}${rng.pick([' ', ' ', '\t'])}${eprtArg(rng, p)}`;
    case 5:
      return decorate(rng, clientLine(rng, p, true));
    default:
      // Two commands in one line (lone CR between them), or junk.
      return rng.chance(0.3) ? `${clientLine(rng, p, true)}\r${clientLine(rng, p, true)}` : junk(rng, 300, false);
  }
}

// --- server side --------------------------------------------------------------------------

function hostPort(address: string, port: number): string {
  return `${address.split('.').join(',')},${port >> 8},${port & 0xff}`;
}

/** The first line of a reply to PASV: valid 227 forms (any address: it is never used) or broken ones. */
export function reply227(rng: Rng, orderly: boolean): string {
  const port = rng.chance(0.9) ? rng.range(1, 65535) : dataPort(rng);
  const hp = hostPort(rng.chance(0.5) ? '198.51.100.2' : randomV4(rng), port & 0xffff);
  const valid = [
    `227 Entering Passive Mode (${hp}).`,
    `227 Entering Passive Mode (${hp})`,
    `227 Entering Passive Mode ${hp}`,
    `227 =${hp}`,
    `227 ${hp}`,
    `227 Entering Passive Mode (${hp.replace(/\d+/g, (n) => n.padStart(3, '0'))}).`,
  ];
  if (orderly || rng.chance(0.6)) return rng.pick(valid);
  return rng.pick([
    '227 Entering Passive Mode',
    '227 Entering Passive Mode (1,2,3,4,0,0).',
    '227 Entering Passive Mode (256,1,1,1,1,1).',
    `227 Entering Passive Mode (${hp},9).`,
    '227 (1,2,3,4,5)',
    '227-',
    '227',
    `227${hp}`,
    `227 Entering Passive Mode (${hp.replace(/,/g, ', ')})`,
    `227 ${junk(rng, 100, false)}`,
  ]);
}

/** The first line of a reply to EPSV. */
export function reply229(rng: Rng, orderly: boolean): string {
  const port = rng.chance(0.9) ? rng.range(1, 65535) : dataPort(rng);
  const d = rng.chance(0.8) ? '|' : String.fromCharCode(rng.range(33, 126));
  const valid = `229 Entering Extended Passive Mode (${d}${d}${d}${port}${d})`;
  if (orderly || rng.chance(0.6)) return valid;
  return rng.pick([
    '229 Entering Extended Passive Mode',
    '229 Entering Extended Passive Mode (|||0|)',
    '229 Entering Extended Passive Mode (|||65536|)',
    '229 Entering Extended Passive Mode (||||)',
    `229 Entering Extended Passive Mode (|2|2001:db8:2::2|${port}|)`,
    `229 (( (|||${port}|)`,
    `229 Entering Extended Passive Mode (111${port}1)`,
    `229 x (|||${port}`,
    `229 ${junk(rng, 100, false)}`,
  ]);
}

/** A reply code of one of `classes`; `notPassive`: never 227 or 229 (a well-behaved server's answer to other commands). */
function code(rng: Rng, classes: readonly number[], notPassive = false): number {
  for (;;) {
    const c = rng.pick(classes) + rng.int(60);
    if (!notPassive || (c !== 227 && c !== 229)) return c;
  }
}

/** One reply as lines: single-line mostly, multi-line with tricky inner lines sometimes. */
export function formatReply(rng: Rng, first: string, orderly: boolean): string[] {
  if (!rng.chance(0.15) || first.length < 3) return [first];
  const c = first.slice(0, 3);
  const lines = [`${c}-${first.slice(4) || 'multi'}`];
  for (let i = rng.skewed(6); i > 0; i--) {
    const inner = rng.pick([' indented', '', `${c}-more`, '123 another code', 'text', `${c}x`, `2${c}`]);
    lines.push(inner);
  }
  lines.push(orderly || rng.chance(0.8) ? `${c} end` : c);
  return lines;
}

/**
 * Lines a server sends in answer to `command` (as the proxy forwarded it). Orderly servers
 * answer each command with exactly one final reply; others may skip, repeat or mangle.
 */
export function serverAnswer(rng: Rng, command: string, orderly: boolean): string[] {
  const verb = command.split(' ')[0]!.toUpperCase();
  const one = (first: string): string[] => formatReply(rng, first, orderly);
  switch (verb) {
    case 'PASV':
      return rng.chance(0.85) ? one(reply227(rng, orderly)) : one(`${code(rng, [400, 500])} no passive`);
    case 'EPSV':
      return rng.chance(0.85) ? one(reply229(rng, orderly)) : one(`${code(rng, [400, 500])} no passive`);
    case 'PORT':
    case 'EPRT':
      return rng.chance(0.8) ? one('200 PORT command successful') : one(`${rng.pick([425, 500, 501, 522])} no`);
    case 'RETR':
    case 'STOR':
    case 'STOU':
    case 'APPE':
    case 'LIST':
    case 'NLST':
    case 'MLSD':
      switch (rng.int(6)) {
        case 0:
          return one(`${rng.pick([425, 450, 550, 530])} cannot`);
        case 1:
          return [...one('150 Opening data connection'), ...one(`${rng.pick([426, 451])} aborted`)];
        case 2:
          return ['125 Data connection already open', ...one('226 Transfer complete')];
        default:
          return [...one('150 Opening BINARY mode data connection'), ...one('226 Transfer complete')];
      }
    case 'ABOR':
      return one(rng.pick(['226 ABOR command successful', '225 No transfer to ABOR']));
    case 'USER':
      return one(rng.pick(['331 Please specify the password', '230 Login successful', '530 no']));
    case 'PASS':
      return one(rng.pick(['230 Login successful', '530 Login incorrect']));
    case 'QUIT':
      return one('221 Goodbye');
    default:
      return one(`${code(rng, [200, 200, 300, 500], orderly)} ok`);
  }
}

/** Something a misbehaving server says unasked: a reply out of turn, a preliminary, or junk. */
export function serverNoise(rng: Rng, maxLine: number): string[] {
  switch (rng.int(9)) {
    case 0:
      return [`${code(rng, [100, 200, 300, 400, 500])} unsolicited`];
    case 1:
      return ['421 Timeout'];
    case 2:
      return [reply227(rng, false)];
    case 3:
      return [reply229(rng, false)];
    case 4:
      return [rng.pick(['600 no such class', '99 short', '2000 long', 'hello', '', ' 220 indented', '220\xff\xf4 x'])];
    case 5:
      return [junk(rng, 200, true)];
    case 6:
      return [longLine(rng, maxLine, '220')];
    case 7:
      // A multi-line reply that will not end soon: many inner lines.
      return ['211-status follows', ...Array.from({ length: rng.skewed(200) }, (_, i) => ` line ${i}`)];
    default:
      return ['150 Opening', '226 done'];
  }
}

// --- unruly servers: valid FTP, out of step -----------------------------------------------

/** What an unruly server says, and what it did out of step (for the run's statistics). */
export interface Unruly {
  readonly lines: string[];
  readonly did: string[];
}

const TRANSFER_VERBS = new Set(['RETR', 'STOR', 'STOU', 'APPE', 'LIST', 'NLST', 'MLSD']);

/** A passive reply nobody asked for, naming a host of the server's choosing. */
export function foreignPassive(rng: Rng): string[] {
  const port = rng.range(1, 65535);
  const hp = hostPort(rng.chance(0.5) ? '192.168.1.10' : randomV4(rng), port);
  return rng.pick([
    ['227 Entering Passive Mode (192,168,1,10,0,22).'],
    [`227 Entering Passive Mode (${hp}).`],
    [`227-Entering Passive Mode (${hp})`, '227 OK'],
    ['227-Entering Passive Mode', `227 Entering Passive Mode (${hp})`],
    [`229 Entering Extended Passive Mode (|||${port}|)`],
    ['229 Entering Extended Passive Mode (|||22|)'],
  ]);
}

/** A 227 or 229 in several lines, the address in the first, an inner or the last one. */
function multiLinePassive(rng: Rng, code: 227 | 229): string[] {
  const port = rng.range(1, 65535);
  if (code === 229) {
    return rng.chance(0.5)
      ? ['229-Entering Extended Passive Mode', `229 Entering Extended Passive Mode (|||${port}|)`]
      : [`229-Entering Extended Passive Mode (|||${port}|)`, '229 OK'];
  }
  const hp = hostPort(rng.chance(0.5) ? '198.51.100.2' : randomV4(rng), port);
  return rng.pick([
    ['227-Entering Passive Mode', `227 Entering Passive Mode (${hp})`],
    [`227-Entering Passive Mode (${hp})`, '227 OK'],
    ['227-Entering Passive Mode', ` =${hp}`, '227 OK'],
    ['227-Entering Passive Mode', `227-(${hp})`, '227 End'],
  ]);
}

/**
 * The answer of a server that speaks valid FTP but not always one final reply per command:
 * it skips one, answers twice, ends a transfer with a 150 alone (pure-ftpd after the client
 * reset the data connection), answers ABOR with 426 and 226 when nothing ran, spreads 227/229
 * over several lines, and follows a 2xx with a passive reply naming some other host.
 */
export function unrulyAnswer(rng: Rng, command: string): Unruly {
  const verb = command.split(' ')[0]!.toUpperCase();
  const did: string[] = [];
  let lines: string[];
  if (rng.chance(0.04)) {
    did.push('skipped a reply');
    lines = [];
  } else if (TRANSFER_VERBS.has(verb) && rng.chance(0.15)) {
    did.push('ended a transfer with a 150 alone');
    lines = ['150-Accepted data connection', '150 102400.0 kbytes to download', '150 0.001 seconds (measured here), 156.04 Mbytes per second'];
  } else if (verb === 'ABOR' && rng.chance(0.3)) {
    did.push('answered ABOR with 426 and 226');
    lines = ['426 Transfer aborted', '226 ABOR successful'];
  } else if ((verb === 'PASV' || verb === 'EPSV') && rng.chance(0.3)) {
    did.push(`multi-line ${verb === 'PASV' ? 227 : 229}`);
    lines = multiLinePassive(rng, verb === 'PASV' ? 227 : 229);
  } else {
    lines = serverAnswer(rng, command, true);
  }
  if (rng.chance(0.03)) {
    did.push('answered twice');
    lines = lines.concat(serverAnswer(rng, command, true));
  }
  if (/^2[0-9][0-9] /.test(lines.at(-1) ?? '') && rng.chance(0.1)) {
    did.push('a passive reply after a 2xx');
    lines = lines.concat(foreignPassive(rng));
  }
  return { lines, did };
}

/** What an unruly server says unasked: replies that are valid FTP, but answer nothing. */
export function unrulyNoise(rng: Rng): Unruly {
  switch (rng.weighted([5, 2, 2, 1])) {
    case 0:
      return { lines: foreignPassive(rng), did: ['an unsolicited passive reply'] };
    case 1:
      return { lines: ['150 Opening', '226 done'], did: ['an unsolicited transfer'] };
    case 2:
      return { lines: [`${rng.pick([200, 211, 250])} unsolicited`], did: ['an unsolicited 2xx'] };
    default:
      return { lines: ['211-status follows', ...Array.from({ length: rng.skewed(50) }, (_, i) => ` line ${i}`), '211 end'], did: ['an unsolicited multi-line 211'] };
  }
}
