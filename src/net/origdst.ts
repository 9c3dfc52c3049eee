// Where a redirected connection was really going: SO_ORIGINAL_DST from the kernel (libc
// getsockopt, see libc.ts), with the /proc/net/nf_conntrack reply-tuple lookup as fallback.

import { readFile } from 'node:fs/promises';
import type net from 'node:net';
import { OrigDstError } from '../errors.js';
import type { Endpoint } from '../dataplane/types.js';
import { canonical, familyOf } from './address.js';
import { fdOf, loadLibc } from './libc.js';

const SOL_IP = 0;
const SOL_IPV6 = 41;
/** SO_ORIGINAL_DST and IP6T_SO_ORIGINAL_DST share the number. */
const SO_ORIGINAL_DST = 80;
const AF_INET = 2;
const AF_INET6 = 10;

/** Decode a sockaddr_in / sockaddr_in6 as the kernel wrote it. */
export function decodeSockaddr(buf: Buffer, len: number): Endpoint {
  const family = buf.readUInt16LE(0);
  const port = buf.readUInt16BE(2);
  if (family === AF_INET && len >= 8) {
    return { address: `${buf[4]}.${buf[5]}.${buf[6]}.${buf[7]}`, port };
  }
  if (family === AF_INET6 && len >= 24) {
    const groups: string[] = [];
    for (let i = 0; i < 8; i++) groups.push(buf.readUInt16BE(8 + 2 * i).toString(16));
    return { address: canonical(groups.join(':')), port };
  }
  throw new OrigDstError('BAD_SOCKADDR', `unexpected socket address family ${family}`);
}

function bySockopt(sock: net.Socket): Endpoint | null {
  const c = loadLibc();
  const fd = fdOf(sock);
  if (!c || fd === null) return null;
  // An IPv4 client on a dual-stack (::) listener shows as ::ffff:a.b.c.d and is NATed as
  // IPv4; canonical() turns that into the plain dotted quad.
  const level = familyOf(canonical(sock.localAddress ?? '')) === 4 ? SOL_IP : SOL_IPV6;
  const buf = Buffer.alloc(28);
  const len = [buf.length];
  if (c.getsockopt(fd, level, SO_ORIGINAL_DST, buf, len) !== 0) {
    const errno = c.errno();
    // ENOENT: no conntrack entry (conntrack not loaded for this flow).
    throw new OrigDstError('NO_ORIGINAL_DST', `SO_ORIGINAL_DST failed (errno ${errno})`);
  }
  return decodeSockaddr(buf, len[0]!);
}

/**
 * Find the original destination in conntrack text: the entry whose reply tuple is
 * (local -> client), i.e. `src=<local> dst=<client> sport=<local port> dport=<client port>`.
 */
export function findInConntrack(text: string, client: Endpoint, local: Endpoint): Endpoint | null {
  const want = `src=${local.address} dst=${client.address} sport=${local.port} dport=${client.port}`;
  for (const line of text.split('\n')) {
    if (!line.includes(' tcp ')) continue;
    const tuples = [...line.matchAll(/src=(\S+) dst=(\S+) sport=(\d+) dport=(\d+)/g)];
    if (tuples.length < 2) continue;
    const [orig, reply] = tuples as [RegExpMatchArray, RegExpMatchArray];
    const replyText = `src=${canonical(reply[1]!)} dst=${canonical(reply[2]!)} sport=${reply[3]} dport=${reply[4]}`;
    if (replyText === want) return { address: canonical(orig[2]!), port: Number(orig[4]) };
  }
  return null;
}

async function byConntrack(sock: net.Socket, path: string): Promise<Endpoint | null> {
  const client = { address: canonical(sock.remoteAddress ?? ''), port: sock.remotePort ?? 0 };
  const local = { address: canonical(sock.localAddress ?? ''), port: sock.localPort ?? 0 };
  let text: string;
  try {
    text = await readFile(path, 'latin1');
  } catch {
    return null;
  }
  return findInConntrack(text, client, local);
}

/**
 * The server a redirected client meant to reach. Refuses a connection that was not
 * redirected (its original destination is the proxy itself): that would loop.
 */
export async function originalDestination(sock: net.Socket, conntrackPath = '/proc/net/nf_conntrack'): Promise<Endpoint> {
  let dst: Endpoint | null = null;
  let sockoptError: unknown = null;
  try {
    dst = bySockopt(sock);
  } catch (e) {
    sockoptError = e;
  }
  dst ??= await byConntrack(sock, conntrackPath);
  if (!dst) {
    throw new OrigDstError(
      'NO_ORIGINAL_DST',
      'cannot find the original destination: is the gateway redirect rule in place?',
      { cause: sockoptError },
    );
  }
  const local = canonical(sock.localAddress ?? '');
  if (dst.address === local && dst.port === sock.localPort) {
    throw new OrigDstError('LOOP', 'connection was not redirected: clients must connect to an FTP server, not to the proxy');
  }
  return dst;
}
