// SIGHUP reload in the namespace lab, both data planes, vsftpd and real clients: during a slow
// ~25 s download a new deny-client applies to the next session (530) while the download goes
// on to its right checksum; a bad file changes nothing; the xferlog is reopened after rotation.

import t, { type Test } from 'tap';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { startLab, SYSTEM_PYTHON, type Lab } from './lib/lab.js';
import { startProxy, type ProxyProcess } from './lib/proxy.js';

const PROBE = fileURLToPath(new URL('./lib/dataprobe.py', import.meta.url));
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until(what: string, cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

/** Sends SIGHUP and waits for the reload's own line (notice or error). */
async function hup(proxy: ProxyProcess): Promise<void> {
  const before = proxy.logs.filter((l) => l.msg.startsWith('reload')).length;
  proxy.child.kill('SIGHUP');
  await until('the reload line', () => proxy.logs.filter((l) => l.msg.startsWith('reload')).length > before);
}

async function reloadDuringDownload(t: Test, lab: Lab, backend: 'nftables' | 'relay', port: number): Promise<void> {
  const e = lab.env;
  const conf = lab.tmpPath(`reload-${backend}.conf`);
  const xferlog = lab.tmpPath(`xferlog-${backend}`);
  // Everything but the listen address in the file; SIGHUP re-reads it.
  const settings = [
    '# the lab gateway',
    `reverse ${e.server4}`,
    `server-port ${e.ports.vsftpd}`,
    `backend ${backend}`,
    `nft-table rl${port}`,
    'max-sessions 50',
    `xferlog ${xferlog}`,
  ];
  writeFileSync(conf, settings.join('\n') + '\n');
  const proxy = await startProxy(lab, ['--config', conf, '-b', e.gwLan4, '-p', String(port), '--control-socket', lab.tmpPath(`ctl-${backend}.sock`)]);
  t.teardown(() => proxy.stop());
  t.match(proxy.find('listening')[0], { mode: 'reverse', dataPlane: backend, xferlog }, 'the file set the mode, the plane and the xferlog');
  const login = (source?: string) => lab.pyftp({ host: e.gwLan4, port, timeoutMs: 15_000, ...(source ? { source } : {}) }, ['login']);
  t.ok((await login()).ok, 'before the reload the client is let in');

  // 8 KiB every 0.2 s through an 8 KiB receive buffer: 1 MiB in some 25 s, PORT (active) data.
  const slow = lab.exec('client', SYSTEM_PYTHON, [
    PROBE, '--host', e.gwLan4, '--port', String(port), '--timeout', '60',
    'slowget', '1MiB.bin', '--rcvbuf', '8192', '--chunk', '8192', '--pause', '0.2',
  ], { timeoutMs: 90_000 });
  let slowDone = false;
  void slow.finally(() => (slowDone = true));
  await until('the slow RETR', () => proxy.logs.some((l) => l.msg === 'client line' && String(l.line).startsWith('RETR ')));
  const slowSid = proxy.logs.find((l) => l.msg === 'client line' && String(l.line).startsWith('RETR '))!.sid;
  await sleep(1000);

  writeFileSync(conf, [...settings, `deny-client ${e.client4}`, 'data-ports 50000-50100'].join('\n') + '\n');
  await hup(proxy);
  const done = proxy.find('reloaded: new sessions use the new configuration');
  t.match(done, [{ changed: ['deny-client'], needsRestart: ['data-ports'] }], 'one notice line: what changed, what needs a restart');
  t.same(proxy.logs.filter((l) => /needs a restart/.test(l.msg)).map((l) => l.option), ['data-ports'], 'one line for the option that needs a restart');
  const denied = await login();
  t.notOk(denied.ok, 'the next session from the denied address is refused');
  t.match(denied.error, /530/, `530 (${denied.error})`);
  t.ok((await login(e.client4Alt)).ok, 'another client is still let in');

  // logrotate: the file moved away, then SIGHUP (twice in a row) has the proxy open a new one.
  renameSync(xferlog, `${xferlog}.1`);
  proxy.child.kill('SIGHUP');
  await hup(proxy);
  // The kernel may merge the second signal into the first while the first is pending.
  await sleep(300);
  const reloads = proxy.find('reloaded: new sessions use the new configuration');
  t.ok(reloads.length === 2 || reloads.length === 3, `${reloads.length - 1} more reload(s), the proxy up`);
  t.same(reloads.slice(1).map((l) => l.changed), reloads.slice(1).map(() => []), 'with nothing changed');
  t.ok(existsSync(xferlog), 'a new xferlog at the path, before any transfer ended');

  writeFileSync(conf, [...settings.filter((s) => !s.startsWith('max-sessions')), 'max-sessions 0'].join('\n') + '\n');
  const errorsBefore = proxy.logs.filter((l) => l.level >= 50).length;
  await hup(proxy);
  const errors = proxy.logs.filter((l) => l.level >= 50).slice(errorsBefore);
  t.equal(errors.length, 1, 'a bad file: one error line');
  t.match(errors[0], { msg: 'reload failed: configuration unchanged', err: `${conf}:7: max-sessions: '0' is not a whole number from 1 to 100000` });
  const still = await login();
  t.match(still.error, /530/, 'the old configuration is kept whole: the client is still denied');
  t.equal(proxy.child.exitCode, null, 'the proxy is up');
  t.notOk(slowDone, 'all of this happened while the download ran');
  t.same(proxy.find('session ended').filter((l) => l.sid === slowSid), [], 'and its session is still there');

  const r = await slow;
  const got = JSON.parse(r.stdout) as { ok: boolean; error?: string; bytes?: number; sha256?: string; seconds?: number; final?: string; noop?: string };
  t.ok(got.ok, `the slow download ran: ${got.error ?? ''} ${r.stderr}`);
  t.ok((got.seconds ?? 0) > 15, `it took ${got.seconds} s, through every reload`);
  t.equal(got.sha256, await lab.expectedSha256('1MiB.bin'), 'the file arrived whole');
  t.match(got.final, /^226/);
  t.match(got.noop, /^200/, 'the session goes on after it');
  await until('the transfer line in the new xferlog', () => readFileSync(xferlog, 'utf8').includes('1MiB.bin'));
  t.match(readFileSync(xferlog, 'utf8'), / \S*1MiB\.bin b _ o a anonymous ftp 0 \* c\n/, "the download's xferlog line is in the reopened file");

  // A session held open keeps the shutdown waiting (grace): a SIGHUP then is ignored.
  const started = proxy.find('session started').length;
  const held = lab.pyftp({ host: e.gwLan4, port, timeoutMs: 15_000, source: e.client4Alt }, ['raw', 'NOOP', 'SLEEP=2', 'NOOP']);
  await until('the held session', () => proxy.find('session started').length > started);
  proxy.child.kill('SIGTERM');
  await until('shutting down', () => proxy.find('shutting down').length > 0);
  proxy.child.kill('SIGHUP');
  t.equal((await proxy.exit).code, 0, 'SIGTERM still stops it cleanly');
  t.ok(proxy.find('SIGHUP ignored: shutting down').length === 1, 'a SIGHUP during the shutdown is ignored');
  t.equal(proxy.find('reloaded: new sessions use the new configuration').length, reloads.length, 'and reloads nothing');
  t.match((await held).raw_replies, [/^200/, /^200/], 'the held session finished');
}

t.test('SIGHUP during a download: a new deny-client refuses the next session, the download completes', async (t) => {
  const lab = await startLab(t);
  await t.test('nftables', (t) => reloadDuringDownload(t, lab, 'nftables', 8021));
  await t.test('relay', (t) => reloadDuringDownload(t, lab, 'relay', 8022));
});
