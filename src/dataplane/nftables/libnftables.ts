// The in-process runner: libnftables.so.1 through koffi, one nft_ctx, one call at a time,
// each on koffi's worker thread (`.async`) so the event loop never waits on the kernel.

import { createRequire } from 'node:module';
import type * as Koffi from 'koffi';
import { nftFailure, parseOutput, SerialQueue, unavailable, type NftRunner, type RunOptions } from './runner.js';
import type { Batch } from './schema.js';

// libnftables.h: enum nft_output_flags
const NFT_CTX_OUTPUT_HANDLE = 1 << 3;
const NFT_CTX_OUTPUT_JSON = 1 << 4;
const NFT_CTX_OUTPUT_ECHO = 1 << 5;

export const LIBNFTABLES = 'libnftables.so.1';

type Fn = Koffi.KoffiFunction;

interface Api {
  readonly ctxFree: Fn;
  readonly setOutputFlags: Fn;
  readonly getOutput: Fn;
  readonly getError: Fn;
  readonly runCmd: Fn;
}

export class LibnftablesRunner implements NftRunner {
  readonly name = 'libnftables' as const;
  private readonly queue = new SerialQueue();
  private ctx: unknown;

  private constructor(
    private readonly api: Api,
    ctx: unknown,
  ) {
    this.ctx = ctx;
  }

  /** Loads koffi and libnftables; throws DataPlaneError NFT_UNAVAILABLE if either is missing. */
  static load(path: string = LIBNFTABLES): LibnftablesRunner {
    let lib: Koffi.IKoffiLib;
    try {
      // koffi is a native addon: require it lazily so that a host where it cannot load still
      // gets the `nft` command runner.
      const koffi = createRequire(import.meta.url)('koffi') as typeof Koffi;
      lib = koffi.load(path);
    } catch (e) {
      throw unavailable(`cannot load ${path}: ${(e as Error).message}`, e);
    }
    const fn = (decl: string): Fn => lib.func(decl);
    const ctxNew = fn('void *nft_ctx_new(uint32_t flags)');
    const api: Api = {
      ctxFree: fn('void nft_ctx_free(void *ctx)'),
      setOutputFlags: fn('void nft_ctx_output_set_flags(void *ctx, uint32_t flags)'),
      getOutput: fn('const char *nft_ctx_get_output_buffer(void *ctx)'),
      getError: fn('const char *nft_ctx_get_error_buffer(void *ctx)'),
      runCmd: fn('int nft_run_cmd_from_buffer(void *ctx, const char *buf)'),
    };
    const bufferOutput = fn('int nft_ctx_buffer_output(void *ctx)');
    const bufferError = fn('int nft_ctx_buffer_error(void *ctx)');
    const ctx: unknown = ctxNew(0); // NFT_CTX_DEFAULT
    if (!ctx) throw unavailable('nft_ctx_new failed');
    if (bufferOutput(ctx) !== 0 || bufferError(ctx) !== 0) {
      api.ctxFree(ctx);
      throw unavailable('nft_ctx_buffer_output/error failed');
    }
    return new LibnftablesRunner(api, ctx);
  }

  run(batch: Batch, opts: RunOptions = {}): Promise<unknown[]> {
    const text = JSON.stringify(batch);
    return this.queue.push(() => this.exec(text, opts.echo === true, opts.output === true));
  }

  private exec(text: string, echo: boolean, output: boolean): Promise<unknown[]> {
    const ctx = this.ctx;
    if (!ctx) return Promise.reject(unavailable('libnftables runner is closed'));
    // JSON output makes nft parse the input as JSON too (nft 1.0.6 has no input flags).
    this.api.setOutputFlags(ctx, NFT_CTX_OUTPUT_JSON | (echo ? NFT_CTX_OUTPUT_ECHO | NFT_CTX_OUTPUT_HANDLE : 0));
    return new Promise((resolve, reject) => {
      this.api.runCmd.async(ctx, text, (err: unknown, rc: number) => {
        // Read both buffers now, before the next queued call can overwrite them.
        const out = this.api.getOutput(ctx) as string | null;
        const error = this.api.getError(ctx) as string | null;
        if (err) return reject(unavailable('libnftables call failed', err));
        if (rc !== 0) return reject(nftFailure(error ?? ''));
        try {
          resolve(echo || output ? parseOutput(out ?? '') : []);
        } catch (e) {
          reject(nftFailure(`unreadable nft output: ${(e as Error).message}`, e));
        }
      });
    });
  }

  async close(): Promise<void> {
    await this.queue.drain();
    if (this.ctx) this.api.ctxFree(this.ctx);
    this.ctx = undefined;
  }
}
