// The table watcher's digest of nftables notifications (pure, from crafted datagrams), and the
// data plane's healing driven through a fake watcher and an in-memory runner: one warning per
// incident, waiting paths re-added with the time they have left, used ones not, lost ones told,
// a rebuild that fails refuses opens and is retried, opens and releases wait for a rebuild, a
// release that failed because the table had just gone counts as done.

import t, { type Test } from 'tap';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DataPlaneError } from '../../src/errors.js';
import { PortAllocator } from '../../src/net/ports.js';
import { EventDigest, type WatchEvent } from '../../src/dataplane/nftables/watch.js';
import { NftablesDataPlane, tcpOriginals } from '../../src/dataplane/nftables/dataplane.js';
import { baseObjects } from '../../src/dataplane/nftables/rules.js';
import type { NftRunner, RunOptions } from '../../src/dataplane/nftables/runner.js';
import type { Batch } from '../../src/dataplane/nftables/schema.js';
import { passive4 } from './lib/requests.js';
import { recording } from './lib/records.js';

const NFT = 10 << 8;
const [DELTABLE, DELCHAIN, DELRULE, NEWSETELEM, DELSETELEM, NEWGEN] = [2, 5, 8, 12, 14, 15];

function attr(type: number, data: Buffer): Buffer {
  const a = Buffer.alloc((4 + data.length + 3) & ~3);
  a.writeUInt16LE(4 + data.length, 0);
  a.writeUInt16LE(type, 2);
  data.copy(a, 4);
  return a;
}
const str = (s: string): Buffer => Buffer.from(`${s}\0`, 'latin1');
const be32 = (v: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v);
  return b;
};

/** One nftables notification: nlmsghdr, nfgenmsg (family), attributes. */
function msg(type: number, family: number, ...attrs: Buffer[]): Buffer {
  const body = Buffer.concat(attrs);
  const h = Buffer.alloc(20);
  h.writeUInt32LE(20 + body.length, 0);
  h.writeUInt16LE(NFT | type, 4);
  h[16] = family;
  return Buffer.concat([h, body]);
}
const INET = 1;
const IP = 2;
const removal = (type: number, table: string, family = INET): Buffer => msg(type, family, attr(1, str(table)));
const gen = (pid: number, comm: string): Buffer => msg(NEWGEN, 0, attr(1, be32(7)), attr(2, be32(pid)), attr(3, str(comm)));

t.test('digest: removals from our table by another process, one report per transaction', async (t) => {
  const d = new EventDigest('ftp_proxy', (pid) => pid === 100);
  t.same(d.feed(Buffer.concat([removal(DELRULE, 'ftp_proxy'), removal(DELCHAIN, 'ftp_proxy'), removal(DELTABLE, 'ftp_proxy')])), [], 'nothing before NEWGEN');
  t.same(d.feed(gen(4242, 'nft')), [{ pid: 4242, comm: 'nft', what: ['rule', 'chain', 'table'] }]);
  t.same(d.feed(Buffer.concat([removal(DELSETELEM, 'ftp_proxy'), gen(100, 'node')])), [], 'our own release is ignored');
  t.same(d.feed(Buffer.concat([removal(DELTABLE, 'firewalld'), removal(DELTABLE, 'ftp_proxy', IP), gen(7, 'firewalld')])), [], 'other tables and families are not ours');
  t.same(d.feed(Buffer.concat([msg(NEWSETELEM, INET, attr(1, str('ftp_proxy'))), gen(7, 'nft')])), [], 'additions are no damage');
  const two = d.feed(Buffer.concat([removal(DELSETELEM, 'ftp_proxy'), gen(8, 'nft'), removal(DELTABLE, 'ftp_proxy'), gen(9, 'nft')]));
  t.same(two.map((r) => r.pid), [8, 9], 'two transactions in one datagram: two reports');
  t.same(d.feed(Buffer.from([1, 2, 3])), [], 'a truncated datagram is ignored');
});

t.test('conntrack: the original direction of each TCP connection', async (t) => {
  const text = [
    'ipv4     2 tcp      6 117 TIME_WAIT src=192.0.2.2 dst=192.0.2.1 sport=40000 dport=50000 src=198.51.100.2 dst=198.51.100.1 sport=40001 dport=40000 [ASSURED] mark=0 zone=0 use=2',
    'ipv6     10 tcp      6 300 ESTABLISHED src=2001:0db8:0001:0000:0000:0000:0000:0002 dst=2001:0db8:0001:0000:0000:0000:0000:0001 sport=1 dport=50001 src=x dst=y sport=2 dport=1 mark=0 use=1',
    'ipv4     2 udp      17 29 src=192.0.2.2 dst=192.0.2.1 sport=5 dport=50002 src=192.0.2.1 dst=192.0.2.2 sport=50002 dport=5 mark=0 use=1',
  ].join('\n');
  t.same([...tcpOriginals(text)], ['192.0.2.2 192.0.2.1 50000', '2001:db8:1::2 2001:db8:1::1 50001']);
});

