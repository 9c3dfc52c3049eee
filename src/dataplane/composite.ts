// The default data plane as sessions see it: the kernel (nftables) carries every path it can,
// and the userspace relay, run beside it in the same process, carries the rest per path
// (cross-family, mode-translated, TLS).

import type { DataPath, DataPathRequest, DataPlane, JoinRequest, MeetRequest } from './types.js';
import type { RelayDataPlane } from './relay.js';
import type { Moved } from '../transfer.js';
import { familyOf } from '../net/address.js';

/**
 * Whether the kernel cannot carry `req`: NAT does not change the address family (no NAT64), so
 * a path between an IPv6 client and an IPv4 server (or the other way) is the relay's.
 */
export function crossFamily(req: DataPathRequest): boolean {
  return [req.peer, req.listen, req.target.address, req.source].some((a) => familyOf(a) !== req.family);
}

/**
 * The nftables plane with the relay beside it. Both take their data ports from one allocator
 * (given to both by the caller), so a relay listener never sits on a port the kernel admits to.
 * Cross-family, TLS and mode-translated (joined, met) paths go to the relay; everything else to
 * the kernel. Path ids tell the two apart (the relay's own, see RelayDataPlane.owns).
 */
export class CompositeDataPlane implements DataPlane {
  readonly name: string;

  constructor(
    readonly kernel: DataPlane,
    readonly relay: RelayDataPlane,
  ) {
    this.name = kernel.name;
  }

  async start(): Promise<void> {
    await this.kernel.start();
    try {
      await this.relay.start();
    } catch (e) {
      await this.kernel.close().catch(() => undefined);
      throw e;
    }
  }

  /**
   * Which plane `req` goes to (for the path's log line): the relay for what the kernel cannot
   * carry, a cross-family path or one with a TLS side (PROT P, --server-tls: the kernel cannot
   * end TLS; the relay carries those pairs through streams).
   */
  planeFor(req: DataPathRequest): DataPlane {
    return req.tls || req.serverTls || crossFamily(req) ? this.relay : this.kernel;
  }

  open(req: DataPathRequest): Promise<DataPath> {
    return this.planeFor(req).open(req);
  }

  join(req: JoinRequest): Promise<DataPath> {
    return this.relay.join(req);
  }

  meet(req: MeetRequest): Promise<DataPath> {
    return this.relay.meet(req);
  }

  proceed(id: string): void {
    this.relay.proceed(id);
  }

  private owner(id: string): DataPlane {
    return this.relay.owns(id) ? this.relay : this.kernel;
  }

  release(id: string, abort: boolean, urgent?: boolean): Promise<void> {
    return this.owner(id).release(id, abort, urgent);
  }

  async endSession(sid: string): Promise<void> {
    await Promise.all([this.kernel.endSession(sid), this.relay.endSession(sid)]);
  }

  carrying(sid: string): boolean {
    return this.kernel.carrying(sid) || this.relay.carrying(sid);
  }

  transferred(id: string): Promise<Moved | null> {
    return this.owner(id).transferred(id);
  }

  async close(): Promise<void> {
    await Promise.all([this.kernel.close(), this.relay.close()]);
  }
}
