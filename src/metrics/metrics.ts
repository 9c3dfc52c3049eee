// The proxy's Prometheus series (names fixed by issue 12) behind the few calls the server, the
// sessions and the data planes make; with --metrics off those calls are empty methods.

import fs from 'node:fs';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { TRANSFER_VERBS } from '../protocol/commands.js';
import { TRANSFER_RESULTS, transferDirection, type TransferCommand, type TransferResult } from '../transfer.js';

/** Why a connection did not become a session (the `reason` label). */
export const REFUSAL_REASONS = [
  'limit',
  'per_client_limit',
  'client_policy',
  'server_policy',
  'shutdown',
  'no_server',
] as const;
export type RefusalReason = (typeof REFUSAL_REASONS)[number];

/** DataPlaneError codes (the `code` label); listed so their series exist before the first error. */
export const DATA_PLANE_ERROR_CODES = ['PORTS_EXHAUSTED', 'BACKEND_FAILED'] as const;

export type DataMode = 'passive' | 'active';

export interface Metrics {
  /** A connection was admitted as a session. */
  sessionStarted(): void;
  /** A session (admitted by sessionStarted) has ended. */
  sessionEnded(): void;
  /** A connection was turned away, or a session ended before it reached its server. */
  refused(reason: RefusalReason): void;
  /** The data plane admitted a data connection; `seconds` is how long its open() took. */
  dataPathOpened(mode: DataMode, seconds: number): void;
  /** The data plane failed to open (or release) a path; `code` is the DataPlaneError's. */
  dataPlaneError(code: string): void;
  /** A transfer command has its final reply (or was cut off); `bytes` crossed its data connection. */
  transferEnded(command: TransferCommand, result: TransferResult, bytes: number): void;
}

/** --metrics off: every call is an empty method, so the hot path pays one call. */
export const NO_METRICS: Metrics = Object.freeze({
  sessionStarted: () => undefined,
  sessionEnded: () => undefined,
  refused: () => undefined,
  dataPathOpened: () => undefined,
  dataPlaneError: () => undefined,
  transferEnded: () => undefined,
});

/** Seconds. An in-process libnftables transaction takes ~0.3 ms, a spawned nft ~5-40 ms. */
const OPEN_BUCKETS = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1];

/** Default series whose collection walks every handle of the process (cost grows with sessions). */
const SCALING_DEFAULTS = ['nodejs_active_handles', 'nodejs_active_handles_total', 'nodejs_active_resources', 'nodejs_active_resources_total'];

/**
 * Open descriptors of this process. Linux 6.2 and later give the count as the size of
 * /proc/self/fd (one stat); older kernels need the directory read, off the event loop.
 */
async function openDescriptors(): Promise<number> {
  const { size } = fs.statSync('/proc/self/fd');
  if (size > 0) return size;
  // The read holds one descriptor of its own.
  return (await fs.promises.readdir('/proc/self/fd')).length - 1;
}

export class PromMetrics implements Metrics {
  readonly registry = new Registry();
  private readonly active: Gauge;
  private readonly sessions: Counter;
  private readonly refusals: Counter<'reason'>;
  private readonly dataConnections: Counter<'mode'>;
  private readonly dataPlaneErrors: Counter<'code'>;
  private readonly openSeconds: Histogram;
  private readonly transfers: Counter<'command' | 'result'>;
  private readonly transferBytes: Counter<'direction'>;

  constructor() {
    const registers = [this.registry];
    this.active = new Gauge({ name: 'ftpproxy_sessions_active', help: 'Sessions open now.', registers });
    this.sessions = new Counter({ name: 'ftpproxy_sessions_total', help: 'Sessions admitted since start.', registers });
    this.refusals = new Counter({
      name: 'ftpproxy_sessions_refused_total',
      help: 'Connections turned away (limit, policy, shutdown) or ended before reaching a server (no_server).',
      labelNames: ['reason'],
      registers,
    });
    this.dataConnections = new Counter({
      name: 'ftpproxy_data_connections_total',
      help: 'Data connections admitted by the data plane.',
      labelNames: ['mode'],
      registers,
    });
    this.dataPlaneErrors = new Counter({
      name: 'ftpproxy_data_plane_errors_total',
      help: 'Data-plane operations that failed, by error code.',
      labelNames: ['code'],
      registers,
    });
    this.openSeconds = new Histogram({
      name: 'ftpproxy_data_plane_open_seconds',
      help: 'Time the data plane took to admit one data connection.',
      buckets: OPEN_BUCKETS,
      registers,
    });
    this.transfers = new Counter({
      name: 'ftpproxy_transfers_total',
      help: 'Transfer commands ended, by command and result (from the final reply: ok, failed, aborted).',
      labelNames: ['command', 'result'],
      registers,
    });
    this.transferBytes = new Counter({
      name: 'ftpproxy_transfer_bytes_total',
      help: 'Bytes carried by data connections of ended transfers, by direction.',
      labelNames: ['direction'],
      registers,
    });
    // Every series exists from the start at 0, so rate() and before/after differences work at once.
    for (const reason of REFUSAL_REASONS) this.refusals.inc({ reason }, 0);
    for (const mode of ['passive', 'active']) this.dataConnections.inc({ mode }, 0);
    for (const code of DATA_PLANE_ERROR_CODES) this.dataPlaneErrors.inc({ code }, 0);
    for (const command of TRANSFER_VERBS) {
      for (const result of TRANSFER_RESULTS) this.transfers.inc({ command, result }, 0);
    }
    for (const direction of ['download', 'upload']) this.transferBytes.inc({ direction }, 0);
    collectDefaultMetrics({ register: this.registry });
    // prom-client lists every descriptor or handle on the event loop for these: 25 ms a scrape
    // at 16,000 sockets. Handles and resources are left out; open descriptors are counted by
    // the kernel (below).
    for (const name of [...SCALING_DEFAULTS, 'process_open_fds']) this.registry.removeSingleMetric(name);
    new Gauge({
      name: 'process_open_fds',
      help: 'Number of open file descriptors.',
      registers,
      async collect() {
        this.set(await openDescriptors());
      },
    });
  }

  sessionStarted(): void {
    this.active.inc();
    this.sessions.inc();
  }

  sessionEnded(): void {
    this.active.dec();
  }

  refused(reason: RefusalReason): void {
    this.refusals.inc({ reason });
  }

  dataPathOpened(mode: DataMode, seconds: number): void {
    this.dataConnections.inc({ mode });
    this.openSeconds.observe(seconds);
  }

  dataPlaneError(code: string): void {
    this.dataPlaneErrors.inc({ code });
  }

  transferEnded(command: TransferCommand, result: TransferResult, bytes: number): void {
    this.transfers.inc({ command, result });
    if (bytes > 0) this.transferBytes.inc({ direction: transferDirection(command) }, bytes);
  }

  /** The exposition text of every series. */
  scrape(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
