// The table heals on the real kernel, in a namespace of its own: the watcher tells another
// process's removals from our own batches; after `flush ruleset`, `delete table`, `flush table`
// or `flush set` the table and the waiting admissions are back within 2 s with one warning; a
// table an owner holds makes opens fail until it is gone; in a pid namespace of its own the
// proxy still tells its own batches; the self-test passes and leaves nothing.

import t from 'tap';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { PortAllocator } from '../../src/net/ports.js';
import { NftablesDataPlane } from '../../src/dataplane/nftables/dataplane.js';
import { LibnftablesRunner } from '../../src/dataplane/nftables/libnftables.js';
import { missingFeature } from '../../src/dataplane/nftables/selftest.js';
import { closeBatch, openBatch, releaseBatch, startBatch } from '../../src/dataplane/nftables/rules.js';
import { NetlinkRunner } from '../../src/dataplane/nftables/netlink.js';
import { loadLibc } from '../../src/net/libc.js';
import { drainNetlink, ignoreSender, openNetlink } from '../../src/net/netlink-socket.js';
import { ourThread, TableWatcher, type Removal } from '../../src/dataplane/nftables/watch.js';
import { isRoot } from '../lib/lab.js';
import { addNetns, delNetns, elements, insideNetns, nft, runInside, runPrefix } from './lib/netns.js';
import { passive4 } from './lib/requests.js';
import { recording } from './lib/records.js';

const inside = insideNetns<{ ns: string }>();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** The built data plane, run in a pid namespace of its own (needs dist/: `npx tsc`). */
const NESTED = fileURLToPath(new URL('./lib/nested-plane.mjs', import.meta.url));

