// The fallback runner: one `nft -j '<json>'` process per batch. The batch goes in argv, not
// stdin: nft opens /dev/stdin, which fails on the socketpair Node gives a child.

import { spawn } from 'node:child_process';
import { nftFailure, parseOutput, SerialQueue, unavailable, type NftRunner, type RunOptions } from './runner.js';
import type { Batch } from './schema.js';

const RECENT = 64;

export class SpawnRunner implements NftRunner {
  readonly name = 'nft' as const;
  // Serialised too, so that batches reach the kernel in the order they were asked for.
  private readonly queue = new SerialQueue();
  /** Pids of the last RECENT children: their commits may still be in the watcher's queue. */
  private readonly recent: number[] = [];

  constructor(private readonly command = 'nft') {}

  run(batch: Batch, opts: RunOptions = {}): Promise<unknown[]> {
    const args = ['-j', ...(opts.echo ? ['--echo', '--handle'] : []), JSON.stringify(batch)];
    return this.queue.push(() => this.exec(args, opts.echo === true || opts.output === true));
  }

  private exec(args: string[], parse: boolean): Promise<unknown[]> {
    return new Promise((resolve, reject) => {
      const child = spawn(this.command, args, { stdio: ['ignore', 'pipe', 'pipe'] });
      if (child.pid !== undefined && this.recent.push(child.pid) > RECENT) this.recent.shift();
      const out: Buffer[] = [];
      const err: Buffer[] = [];
      child.stdout.on('data', (b: Buffer) => out.push(b));
      child.stderr.on('data', (b: Buffer) => err.push(b));
      child.once('error', (e: NodeJS.ErrnoException) => {
        reject(e.code === 'ENOENT' ? unavailable(`'${this.command}' not found`, e) : nftFailure(e.message, e));
      });
      child.once('close', (code, signal) => {
        const stderr = Buffer.concat(err).toString();
        if (code !== 0) {
          return reject(nftFailure(stderr || `${this.command} exited with ${code ?? signal}`));
        }
        try {
          resolve(parse ? parseOutput(Buffer.concat(out).toString()) : []);
        } catch (e) {
          reject(nftFailure(`unreadable nft output: ${(e as Error).message}`, e));
        }
      });
    });
  }

  spawned(pid: number): boolean {
    return this.recent.includes(pid);
  }

  close(): Promise<void> {
    return this.queue.drain();
  }
}
