// Wiring: command line -> config -> logger -> data plane -> listener, plus signal handling
// (first SIGTERM/SIGINT closes gracefully and removes every rule; a second exits at once).

import type net from 'node:net';
import { parseArgs } from './cli.js';
import { buildConfig, type Config } from './config.js';
import { ConfigError, FtpProxyError } from './errors.js';
import { createLogger, type AppLogger } from './log.js';
import { PortAllocator } from './net/ports.js';
import { originalDestination } from './net/origdst.js';
import { RelayDataPlane } from './dataplane/relay.js';
import { NftablesDataPlane, renderRuleset } from './dataplane/nftables/index.js';
import type { DataPlane, Endpoint } from './dataplane/types.js';
import { ProxyServer } from './server.js';

const out = { out: (s: string) => void process.stdout.write(s), err: (s: string) => void process.stderr.write(s) };

function createDataPlane(cfg: Config, logger: AppLogger): DataPlane {
  const ports = new PortAllocator(cfg.dataPorts.low, cfg.dataPorts.high);
  if (cfg.backend === 'relay') {
    return new RelayDataPlane({
      ports,
      dataTimeout: cfg.dataTimeout,
      dataIdleTimeout: cfg.dataIdleTimeout,
      // Only outbound mode uses an address that is not this host's for data (the server's).
      ...(cfg.mode === 'outbound' ? { routeTable: cfg.routeTable } : {}),
      logger,
    });
  }
  return new NftablesDataPlane({
    table: cfg.nftTable,
    ports,
    entryTimeoutSec: cfg.dataTimeout,
    logRules: cfg.logRules,
    ...(cfg.mark !== undefined ? { mark: cfg.mark } : {}),
    logger,
  });
}

function serverResolver(cfg: Config): (client: net.Socket) => Promise<Endpoint> {
  if (cfg.reverse) {
    const fixed = cfg.reverse;
    return async () => fixed;
  }
  return (client) => originalDestination(client);
}

/** Runs the proxy; resolves with the process exit status. */
export async function main(argv: readonly string[]): Promise<number> {
  const parsed = parseArgs(argv, out);
  if (parsed.kind === 'exit') return parsed.code;
  let cfg: Config;
  try {
    cfg = buildConfig(parsed.options);
  } catch (e) {
    if (e instanceof ConfigError) {
      out.err(`ftp-proxy: ${e.message}\n`);
      return 2;
    }
    throw e;
  }
  if (cfg.printRuleset) {
    out.out(renderRuleset({ table: cfg.nftTable, logRules: cfg.logRules, ...(cfg.mark !== undefined ? { mark: cfg.mark } : {}) }));
    return 0;
  }
  const logger = createLogger({ debugLevel: cfg.debugLevel, foreground: cfg.foreground });
  const dataPlane = createDataPlane(cfg, logger);
  try {
    await dataPlane.start();
  } catch (e) {
    const msg = e instanceof Error ? e.message : String(e);
    out.err(`ftp-proxy: cannot start the ${dataPlane.name} data plane: ${msg}\n`);
    logger.flush();
    return 2;
  }
  const server = new ProxyServer({ config: cfg, dataPlane, logger, resolveServer: serverResolver(cfg) });
  let addr: net.AddressInfo;
  try {
    addr = await server.listen();
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? '';
    out.err(`ftp-proxy: cannot listen on ${cfg.bind} port ${cfg.port}: ${code || (e as Error).message}\n`);
    await dataPlane.close().catch(() => undefined);
    return 1;
  }
  logger.notice(
    {
      listen: `${addr.address}:${addr.port}`,
      mode: cfg.mode,
      ...(cfg.reverse ? { server: `${cfg.reverse.address}:${cfg.reverse.port}` } : {}),
      dataPlane: dataPlane.name,
      ...(dataPlane instanceof NftablesDataPlane ? { nftRunner: dataPlane.runnerName, nftTable: cfg.nftTable } : {}),
      dataPorts: `${cfg.dataPorts.low}-${cfg.dataPorts.high}`,
      maxSessions: cfg.maxSessions,
    },
    'listening',
  );

  return new Promise<number>((resolve) => {
    let stopping = false;
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
