// Coexistence with the gateway's own firewall, on both data planes: the gateway's ruleset is
// reloaded during operation (firewalld's way: `nft flush ruleset`, then its table; Debian's: an
// /etc/nftables.conf that starts with `flush ruleset`), and with nftables the proxy's table is
// also deleted or flushed alone. New sessions transfer again within 2 s without a restart, a
// PASV negotiated before the incident transfers (or gets 425), one warning per incident, the
// byte count works again. And a forward chain with policy drop needs the admin's mark rule.

import t, { type Test } from 'tap';
import { readFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { startLab, isRoot, SYSTEM_PYTHON, type Lab, type FtpMode } from './lib/lab.js';
import { startProxy, type ProxyProcess } from './lib/proxy.js';
import { example, FIXTURES, loadRuleset, reverseDefines } from './lib/rulesets.js';
import { missingParts } from '../src/dataplane/nftables/rules.js';

const PORT = 8021;
const TABLE = 'ftp_proxy_heal';
const MARK = 0x2a;
const DATA = { low: 50000, high: 50999 };
/** Warnings so far (one per incident: found by a notification, or by a check). */
const warnings = (proxy: ProxyProcess): number => proxy.logs.filter((l) => l.level === 40).length;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const PROBE = fileURLToPath(new URL('./lib/dataprobe.py', import.meta.url));

/** What our table lacks on the gateway now (everything, when it is gone). */
async function tableMissing(lab: Lab): Promise<string[]> {
  const r = await lab.exec('gw', 'nft', ['-j', 'list', 'table', 'inet', TABLE]);
  if (r.code !== 0) return ['table'];
  const doc = JSON.parse(r.stdout) as { nftables: unknown[] };
  return missingParts({ table: TABLE, logRules: false, mark: MARK, count: { group: 2121, ports: DATA } }, doc.nftables);
}

const firewalld = async (lab: Lab, edit: (text: string) => string = (s) => s): Promise<void> => {
  await lab.nft(['flush', 'ruleset']);
  await loadRuleset(lab, edit(await readFile(FIXTURES + 'firewalld-style.nft', 'utf8')), 'firewalld.nft');
};
const debian = async (lab: Lab): Promise<void> => loadRuleset(lab, await example('reverse-server.nft', reverseDefines(lab, PORT)), 'nftables.conf');

async function rig(t: Test, backend: 'nftables' | 'relay') {
  const lab = await startLab(t);
  // The gateway's firewall from now on: firewalld's style (the lab's own table goes with the flush).
  await firewalld(lab);
  const proxy = await startProxy(lab, [
    '-R', lab.env.server4, '-P', String(lab.env.ports.vsftpd), '-b', lab.env.gwLan4, '-p', String(PORT),
    '--backend', backend, '--nft-table', TABLE, '--mark', `0x${MARK.toString(16)}`, '--data-ports', `${DATA.low}-${DATA.high}`,
  ]);
  t.teardown(() => proxy.stop());
  return { lab, proxy, sum: await lab.expectedSha256('1MiB.bin') };
}

const via = (lab: Lab, mode: FtpMode, timeoutMs = 20_000) => ({ host: lab.env.gwLan4, port: PORT, mode, timeoutMs });

/** A 1 MiB download in `mode` through the proxy; checks it arrived whole. */
async function transfer(t: Test, lab: Lab, sum: string, mode: FtpMode, what: string): Promise<void> {
  const r = await lab.curlGet({ ...via(lab, mode), path: '1MiB.bin' });
  t.ok(r.ok, `${what} (${mode}): ${r.stderr}`);
  t.equal(r.sha256, sum, `${what} (${mode}): checksum`);
}

/** The bytes of the RETR records logged after the first `after`, once there are `n` or more. */
async function retrBytes(proxy: ProxyProcess, after: number, n: number): Promise<unknown[]> {
  let r = proxy.find('transfer').slice(after).filter((l) => l.command === 'RETR');
  for (let i = 0; i < 50 && r.length < n; i++) (await sleep(50), (r = proxy.find('transfer').slice(after).filter((l) => l.command === 'RETR')));
  return r.map((l) => l.bytes);
}

/**
 * One incident during operation: a PASV is negotiated first and used 2.5 s later; `cause` runs;
 * with nftables the table must be whole within 2 s. Then new sessions transfer, passive and active.
 */
async function incident(t: Test, backend: 'nftables' | 'relay', r: Awaited<ReturnType<typeof rig>>, cause: () => Promise<void>): Promise<void> {
  const { lab, proxy, sum } = r;
  const before = warnings(proxy);
  const records = proxy.find('transfer').length;
  const late = lab.pyftp(via(lab, 'pasv'), ['session', 'late=1MiB.bin@2.5']);
  await sleep(800);
  const t0 = Date.now();
  await cause();
  if (backend === 'nftables') {
    t.not((await tableMissing(lab)).length, 0, 'the table was damaged');
    let missing = await tableMissing(lab);
    while (missing.length > 0 && Date.now() - t0 < 3000) (await sleep(25), (missing = await tableMissing(lab)));
    const ms = Date.now() - t0;
    t.same(missing, [], 'the table is whole again');
    t.ok(ms < 2000, `within 2 s of the incident (${ms} ms)`);
  }
  await transfer(t, lab, sum, 'pasv', 'a new session');
  await transfer(t, lab, sum, 'port', 'a new session');
  const l = await late;
  const step = l.steps?.[0];
  t.ok(l.ok, `the session negotiated before: ${l.error ?? ''}`);
  t.ok(step?.sha256 === sum || /^425 /.test(step?.reply ?? ''), `it transferred or got 425: ${JSON.stringify(step)}`);
  t.equal(warnings(proxy) - before, backend === 'nftables' ? 1 : 0, 'one warning with nftables, none with the relay');
  if (backend === 'nftables') {
    // The two new sessions' and the one negotiated before, whose connection came after the table.
    const bytes = await retrBytes(proxy, records, 3);
    t.ok(bytes.length >= 3 && bytes.every((b) => b === 1048576), `NFLOG counts the bytes again: ${JSON.stringify(bytes)}`);
  }
}

for (const backend of ['nftables', 'relay'] as const) {
  t.test(`${backend}: the gateway's firewall reloaded during operation`, { skip: isRoot ? false : 'needs root' }, async (t) => {
    const r = await rig(t, backend);
    await transfer(t, r.lab, r.sum, 'pasv', 'before');
    await transfer(t, r.lab, r.sum, 'port', 'before');
    await t.test('firewalld style: nft flush ruleset, then its table again', (t) => incident(t, backend, r, () => firewalld(r.lab)));
    await t.test("Debian style: an /etc/nftables.conf that starts with 'flush ruleset'", (t) => incident(t, backend, r, () => debian(r.lab)));
    if (backend === 'relay') return;
    await t.test(`nft delete table inet ${TABLE}`, (t) => incident(t, backend, r, () => r.lab.nft(['delete', 'table', 'inet', TABLE]).then(() => undefined)));
    await t.test(`nft flush table inet ${TABLE}`, (t) => incident(t, backend, r, () => r.lab.nft(['flush', 'table', 'inet', TABLE]).then(() => undefined)));
    await t.test('a transfer under way goes on, and its used admission is not given again', async (t) => {
      const { lab } = r;
      // The gateway's own nat chains (firewalld style) keep the kernel translating what it
      // translated while the proxy's table is away (with no nat chain at all, it stops).
      await firewalld(lab);
      while ((await tableMissing(lab)).length > 0) await sleep(25);
      await sleep(1000);
      const before = warnings(r.proxy);
      // An active download read slowly (about 4 s): its path stays live, its admission used.
      const slow = lab.exec('client', SYSTEM_PYTHON, [
        PROBE, '--host', lab.env.gwLan4, '--port', String(PORT), '--timeout', '30',
        'slowget', '1MiB.bin', '--rcvbuf', '4096', '--chunk', '4096', '--pause', '0.01',
      ], { timeoutMs: 60_000 });
      await sleep(1000);
      await lab.nft(['delete', 'table', 'inet', TABLE]);
      while ((await tableMissing(lab)).length > 0) await sleep(25);
      t.equal((await lab.nft(['list', 'set', 'inet', TABLE, 'admit4'])).match(/elements/), null, 'its admission did not come back');
      const out = await slow;
      const got = JSON.parse(out.stdout) as { bytes?: number; sha256?: string; final?: string; seconds?: number; error?: string };
      t.ok((got.seconds ?? 0) > 2, `it ran across the incident (${got.seconds} s) ${got.error ?? ''}`);
      t.equal(got.sha256, r.sum, 'the file is whole');
      t.match(got.final, /^226/);
      t.equal(warnings(r.proxy) - before, 1, 'one warning');
    });
    t.notOk(r.proxy.logs.some((l) => l.level >= 50), 'no error logged');
  });
}

t.test('a forward chain with policy drop: active data passes only with the admin’s mark rule', { skip: isRoot ? false : 'needs root' }, async (t) => {
  const r = await rig(t, 'nftables');
  const { lab, sum } = r;
  // Without its `meta mark 0x2a accept`: ftp-proxy's count chain (forward, priority -10) has
  // policy accept, and still their chain (priority +10) drops the server's connection to the client.
  await firewalld(lab, (text) => text.replace(/^\s*meta mark 0x2a accept\n/m, ''));
  while ((await tableMissing(lab)).length > 0) await sleep(25);
  await transfer(t, lab, sum, 'pasv', 'LAN to WAN is allowed anyway');
  const dropped = await lab.curlGet({ ...via(lab, 'port', 8000), path: '1MiB.bin' });
  t.notOk(dropped.ok, 'the active data connection is dropped');
  await lab.nft(['add', 'rule', 'inet', 'firewalld', 'filter_FORWARD', 'meta', 'mark', '0x2a', 'accept']);
  await transfer(t, lab, sum, 'port', 'with the mark rule');
});