/**
 * The kernel as far as healing needs it: whether the table exists, and its elements by set. A
 * batch applies all or nothing; `list` prints the table's objects (missingParts reads them).
 */
class TableKernel implements NftRunner {
  readonly name = 'libnftables' as const;
  present = false;
  /** set -> key text (with timeout) */
  elements = new Map<string, string[]>();
  /** Every batch starting with `add table` fails while this is set. */
  refuseTable: Error | null = null;
  /** Batches starting with `add table` wait for this. */
  gate: Promise<void> | null = null;
  batches: Batch[] = [];

  async run(b: Batch, o: RunOptions = {}): Promise<unknown[]> {
    const first = b.nftables[0]!;
    if (this.gate && 'add' in first && 'table' in first.add) await this.gate;
    this.batches.push(b);
    if ('list' in first) {
      if (!this.present) throw new DataPlaneError('BACKEND_FAILED', 'nft: No such file or directory');
      return o.output ? baseObjects({ table: 'ftp_proxy', logRules: false }).map((c) => Object.values(c)[0]) : [];
    }
    const makesTable = 'add' in first && 'table' in first.add;
    if (makesTable && this.refuseTable) throw this.refuseTable;
    if (!makesTable && !this.present) throw new DataPlaneError('BACKEND_FAILED', 'netlink: ENOENT');
    if (makesTable) {
      this.present = b.nftables.filter((c) => 'add' in c && 'table' in c.add).length > b.nftables.filter((c) => 'delete' in c && 'table' in c.delete).length;
      this.elements = new Map();
    }
    for (const c of b.nftables) {
      const [verb, obj] = Object.entries(c)[0] as [string, { element?: { name: string; elem: unknown[] } }];
      if (!obj.element) continue;
      const list = this.elements.get(obj.element.name) ?? [];
      const text = JSON.stringify(obj.element.elem[0]);
      if (verb === 'add') list.push(text);
      this.elements.set(obj.element.name, list);
    }
    return [];
  }

  async close(): Promise<void> {}
}

const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function healRig(t: Test) {
  const kernel = new TableKernel();
  const { logger, records } = recording();
  let report: (e: WatchEvent) => void = () => undefined;
  const dir = t.testdir({ conntrack: '' });
  const dp = new NftablesDataPlane({
    ports: new PortAllocator(50000, 50009),
    runner: kernel,
    logger,
    entryTimeoutSec: 30,
    conntrackPath: join(dir, 'conntrack'),
    watch: (_table, _ours, r) => ((report = r), { close: () => undefined }),
  });
  await dp.start();
  t.teardown(() => dp.close());
  // Another process's removal, committed after every batch of ours so far.
  const removed = (): void => report({ kind: 'removed', removals: [{ pid: 4242, comm: 'nft', what: ['table'] }], since: Date.now() + 1 });
  const conntrack = (text: string | null) => (text === null ? rm(join(dir, 'conntrack')) : writeFile(join(dir, 'conntrack'), text));
  return { kernel, dp, records, removed, conntrack, report: (e: WatchEvent) => report(e) };
}

t.test('heal: a burst of removals is one incident, one warning; waiting paths come back', async (t) => {
  const { kernel, dp, records, removed, conntrack } = await healRig(t);
  const lostIds: string[] = [];
  const a = await dp.open({ ...passive4, lost: (id) => lostIds.push(id) });
  const b = await dp.open({ ...passive4, target: { address: '198.51.100.2', port: 40001 } });
  // The second path's connection came (conntrack has it): its admission is not given again.
  await conntrack(
    `ipv4 2 tcp 6 117 ESTABLISHED src=192.0.2.2 dst=192.0.2.1 sport=40000 dport=${b.port} src=198.51.100.2 dst=198.51.100.1 sport=40001 dport=40000 mark=0 use=1\n`,
  );
  kernel.present = false;
  kernel.elements.clear();
  const t0 = Date.now();
  for (let i = 0; i < 5; i++) (removed(), await wait(40));
  for (let i = 0; i < 50 && !kernel.present; i++) await wait(20);
  t.ok(kernel.present, 'the table is back');
  t.ok(Date.now() - t0 < 1500, `within the bound (${Date.now() - t0} ms)`);
  t.equal(records.filter((r) => r.level === 40).length, 1, 'one warning');
  t.match(records.find((r) => r.msg === 'nftables table recreated'), { readded: 1, lost: 0 });
  t.same(kernel.elements.get('admit4')?.map((e) => JSON.parse(e).elem.val.concat[2]), [a.port], 'only the waiting admission is back');
  t.ok(JSON.parse(kernel.elements.get('admit4')![0]!).elem.timeout <= 30, 'with the time it had left');
  t.same(lostIds, []);
  const c = await dp.open({ ...passive4, target: { address: '198.51.100.2', port: 40002 } });
  t.ok(c.port > 0, 'opens work after');
});

