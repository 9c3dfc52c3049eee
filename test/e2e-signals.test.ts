// Graceful shutdown with real sessions: SIGTERM lets sessions run for --shutdown-grace, then
// says 421 to what is left, removes the table and exits 0; a second signal exits at once.

import t from 'tap';
import { startLab } from './lib/lab.js';
import { startProxy } from './lib/proxy.js';
import { nftElements } from './lib/nft-state.js';

t.test('SIGTERM: grace, then 421, table removed, exit 0; a second signal exits at once', async (t) => {
  const lab = await startLab(t);
  const args = (port: number, grace: number) => [
    '-R', lab.env.server4, '-P', String(lab.env.ports.vsftpd), '-b', lab.env.gwLan4, '-p', String(port),
    '--backend', 'nftables', '--nft-table', `sig${port}`, '--shutdown-grace', String(grace),
  ];
  const proxy = await startProxy(lab, args(8021, 1));
  const session = lab.pyftp({ host: lab.env.gwLan4, port: 8021, timeoutMs: 15_000 }, ['raw', 'PASV', 'SLEEP=3', 'NOOP']);
  await new Promise((r) => setTimeout(r, 800));
  t.match(await nftElements(lab, 'sig8021'), { admit4: 1 }, 'the session holds an admission');
  const stopAt = Date.now();
  proxy.child.kill('SIGTERM');
  const exit = await proxy.exit;
  const took = Date.now() - stopAt;
  t.equal(exit.code, 0, 'exit 0');
  t.ok(took >= 900 && took < 5000, `waited the grace period (${took} ms)`);
  const r = await session;
  t.match(r.raw_replies ?? [r.error], [/^227 /, /^421 .*shutting down/], 'the session got 421');
  t.equal(await nftElements(lab, 'sig8021'), null, 'table removed');

  const slow = await startProxy(lab, args(8022, 60));
  const held = lab.pyftp({ host: lab.env.gwLan4, port: 8022, timeoutMs: 15_000 }, ['raw', 'PASV', 'SLEEP=3']);
  await new Promise((r) => setTimeout(r, 800));
  const at = Date.now();
  slow.child.kill('SIGTERM');
  await new Promise((r) => setTimeout(r, 200));
  slow.child.kill('SIGINT');
  const second = await slow.exit;
  t.ok(Date.now() - at < 2000, 'the second signal did not wait for the 60 s grace');
  t.equal(second.code, 1);
  await held;
  t.match(await nftElements(lab, 'sig8022'), {}, 'what is left in the kernel times out; the next start replaces it');
});
