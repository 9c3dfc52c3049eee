// In-memory data plane for unit tests: records every open and release, can be told to fail,
// and throws on a release of an unknown or already released path so that leaks and double
// releases are test failures.

import { DataPlaneError } from '../errors.js';
import { PortAllocator } from '../net/ports.js';
import type { DataPath, DataPathRequest, DataPlane, JoinRequest, MeetRequest } from './types.js';
import type { Moved } from '../transfer.js';

export class FakeDataPlane implements DataPlane {
  readonly name = 'fake';
  readonly live = new Map<string, DataPathRequest & { port: number }>();
  readonly opened: (DataPathRequest & { id: string; port: number })[] = [];
  readonly released: { id: string; abort: boolean }[] = [];
  /** Joined and met paths (mode translation) not yet released, and the ids told to proceed, in order. */
  readonly joins = new Map<string, JoinRequest | MeetRequest>();
  readonly proceeded: string[] = [];
  private readonly metPorts = new Map<string, number[]>();
  private readonly failures: string[] = [];
  private seq = 0;

  constructor(private readonly ports: PortAllocator = new PortAllocator(50000, 50099)) {}

  /** The next open() rejects with this DataPlaneError code. */
  failNextOpen(code: 'PORTS_EXHAUSTED' | 'BACKEND_FAILED'): void {
    this.failures.push(code);
  }

  async start(): Promise<void> {}

  async open(req: DataPathRequest): Promise<DataPath> {
    const failure = this.failures.shift();
    if (failure) throw new DataPlaneError(failure, `fake ${failure}`);
    const port = await this.ports.take();
    const id = `fake-${++this.seq}`;
    this.live.set(id, { ...req, port });
    this.opened.push({ ...req, id, port });
    return { id, port };
  }

  async join(req: JoinRequest): Promise<DataPath> {
    const failure = this.failures.shift();
    if (failure) throw new DataPlaneError(failure, `fake ${failure}`);
    const id = `fake-${++this.seq}`;
    this.joins.set(id, req);
    return { id, port: 0, via: 'fake' };
  }

  async meet(req: MeetRequest): Promise<DataPath> {
    const failure = this.failures.shift();
    if (failure) throw new DataPlaneError(failure, `fake ${failure}`);
    const [port, serverPort] = [await this.ports.take(), await this.ports.take()];
    const id = `fake-${++this.seq}`;
    this.joins.set(id, req);
    this.metPorts.set(id, [port, serverPort]);
    return { id, port, serverPort, via: 'fake' };
  }

  /** Proceeding on a path that is not joined and live is an error, like a bad release. */
  proceed(id: string): void {
    if (!this.joins.has(id)) throw new DataPlaneError('UNKNOWN_PATH', `proceed of unknown or released joined path ${id}`);
    this.proceeded.push(id);
  }

  async release(id: string, abort: boolean): Promise<void> {
    if (this.joins.delete(id)) {
      for (const p of this.metPorts.get(id) ?? []) this.ports.put(p);
      this.metPorts.delete(id);
      this.released.push({ id, abort });
      return;
    }
    const entry = this.live.get(id);
    if (!entry) throw new DataPlaneError('UNKNOWN_PATH', `release of unknown or released data path ${id}`);
    this.live.delete(id);
    this.ports.put(entry.port);
    this.released.push({ id, abort });
  }

  /** Sessions whose connections tests pretend are still carrying bytes. */
  readonly busy = new Set<string>();
  readonly ended: string[] = [];

  async endSession(sid: string): Promise<void> {
    this.ended.push(sid);
    for (const [id, entry] of this.live) if (entry.sid === sid) await this.release(id, true);
    for (const [id, req] of this.joins) if (req.sid === sid) await this.release(id, true);
  }

  carrying(sid: string): boolean {
    return this.busy.has(sid);
  }

  /** What tests say each path's connection carried; a path not listed carried nothing. */
  readonly moved = new Map<string, Moved>();

  async transferred(id: string): Promise<Moved | null> {
    return this.moved.get(id) ?? { fromPeer: 0, toPeer: 0 };
  }

  async close(): Promise<void> {}
}
