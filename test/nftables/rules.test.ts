// Pure tests of the nftables data plane: the JSON batches it builds, their nft text form, error
// classification, and the data plane's bookkeeping over a recording runner (no kernel).

import t from 'tap';
import { pino } from 'pino';
import { DataPlaneError } from '../../src/errors.js';
import { PortAllocator } from '../../src/net/ports.js';
import { describeNegotiations, NftablesDataPlane, renderRuleset, type NftRunner } from '../../src/dataplane/nftables/index.js';
import { commandText, EXAMPLE_PATHS } from '../../src/dataplane/nftables/render.js';
import {
  closeBatch,
  logPrefix,
  openBatch,
  PRIORITY,
  probeBatch,
  releaseBatch,
  startBatch,
  type PathSpec,
} from '../../src/dataplane/nftables/rules.js';
import { nftFailure, parseOutput, type RunnerName } from '../../src/dataplane/nftables/runner.js';
import type { Batch, Command } from '../../src/dataplane/nftables/schema.js';
import type { DataPathRequest } from '../../src/dataplane/types.js';

const T = 'ftp_proxy';
const base = { table: T, logRules: false };
const passive: PathSpec = EXAMPLE_PATHS.passive;
const key4 = (...k: (string | number)[]) => ({ concat: k });
const p4 = (field: string) => ({ payload: { protocol: 'ip', field } });
const tuple4 = { concat: [p4('saddr'), p4('daddr'), { payload: { protocol: 'tcp', field: 'dport' } }] };

t.test('start: the table is replaced in one batch', async (t) => {
  const b = startBatch(base).nftables;
  const table = { table: { family: 'inet', name: T } };
  t.same(b.slice(0, 3), [{ add: table }, { delete: table }, { add: table }]);
  const objs = b.slice(3).map((c) => Object.values(c)[0] as Record<string, { name?: string; chain?: string }>);
  t.same(
    objs.flatMap((o) => ('set' in o ? [o.set!.name] : 'map' in o ? [o.map!.name] : [])),
    ['admit4', 'dnat4', 'dnatport4', 'snat4', 'snatport4', 'admit6', 'dnat6', 'dnatport6', 'snat6', 'snatport6'],
  );
  t.same(
    b.filter((c) => 'add' in c && 'chain' in c.add).map((c) => (c as unknown as { add: { chain: unknown } }).add.chain),
    [
      { family: 'inet', table: T, name: 'prerouting', type: 'nat', hook: 'prerouting', prio: -110, policy: 'accept' },
      { family: 'inet', table: T, name: 'postrouting', type: 'nat', hook: 'postrouting', prio: 90, policy: 'accept' },
    ],
  );
  t.same(PRIORITY, { prerouting: -110, postrouting: 90, forward: -10 });
  t.same(
    b.find((c) => 'add' in c && 'set' in c.add),
    { add: { set: { family: 'inet', table: T, name: 'admit4', type: ['ipv4_addr', 'ipv4_addr', 'inet_service'], flags: ['timeout'] } } },
  );
  t.same(
    b.find((c) => 'add' in c && 'map' in c.add),
    {
      add: {
        map: { family: 'inet', table: T, name: 'dnat4', type: ['ipv4_addr', 'ipv4_addr', 'inet_service'], map: 'ipv4_addr', flags: ['timeout'] },
      },
    },
  );
  const rules = b.filter((c) => 'add' in c && 'rule' in c.add).map((c) => (c as unknown as { add: { rule: { chain: string; expr: unknown[] } } }).add.rule);
  t.same(rules.map((r) => r.chain), ['prerouting', 'prerouting', 'postrouting', 'postrouting', 'postrouting', 'postrouting']);
  t.same(rules[0]!.expr, [
    { match: { op: '==', left: { '&': [{ payload: { protocol: 'tcp', field: 'flags' } }, ['fin', 'syn', 'rst', 'ack']] }, right: 'syn' } },
    { match: { op: '==', left: tuple4, right: '@admit4' } },
    { set: { op: 'delete', elem: tuple4, set: '@admit4' } },
    { counter: null },
    { dnat: { family: 'ip', addr: { map: { key: tuple4, data: '@dnat4' } }, port: { map: { key: tuple4, data: '@dnatport4' } } } },
  ]);
  t.same(rules[2]!.expr, [
    { match: { op: 'in', left: { ct: { key: 'status' } }, right: 'dnat' } },
    { snat: { family: 'ip', addr: { map: { key: tuple4, data: '@snat4' } }, port: { map: { key: tuple4, data: '@snatport4' } } } },
  ]);
});