if (!inside) {
  t.test('the nftables table heals, in a network namespace', { skip: isRoot ? false : 'needs root (netns, nftables)' }, async (t) => {
    const ns = `${runPrefix()}-gw`;
    addNetns(ns);
    t.teardown(() => delNetns(ns));
    await runInside(t, ns, { ns }, `inside ${ns}`);
  });
} else {
  const TABLE = 'fp_heal';
  const whole = (): boolean => {
    try {
      const text = nft('list', 'table', 'inet', TABLE);
      return ['chain prerouting', 'chain postrouting', 'chain count', 'map snatport6'].every((w) => text.includes(w)) && text.includes('dnat ip to');
    } catch {
      return false;
    }
  };
  const admitted = (): string[] => {
    try {
      return elements(TABLE, 'set', 'admit4');
    } catch {
      return [];
    }
  };

  t.test('the watcher: another process’s removals, by transaction; our own batches are not reported', async (t) => {
    const seen: Removal[] = [];
    let overflow = 0;
    const w = TableWatcher.open('fp_watch', ourThread, (e) => (e.kind === 'removed' ? seen.push(...e.removals) : overflow++));
    t.teardown(() => w.close());
    const lib = LibnftablesRunner.load();
    t.teardown(() => lib.close());
    const o = { table: 'fp_watch', logRules: false };
    await lib.run(startBatch(o));
    await lib.run(closeBatch('fp_watch'));
    await sleep(250);
    t.same(seen, [], 'our own replace and delete are ours');
    await lib.run(startBatch(o));
    nft('flush', 'table', 'inet', 'fp_watch');
    nft('flush', 'ruleset');
    nft('add', 'table', 'inet', 'other');
    nft('delete', 'table', 'inet', 'other');
    await sleep(250);
    t.equal(seen.length, 2, 'two transactions touched our table');
    t.match(seen[0], { comm: 'nft', what: ['rule'] });
    t.same([...seen[1]!.what].sort(), ['chain', 'set', 'table']);
    t.notOk(ourThread(seen[0]!.pid));
    t.equal(overflow, 0);
  });

  t.test('the kernel drops the path runner’s own notifications before the watcher would read them', async (t) => {
    const libc = loadLibc()!;
    // NETLINK_NETFILTER (12), subscribed to NFNLGRP_NFTABLES (7).
    const groups = 1 << (7 - 1);
    const filtered = openNetlink(libc, 12, 1 << 20, groups);
    const plain = openNetlink(libc, 12, 1 << 20, groups);
    t.teardown(() => (libc.close(filtered), libc.close(plain)));
    const lib = LibnftablesRunner.load();
    t.teardown(() => lib.close());
    const nl = NetlinkRunner.open();
    t.teardown(() => nl.close());
    t.ok(ignoreSender(libc, filtered, nl.portid), 'the filter is attached');
    const o = { table: 'fp_quiet', logRules: false, timeoutSec: 30 };
    await lib.run(startBatch(o));
    const spec = { ...passive4, port: 50001 };
    await nl.run(openBatch(o, spec));
    await nl.run(releaseBatch(o, spec, { snat: true }));
    nft('add', 'table', 'inet', 'fp_other');
    nft('delete', 'table', 'inet', 'fp_other');
    await lib.run(closeBatch('fp_quiet'));
    const senders = (fd: number): { runner: number; others: number } => {
      const n = { runner: 0, others: 0 };
      const rx = Buffer.alloc(256 * 1024);
      t.ok(drainNetlink(libc, fd, rx, (d) => (d.readUInt32LE(12) === nl.portid ? n.runner++ : n.others++)), 'nothing lost');
      return n;
    };
    const all = senders(plain);
    const kept = senders(filtered);
    t.ok(all.runner >= 2, `the path runner's adds and removals are announced (${all.runner} datagrams)`);
    t.equal(kept.runner, 0, 'none of them reaches the filtered socket');
    t.ok(all.others >= 4, `other transactions are announced (${all.others} datagrams)`);
    t.equal(kept.others, all.others, 'and every one of those still does');
  });

  const incidents: [string, string[][]][] = [
    ['nft flush ruleset', [['flush', 'ruleset']]],
    ['nft delete table', [['delete', 'table', 'inet', TABLE]]],
    ['nft flush table', [['flush', 'table', 'inet', TABLE]]],
    ['nft flush set (and chain)', [['flush', 'set', 'inet', TABLE, 'admit4'], ['flush', 'chain', 'inet', TABLE, 'postrouting']]],
  ];
  for (const [name, commands] of incidents) {
    t.test(`after ${name}: the table and the waiting admission are back within 2 s, one warning`, async (t) => {
      const { logger, records } = recording();
      const dp = new NftablesDataPlane({
        table: TABLE,
        ports: new PortAllocator(50000, 50099),
        logger,
        count: { group: 9, ports: { low: 50000, high: 50099 } },
      });
      await dp.start();
      t.teardown(() => dp.close());
      t.equal(dp.runnerName, 'netlink');
      const path = await dp.open(passive4);
      t.same(admitted(), [`192.0.2.2 . 192.0.2.1 . ${path.port}`]);
      const t0 = Date.now();
      for (const c of commands) nft(...c);
      t.notOk(whole() && admitted().length === 1, 'damaged');
      while (!(whole() && admitted().length === 1) && Date.now() - t0 < 3000) await sleep(20);
      const ms = Date.now() - t0;
      t.ok(whole(), 'the table is whole again');
      t.same(admitted(), [`192.0.2.2 . 192.0.2.1 . ${path.port}`], 'with the waiting admission');
      t.ok(ms < 2000, `within 2 s (${ms} ms)`);
      await sleep(300);
      t.equal(records.filter((r) => r.level === 40).length, 1, 'one warning');
      // Found by the notification (or, if it came while a batch of ours ran, by the check it made).
      t.match(records.find((r) => r.level === 40), { msg: /another process removed part of the nftables table|the nftables table is damaged/ });
      t.equal(records.filter((r) => r.msg === 'nftables table recreated').length, 1);
      await dp.release(path.id, false);
      t.same(admitted(), [], 'released after healing');
      t.ok(await dp.open(passive4));
    });
  }

  t.test('our own batches through the nft command are not taken for damage', async (t) => {
    const { logger, records } = recording();
    const dp = new NftablesDataPlane({ table: TABLE, ports: new PortAllocator(50000, 50099), logger, runner: 'spawn', logRules: true, watch: true });
    await dp.start();
    t.teardown(() => dp.close());
    for (let i = 0; i < 5; i++) await dp.release((await dp.open(passive4)).id, false);
    await sleep(600);
    t.same(records.filter((r) => r.level >= 40), [], 'no warning');
    t.notOk(records.some((r) => r.msg === 'nftables table recreated'));
  });

  t.test('a table held by another owner: opens refused, one error, back when the owner goes', async (t) => {
    const { logger, records } = recording();
    const dp = new NftablesDataPlane({ table: TABLE, ports: new PortAllocator(50000, 50099), logger, count: { group: 9, ports: { low: 50000, high: 50099 } } });
    await dp.start();
    t.teardown(() => dp.close());
    // An interactive nft keeps its socket open: the table it makes with `flags owner` is its own
    // while it runs, and nobody else can delete it.
    const holder = spawn('nft', ['-i'], { stdio: ['pipe', 'ignore', 'ignore'] });
    t.teardown(() => holder.kill());
    holder.stdin.write(`delete table inet ${TABLE}\nadd table inet ${TABLE} { flags owner; }\n`);
    await sleep(1000);
    await t.rejects(dp.open(passive4), { code: 'BACKEND_FAILED', message: /gone and not recreated yet/ });
    t.equal(records.filter((r) => r.level === 50).length, 1, 'one error');
    t.match(records.find((r) => r.level === 50), { msg: /cannot recreate the nftables table/, err: /Operation not permitted/ });
    const t0 = Date.now();
    holder.stdin.end();
    while (!whole() && Date.now() - t0 < 5000) await sleep(20);
    t.ok(whole(), `recreated after the owner left (${Date.now() - t0} ms)`);
    await sleep(100);
    const p = await dp.open(passive4);
    t.same(admitted(), [`192.0.2.2 . 192.0.2.1 . ${p.port}`]);
    t.equal(records.filter((r) => r.level === 40).length, 1, 'still the one warning');
  });

  t.test('in a pid namespace of its own: its own batches are not taken for damage, one rebuild', async (t) => {
    // There the kernel's pids (initial namespace) are not the process's own: the watcher tells
    // the netlink runner's batches by their port, the table runner's by when they ran.
    const child = spawn('unshare', ['--pid', '--fork', '--mount-proc', process.execPath, NESTED, 'fp_nested'], { stdio: ['pipe', 'pipe', 'inherit'] });
    t.teardown(() => child.kill());
    const logs: { msg: string; level?: number; readded?: number }[] = [];
    let ready: () => void = () => undefined;
    const isReady = new Promise<void>((r) => (ready = r));
    createInterface({ input: child.stdout! }).on('line', (l) => {
      const rec = JSON.parse(l) as { msg: string };
      logs.push(rec);
      if (rec.msg === 'ready') ready();
    });
    await isReady;
    await sleep(500);
    nft('flush', 'ruleset');
    await sleep(1500);
    child.stdin!.end();
    await once(child, 'exit');
    t.equal(logs.filter((l) => l.level === 40).length, 1, 'one warning');
    t.match(logs.filter((l) => l.msg === 'nftables table recreated'), [{ readded: 1 }], 'one rebuild, with the waiting path');
    t.equal(logs.filter((l) => (l.level ?? 0) >= 50).length, 0);
  });

  t.test('the self-test on this kernel: every feature is there, nothing is left', async (t) => {
    const lib = LibnftablesRunner.load();
    t.teardown(() => lib.close());
    const o = { table: 'fp_self', logRules: true, mark: 0x42, count: { group: 9, ports: { low: 50000, high: 50099 } } };
    t.equal(await missingFeature((b) => lib.run(b), o), null);
    t.notMatch(nft('list', 'tables'), /fp_self/);
  });
}
