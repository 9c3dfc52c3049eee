// Address helpers shared by the session and the data planes: canonical text (IPv4-mapped
// IPv6 shown as plain IPv4, IPv6 in RFC 5952 form) and the family of an address.

import ipaddr from 'ipaddr.js';

const DOTTED_QUAD = /^(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)$/;

/** Canonical text for an address as sockets report it ('::ffff:192.0.2.1' -> '192.0.2.1'). */
export function canonical(address: string): string {
  // Fast path for what sockets report most: plain or IPv4-mapped dotted quads.
  const v4 = address.startsWith('::ffff:') ? address.slice(7) : address;
  if (DOTTED_QUAD.test(v4)) return v4;
  const a = ipaddr.process(address);
  return a.kind() === 'ipv6' ? (a as ipaddr.IPv6).toRFC5952String() : a.toString();
}

/**
 * The family of an address in canonical text: only IPv6 text has a colon. (Parsing it again
 * with ipaddr.js cost ~12 µs of each session's CPU, most of it for IPv6 text.)
 */
export function familyOf(address: string): 4 | 6 {
  return address.includes(':') ? 6 : 4;
}
