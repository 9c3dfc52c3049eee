// The nftables data plane against the real kernel, for each runner (raw netlink for elements,
// in-process libnftables, spawned nft), in a namespace of its own: what start/open/release/close
// leave in the table, and that netlink leaves exactly what libnftables does.

import t, { type Test } from 'tap';
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { DataPlaneError } from '../../src/errors.js';
import { PortAllocator } from '../../src/net/ports.js';
import { createRunner, NftablesDataPlane, renderRuleset, type RunnerChoice } from '../../src/dataplane/nftables/index.js';
import { LibnftablesRunner } from '../../src/dataplane/nftables/libnftables.js';
import { NetlinkRunner } from '../../src/dataplane/nftables/netlink.js';
import { closeBatch, openBatch, releaseBatch, startBatch, type PathSpec } from '../../src/dataplane/nftables/rules.js';
import { SpawnRunner } from '../../src/dataplane/nftables/spawn.js';
import { add, batch, concat, del, destroy, elem, type Batch, type Element } from '../../src/dataplane/nftables/schema.js';
import { isRoot } from '../lib/lab.js';
import { addNetns, delNetns, elements, insideNetns, nft, runInside, runPrefix } from './lib/netns.js';
import { active6, passive4 } from './lib/requests.js';

const inside = insideNetns<{ ns: string }>();