t.test('start: mark and log rules', async (t) => {
  const b = startBatch({ table: T, logRules: true, mark: 0x42 }).nftables;
  t.ok(b.some((c) => 'add' in c && 'chain' in c.add && c.add.chain.name === 'admit_log'), 'admit_log chain');
  const pre = b.flatMap((c) => ('add' in c && 'rule' in c.add && c.add.rule.chain === 'prerouting' ? [c.add.rule] : []));
  t.equal(pre.length, 4, 'a jump rule before each admission rule');
  t.same((pre[0] as unknown as { expr: unknown[] }).expr.at(-1), { jump: { target: 'admit_log' } });
  t.same((pre[1] as unknown as { expr: unknown[] }).expr.slice(3, 5), [
    { mangle: { key: { meta: { key: 'mark' } }, value: 0x42 } },
    { mangle: { key: { ct: { key: 'mark' } }, value: 0x42 } },
  ]);
});

t.test('close: add + delete of the table', async (t) => {
  const table = { table: { family: 'inet', name: T } };
  t.same(closeBatch(T), { nftables: [{ add: table }, { delete: table }] });
});

t.test('open: admission elements, refreshed SNAT entry, optional log rule', async (t) => {
  const el = (name: string, item: unknown): { element: unknown } => ({ element: { family: 'inet', table: T, name, elem: [item] } });
  const k = key4('192.0.2.2', '192.0.2.1', 50000);
  const sk = key4('192.0.2.2', '198.51.100.2', 40000);
  const timed = (key: unknown) => ({ elem: { val: key, timeout: 30 } });
  t.same(openBatch({ ...base, timeoutSec: 30 }, passive), {
    nftables: [
      { add: el('admit4', timed(k)) },
      { add: el('dnat4', [timed(k), '198.51.100.2']) },
      { add: el('dnatport4', [timed(k), 40000]) },
      { add: el('snat4', [sk, '198.51.100.1']) },
      { delete: el('snat4', [sk, '198.51.100.1']) },
      { add: el('snat4', [timed(sk), '198.51.100.1']) },
    ],
  });
  const withPort = openBatch({ table: T, logRules: true, timeoutSec: 5 }, { ...passive, family: 4, sourcePort: 20 }).nftables;
  t.same(withPort.slice(6, 9).map((c) => Object.keys(c)[0]), ['add', 'delete', 'add']);
  t.same((withPort[8] as unknown as { add: { element: { name: string; elem: unknown[] } } }).add.element, {
    family: 'inet',
    table: T,
    name: 'snatport4',
    elem: [[{ elem: { val: sk, timeout: 5 } }, 20]],
  });
  t.same(withPort.at(-1), {
    insert: {
      rule: {
        family: 'inet',
        table: T,
        chain: 'admit_log',
        expr: [
          { match: { op: '==', left: p4('saddr'), right: '192.0.2.2' } },
          { match: { op: '==', left: p4('daddr'), right: '192.0.2.1' } },
          { match: { op: '==', left: { payload: { protocol: 'tcp', field: 'dport' } }, right: 50000 } },
          { log: { prefix: 'ftp-proxy #1 ' } },
        ],
      },
    },
  });
  const v6 = openBatch({ ...base, timeoutSec: 30 }, { ...passive, family: 6, peer: '2001:db8:1::2', listen: '2001:db8:1::1' }).nftables;
  t.same(v6.map((c) => (Object.values(c)[0] as { element: { name: string } }).element.name), [
    'admit6',
    'dnat6',
    'dnatport6',
    'snat6',
    'snat6',
    'snat6',
  ]);
});

