// Data-port allocation from the configured range (--data-ports). One allocator per data
// plane; a port is held from open() until release, so two live paths never share one.

import { DataPlaneError } from '../errors.js';

export class PortAllocator {
  private readonly inUse = new Set<number>();
  private next: number;

  constructor(
    readonly low: number,
    readonly high: number,
    random: () => number = Math.random,
  ) {
    if (!(Number.isInteger(low) && Number.isInteger(high) && low >= 1 && high <= 65535 && low <= high)) {
      throw new RangeError(`bad port range ${low}-${high}`);
    }
    // Start at a random point so that consecutive runs do not hand out predictable ports.
    this.next = low + Math.floor(random() * (high - low + 1));
  }

  get size(): number {
    return this.high - this.low + 1;
  }

  get used(): number {
    return this.inUse.size;
  }

  /**
   * Take the next free port for which `usable` (e.g. "binds") holds. Throws DataPlaneError
   * PORTS_EXHAUSTED after trying every port of the range once.
   */
  async take(usable: (port: number) => Promise<boolean> | boolean = () => true): Promise<number> {
    const span = this.size;
    for (let tried = 0; tried < span; tried++) {
      const port = this.next;
      this.next = port === this.high ? this.low : port + 1;
      if (this.inUse.has(port)) continue;
      this.inUse.add(port);
      let ok = false;
      try {
        ok = await usable(port);
      } finally {
        if (!ok) this.inUse.delete(port);
      }
      if (ok) return port;
    }
    throw new DataPlaneError('PORTS_EXHAUSTED', `no free data port in ${this.low}-${this.high}`);
  }

  /** Give a port back. Returns false if it was not held. */
  put(port: number): boolean {
    return this.inUse.delete(port);
  }
}