t.test('heal: without conntrack the waiting paths are lost, their sessions told, ports free', async (t) => {
  const { kernel, dp, records, removed, conntrack } = await healRig(t);
  const lostIds: string[] = [];
  const a = await dp.open({ ...passive4, lost: (id) => lostIds.push(id) });
  // No conntrack file: which admissions were used cannot be known.
  await conntrack(null);
  kernel.present = false;
  removed();
  for (let i = 0; i < 50 && lostIds.length === 0; i++) await wait(20);
  t.same(lostIds, [a.id]);
  t.equal(dp.size, 0);
  t.match(records.find((r) => r.msg === 'nftables table recreated'), { readded: 0, lost: 1 });
});

t.test('heal: a table that cannot be made refuses opens, logs one error, and is retried', async (t) => {
  const { kernel, dp, records, removed } = await healRig(t);
  kernel.present = false;
  kernel.refuseTable = new DataPlaneError('NFT_NOT_PERMITTED', 'nftables refused: Operation not permitted');
  removed();
  await wait(400);
  await t.rejects(dp.open(passive4), { code: 'BACKEND_FAILED', message: /gone and not recreated yet/ });
  await wait(900);
  t.equal(records.filter((r) => r.level === 50).length, 1, 'one error while it keeps failing');
  t.equal(records.filter((r) => r.level === 40).length, 1, 'and the one warning');
  const tries = kernel.batches.filter((b) => 'add' in b.nftables[0]! && 'table' in (b.nftables[0] as { add: object }).add).length;
  t.ok(tries >= 3, `retried (${tries} tries)`);
  kernel.refuseTable = null;
  for (let i = 0; i < 100 && !kernel.present; i++) await wait(20);
  t.ok(kernel.present, 'back once the kernel lets it');
  const p = await dp.open(passive4);
  t.ok(p.port > 0);
  t.match(records.at(-2), { msg: 'nftables table recreated' });
});

t.test('heal: lost notifications make a check; a whole table is left alone', async (t) => {
  const { kernel, records, report } = await healRig(t);
  const before = kernel.batches.length;
  report({ kind: 'overflow' });
  await wait(400);
  t.same(
    kernel.batches.slice(before).map((b) => Object.keys(b.nftables[0]!)[0]),
    ['list'],
    'listed once, nothing rebuilt',
  );
  t.equal(records.filter((r) => r.level >= 40).length, 0, 'no warning');
  kernel.present = false;
  report({ kind: 'overflow' });
  for (let i = 0; i < 50 && !kernel.present; i++) await wait(20);
  t.ok(kernel.present, 'a missing one is rebuilt');
  t.match(records.find((r) => r.level === 40), { msg: 'the nftables table is damaged: recreating it', missing: /table inet ftp_proxy/ });
});

t.test('heal: an open waits for the rebuild, a release is held until after it', async (t) => {
  const { kernel, dp, removed } = await healRig(t);
  const a = await dp.open(passive4);
  kernel.present = false;
  let letGo: () => void = () => undefined;
  kernel.gate = new Promise((r) => (letGo = r));
  removed();
  await wait(300);
  const before = kernel.batches.length;
  const released = dp.release(a.id, false);
  const opening = dp.open({ ...passive4, target: { address: '198.51.100.2', port: 40002 } });
  await wait(50);
  t.equal(kernel.batches.length, before, 'nothing sent while the table is being made');
  kernel.gate = null;
  letGo();
  const [, b] = await Promise.all([released, opening]);
  const sent = kernel.batches.slice(before).map((x) => JSON.stringify(x));
  t.equal(sent.length, 3);
  t.match(sent[0], /"add":\{"table"/, 'first the table, with the waiting path');
  t.match(sent[0], new RegExp(`"concat":\\["192.0.2.2","192.0.2.1",${a.port}\\]`));
  t.match(sent[1], new RegExp(`"delete":\\{"element".*${a.port}`), 'then its release');
  t.match(sent[2], new RegExp(`"add":\\{"element".*${b.port}`), 'then the new path');
});

t.test('heal: a release that failed because the table had just gone is done, not an error', async (t) => {
  const { kernel, dp, records } = await healRig(t);
  const a = await dp.open(passive4);
  // Removed, and no notification read yet: the release goes out and fails.
  kernel.present = false;
  await dp.release(a.id, false);
  t.ok(kernel.present, 'the failure made a check, and the check a rebuild');
  t.equal(records.filter((r) => r.level === 40).length, 1, 'one warning');
  t.equal(records.filter((r) => r.level >= 50).length, 0, 'no error');
  const b = await dp.open(passive4);
  t.equal(b.port > 0, true, 'ports are back in use');
});
