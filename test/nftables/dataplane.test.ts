// The nftables data plane's release queue, against an in-memory model of the kernel's sets and
// maps (no nft, no root): releases of one turn share a transaction, open() goes after queued
// releases, a failed transaction fails every release in it, and close() leaves nothing queued.

import t, { type Test } from 'tap';
import { pino } from 'pino';
import { DataPlaneError } from '../../src/errors.js';
import { PortAllocator } from '../../src/net/ports.js';
import { MAX_RELEASE_COMMANDS, NftablesDataPlane } from '../../src/dataplane/nftables/dataplane.js';
import type { NftRunner } from '../../src/dataplane/nftables/runner.js';
import type { Batch, ConcatExpr, Element, Expr } from '../../src/dataplane/nftables/schema.js';
import { passive4 } from './lib/requests.js';

const isConcat = (e: unknown): e is ConcatExpr => typeof e === 'object' && e !== null && !Array.isArray(e) && 'concat' in e;

/** `a . b . c` from a concatenated key, with or without its timeout wrapper. */
function keyText(e: Expr): string {
  if (typeof e === 'object' && 'elem' in e) return keyText(e.elem.val);
  return isConcat(e) ? e.concat.map(String).join(' . ') : String(e);
}

/**
 * Element commands applied as the kernel applies them, one batch as one transaction: add of
 * an existing key succeeds with the same value and fails with another, delete of a missing
 * key fails, destroy never does. Other commands (the table, log rules) change nothing here.
 */
class FakeKernel implements NftRunner {
  readonly name = 'netlink' as const;
  /** set name -> key -> value ('' for a set element). */
  sets = new Map<string, Map<string, string>>();
  readonly batches: Batch[] = [];
  /** The next run() rejects, applying nothing. */
  failNext = false;
  closed = false;
  runsAfterClose = 0;

