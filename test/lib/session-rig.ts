// Session tests through the real listener and session shell: a ProxyServer in this process
// with the fake data plane, in front of a scripted server on loopback (test/lib/scripted.ts).

import type { Test } from 'tap';
import { parseArgs } from '../../src/cli.js';
import { buildConfig, type Config } from '../../src/config.js';
import { FakeDataPlane } from '../../src/dataplane/fake.js';
import { createLogger, type AppLogger } from '../../src/log.js';
import type { PortAllocator } from '../../src/net/ports.js';
import { ProxyServer } from '../../src/server.js';
import type { Endpoint } from '../../src/dataplane/types.js';
import { NO_METRICS, type Metrics } from '../../src/metrics/metrics.js';
import type { TransferRecord } from '../../src/transfer.js';
import type { Lookup } from '../../src/net/user-at-host.js';
import { Control, ScriptedServer, basicResponder, type Responder } from './scripted.js';

export const quiet = createLogger({ debugLevel: 0, foreground: false, destination: { write: () => undefined } });

/** A reverse-mode (or outbound) Config for 127.0.0.1 with `extra` flags, listening on any free port. */
export function config(extra: string[] = [], outbound = false): Config {
  const parsed = parseArgs([...(outbound ? [] : ['-R', '127.0.0.1']), ...extra], { out: () => undefined, err: (s) => { throw new Error(s); } });
  if (parsed.kind !== 'run') throw new Error('bad test flags');
  return { ...buildConfig(parsed.options), port: 0 };
}

export interface Rig {
  proxyPort: number;
  server: ScriptedServer;
  dp: FakeDataPlane;
  proxy: ProxyServer;
}

export interface RigOptions {
  respond?: Responder;
  flags?: string[];
  resolve?: () => Promise<Endpoint>;
  /** Where the scripted server listens (::1: the proxy then speaks EPSV/EPRT to it). */
  serverHost?: string;
  /** The scripted server greets this long after the connection. */
  greetAfterMs?: number;
  ports?: PortAllocator;
  logger?: AppLogger;
  metrics?: Metrics;
  /** Collects the records the xferlog would get. */
  xferlog?: TransferRecord[];
  /** Outbound mode instead of reverse mode (`resolve` then says where clients were going). */
  outbound?: boolean;
  /** Resolves name@host logins' hosts. */
  lookup?: Lookup;
}

/** Scripted server, fake data plane and proxy, all closed in `t`'s teardown. */
export async function rig(t: Test, opts: RigOptions = {}): Promise<Rig> {
  const server = new ScriptedServer(opts.respond ?? basicResponder, '220 scripted ready', opts.greetAfterMs ?? 0);
  const serverHost = opts.serverHost ?? '127.0.0.1';
  const sport = await server.listen(serverHost);
  const dp = new FakeDataPlane(opts.ports);
  const proxy = new ProxyServer({
    config: config(opts.flags, opts.outbound),
    dataPlane: dp,
    logger: opts.logger ?? quiet,
    resolveServer: opts.resolve ?? (async () => ({ address: serverHost, port: sport })),
    metrics: opts.metrics ?? NO_METRICS,
    xferlog: opts.xferlog ? { write: (r) => void opts.xferlog!.push(r) } : null,
    ...(opts.lookup ? { lookup: opts.lookup } : {}),
  });
  const addr = await proxy.listen();
  t.teardown(async () => {
    await proxy.close(0);
    await server.close();
  });
  return { proxyPort: addr.port, server, dp, proxy };
}

/** Greeting, USER anonymous, PASS: whatever the replies. */
export async function login(t: Test, c: Control): Promise<void> {
  t.match(await c.line(), /^220 /);
  c.send('USER anonymous');
  await c.line();
  c.send('PASS x');
  await c.line();
}

/** Poll until `cond` holds (the proxy releases asynchronously). */
export async function eventually(cond: () => boolean, ms = 3000): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, 10));
  }
  return true;
}

/** The proxy's own 227: its address (127.0.0.1 in the rig) and the port of a fake data-plane path. */
export function isOwn227(r: Rig, line: string | null): boolean {
  const m = /^227 Entering Passive Mode \(127,0,0,1,(\d+),(\d+)\)\.$/.exec(line ?? '');
  return m !== null && r.dp.opened.some((p) => p.port === Number(m[1]) * 256 + Number(m[2]));
}

/** The proxy's own 229: the port of a fake data-plane path. */
export function isOwn229(r: Rig, line: string | null): boolean {
  const m = /^229 Entering Extended Passive Mode \(\|\|\|(\d+)\|\)$/.exec(line ?? '');
  return m !== null && r.dp.opened.some((p) => p.port === Number(m[1]));
}
