// Wiring: config -> logger -> data plane -> observability (metrics, control socket, xferlog) ->
// listener, plus signal handling (first SIGTERM/SIGINT closes gracefully and removes every rule;
// SIGHUP reloads, reload.ts).

import type net from 'node:net';
import type { Config } from './config.js';
import type { Loaded } from './configfile.js';
import { ConfigError, FtpProxyError } from './errors.js';
import { createLogger, type AppLogger } from './log.js';
import { PortAllocator } from './net/ports.js';
import { originalDestination } from './net/origdst.js';
import { RelayDataPlane } from './dataplane/relay.js';
import { NftablesDataPlane, renderRuleset } from './dataplane/nftables/index.js';
import type { DataPlane, Endpoint } from './dataplane/types.js';
import { CompositeDataPlane } from './dataplane/composite.js';
import { ProxyServer } from './server.js';
import { NO_METRICS, PromMetrics } from './metrics/metrics.js';
import { MetricsListener } from './metrics/http.js';
import { ControlServer, ControlSocketError } from './control/server.js';
import type { SessionProvider } from './control/protocol.js';
import { XferlogTarget } from './xferlog.js';
import { cleanup } from './cleanup.js';
import { Reloader } from './reload.js';
import { TlsTerminator } from './tls/context.js';
import { ServerTlsClient } from './tls/server-side.js';

const out = { out: (s: string) => void process.stdout.write(s), err: (s: string) => void process.stderr.write(s) };

function createDataPlane(cfg: Config, logger: AppLogger): DataPlane {
  const ports = new PortAllocator(cfg.dataPorts.low, cfg.dataPorts.high);
  const relay = (routeTable?: number): RelayDataPlane =>
    new RelayDataPlane({
      ports,
      dataTimeout: cfg.dataTimeout,
      dataIdleTimeout: cfg.dataIdleTimeout,
      ...(routeTable !== undefined ? { routeTable } : {}),
      logger,
    });
  // Only outbound mode uses an address that is not this host's for data (the server's).
  if (cfg.backend === 'relay') return relay(cfg.mode === 'outbound' ? cfg.routeTable : undefined);
  // Beside the kernel, the relay carries only what the kernel cannot (cross-family, mode-translated and
  // PROT P paths), from this host's own addresses: it needs no policy routing.
  const kernel = new NftablesDataPlane({
    table: cfg.nftTable,
    ports,
    entryTimeoutSec: cfg.dataTimeout,
    logRules: cfg.logRules,
    ...(cfg.mark !== undefined ? { mark: cfg.mark } : {}),
    ...countOption(cfg),
    logger,
  });
  return new CompositeDataPlane(kernel, relay());
}

/** --tls terminate: the certificate and key (and --server-ca), checked before anything starts. */
function loadTls(cfg: Config): { terminator: TlsTerminator; serverTls: ServerTlsClient | null } | ConfigError | null {
  if (!cfg.tlsTerminate) return null;
  try {
    const server = cfg.tlsTerminate.server;
    return { terminator: TlsTerminator.load(cfg.tlsTerminate), serverTls: server ? ServerTlsClient.load(server) : null };
  } catch (e) {
    if (e instanceof ConfigError) return e;
    throw e;
  }
}

/** The nftables table's byte counting (rules.ts TableOptions.count), unless --nflog-group 0. */
function countOption(cfg: Config): { count?: { group: number; ports: { low: number; high: number } } } {
  return cfg.nflogGroup === 0 ? {} : { count: { group: cfg.nflogGroup, ports: cfg.dataPorts } };
}

function serverResolver(cfg: Config): (client: net.Socket) => Promise<Endpoint> {
  if (cfg.reverse) {
    const fixed = cfg.reverse;
    return async () => fixed;
  }
  return (client) => originalDestination(client);
}

function errText(e: unknown): string {
  return (e as NodeJS.ErrnoException).code ?? (e instanceof Error ? e.message : String(e));
}