  run(b: Batch): Promise<unknown[]> {
    if (this.closed) this.runsAfterClose++;
    this.batches.push(b);
    if (this.failNext) {
      this.failNext = false;
      return Promise.reject(new DataPlaneError('BACKEND_FAILED', 'netlink: batch: no such file or directory (ENOENT)'));
    }
    const next = new Map([...this.sets].map(([name, m]) => [name, new Map(m)]));
    for (const c of b.nftables) {
      const [verb, obj] = Object.entries(c)[0] as ['add' | 'insert' | 'delete' | 'destroy', { element?: Element }];
      if (!obj.element) continue;
      const set = next.get(obj.element.name) ?? new Map<string, string>();
      next.set(obj.element.name, set);
      for (const item of obj.element.elem) {
        const [k, v] = Array.isArray(item) ? [keyText(item[0] as Expr), String(item[1])] : [keyText(item as Expr), ''];
        const had = set.get(k);
        if (verb === 'add') {
          if (had !== undefined && had !== v) return Promise.reject(new DataPlaneError('BACKEND_FAILED', `add ${k}: EEXIST`));
          set.set(k, v);
        } else if (verb === 'delete') {
          if (had === undefined) return Promise.reject(new DataPlaneError('BACKEND_FAILED', `delete ${k}: ENOENT`));
          set.delete(k);
        } else {
          set.delete(k);
        }
      }
    }
    this.sets = next;
    return Promise.resolve([]);
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  /** `key : value` lines of one set or map. */
  elements(name: string): string[] {
    return [...(this.sets.get(name) ?? [])].map(([k, v]) => (v === '' ? k : `${k} : ${v}`));
  }
}

/** The data ports a batch's admission deletes name, in order. */
const releasedPorts = (b: Batch): number[] =>
  b.nftables.flatMap((c) => {
    const e = 'delete' in c && 'element' in c.delete ? c.delete.element : undefined;
    const item = e?.name === 'admit4' ? e.elem[0] : undefined;
    return isConcat(item) ? [item.concat[2] as number] : [];
  });

const snatOf = (source: string) => [`192.0.2.2 . 198.51.100.2 . 40000 : ${source}`];

async function started(t: Test, high = 50099) {
  const kernel = new FakeKernel();
  const ports = new PortAllocator(50000, high);
  const dp = new NftablesDataPlane({ ports, runner: kernel, logger: pino({ level: 'silent' }), entryTimeoutSec: 1 });
  await dp.start();
  t.teardown(() => (kernel.closed ? undefined : dp.close()));
  return { kernel, ports, dp };
}

/** Resolves on a later turn of the event loop, after this turn's immediates. */
const nextTurn = () => new Promise((r) => setImmediate(r));

t.test('releases of one turn go to the kernel in one transaction', async (t) => {
  const { kernel, ports, dp } = await started(t);
  const a = await dp.open(passive4);
  const b = await dp.open({ ...passive4, target: { address: '198.51.100.2', port: 40001 } });
  const before = kernel.batches.length;
  const done = [dp.release(a.id, false), dp.release(b.id, true)];
  t.equal(dp.size, 0, 'out of the live map at once');
  t.equal(kernel.batches.length, before, 'nothing sent yet');
  t.equal(ports.used, 2, 'the ports stay held until the release is applied');
  await Promise.all(done);
  t.equal(kernel.batches.length, before + 1, 'one transaction');
  t.same(releasedPorts(kernel.batches[before]!), [a.port, b.port], 'holding both releases, in call order');
  t.equal(ports.used, 0);
  for (const name of ['admit4', 'dnat4', 'dnatport4', 'snat4']) t.same(kernel.elements(name), [], `${name} empty`);
  await dp.release(a.id, false);
  t.equal(kernel.batches.length, before + 1, 'a second release of the same id sends nothing');
});

t.test('an urgent release goes to the kernel before release() returns, with what was queued', async (t) => {
  const { kernel, dp } = await started(t);
  const a = await dp.open(passive4);
  const b = await dp.open({ ...passive4, target: { address: '198.51.100.2', port: 40001 } });
  const before = kernel.batches.length;
  const queued = dp.release(a.id, false);
  const urgent = dp.release(b.id, false, true);
  t.equal(kernel.batches.length, before + 1, 'sent within the call: a reply written next cannot be raced to the port');
  t.same(releasedPorts(kernel.batches[before]!), [a.port, b.port], 'the queued release went with it, in call order');
  await Promise.all([queued, urgent]);
  await nextTurn();
  t.equal(kernel.batches.length, before + 1, 'nothing left to send later');
});

t.test('more releases than one transaction holds: whole paths per transaction', async (t) => {
  const { kernel, ports, dp } = await started(t);
  const paths = [];
  // Each its own SNAT key: 8 commands per release, so 20 do not fit in one transaction.
  for (let i = 0; i < 20; i++) paths.push(await dp.open({ ...passive4, target: { address: '198.51.100.2', port: 40000 + i } }));
  const before = kernel.batches.length;
  await Promise.all(paths.map((p) => dp.release(p.id, false)));
  const sent = kernel.batches.slice(before);
  t.ok(sent.length > 1, `${sent.length} transactions`);
  for (const b of sent) t.ok(b.nftables.length <= MAX_RELEASE_COMMANDS, `${b.nftables.length} commands`);
  t.same(sent.flatMap(releasedPorts), paths.map((p) => p.port), 'every path once, in call order');
  t.equal(ports.used, 0);
  t.same(kernel.elements('snat4'), []);
});

t.test('an open in the turn of a release is applied after it: the SNAT entry the release deletes comes back', async (t) => {
  const { kernel, ports, dp } = await started(t);
  const a = await dp.open(passive4);
  t.same(kernel.elements('snat4'), snatOf('198.51.100.1'));
  // a was the last user of its SNAT key: its release deletes the entry that b, opened in the
  // same turn with the same key, adds.
  const released = dp.release(a.id, false);
  const opened = dp.open(passive4);
  const [, b] = await Promise.all([released, opened]);
  t.same(kernel.elements('snat4'), snatOf('198.51.100.1'), 'the entry is there for b');
  t.same(kernel.elements('admit4'), [`192.0.2.2 . 192.0.2.1 . ${b.port}`], "only b's admission");
  t.equal(ports.used, 1);

  // The same with another source: b's release frees the key, so c may take it with its own
  // (while b lived, an open with another source was refused: the runner tests show that).
  const [, c] = await Promise.all([dp.release(b.id, false), dp.open({ ...passive4, source: '198.51.100.9' })]);
  t.same(kernel.elements('snat4'), snatOf('198.51.100.9'), "c's source, not removed by b's release");
  await dp.release(c.id, false);
  t.same(kernel.elements('snat4'), [], "and c's own release removes it");
  t.equal(ports.used, 0);
});

t.test('a failed transaction fails every release in it, and quarantines each port', async (t) => {
  // Three ports: two quarantined leave one.
  const { kernel, ports, dp } = await started(t, 50002);
  const a = await dp.open(passive4);
  const b = await dp.open({ ...passive4, target: { address: '198.51.100.2', port: 40001 } });
  const before = kernel.batches.length;
  kernel.failNext = true;
  const results = await Promise.allSettled([dp.release(a.id, false), dp.release(b.id, false)]);
  t.equal(kernel.batches.length, before + 1, 'one transaction');
  for (const [i, r] of results.entries()) {
    t.equal(r.status, 'rejected');
    if (r.status === 'rejected') {
      t.type(r.reason, DataPlaneError);
      t.match(r.reason, { code: 'BACKEND_FAILED', message: new RegExp(`cannot remove data path ${[a, b][i]!.id}: .*ENOENT`) });
    }
  }
  t.equal(dp.size, 0, 'both are gone from the live map');
  t.equal(ports.used, 2, 'both ports are kept out of use');
  const c = await dp.open(passive4);
  t.notOk([a.port, b.port].includes(c.port), 'a new path gets the free port');
  await t.rejects(dp.open(passive4), { code: 'PORTS_EXHAUSTED' });
});

t.test('close with releases queued: applied first, nothing queued or sent after', async (t) => {
  const { kernel, ports, dp } = await started(t);
  const a = await dp.open(passive4);
  const b = await dp.open({ ...passive4, target: { address: '198.51.100.2', port: 40001 } });
  const before = kernel.batches.length;
  let settled = false;
  const released = dp.release(a.id, false).then(() => (settled = true));
  const closing = dp.close();
  // b goes with the table: a release while closing queues nothing.
  await dp.release(b.id, false);
  await closing;
  t.ok(settled, 'the queued release settled before close() resolved');
  await released;
  const sent = kernel.batches.slice(before);
  t.same(releasedPorts(sent[0]!), [a.port], 'the release went out first');
  t.match(sent[1], { nftables: [{ add: { table: {} } }, { delete: { table: {} } }] }, 'then the table was deleted');
  t.equal(sent.length, 2);
  t.equal(ports.used, 0, 'every port given back');
  await dp.release(a.id, false);
  await nextTurn();
  t.equal(kernel.batches.length, before + 2, 'nothing sent after close');
  t.equal(kernel.runsAfterClose, 0, 'the closed runner was not used');
});

t.test('close with a failing release queued: it is rejected, close goes on', async (t) => {
  const { kernel, dp } = await started(t);
  const a = await dp.open(passive4);
  kernel.failNext = true;
  const released = dp.release(a.id, false);
  await dp.close();
  await t.rejects(released, { code: 'BACKEND_FAILED' });
  t.ok(kernel.closed);
  await nextTurn();
  t.equal(kernel.runsAfterClose, 0);
});
