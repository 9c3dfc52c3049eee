// The data plane of --tls terminate beside a kernel plane: data connections with a TLS side
// (requests that carry `tls` or `serverTls`) go to a userspace relay, every other one to the base plane.
//
// Why: the kernel can translate a TCP connection but cannot decrypt it; the relay's listener
// does the handshake (tls/context.ts) and carries plaintext to the server's data port. Both
// planes take ports from one allocator, so a relay listener never sits on a port the kernel
// plane translates.

import type { DataPath, DataPathRequest, DataPlane } from '../dataplane/types.js';
import type { Moved } from '../transfer.js';

/** The relay beside the base plane names its paths `tls-N` (RelayOptions.idPrefix). */
export const TLS_PATH_PREFIX = 'tls';

export class TlsRoutedDataPlane implements DataPlane {
  constructor(
    /** The plane everything without TLS goes to (the nftables plane). */
    readonly base: DataPlane,
    private readonly relay: DataPlane,
  ) {}

  get name(): string {
    return this.base.name;
  }

  async start(): Promise<void> {
    await this.base.start();
    await this.relay.start();
  }

  private owner(id: string): DataPlane {
    return id.startsWith(`${TLS_PATH_PREFIX}-`) ? this.relay : this.base;
  }

  open(req: DataPathRequest): Promise<DataPath> {
    return (req.tls || req.serverTls ? this.relay : this.base).open(req);
  }

  release(id: string, abort: boolean, urgent?: boolean): Promise<void> {
    return this.owner(id).release(id, abort, urgent);
  }

  async endSession(sid: string): Promise<void> {
    await Promise.all([this.base.endSession(sid), this.relay.endSession(sid)]);
  }

  passiveAtServer(family: 4 | 6): boolean {
    return this.base.passiveAtServer?.(family) ?? false;
  }

  carrying(sid: string): boolean {
    return this.base.carrying(sid) || this.relay.carrying(sid);
  }

  transferred(id: string): Promise<Moved | null> {
    return this.owner(id).transferred(id);
  }

  async close(): Promise<void> {
    await Promise.all([this.base.close(), this.relay.close()]);
  }
}