if (!inside) {
  t.test('nftables runners in a network namespace', { skip: isRoot ? false : 'needs root (netns, nftables)' }, async (t) => {
    const ns = `${runPrefix()}-gw`;
    addNetns(ns);
    t.teardown(() => delNetns(ns));
    await runInside(t, ns, { ns }, `inside ${ns}`);
  });
} else {
  const logger = pino({ level: 'silent' });
  const tableExists = (name: string): boolean => {
    try {
      nft('list', 'table', 'inet', name);
      return true;
    } catch {
      return false;
    }
  };
  const logRules = (table: string): string[] =>
    nft('list', 'chain', 'inet', table, 'admit_log')
      .split('\n')
      .filter((l) => l.includes('log prefix'))
      .map((l) => l.trim());
  const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

  const runnerNames = { lib: 'libnftables', spawn: 'nft', netlink: 'netlink' } as const;
  for (const runner of ['lib', 'spawn', 'netlink'] as const satisfies readonly RunnerChoice[]) {
    const table = `fp_${runner}`;
    // The netlink runner sends elements only: log rules keep a data plane on libnftables.
    const withLog = runner !== 'netlink';
    const make = (extra: { entryTimeoutSec?: number; mark?: number } = {}) => {
      const ports = new PortAllocator(50000, 50099);
      return { ports, dp: new NftablesDataPlane({ table, ports, runner, logger, logRules: withLog, mark: 0x42, ...extra }) };
    };

    t.test(`${runner}: start, open, release, close`, async (t) => {
      const { ports, dp } = make();
      t.equal(dp.runnerName, runner === 'spawn' ? 'nft' : 'libnftables', 'before start');
      await dp.start();
      t.equal(dp.runnerName, runnerNames[runner], 'after start');
      t.ok(tableExists(table), 'start creates the table');

      const a = await dp.open(passive4);
      const b = await dp.open(active6);
      t.equal(ports.used, 2);
      const k4 = `192.0.2.2 . 192.0.2.1 . ${a.port}`;
      t.same(elements(table, 'set', 'admit4'), [k4]);
      t.same(elements(table, 'map', 'dnat4'), [`${k4} : 198.51.100.2`]);
      t.same(elements(table, 'map', 'dnatport4'), [`${k4} : 40000`]);
      t.same(elements(table, 'map', 'snat4'), ['192.0.2.2 . 198.51.100.2 . 40000 : 198.51.100.1']);
      t.same(elements(table, 'map', 'snatport4'), []);
      const k6 = `2001:db8:2::2 . 2001:db8:2::1 . ${b.port}`;
      t.same(elements(table, 'set', 'admit6'), [k6]);
      t.same(elements(table, 'map', 'dnat6'), [`${k6} : 2001:db8:1::2`]);
      t.same(elements(table, 'map', 'snatport6'), ['2001:db8:2::2 . 2001:db8:1::2 . 45678 : 20']);
      if (withLog) {
        t.same(logRules(table), [
          `ip6 saddr 2001:db8:2::2 ip6 daddr 2001:db8:2::1 tcp dport ${b.port} log prefix "ftp-proxy #8 "`,
          `ip saddr 192.0.2.2 ip daddr 192.0.2.1 tcp dport ${a.port} log prefix "ftp-proxy #7 "`,
        ]);
      }

      await dp.release(a.id, false);
      for (const s of ['admit4']) t.same(elements(table, 'set', s), [], `${s} empty after release`);
      for (const m of ['dnat4', 'dnatport4', 'snat4']) t.same(elements(table, 'map', m), [], `${m} empty after release`);
      if (withLog) t.equal(logRules(table).length, 1, 'only the other path logs');
      t.same(elements(table, 'set', 'admit6'), [k6], 'the other path is untouched');
      await dp.release(b.id, true);
      for (const m of ['dnat6', 'dnatport6', 'snat6', 'snatport6']) t.same(elements(table, 'map', m), [], `${m} empty`);
      if (withLog) t.same(logRules(table), []);
      t.equal(ports.used, 0, 'ports given back');
      await dp.release(a.id, false);
      await dp.release('nft-unknown', true);
      t.pass('releasing twice or an unknown id is a no-op');

      await dp.close();
      t.notOk(tableExists(table), 'close removes the table');
    });

    t.test(`${runner}: release after the entries timed out`, async (t) => {
      const { ports, dp } = make({ entryTimeoutSec: 1 });
      await dp.start();
      t.teardown(() => dp.close());
      const a = await dp.open(passive4);
      const deadline = Date.now() + 5000;
      while (elements(table, 'set', 'admit4').length > 0 && Date.now() < deadline) await sleep(100);
      t.same(elements(table, 'set', 'admit4'), [], 'the kernel removed the admission');
      t.same(elements(table, 'map', 'snat4'), [], 'and the SNAT entry');
      await dp.release(a.id, false);
      t.equal(ports.used, 0);
      if (withLog) t.same(logRules(table), [], 'the log rule (no timeout) went with release');
    });

    t.test(`${runner}: paths sharing a SNAT entry`, async (t) => {
      const { ports, dp } = make();
      await dp.start();
      t.teardown(() => dp.close());
      const a = await dp.open(passive4);
      const b = await dp.open(passive4);
      t.not(a.port, b.port);
      const snat = ['192.0.2.2 . 198.51.100.2 . 40000 : 198.51.100.1'];
      t.same(elements(table, 'map', 'snat4'), snat);
      await t.rejects(dp.open({ ...passive4, source: '198.51.100.9' }), { code: 'BACKEND_FAILED' }, 'a different source for the same tuple');
      t.equal(ports.used, 2, 'the refused open gave its port back');
      await dp.release(a.id, false);
      t.same(elements(table, 'map', 'snat4'), snat, 'kept while the other path lives');
      await dp.release(b.id, false);
      t.same(elements(table, 'map', 'snat4'), []);
    });

    t.test(`${runner}: releases of one turn together, and an open in that turn after them`, async (t) => {
      const { ports, dp } = make();
      await dp.start();
      t.teardown(() => dp.close());
      const a = await dp.open(passive4);
      const b = await dp.open(active6);
      // a is the last user of its SNAT entry, which c, opened in the same turn, needs.
      const [, , c] = await Promise.all([dp.release(a.id, false), dp.release(b.id, true), dp.open(passive4)]);
      t.same(elements(table, 'set', 'admit4'), [`192.0.2.2 . 192.0.2.1 . ${c.port}`], "only c's admission");
      t.same(elements(table, 'map', 'snat4'), ['192.0.2.2 . 198.51.100.2 . 40000 : 198.51.100.1'], "c's SNAT entry");
      for (const m of ['dnat6', 'snat6', 'snatport6']) t.same(elements(table, 'map', m), [], `${m} empty`);
      if (withLog) t.same(logRules(table), [`ip saddr 192.0.2.2 ip daddr 192.0.2.1 tcp dport ${c.port} log prefix "ftp-proxy #7 "`]);
      await dp.release(c.id, false);
      t.same(elements(table, 'map', 'snat4'), []);
      t.equal(ports.used, 0);
    });

    t.test(`${runner}: start replaces a crashed run's table`, async (t) => {
      nft('add', 'table', 'inet', table);
      nft('add', 'chain', 'inet', table, 'leftover');
      nft('add', 'set', 'inet', table, 'admit4', '{ type ipv4_addr; }');
      const { dp } = make();
      await dp.start();
      t.teardown(() => dp.close());
      const listing = nft('list', 'table', 'inet', table);
      t.notMatch(listing, 'leftover');
      t.match(listing, 'type ipv4_addr . ipv4_addr . inet_service');
      const a = await dp.open(passive4);
      t.equal(elements(table, 'set', 'admit4').length, 1);
      await dp.release(a.id, false);
    });

    t.test(`${runner}: a failed batch leaves no trace`, async (t) => {
      const { ports, dp } = make();
      await dp.start();
      t.teardown(() => dp.close());
      const r = createRunner(runner);
      t.teardown(() => r.close());
      const good = add({ element: { family: 'inet', table, name: 'admit4', elem: [elem(concat('192.0.2.2', '192.0.2.1', 50000), 30)] } });
      const bad = add({ element: { family: 'inet', table, name: 'no_such_set', elem: [concat('192.0.2.2', '192.0.2.1', 50000)] } });
      await t.rejects(r.run(batch(good, bad)), { code: 'BACKEND_FAILED' });
      t.same(elements(table, 'set', 'admit4'), [], 'the good half was not applied');

      // The admin flushed our table behind our back: open fails cleanly.
      nft('delete', 'table', 'inet', table);
      await t.rejects(dp.open(passive4), { code: 'BACKEND_FAILED', cause: { code: 'BACKEND_FAILED' } });
      t.equal(ports.used, 0, 'the port is given back');
    });

    t.test(`${runner}: close without (or after a failed) start`, async (t) => {
      const { dp } = make();
      await dp.close();
      t.notOk(tableExists(table));
    });
  }

  /** `nft -j list table`, without what differs between two tables holding the same elements. */
  const listing = (table: string): unknown => {
    const strip = (v: unknown): unknown => {
      if (Array.isArray(v)) return v.map(strip);
      if (typeof v !== 'object' || v === null) return v === table ? 'T' : v;
      return Object.fromEntries(
        Object.entries(v)
          .filter(([k]) => k !== 'expires' && k !== 'handle' && k !== 'metainfo')
          .map(([k, x]) => [k, strip(x)]),
      );
    };
    return strip(JSON.parse(nft('-j', 'list', 'table', 'inet', table)));
  };

  t.test('netlink leaves exactly what libnftables leaves', async (t) => {
    const lib = LibnftablesRunner.load();
    const nl = NetlinkRunner.open();
    t.teardown(async () => {
      await nl.close();
      for (const table of ['fp_same_nl', 'fp_same_lib']) nft('delete', 'table', 'inet', table);
      await lib.close();
    });
    const paths: PathSpec[] = [
      { ...passive4, port: 50000 },
      { ...passive4, port: 50001, target: { address: '198.51.100.2', port: 40001 }, sourcePort: 20 },
      { ...active6, sourcePort: 20, port: 50002 },
      { ...active6, sourcePort: 20, port: 50003, peer: '2001:db8:2::ffff:0:2' },
    ];
    const both = async (make: (table: string) => Batch, netlinkBatch = make) => {
      await nl.run(netlinkBatch('fp_same_nl'));
      await lib.run(make('fp_same_lib'));
    };
    for (const table of ['fp_same_nl', 'fp_same_lib']) await lib.run(startBatch({ table, logRules: false }));
    for (const p of paths) await both((table) => openBatch({ table, logRules: false, timeoutSec: 30 }, p));
    t.equal(elements('fp_same_nl', 'map', 'snatport6').length, 2);
    t.equal(elements('fp_same_nl', 'set', 'admit4').length, 2);
    t.same(listing('fp_same_nl'), listing('fp_same_lib'), 'after open');
    // The same path opened again refreshes the SNAT entries (add, delete, add) on both.
    await both((table) => openBatch({ table, logRules: false, timeoutSec: 60 }, { ...paths[1]!, port: 50009 }));
    t.same(listing('fp_same_nl'), listing('fp_same_lib'), 'after a refresh');
    const release = (p: PathSpec, destroyToo: boolean) =>
      both(
        (table) => releaseBatch({ table, logRules: false }, p, { snat: true }),
        (table) => releaseBatch({ table, logRules: false }, p, { snat: true, destroy: destroyToo }),
      );
    await release(paths[0]!, false);
    await release(paths[2]!, true);
    t.same(listing('fp_same_nl'), listing('fp_same_lib'), 'after releases (add + delete, and destroy)');
    for (const p of [paths[1]!, { ...paths[1]!, port: 50009 }, paths[3]!]) await release(p, true);
    await release(paths[0]!, true);
    t.same(listing('fp_same_nl'), listing('fp_same_lib'), 'after releasing all, and one twice');
    for (const set of ['admit4', 'admit6']) t.same(elements('fp_same_nl', 'set', set), []);
    for (const map of ['dnat4', 'snat4', 'snatport4', 'dnat6', 'snatport6']) t.same(elements('fp_same_nl', 'map', map), []);
  });

  /** Our table through libnftables, a netlink runner beside it, and an element builder. */
  const netlinkOnTable = async (t: Test, table: string) => {
    const lib = LibnftablesRunner.load();
    const nl = NetlinkRunner.open();
    t.teardown(async () => {
      await nl.close();
      await lib.run(closeBatch(table));
      await lib.close();
    });
    await lib.run(startBatch({ table, logRules: false }));
    const el = (name: string, item: Element['elem'][number]) => ({ element: { family: 'inet' as const, table, name, elem: [item] } });
    return { nl, el };
  };

  t.test('the kernel: delete of a missing element fails, destroy does not, whatever the value', async (t) => {
    const table = 'fp_destroy';
    const { nl, el } = await netlinkOnTable(t, table);
    const k = concat('192.0.2.2', '192.0.2.1', 50000);
    await t.rejects(nl.run(batch(del(el('admit4', k)))), { code: 'BACKEND_FAILED', message: /delete element inet fp_destroy admit4: .*\(ENOENT\)/ });
    await nl.run(batch(destroy(el('admit4', k))));
    t.pass('destroy of a missing element');
    await nl.run(batch(add(el('dnat4', [k, '198.51.100.2']))));
    await nl.run(batch(add(el('dnat4', [k, '198.51.100.2']))));
    t.pass('adding the same element again');
    await t.rejects(nl.run(batch(add(el('dnat4', [k, '198.51.100.9'])), del(el('dnat4', k)))), {
      message: /add element inet fp_destroy dnat4: .*\((EEXIST|EBUSY)\)/, // EBUSY on older kernels
    }, 'add + delete refuses an element with another value');
    t.same(elements(table, 'map', 'dnat4'), ['192.0.2.2 . 192.0.2.1 . 50000 : 198.51.100.2'], 'and the batch did nothing');
    await nl.run(batch(destroy(el('dnat4', [k, '198.51.100.9']))));
    t.same(elements(table, 'map', 'dnat4'), [], 'destroy removes it whatever its value');
  });

  t.test('netlink: a batch whose answers overflow the socket fails, and the next batch goes through', async (t) => {
    const table = 'fp_enobufs';
    const { nl, el } = await netlinkOnTable(t, table);
    // A failed message is answered whether it asked for an ack or not: 2000 deletes of missing
    // elements are 2000 errors, more than the socket's default receive buffer holds.
    const many = Array.from({ length: 2000 }, (_, i) => del(el('admit4', concat('192.0.2.2', '192.0.2.1', 1024 + i))));
    await t.rejects(nl.run(batch(...many)), { code: 'BACKEND_FAILED', message: /ENOBUFS/ }, 'the overflow is reported');
    const k = concat('192.0.2.2', '192.0.2.1', 50000);
    await nl.run(batch(add(el('dnat4', [k, '198.51.100.2']))));
    t.same(elements(table, 'map', 'dnat4'), ['192.0.2.2 . 192.0.2.1 . 50000 : 198.51.100.2'], 'the next batch is applied and acked');
  });

  t.test('netlink: a failed command that asked for no ack fails the batch, which does nothing', async (t) => {
    const table = 'fp_unasked';
    const { nl, el } = await netlinkOnTable(t, table);
    const k = concat('192.0.2.2', '192.0.2.1', 50000);
    // Only the last command asks for an ack; the first one fails.
    await t.rejects(nl.run(batch(del(el('admit4', concat('192.0.2.2', '192.0.2.1', 1))), add(el('dnat4', [k, '198.51.100.2'])))), {
      code: 'BACKEND_FAILED',
      message: /delete element inet fp_unasked admit4: .*ENOENT/,
    });
    t.same(elements(table, 'map', 'dnat4'), [], 'the batch did nothing');
    await nl.run(batch(add(el('dnat4', [k, '198.51.100.2'])), add(el('admit4', concat('192.0.2.2', '192.0.2.1', 1)))));
    t.same(elements(table, 'map', 'dnat4'), ['192.0.2.2 . 192.0.2.1 . 50000 : 198.51.100.2'], 'a whole batch is applied on one ack');
    t.same(elements(table, 'set', 'admit4').length, 1);
  });

  t.test('auto: netlink for elements unless log rules; required netlink fails start', async (t) => {
    const ports = new PortAllocator(50000, 50001);
    for (const [logRules, name] of [[false, 'netlink'], [true, 'libnftables']] as const) {
      const dp = new NftablesDataPlane({ table: 'fp_auto', ports, logger, logRules });
      await dp.start();
      t.equal(dp.runnerName, name, `logRules ${logRules}`);
      await dp.release((await dp.open(passive4)).id, false);
      t.same(elements('fp_auto', 'set', 'admit4'), []);
      await dp.close();
    }
    const refused = () => {
      throw new DataPlaneError('NFT_UNAVAILABLE', 'no netlink here');
    };
    const auto = new NftablesDataPlane({ table: 'fp_auto', ports, logger, openNetlink: refused });
    await auto.start();
    t.equal(auto.runnerName, 'libnftables', 'falls back');
    await auto.close();
    const required = new NftablesDataPlane({ table: 'fp_auto', ports, logger, runner: 'netlink', openNetlink: refused });
    await t.rejects(required.start(), { code: 'NFT_UNAVAILABLE', message: /no netlink here/ });
    await required.close();
    t.notOk(tableExists('fp_auto'));
  });

  t.test('rendered text installs the same table as the JSON batch', async (t) => {
    for (const opts of [{ logRules: false }, { logRules: true, mark: 0xff00 }]) {
      const dp = new NftablesDataPlane({ table: 'fp_json', ports: new PortAllocator(50000, 50001), logger, ...opts });
      await dp.start();
      const dir = await mkdtemp(join(tmpdir(), 'fp-render-'));
      const file = join(dir, 'ruleset.nft');
      await writeFile(file, renderRuleset({ table: 'fp_text', ...opts }));
      nft('-f', file);
      await rm(dir, { recursive: true });
      const fromText = nft('list', 'table', 'inet', 'fp_text').replace('fp_text', 'fp_json');
      t.equal(fromText, nft('list', 'table', 'inet', 'fp_json'), JSON.stringify(opts));
      nft('delete', 'table', 'inet', 'fp_text');
      await dp.close();
    }
  });

  t.test('startup errors name the cause and the way out', async (t) => {
    t.throws(() => LibnftablesRunner.load('/nonexistent/libnftables.so.1'), { code: 'NFT_UNAVAILABLE', message: /--backend relay/ });
    const missing = new NftablesDataPlane({ ports: new PortAllocator(50000, 50001), logger, runner: new SpawnRunner('/nonexistent/nft') });
    await t.rejects(missing.start(), { code: 'NFT_UNAVAILABLE', message: /--backend relay/ });

    // nft as an unprivileged user: the kernel says EPERM.
    const dir = await mkdtemp(join(tmpdir(), 'fp-nobody-'));
    t.teardown(() => rm(dir, { recursive: true }));
    const wrapper = join(dir, 'nft-as-nobody');
    await writeFile(wrapper, '#!/bin/sh\nexec setpriv --reuid=65534 --regid=65534 --clear-groups nft "$@"\n');
    await chmod(wrapper, 0o755);
    const denied = new NftablesDataPlane({ ports: new PortAllocator(50000, 50001), logger, runner: new SpawnRunner(wrapper) });
    const e = await denied.start().then(
      () => undefined,
      (err: unknown) => err,
    );
    t.type(e, DataPlaneError);
    t.match(e, { code: 'NFT_NOT_PERMITTED', message: /--backend relay/ });
  });
}
