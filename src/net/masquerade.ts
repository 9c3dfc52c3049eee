// Which address a reverse-mode 227 reply advertises to a client: the most specific
// --masquerade-for block that holds the client's address, else --masquerade-address.

import ipaddr from 'ipaddr.js';
import type { parseCidr } from './policy.js';

export interface MasqueradeRule {
  readonly block: ReturnType<typeof parseCidr>;
  /** Canonical IPv4 text. */
  readonly address: string;
}

export class Masquerade {
  /** Longest prefix first: the first block that holds a client is the most specific one. */
  private readonly rules: readonly MasqueradeRule[];

  constructor(
    rules: readonly MasqueradeRule[] = [],
    /** --masquerade-address: for clients no block holds. */
    readonly fallback?: string,
  ) {
    this.rules = [...rules].sort((a, b) => b.block[1] - a.block[1]);
  }

  /** The address to advertise to `client` (canonical text), or undefined for the connection's own. */
  advertisedTo(client: string): string | undefined {
    if (this.rules.length > 0) {
      const a = ipaddr.process(client);
      for (const { block: [net, len], address } of this.rules) {
        if (net.kind() === a.kind() && a.match(net, len)) return address;
      }
    }
    return this.fallback;
  }
}
