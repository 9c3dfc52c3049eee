// Access lists by address: --allow-client/--deny-client and --allow-server/--deny-server.
// A denied address is refused; where an allow list exists, only its addresses pass.

import ipaddr from 'ipaddr.js';

type Cidr = [ipaddr.IPv4 | ipaddr.IPv6, number];

/** Parse 'a.b.c.d/n', 'x::/n' or a bare address (a /32 or /128). Throws Error with a message. */
export function parseCidr(text: string): Cidr {
  const s = text.trim();
  if (s.includes('/')) {
    const [addr, len] = ipaddr.parseCIDR(s);
    // Sockets report IPv4 clients of a dual-stack listener as plain IPv4 (see net/address.ts).
    if (addr.kind() === 'ipv6' && (addr as ipaddr.IPv6).isIPv4MappedAddress() && len >= 96) {
      return [(addr as ipaddr.IPv6).toIPv4Address(), len - 96];
    }
    return [addr, len];
  }
  const addr = ipaddr.process(s);
  return [addr, addr.kind() === 'ipv4' ? 32 : 128];
}

export class AddressList {
  constructor(
    readonly allow: readonly Cidr[] = [],
    readonly deny: readonly Cidr[] = [],
  ) {}

  get empty(): boolean {
    return this.allow.length === 0 && this.deny.length === 0;
  }

  /** Why `address` is refused, or null when it passes. */
  refusal(address: string): string | null {
    if (this.empty) return null;
    const a = ipaddr.process(address);
    const hit = (list: readonly Cidr[]): boolean => list.some(([net, len]) => net.kind() === a.kind() && a.match(net, len));
    if (hit(this.deny)) return 'denied';
    if (this.allow.length > 0 && !hit(this.allow)) return 'not allowed';
    return null;
  }
}