t.test('release: add + delete of everything, SNAT only for its last user', async (t) => {
  const names = (b: Batch) => b.nftables.map((c) => commandText(c).split(' ').slice(0, 5).join(' '));
  t.same(names(releaseBatch(base, { ...passive, sourcePort: 20 }, { snat: true })), [
    'add element inet ftp_proxy admit4',
    'delete element inet ftp_proxy admit4',
    'add element inet ftp_proxy dnat4',
    'delete element inet ftp_proxy dnat4',
    'add element inet ftp_proxy dnatport4',
    'delete element inet ftp_proxy dnatport4',
    'add element inet ftp_proxy snat4',
    'delete element inet ftp_proxy snat4',
    'add element inet ftp_proxy snatport4',
    'delete element inet ftp_proxy snatport4',
  ]);
  const shared = releaseBatch(base, passive, { snat: false, logHandle: 9 });
  t.equal(shared.nftables.length, 7);
  t.same(shared.nftables.at(-1), { delete: { rule: { family: 'inet', table: T, chain: 'admit_log', handle: 9 } } });
  t.same(releaseBatch(base, passive, { snat: true, destroy: true }).nftables.map(commandText), [
    'destroy element inet ftp_proxy admit4 { 192.0.2.2 . 192.0.2.1 . 50000 }',
    'destroy element inet ftp_proxy dnat4 { 192.0.2.2 . 192.0.2.1 . 50000 : 198.51.100.2 }',
    'destroy element inet ftp_proxy dnatport4 { 192.0.2.2 . 192.0.2.1 . 50000 : 40000 }',
    'destroy element inet ftp_proxy snat4 { 192.0.2.2 . 198.51.100.2 . 40000 : 198.51.100.1 }',
  ]);
});

t.test('probe: add and remove a zero element in every set and map', async (t) => {
  const text = (destroy: boolean) => probeBatch(T, destroy).nftables.map(commandText);
  t.equal(text(false).length, 20);
  t.same(text(false).slice(0, 4), [
    'add element inet ftp_proxy admit4 { 0.0.0.0 . 0.0.0.0 . 0 timeout 1s }',
    'delete element inet ftp_proxy admit4 { 0.0.0.0 . 0.0.0.0 . 0 }',
    'add element inet ftp_proxy dnat4 { 0.0.0.0 . 0.0.0.0 . 0 timeout 1s : 0.0.0.0 }',
    'delete element inet ftp_proxy dnat4 { 0.0.0.0 . 0.0.0.0 . 0 : 0.0.0.0 }',
  ]);
  t.same(text(false).at(-2), 'add element inet ftp_proxy snatport6 { :: . :: . 0 timeout 1s : 0 }');
  t.same(text(true).at(-1), 'destroy element inet ftp_proxy snatport6 { :: . :: . 0 : 0 }');
});

t.test('log prefixes are safe', async (t) => {
  t.equal(logPrefix('42'), 'ftp-proxy #42 ');
  t.equal(logPrefix('a "b" \\ c\n'), 'ftp-proxy #a__b____c_ ');
  t.equal(logPrefix('x'.repeat(200)).length, 'ftp-proxy # '.length + 64);
});

