// SIGHUP: which options a running proxy takes from a re-read configuration (LIVE) and which need
// a restart, and the reload itself: re-read, keep what cannot change, apply, log what changed.

import type { RawOptions } from './cli.js';
import type { Config } from './config.js';
import { buildConfig } from './config.js';
import { optionName, type Loaded } from './configfile.js';
import { ConfigError } from './errors.js';
import { pinoLevel, type AppLogger } from './log.js';
import type { XferlogTarget } from './xferlog.js';

/**
 * What a running proxy can change: admission (read at each new connection), what a new session
 * copies at its start, the log level and the xferlog file. Everything else (listen address,
 * mode, data plane, table, data ports and timeouts, metrics, control socket, ...) is built into
 * what started, so a change to it needs a restart.
 */
export const LIVE: ReadonlySet<keyof RawOptions> = new Set<keyof RawOptions>([
  'allowClient',
  'denyClient',
  'allowServer',
  'denyServer',
  'maxSessions',
  'maxSessionsPerClient',
  'timeout',
  'loginTimeout',
  'connectTimeout',
  'anonymousOnly',
  'userAtHost',
  'masqueradeAddress',
  'masqueradeFor',
  'readOnly',
  'denyCommand',
  'serverMode',
  'maxLineLength',
  'debugLevel',
  'xferlog',
]);

export interface ReloadPlan extends Loaded {
  /** Names of the live options whose values change, in alphabetical order. */
  readonly changed: readonly string[];
  /** Names of the options that changed but keep their running value, in alphabetical order. */
  readonly restart: readonly string[];
}

/** A raw value as it means: lists by their values, strings trimmed, an unset boolean off. */
function meaning(v: unknown): string {
  if (Array.isArray(v)) return JSON.stringify(v.flatMap((s: string) => s.split(',')).map((s) => s.trim()).filter((s) => s !== ''));
  if (typeof v === 'string') return JSON.stringify(v.trim());
  return JSON.stringify(v === true);
}

/**
 * The configuration to run after a reload: `next`'s live options, `current`'s value of every
 * other one. Throws a ConfigError when that mix is not valid (an option that needs a restart
 * was another's precondition).
 */
export function planReload(current: Loaded, next: Loaded): ReloadPlan {
  const raw: Record<string, unknown> = { ...next.raw };
  const changed: string[] = [];
  const restart: string[] = [];
  const keys = new Set([...Object.keys(current.raw), ...Object.keys(next.raw)] as (keyof RawOptions)[]);
  for (const key of keys) {
    if (meaning(current.raw[key]) === meaning(next.raw[key])) continue;
    if (LIVE.has(key)) {
      changed.push(optionName(key));
    } else {
      restart.push(optionName(key));
      raw[key] = current.raw[key];
    }
  }
  changed.sort();
  restart.sort();
  if (restart.length === 0) return { ...next, changed, restart };
  return { raw: raw as unknown as RawOptions, config: buildConfig(raw as unknown as RawOptions), changed, restart };
}

export interface ReloadTargets {
  readonly logger: AppLogger;
  /** Where new sessions get their configuration. */
  reconfigure(config: Config): void;
  readonly xferlog: XferlogTarget;
  /** --tls terminate: re-reads the certificate and key; the one-line reason when it cannot. */
  readonly certificates?: { reload(): string | null };
}

/**
 * Runs reloads one after another (a second SIGHUP waits for the first). Each re-reads the
 * configuration; a file that fails validation, or an xferlog that cannot be opened, changes
 * nothing and logs one error line. The xferlog is reopened either way (logrotate). With
 * --tls terminate the certificate and key are re-read too (a renewed certificate); when they
 * cannot be, the pair in use stays, one error line says why, and the rest of the reload applies.
 */
export class Reloader {
  private chain: Promise<void> = Promise.resolve();

  constructor(
    private current: Loaded,
    private readonly reread: () => Loaded,
    private readonly t: ReloadTargets,
  ) {}

  reload(): Promise<void> {
    // A reload that fails for any other reason is logged: a SIGHUP never ends the proxy.
    this.chain = this.chain
      .then(() => this.once())
      .catch((e: unknown) => this.t.logger.error({ err: e instanceof Error ? e.message : String(e) }, 'reload failed'));
    return this.chain;
  }

  /** Resolves when no reload is running. */
  idle(): Promise<void> {
    return this.chain;
  }

  private async once(): Promise<void> {
    const log = this.t.logger;
    let plan: ReloadPlan;
    try {
      plan = planReload(this.current, this.reread());
    } catch (e) {
      if (!(e instanceof ConfigError)) throw e;
      log.error({ err: e.message }, 'reload failed: configuration unchanged');
      await this.t.xferlog.reopen();
      return;
    }
    const { config } = plan;
    if (config.xferlog !== this.current.config.xferlog) {
      try {
        await this.t.xferlog.switchTo(config.xferlog);
      } catch (e) {
        log.error({ err: `cannot open the xferlog ${config.xferlog}: ${(e as NodeJS.ErrnoException).code ?? String(e)}` }, 'reload failed: configuration unchanged');
        await this.t.xferlog.reopen();
        return;
      }
    } else {
      await this.t.xferlog.reopen();
    }
    this.current = plan;
    this.t.reconfigure(config);
    log.level = pinoLevel(config.debugLevel);
    const certificates = this.t.certificates?.reload();
    if (certificates) log.error({ err: certificates }, 'reload: TLS certificate and key unchanged');
    for (const option of plan.restart) log.warn({ option }, 'changed option needs a restart: running value kept');
    log.notice({ changed: plan.changed, needsRestart: plan.restart }, 'reloaded: new sessions use the new configuration');
  }
}
