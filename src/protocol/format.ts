// The text the proxy writes in place of the peers' own: PORT and EPRT commands towards the
// server, 227 and 229 replies towards the client.

import ipaddr from 'ipaddr.js';
import type { Endpoint } from '../dataplane/types.js';

function checkPort(port: number): void {
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw new RangeError(`bad port ${port}`);
}

// h1,h2,h3,h4,p1,p2 as shared by PORT and 227.
function hostPort(ep: Endpoint): string {
  if (!ipaddr.IPv4.isValidFourPartDecimal(ep.address)) {
    throw new TypeError(`not a dotted-quad IPv4 address: ${ep.address}`);
  }
  checkPort(ep.port);
  return `${ep.address.split('.').join(',')},${ep.port >> 8},${ep.port & 0xff}`;
}

/** 'PORT h1,h2,h3,h4,p1,p2'; TypeError for anything but a dotted-quad IPv4 address. */
export function formatPort(ep: Endpoint): string {
  return `PORT ${hostPort(ep)}`;
}

export function format227(ep: Endpoint): string {
  return `227 Entering Passive Mode (${hostPort(ep)}).`;
}

/** 'EPRT |1|a.b.c.d|port|' or 'EPRT |2|<RFC 5952 IPv6>|port|'; TypeError for other addresses. */
export function formatEprt(ep: Endpoint): string {
  checkPort(ep.port);
  if (ipaddr.IPv4.isValidFourPartDecimal(ep.address)) return `EPRT |1|${ep.address}|${ep.port}|`;
  if (ipaddr.IPv6.isValid(ep.address)) {
    const ip = ipaddr.IPv6.parse(ep.address);
    // parseEprt refuses these two, so the proxy does not send them either.
    if (ip.zoneId === undefined && !ip.isIPv4MappedAddress()) return `EPRT |2|${ip.toRFC5952String()}|${ep.port}|`;
  }
  throw new TypeError(`not an IPv4 or IPv6 address: ${ep.address}`);
}

export function format229(port: number): string {
  checkPort(port);
  return `229 Entering Extended Passive Mode (|||${port}|)`;
}
