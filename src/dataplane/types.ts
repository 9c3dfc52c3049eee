// The one seam between the FTP protocol and packets: a session asks the data plane to
// admit one data connection and later releases it. Implementations: nftables, relay, fake.

import type net from 'node:net';
import type { Moved } from '../transfer.js';

/** A host and TCP port. Addresses are in canonical text form (no ::ffff: prefix for IPv4). */
export interface Endpoint {
  readonly address: string;
  readonly port: number;
}

/**
 * What one negotiated data connection needs. `peer` connects to `listen`:<port chosen by
 * the data plane>; the connection is carried to `target`, and `target` sees it come from
 * `source` (and `sourcePort` when set, e.g. port 20 with -r).
 *
 * passive (PASV/EPSV): peer = client, target = server's announced data port.
 * active (PORT/EPRT):  peer = server, target = client's announced data port.
 */
export interface DataPathRequest {
  /** Session id, for logs, rule comments and per-session release. */
  readonly sid: string;
  readonly kind: 'passive' | 'active';
  /** 4 or 6: all addresses of one request are of this family. */
  readonly family: 4 | 6;
  /** The only source address admitted. */
  readonly peer: string;
  /** Local (or, in outbound mode, original-destination) address the peer connects to. */
  readonly listen: string;
  readonly target: Endpoint;
  readonly source: string;
  readonly sourcePort?: number;
  /**
   * PROT P (--tls terminate): the client's side of the connection is TLS, ended here (the
   * peer's in passive mode, the target's in active mode). Only a plane that carries the bytes
   * itself (the relay) can; the session sends such requests there whatever --backend says.
   */
  readonly tls?: DataTls;
  /**
   * --server-tls explicit: the server's side is TLS too (the target's in passive mode, the
   * peer's in active mode), the proxy being the TLS client.
   */
  readonly serverTls?: DataTls;
  /**
   * Called (with the path's id) if the plane loses the path after open() resolved and cannot
   * put it back (nftables: the table was removed under it and rebuilt without it). The session
   * then answers the transfer that would use it with 425.
   */
  readonly lost?: (id: string) => void;
}

/** The TLS of a protected data connection, as the session's control connection set it up. */
export interface DataTls {
  /**
   * Handshakes over `sock` (as TLS server toward a client, as TLS client toward a server); resolves with the socket that carries the plaintext
   * once the handshake passed the session's checks, else destroys `sock` and rejects.
   */
  secure(sock: net.Socket): Promise<net.Socket>;
}

/**
 * A mode-translated data connection (--server-mode passive): the client announced a port
 * (PORT/EPRT) and the server one of its own (PASV/EPSV); the plane connects to both and carries
 * the one connection between them. `server` is reached at once, from `serverSource`; `client`
 * only on proceed(), from `clientSource` (and `clientSourcePort`, e.g. 20 with -r).
 */
export interface JoinRequest {
  readonly sid: string;
  readonly server: Endpoint;
  readonly serverSource: string;
  readonly client: Endpoint;
  readonly clientSource: string;
  readonly clientSourcePort?: number;
}

/**
 * The other mode translation (--server-mode active): the client asked for PASV/EPSV, the server
 * is sent PORT/EPRT. The plane listens twice, on `client.listen` for the client and on
 * `server.listen` for the server, each admitting its own peer once, and carries the one
 * connection between the two once both have come.
 */
export interface MeetRequest {
  readonly sid: string;
  readonly client: { readonly peer: string; readonly listen: string };
  readonly server: { readonly peer: string; readonly listen: string };
}

/**
 * An admitted data connection: `port` is what the session advertises (for a joined path: the
 * local port of its connection to the server; for a met path: the client's port, and
 * `serverPort` the one PORT/EPRT carries). `via`: the plane that carries it, where a plane made
 * of several chose one.
 */
export interface DataPath {
  readonly id: string;
  readonly port: number;
  readonly serverPort?: number;
  readonly via?: string;
}

export interface DataPlane {
  /** 'nftables' | 'relay' | 'fake' — printed at start. */
  readonly name: string;
  /** Idempotent start: create whatever base state the backend needs (e.g. the nftables table). */
  start(): Promise<void>;
  /**
   * Admit exactly one connection described by `req`. Rejects with DataPlaneError:
   * code 'PORTS_EXHAUSTED' when no data port is free, 'BACKEND_FAILED' when the backend
   * failed (nothing is left half-applied in either case).
   */
  open(req: DataPathRequest): Promise<DataPath>;
  /**
   * Stop admitting through `id`. With abort=false an established data connection goes on
   * to its natural end (the kernel, or the relay, carries it); with abort=true (session
   * teardown) the relay also cuts it. Releasing an unknown or already released id is an
   * error in the fake, and a no-op elsewhere. With `urgent` the release takes effect before
   * this call returns where the backend can (nftables over netlink; the relay always does), so
   * that a reply written next cannot be raced to the port; otherwise it may be batched.
   */
  release(id: string, abort: boolean, urgent?: boolean): Promise<void>;
  /**
   * Planes that carry bytes themselves (the relay): connect to `req.server` and resolve once
   * connected (DataPlaneError BACKEND_FAILED when it cannot be reached); nothing goes to the
   * client before proceed(). release() of a path not yet proceeded closes its server connection.
   * Absent: this plane cannot join, the composite sends joins to its relay.
   */
  join?(req: JoinRequest): Promise<DataPath>;
  /** Planes that carry bytes themselves: listen for both ends of `req` (MeetRequest). */
  meet?(req: MeetRequest): Promise<DataPath>;
  /**
   * The server has started the transfer of joined path `id` (its 1xx, or its final reply came
   * first): connect to the client and carry the data. A released or unknown id is a no-op.
   */
  proceed?(id: string): void;
  /**
   * Session `sid` has ended (its last reply is written): nothing of it may outlive it. Every
   * path it still holds is released, and a plane that carries bytes itself (the relay) ends
   * its connections: at once, or after a short linger for one that is only flushing what a
   * finished side sent. Idempotent; a session that holds nothing is not an error.
   */
  endSession(sid: string): Promise<void>;
  /**
   * The relay, outbound mode: whether a passive path of `family` can listen on the server's own
   * address (`listen` = the server) and be reached there by its peer alone, every other host's
   * connection going on to the server. Absent or false: the relay can listen only on this host's
   * addresses. (The nftables plane always can: it translates, it does not listen.)
   */
  passiveAtServer?(family: 4 | 6): boolean;
  /**
   * Whether a data connection of session `sid` is still carrying bytes, so the session is not
   * idle. Planes that do not see the bytes (the kernel carries them) answer false.
   */
  carrying(sid: string): boolean;
  /**
   * What the data connection admitted through path `id` carried each way, once it is over:
   * resolves when it has ended (with zeros when none came and the path is gone), or null where
   * this plane cannot count. Asked once per path, before or just after release(id).
   */
  transferred(id: string): Promise<Moved | null>;
  /** Remove everything this data plane ever installed. Called once at exit. */
  close(): Promise<void>;
}