t.test('nft text', async (t) => {
  t.equal(
    renderRuleset({ table: T, logRules: false }),
    `table inet ftp_proxy {
${['4', '6']
  .map((f) => {
    const a = f === '4' ? 'ipv4_addr' : 'ipv6_addr';
    const key = `${a} . ${a} . inet_service`;
    return [
      `\tset admit${f} {\n\t\ttype ${key}\n\t\tflags timeout\n\t}\n`,
      `\tmap dnat${f} {\n\t\ttype ${key} : ${a}\n\t\tflags timeout\n\t}\n`,
      `\tmap dnatport${f} {\n\t\ttype ${key} : inet_service\n\t\tflags timeout\n\t}\n`,
      `\tmap snat${f} {\n\t\ttype ${key} : ${a}\n\t\tflags timeout\n\t}\n`,
      `\tmap snatport${f} {\n\t\ttype ${key} : inet_service\n\t\tflags timeout\n\t}\n`,
    ].join('\n');
  })
  .join('\n')}
\tchain prerouting {
\t\ttype nat hook prerouting priority dstnat - 10; policy accept;
\t\ttcp flags syn / fin,syn,rst,ack ip saddr . ip daddr . tcp dport @admit4 delete @admit4 { ip saddr . ip daddr . tcp dport } counter dnat ip to ip saddr . ip daddr . tcp dport map @dnat4 : ip saddr . ip daddr . tcp dport map @dnatport4
\t\ttcp flags syn / fin,syn,rst,ack ip6 saddr . ip6 daddr . tcp dport @admit6 delete @admit6 { ip6 saddr . ip6 daddr . tcp dport } counter dnat ip6 to ip6 saddr . ip6 daddr . tcp dport map @dnat6 : ip6 saddr . ip6 daddr . tcp dport map @dnatport6
\t}

\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat - 10; policy accept;
\t\tct status dnat snat ip to ip saddr . ip daddr . tcp dport map @snat4 : ip saddr . ip daddr . tcp dport map @snatport4
\t\tct status dnat snat ip to ip saddr . ip daddr . tcp dport map @snat4
\t\tct status dnat snat ip6 to ip6 saddr . ip6 daddr . tcp dport map @snat6 : ip6 saddr . ip6 daddr . tcp dport map @snatport6
\t\tct status dnat snat ip6 to ip6 saddr . ip6 daddr . tcp dport map @snat6
\t}
}
`,
  );
  const withLog = renderRuleset({ table: 'fp', logRules: true, mark: 0x42 });
  t.match(withLog, '\tchain admit_log {\n\t}\n}\n');
  t.match(withLog, 'tcp dport @admit4 jump admit_log\n');
  t.match(withLog, 'meta mark set 0x00000042 ct mark set 0x00000042 counter dnat ip to');

  const cmds: [Command, string][] = [
    [{ add: { table: { family: 'inet', name: T } } }, 'add table inet ftp_proxy'],
    [{ delete: { rule: { family: 'inet', table: T, chain: 'admit_log', handle: 3 } } }, 'delete rule inet ftp_proxy admit_log handle 3'],
    [
      { add: { element: { family: 'inet', table: T, name: 'dnat4', elem: [[{ elem: { val: key4('a', 'b', 1), timeout: 30 } }, 'c']] } } },
      'add element inet ftp_proxy dnat4 { a . b . 1 timeout 30s : c }',
    ],
    [{ add: { chain: { family: 'inet', table: T, name: 'admit_log' } } }, 'add chain inet ftp_proxy admit_log'],
  ];
  for (const [c, text] of cmds) t.equal(commandText(c), text);

  const doc = describeNegotiations({ table: T, logRules: true, timeoutSec: 30 });
  t.match(doc, '# passive (PASV/EPSV), session #1: 192.0.2.2 may connect once to 192.0.2.1:50000');
  t.match(doc, 'add element inet ftp_proxy admit4 { 192.0.2.2 . 192.0.2.1 . 50000 timeout 30s }\n');
  t.match(doc, 'add element inet ftp_proxy snatport4 { 198.51.100.2 . 192.0.2.2 . 45678 timeout 30s : 20 }\n');
  t.match(doc, 'insert rule inet ftp_proxy admit_log ip saddr 198.51.100.2 ip daddr 198.51.100.1 tcp dport 50001 log prefix "ftp-proxy #2 "\n');
  t.match(doc, 'delete rule inet ftp_proxy admit_log handle 42\n');
});

t.test('nft errors become codes', async (t) => {
  t.match(nftFailure('internal:0:0-0: Error: Could not process rule: Operation not permitted\n'), {
    code: 'NFT_NOT_PERMITTED',
    message: /Operation not permitted.*--backend relay/,
  });
  t.match(nftFailure('Error: Could not process rule: No such file or directory\nadd element ...'), {
    code: 'BACKEND_FAILED',
    message: 'nft: Error: Could not process rule: No such file or directory',
  });
  t.match(nftFailure(''), { code: 'BACKEND_FAILED' });
  t.same(parseOutput(''), []);
  t.same(parseOutput('{"nftables":[{"add":{"rule":{"handle":4}}}]}'), [{ add: { rule: { handle: 4 } } }]);
});

/** An in-memory runner: records batches; fails those `fail` picks; echoes handles for rules. */
class RecordingRunner implements NftRunner {
  readonly batches: Batch[] = [];
  fail: (b: Batch) => Error | undefined = () => undefined;
  closed = false;
  private handle = 100;

  constructor(readonly name: RunnerName = 'nft') {}

