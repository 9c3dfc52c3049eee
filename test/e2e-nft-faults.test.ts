// nftables failing: not permitted at start (one line, exit 2), and a table that cannot be
// recreated mid-session (the client gets 425, the session goes on, one error; then it heals).

import t from 'tap';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { isRoot } from './lib/lab.js';
import { CLI } from './lib/proxy.js';
import { reverseRig } from './lib/reverse-suite.js';

t.test('nftables not permitted at start: one clear line, exit 2', async (t) => {
  if (!isRoot) return t.fail('needs root to drop privileges');
  // An unprivileged user cannot open a netlink socket to nf_tables (EPERM). `env -i` keeps
  // tap's coverage hooks (NODE_OPTIONS) out of the child, which as nobody could not write them.
  const argv = ['-i', `PATH=${process.env.PATH ?? '/usr/bin:/bin'}`, 'setpriv', '--reuid=65534', '--regid=65534', '--clear-groups'];
  const child = spawn('env', [...argv, process.execPath, CLI, '-R', '127.0.0.1', '-p', '18021'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  const [code] = (await once(child, 'exit')) as [number];
  t.equal(code, 2);
  t.equal(err.trim().split('\n').length, 1, `one line: ${err}`);
  t.match(err, /^ftp-proxy: cannot start the nftables data plane: .*--backend relay/);
});

t.test('a table that cannot be recreated mid-session: 425, the session goes on, back once it can be', async (t) => {
  const rig = await reverseRig(t, 'nftables');
  const { lab } = rig;
  const { proc, port } = rig.proxies.get('vsftpd')!;
  const target = { host: lab.env.gwLan4, port, timeoutMs: 20_000 };
  // Another program takes the proxy's table name: an interactive nft keeps the table it made
  // with `flags owner` to itself while it runs, so the proxy cannot recreate its own.
  const holder = lab.spawn('gw', 'nft', ['-i'], { stdio: ['pipe', 'ignore', 'ignore'] });
  t.teardown(() => holder.kill());
  const session = lab.pyftp(target, ['raw', 'SLEEP=1', 'PASV', 'NOOP', 'EPSV', 'SYST']);
  await new Promise((r) => setTimeout(r, 400));
  holder.stdin!.write('delete table inet ftp_proxy_0\nadd table inet ftp_proxy_0 { flags owner; }\n');
  const r = await session;
  t.ok(r.ok, r.error ?? '');
  t.match(r.raw_replies, [/^425 /, /^200 /, /^425 /, /^215 /], 'PASV and EPSV refused with 425, other commands answered');
  t.ok(proc.logs.some((l) => l.msg === 'data plane failed' && l.level >= 50), 'the failure is logged as an error');
  t.equal(proc.find('cannot recreate the nftables table: data connections are refused (425) until it is back; retrying').length, 1, 'one error for the table');
  t.notMatch(await lab.nft(['list', 'table', 'inet', 'ftp_proxy_0']), /chain|set|map/, 'nothing half-applied in the table it could not replace');
  holder.stdin!.end();
  let again = await lab.pyftp({ ...target }, ['raw', 'PASV']);
  for (let i = 0; i < 40 && !/^227 /.test(again.raw_replies?.[0] ?? ''); i++) {
    await new Promise((r) => setTimeout(r, 250));
    again = await lab.pyftp({ ...target }, ['raw', 'PASV']);
  }
  t.match(again.raw_replies, [/^227 /], 'the proxy recreated its table and admits again');
  t.equal(proc.find('nftables table recreated').length, 1);
  proc.logs.length = 0;
});