/** What runs beside the proxy for its operators; each part is absent when not asked for. */
interface Observability {
  readonly metrics: MetricsListener | null;
  readonly control: ControlServer | null;
  readonly xferlog: XferlogTarget;
}

async function closeObservability(o: Partial<Observability>): Promise<void> {
  await Promise.all([o.metrics?.close(), o.control?.close(), o.xferlog?.close()]);
}

/**
 * Opens the metrics listener (for `metrics`) and the control socket (for `provider`) beside the
 * xferlog already opened. A part that was asked for and cannot start is a start error (one line,
 * what was opened is closed again); the default control socket is taken when it can be and
 * logged when it cannot.
 */
async function startObservability(
  cfg: Config,
  logger: AppLogger,
  xferlog: XferlogTarget,
  metrics: PromMetrics | null,
  provider: SessionProvider,
): Promise<Observability | string> {
  const opened: { -readonly [K in keyof Observability]?: Observability[K] } = { xferlog };
  if (cfg.metrics && metrics) {
    try {
      opened.metrics = await MetricsListener.listen(cfg.metrics, metrics, logger);
    } catch (e) {
      await closeObservability(opened);
      return `cannot listen for metrics on ${cfg.metrics.address} port ${cfg.metrics.port}: ${errText(e)}`;
    }
  }
  try {
    opened.control = await ControlServer.open(cfg.controlSocket.path, provider, logger, !cfg.controlSocket.explicit);
  } catch (e) {
    if (!(e instanceof ControlSocketError)) throw e;
    if (cfg.controlSocket.explicit) {
      await closeObservability(opened);
      return e.message;
    }
    logger.warn({ code: e.code, err: e.message }, 'no control socket: ftp-proxy sessions and kill will not reach this proxy');
  }
  return { metrics: opened.metrics ?? null, control: opened.control ?? null, xferlog };
}

/**
 * Runs the proxy with a validated configuration; `reread` loads it again for a SIGHUP. Resolves
 * with the process exit status.
 */
