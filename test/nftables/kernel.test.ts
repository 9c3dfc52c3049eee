// The nftables data plane with real TCP through a gateway namespace: admission is single use and
// only for the peer, DNAT reaches the target, SNAT shows `source`, release and timeouts clean up,
// and an established connection outlives its entries.

import t from 'tap';
import { execFileSync } from 'node:child_process';
import { pino } from 'pino';
import { PortAllocator } from '../../src/net/ports.js';
import { NftablesDataPlane, type RunnerChoice } from '../../src/dataplane/nftables/index.js';
import type { DataPathRequest } from '../../src/dataplane/types.js';
import { isRoot, startLab, type LabEnv } from '../lib/lab.js';
import { connect, elements, insideNetns, listen, runInside } from './lib/netns.js';

const inside = insideNetns<LabEnv>();

if (!inside) {
  t.test('nftables data plane with real traffic', { skip: isRoot ? false : 'needs root (netns, nftables)' }, async (t) => {
    // The lab's gateway: forward policy drop with `ct status dnat accept`, masquerade on wan0.
    const lab = await startLab(t);
    await runInside(t, lab.nsName('gw'), lab.env, `gateway ${lab.nsName('gw')}`);
  });
} else {
  const env = inside;
  const logger = pino({ level: 'silent' });
  const TABLE = 'fp_kernel';
  const MARK = 0x42;

  // Log rules with lib and spawn; without them 'auto' and 'netlink' send elements over netlink.
  const start = async (t: { teardown(fn: () => unknown): void }, runner: RunnerChoice, entryTimeoutSec = 30) => {
    const ports = new PortAllocator(50000, 50999);
    const logRules = runner === 'lib' || runner === 'spawn';
    const dp = new NftablesDataPlane({ table: TABLE, ports, runner, logger, entryTimeoutSec, logRules, mark: MARK });
    await dp.start();
    t.teardown(() => dp.close());
    if (!logRules && dp.runnerName !== 'netlink') throw new Error(`elements go through ${dp.runnerName}, not netlink`);
    return dp;
  };
  /** client -> gateway LAN address:port -> server:targetPort, from the gateway's WAN address. */
  const passive = (family: 4 | 6, targetPort: number, sourcePort?: number): DataPathRequest => ({
    sid: String(targetPort),
    kind: 'passive',
    family,
    peer: family === 4 ? env.client4 : env.client6,
    listen: family === 4 ? env.gwLan4 : env.gwLan6,
    target: { address: family === 4 ? env.server4 : env.server6, port: targetPort },
    source: family === 4 ? env.gwWan4 : env.gwWan6,
    ...(sourcePort !== undefined ? { sourcePort } : {}),
  });
  const empty = (family: 4 | 6): boolean =>
    elements(TABLE, 'set', `admit${family}`).length === 0 &&
    ['dnat', 'dnatport', 'snat', 'snatport'].every((m) => elements(TABLE, 'map', `${m}${family}`).length === 0);

  // A target port per runner: the first run's connection stays in conntrack (TIME_WAIT) with
  // the reply tuple target -> source:2020, which a second connection could not be NATed onto.
  for (const [runner, targetPort] of [['lib', 40000], ['spawn', 40010], ['netlink', 40020]] as const) {
    t.test(`${runner}: passive IPv4 is admitted once, only from the peer, and carried through NAT`, async (t) => {
      const dp = await start(t, runner);
      const server = await listen(env.ns.server, env.server4, targetPort);
      t.teardown(() => server.close());
      const path = await dp.open(passive(4, targetPort, 2020));

      const other = await connect(env.ns.client, env.gwLan4, path.port, env.client4Alt);
      t.match(other, { ok: false, error: /refused/i }, 'another LAN host is not admitted');

      const first = await connect(env.ns.client, env.gwLan4, path.port, env.client4);
      t.ok(first.ok, 'the peer is admitted');
      if (!first.ok) return;
      t.same(await server.accepted(), { peer: env.gwWan4, port: 2020 }, 'the target sees source:sourcePort');
      t.equal(await first.conn.roundTrip('hello'), 'hello');
      t.same(elements(TABLE, 'set', 'admit4'), [], 'the first SYN used up the admission');
      const ct = execFileSync('conntrack', ['-L', '-p', 'tcp', '--orig-port-dst', String(path.port)], { stdio: ['ignore', 'pipe', 'ignore'] }).toString();
      t.match(ct, `mark=${MARK}`, 'the connection carries the mark');

      const second = await connect(env.ns.client, env.gwLan4, path.port, env.client4);
      t.match(second, { ok: false, error: /refused/i }, 'a second connection is not admitted');

      await dp.release(path.id, false);
      t.ok(empty(4), 'no element remains after release');
      t.equal(await first.conn.roundTrip('still there'), 'still there', 'the established connection survives release');
      await first.conn.close();
    });
  }

  t.test('active IPv4: the client sees the source address, not the server', async (t) => {
    const dp = await start(t, 'auto');
    const client = await listen(env.ns.client, env.client4, 45000);
    t.teardown(() => client.close());
    const path = await dp.open({
      sid: 'active',
      kind: 'active',
      family: 4,
      peer: env.server4,
      listen: env.gwWan4,
      target: { address: env.client4, port: 45000 },
      source: env.gwLan4,
    });
    const c = await connect(env.ns.server, env.gwWan4, path.port, env.server4);
    t.ok(c.ok, 'the server is admitted');
    if (!c.ok) return;
    t.equal((await client.accepted()).peer, env.gwLan4, 'SNAT to source (masquerade would not touch LAN traffic)');
    t.equal(await c.conn.roundTrip('data'), 'data');
    await c.conn.close();
    await dp.release(path.id, true);
    t.ok(empty(4));
  });

  t.test('passive IPv6', async (t) => {
    const dp = await start(t, 'auto');
    const server = await listen(env.ns.server, env.server6, 40006);
    t.teardown(() => server.close());
    const path = await dp.open(passive(6, 40006, 2021));
    t.match(await connect(env.ns.client, env.gwLan6, path.port, env.client6Alt), { ok: false }, 'other source refused');
    const c = await connect(env.ns.client, env.gwLan6, path.port, env.client6);
    t.ok(c.ok, 'the peer is admitted');
    if (!c.ok) return;
    t.same(await server.accepted(), { peer: env.gwWan6, port: 2021 });
    t.equal(await c.conn.roundTrip('six'), 'six');
    t.match(await connect(env.ns.client, env.gwLan6, path.port, env.client6), { ok: false }, 'single use');
    await dp.release(path.id, false);
    t.ok(empty(6));
    t.equal(await c.conn.roundTrip('after'), 'after');
    await c.conn.close();
  });

  t.test('an unused admission times out in the kernel', async (t) => {
    const dp = await start(t, 'auto', 1);
    const server = await listen(env.ns.server, env.server4, 40001);
    t.teardown(() => server.close());
    const path = await dp.open(passive(4, 40001));
    t.notOk(empty(4), 'entries installed');
    const deadline = Date.now() + 5000;
    while (!empty(4) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    t.ok(empty(4), 'all entries gone after the timeout');
    t.match(await connect(env.ns.client, env.gwLan4, path.port, env.client4), { ok: false, error: /refused/i }, 'not admitted any more');
    await dp.release(path.id, false);
  });

  t.test('byte counting: a path asked about gives its bytes; paths released unasked keep nothing', async (t) => {
    const ports = new PortAllocator(50000, 50999);
    const count = { group: 2199, ports: { low: 50000, high: 50999 } };
    const dp = new NftablesDataPlane({ table: TABLE, ports, runner: 'auto', logger, count });
    await dp.start();
    t.teardown(() => dp.close());
    const server = await listen(env.ns.server, env.server4, 40030);
    t.teardown(() => server.close());
    const asked = await dp.open(passive(4, 40030));
    const c = await connect(env.ns.client, env.gwLan4, asked.port, env.client4);
    t.ok(c.ok, 'the peer is admitted');
    if (!c.ok) return;
    t.equal(await c.conn.roundTrip('counted'), 'counted');
    await c.conn.close();
    const line = Buffer.byteLength('counted\n');
    t.same(await dp.transferred(asked.id), { fromPeer: line, toPeer: line }, 'exact payload bytes, both ways');
    await dp.release(asked.id, false);
    // A client repeating PASV: each path is replaced before anyone asks what it carried. What
    // the plane keeps for counting goes with the release, so asking later finds nothing.
    const unasked: string[] = [];
    for (let i = 0; i < 20; i++) {
      const p = await dp.open(passive(4, 40031));
      await dp.release(p.id, false);
      unasked.push(p.id);
    }
    const answers = await Promise.all(unasked.map((id) => dp.transferred(id)));
    t.same(answers, unasked.map(() => null), 'no count is kept for a released path nobody asked about');
  });
}
