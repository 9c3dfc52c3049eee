// How a batch reaches the kernel: in-process libnftables (koffi) or a spawned `nft -j`. Both
// apply one JSON document as one transaction and report failures as DataPlaneError codes.

import { DataPlaneError } from '../../errors.js';
import type { Batch } from './schema.js';

/** Error codes of this backend, beyond the DataPlane contract's PORTS_EXHAUSTED/BACKEND_FAILED. */
export type NftErrorCode = 'NFT_UNAVAILABLE' | 'NFT_NOT_PERMITTED' | 'BACKEND_FAILED';

export type RunnerName = 'libnftables' | 'nft' | 'netlink';
export type RunnerChoice = 'auto' | 'lib' | 'spawn' | 'netlink';

export interface RunOptions {
  /** Return the objects as the kernel created them, with handles (`nft --echo --handle`). */
  readonly echo?: boolean;
  /** Return what the batch printed (the `nftables` array of a `list` command's JSON). */
  readonly output?: boolean;
}

export interface NftRunner {
  readonly name: RunnerName;
  /**
   * Apply `batch` as one transaction: all of it or nothing. Resolves with the echoed objects
   * (the `nftables` array of nft's JSON output) when `echo` is set, what it printed with
   * `output`, else with []. The netlink runner does neither.
   */
  run(batch: Batch, opts?: RunOptions): Promise<unknown[]>;
  /**
   * Whether a process of this pid committed one of our batches: the runner that spawns `nft`
   * says so for its recent children (the table watcher ignores our own changes). Absent: the
   * runner works inside this process.
   */
  spawned?(pid: number): boolean;
  /** The netlink port id of the runner's own socket, where it has one we can learn (netlink). */
  readonly portid?: number;
  /** Release the runner's resources once every pending run has finished. */
  close(): Promise<void>;
}

const RELAY_HINT = 'use --backend relay on hosts without nftables';

export function unavailable(what: string, cause?: unknown): DataPlaneError {
  return new DataPlaneError('NFT_UNAVAILABLE', `${what}; ${RELAY_HINT}`, { cause });
}

/** Turn nft's error text (identical from the library and the command) into a coded error. */
export function nftFailure(errorText: string, cause?: unknown): DataPlaneError {
  const text = errorText.trim() || 'nft failed without a message';
  if (/Operation not permitted|Permission denied/i.test(text)) {
    return new DataPlaneError(
      'NFT_NOT_PERMITTED',
      `nftables refused: ${firstLine(text)} (needs root or CAP_NET_ADMIN); or ${RELAY_HINT}`,
      { cause },
    );
  }
  return new DataPlaneError('BACKEND_FAILED', `nft: ${firstLine(text)}`, { cause: cause ?? text });
}

const CAP_NET_ADMIN = 12n;

/**
 * Whether this process holds CAP_NET_ADMIN (from /proc/self/status). Checked before the first
 * libnftables call, because the library prints its own "you must be root" line on stderr
 * when it cannot open its netlink socket. Where the status cannot be read, says yes and lets
 * nft itself decide.
 */
export function hasNetAdmin(status: string | null): boolean {
  const m = status && /^CapEff:\s*([0-9a-f]+)$/im.exec(status);
  if (!m) return true;
  return ((BigInt('0x' + m[1]) >> CAP_NET_ADMIN) & 1n) === 1n;
}

export function notPermitted(): DataPlaneError {
  return new DataPlaneError('NFT_NOT_PERMITTED', `nftables needs root or CAP_NET_ADMIN; or ${RELAY_HINT}`);
}

const firstLine = (s: string): string => s.split('\n').find((l) => l.trim() !== '')?.trim() ?? s;

/** The `nftables` array of nft's JSON output ('' when nothing was echoed). */
export function parseOutput(text: string): unknown[] {
  if (text.trim() === '') return [];
  const doc = JSON.parse(text) as { nftables?: unknown[] };
  return Array.isArray(doc.nftables) ? doc.nftables : [];
}

/** Runs calls one at a time, in call order (one libnftables context is not reentrant). */
export class SerialQueue {
  private tail: Promise<unknown> = Promise.resolve();

  push<T>(job: () => Promise<T>): Promise<T> {
    const p = this.tail.then(job);
    this.tail = p.catch(() => undefined);
    return p;
  }

  /** Resolves when every job pushed so far has settled. */
  drain(): Promise<void> {
    return this.tail.then(() => undefined);
  }
}