export async function main(loaded: Loaded, reread: () => Loaded): Promise<number> {
  const cfg = loaded.config;
  if (cfg.printRuleset) {
    out.out(
      renderRuleset({ table: cfg.nftTable, logRules: cfg.logRules, ...(cfg.mark !== undefined ? { mark: cfg.mark } : {}), ...countOption(cfg) }),
    );
    return 0;
  }
  const tls = loadTls(cfg);
  if (tls instanceof ConfigError) {
    out.err(`ftp-proxy: ${tls.message}\n`);
    return 2;
  }
  const terminator = tls?.terminator ?? null;
  const serverTls = tls?.serverTls ?? null;
  const logger = createLogger({ debugLevel: cfg.debugLevel, foreground: cfg.foreground });
  if (cfg.cleanup) {
    const status = await cleanup(cfg, logger, out.err);
    logger.flush();
    return status;
  }
  // Set at once: Node's default for SIGHUP ends the process. Until the proxy listens there is
  // nothing to reload; once it is stopping, nothing to change.
  let reloader: Reloader | null = null;
  let stopping = false;
  process.on('SIGHUP', () => {
    if (reloader && !stopping) void reloader.reload();
    else logger.notice({ signal: 'SIGHUP' }, `SIGHUP ignored: ${stopping ? 'shutting down' : 'still starting'}`);
  });
  const dataPlane = createDataPlane(cfg, logger);
  try {
    await dataPlane.start();
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    out.err(`ftp-proxy: cannot start the ${dataPlane.name} data plane: ${msg}\n`);
    logger.flush();
    return 2;
  }
  let xferlog: XferlogTarget;
  try {
    xferlog = await XferlogTarget.open(cfg.xferlog, logger);
  } catch (e) {
    out.err(`ftp-proxy: cannot open the xferlog ${cfg.xferlog}: ${errText(e)}\n`);
    await dataPlane.close().catch(() => undefined);
    logger.flush();
    return 1;
  }
  const metrics = cfg.metrics ? new PromMetrics() : null;
  // Constructed before the control socket opens (it lists the server's sessions); it accepts
  // nothing before listen() below.
  const server = new ProxyServer({
    config: cfg,
    dataPlane,
    logger,
    resolveServer: serverResolver(cfg),
    metrics: metrics ?? NO_METRICS,
    xferlog,
    ...(terminator ? { terminator } : {}),
    ...(serverTls ? { serverTls } : {}),
  });
  const obs = await startObservability(cfg, logger, xferlog, metrics, server.provider);
  if (typeof obs === 'string') {
    out.err(`ftp-proxy: ${obs}\n`);
    await dataPlane.close().catch(() => undefined);
    logger.flush();
    return 1;
  }
  let addr: net.AddressInfo;
  try {
    addr = await server.listen();
  } catch (e) {
    out.err(`ftp-proxy: cannot listen on ${cfg.bind} port ${cfg.port}: ${errText(e)}\n`);
    await closeObservability(obs);
    await dataPlane.close().catch(() => undefined);
    return 1;
  }
  logger.notice(
    {
      listen: `${addr.address}:${addr.port}`,
      mode: cfg.mode,
      ...(cfg.reverse ? { server: `${cfg.reverse.address}:${cfg.reverse.port}` } : {}),
      dataPlane: dataPlane.name,
      ...(dataPlane instanceof CompositeDataPlane && dataPlane.kernel instanceof NftablesDataPlane
        ? { nftRunner: dataPlane.kernel.runnerName, nftTable: cfg.nftTable }
        : {}),
      dataPorts: `${cfg.dataPorts.low}-${cfg.dataPorts.high}`,
      maxSessions: cfg.maxSessions,
      ...(obs.metrics ? { metrics: `${obs.metrics.address.address}:${obs.metrics.address.port}` } : {}),
      ...(obs.control ? { controlSocket: obs.control.path } : {}),
      ...(obs.xferlog.file !== undefined ? { xferlog: obs.xferlog.file } : {}),
      ...(terminator ? { tls: 'terminate', certificateValidTo: terminator.validTo, tlsReuseCheck: terminator.reuseCheck, serverTls: serverTls ? 'explicit' : 'off' } : {}),
    },
    'listening',
  );
  if (serverTls?.insecure) {
    logger.warn({}, "--server-tls-insecure: the server's certificate is NOT checked: anyone who can take the server's address between proxy and server can read and change every session");
  }
  if (terminator && !terminator.reuseCheck) {
    logger.warn({}, '--tls-no-reuse-check: PROT P data connections are admitted without resuming their control connection\'s TLS session: whoever reaches a data port first from the client\'s address gets the data');
  }

  const running = new Reloader(loaded, reread, {
    logger,
    xferlog,
    reconfigure: (c) => server.reconfigure(c),
    ...(terminator ? { certificates: terminator } : {}),
  });
  reloader = running;

  return new Promise<number>((resolve) => {
    const onSignal = (sig: NodeJS.Signals): void => {
      if (stopping) {
        logger.warn({ signal: sig }, 'second signal: exiting at once');
        logger.flush();
        process.exit(1);
      }
      stopping = true;
      logger.notice({ signal: sig, sessions: server.sessions.size }, 'shutting down');
      server
        .close(cfg.shutdownGrace)
        .then(() => dataPlane.close())
        // A reload still opening an xferlog finishes before the files are closed.
        .then(() => running.idle())
        .then(() => closeObservability(obs))
        .then(
          () => {
            logger.notice({}, 'stopped');
            logger.flush();
            resolve(0);
          },
          (err: unknown) => {
            logger.error({ err: err instanceof FtpProxyError ? `${err.code}: ${err.message}` : String(err) }, 'shutdown failed');
            logger.flush();
            resolve(1);
          },
        );
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
}