  async run(b: Batch, opts: { echo?: boolean } = {}): Promise<unknown[]> {
    const e = this.fail(b);
    if (e) throw e;
    this.batches.push(b);
    if (!opts.echo) return [];
    return b.nftables.map((c) => {
      const [verb, o] = Object.entries(c)[0] as [string, Record<string, object>];
      return 'rule' in o ? { [verb]: { rule: { ...o.rule, handle: ++this.handle } } } : c;
    });
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}

t.test('data plane bookkeeping over a recording runner', async (t) => {
  const logger = pino({ level: 'silent' });
  const req: DataPathRequest = { ...passive, kind: 'passive' };
  const setup = (extra = {}) => {
    const runner = new RecordingRunner();
    const ports = new PortAllocator(50000, 50002, () => 0);
    const dp = new NftablesDataPlane({ ports, logger, runner, logRules: true, entryTimeoutSec: 1, ...extra });
    return { runner, ports, dp };
  };

  await t.test('a data path across IPv4 and IPv6 is refused before anything is sent', async (t) => {
    const { runner, ports, dp } = setup();
    await dp.start();
    const before = runner.batches.length;
    await t.rejects(dp.open({ ...req, family: 6, peer: '2001:db8:1::2', listen: '2001:db8:1::1' }), {
      code: 'BACKEND_FAILED',
      message: /use --backend relay/,
    });
    t.equal(runner.batches.length, before);
    t.equal(ports.used, 0, 'no port held');
  });

  await t.test('open and release', async (t) => {
    const { runner, ports, dp } = setup();
    t.equal(dp.runnerName, 'nft');
    await dp.start();
    const a = await dp.open(req);
    t.same(a, { id: 'nft-1', port: 50000 });
    t.equal(dp.size, 1);
    await dp.release(a.id, false);
    const last = runner.batches.at(-1)!.nftables;
    t.same(last.at(-1), { delete: { rule: { family: 'inet', table: T, chain: 'admit_log', handle: 101 } } }, 'echoed handle used');
    t.equal(ports.used, 0);
    await dp.close();
    t.same(runner.batches.at(-1), closeBatch(T));
    t.ok(runner.closed);
  });

  await t.test('a failed open gives the port back and says BACKEND_FAILED', async (t) => {
    const { runner, ports, dp } = setup();
    runner.fail = () => new DataPlaneError('BACKEND_FAILED', 'nft: boom');
    await t.rejects(dp.open(req), { code: 'BACKEND_FAILED', message: /boom/, cause: { message: 'nft: boom' } });
    t.equal(ports.used, 0);
    t.equal(dp.size, 0);
  });

  await t.test('a failed release keeps the port until the entries have timed out', async (t) => {
    const { runner, ports, dp } = setup();
    const a = await dp.open(req);
    runner.fail = () => new DataPlaneError('BACKEND_FAILED', 'nft: gone');
    await t.rejects(dp.release(a.id, true), { code: 'BACKEND_FAILED' });
    t.equal(ports.used, 1, 'quarantined');
    await new Promise((r) => setTimeout(r, 2100));
    t.equal(ports.used, 0, 'back after the entry timeout');
    t.equal(dp.size, 0);
  });

  await t.test('start keeps NFT_* codes and wraps the rest', async (t) => {
    for (const [thrown, code] of [
      [new DataPlaneError('NFT_NOT_PERMITTED', 'x'), 'NFT_NOT_PERMITTED'],
      [new DataPlaneError('NFT_UNAVAILABLE', 'x'), 'NFT_UNAVAILABLE'],
      [new DataPlaneError('BACKEND_FAILED', 'x'), 'BACKEND_FAILED'],
      [new Error('odd'), 'BACKEND_FAILED'],
    ] as const) {
      const { runner, dp } = setup();
      // The table's own batch fails; the self-test's pieces (in a scratch table) all go in.
      runner.fail = (b) => (JSON.stringify(b).includes('"name":"ftp_proxy"}') ? thrown : undefined);
      await t.rejects(dp.start(), { code });
    }
  });

  await t.test('ports exhausted', async (t) => {
    const { dp } = setup();
    for (let i = 0; i < 3; i++) await dp.open(req);
    await t.rejects(dp.open(req), { code: 'PORTS_EXHAUSTED' });
  });

  await t.test('open/release over netlink after a good probe, with destroy', async (t) => {
    const netlink = new RecordingRunner('netlink');
    const { runner, dp } = setup({ logRules: false, openNetlink: () => netlink });
    t.equal(dp.runnerName, 'nft', 'before start');
    await dp.start();
    t.equal(dp.runnerName, 'netlink');
    t.same(runner.batches, [startBatch({ table: T, logRules: false })], 'the table through the runner');
    t.same(netlink.batches, [probeBatch(T, true)], 'one probe, with destroy');
    const a = await dp.open(req);
    await dp.release(a.id, false);
    t.same(netlink.batches.slice(1), [
      openBatch({ table: T, logRules: false, timeoutSec: 1 }, { ...passive, port: a.port }),
      releaseBatch({ table: T, logRules: false }, { ...passive, port: a.port }, { snat: true, destroy: true }),
    ]);
    await dp.close();
    t.same(runner.batches.at(-1), closeBatch(T));
    t.ok(netlink.closed && runner.closed);
    t.equal(dp.runnerName, 'nft', 'after close');
  });

  await t.test('a kernel without destroy: the second probe decides', async (t) => {
    const netlink = new RecordingRunner('netlink');
    netlink.fail = (b) => (b.nftables.some((c) => 'destroy' in c) ? new DataPlaneError('BACKEND_FAILED', 'invalid argument') : undefined);
    const { dp } = setup({ logRules: false, openNetlink: () => netlink });
    await dp.start();
    t.equal(dp.runnerName, 'netlink');
    const a = await dp.open(req);
    await dp.release(a.id, false);
    t.same(netlink.batches.at(-1), releaseBatch({ table: T, logRules: false }, { ...passive, port: a.port }, { snat: true }));
  });

  await t.test('netlink unusable: open/release fall back, with a warning', async (t) => {
    const warned: unknown[] = [];
    const log = { debug: () => undefined, info: () => undefined, warn: (o: unknown) => void warned.push(o) };
    for (const openNetlink of [
      () => {
        throw new DataPlaneError('NFT_UNAVAILABLE', 'no socket');
      },
      () => {
        const r = new RecordingRunner('netlink');
        r.fail = () => new DataPlaneError('BACKEND_FAILED', 'rejected');
        return r;
      },
    ]) {
      const { runner, dp } = setup({ logRules: false, openNetlink, logger: log });
      await dp.start();
      t.equal(dp.runnerName, 'nft');
      await dp.release((await dp.open(req)).id, false);
      t.equal(runner.batches.length, 3, 'start, open, release through the runner');
      t.notOk(runner.batches[2]!.nftables.some((c) => 'destroy' in c), 'no destroy for libnftables / nft');
    }
    t.match(warned, [{ err: /no socket/, runner: 'nft' }, { err: /rejected/ }]);
  });

  await t.test('not with log rules (they insert and delete rules)', async (t) => {
    let opened = false;
    const { dp } = setup({
      logRules: true,
      openNetlink: () => {
        opened = true;
        return new RecordingRunner('netlink');
      },
    });
    await dp.start();
    t.equal(dp.runnerName, 'nft');
    t.notOk(opened);
    t.throws(() => new NftablesDataPlane({ ports: new PortAllocator(1, 2), logger, runner: 'netlink', logRules: true }), RangeError);
  });

  await t.test('option checks', async (t) => {
    const ports = new PortAllocator(1, 2);
    t.throws(() => new NftablesDataPlane({ ports, logger, runner: new RecordingRunner(), table: 'bad name' }), RangeError);
    t.throws(() => new NftablesDataPlane({ ports, logger, runner: new RecordingRunner(), entryTimeoutSec: 0 }), RangeError);
    t.throws(() => new NftablesDataPlane({ ports, logger, runner: new RecordingRunner(), mark: -1 }), RangeError);
  });
});

t.test('CAP_NET_ADMIN is read from CapEff', async (t) => {
  const { hasNetAdmin } = await import('../../src/dataplane/nftables/runner.js');
  t.equal(hasNetAdmin('Name:\tnode\nCapEff:\t000001ffffffffff\n'), true, 'root');
  t.equal(hasNetAdmin('CapEff:\t0000000000000000\n'), false, 'nobody');
  t.equal(hasNetAdmin('CapEff:\t0000000000001000\n'), true, 'just CAP_NET_ADMIN');
  t.equal(hasNetAdmin(null), true, 'unknown: let nft decide');
});
