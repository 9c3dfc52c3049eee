// nftables failing: not permitted at start (one line, exit 2), and a batch failing in the
// middle of a session (the client gets 425, the session goes on, the failure is logged).

import t from 'tap';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { isRoot } from './lib/lab.js';
import { CLI } from './lib/proxy.js';
import { reverseRig } from './lib/reverse-suite.js';
import { nftElements } from './lib/nft-state.js';

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

t.test('a failed batch mid-session: 425, the session goes on, nothing half-applied', async (t) => {
  const rig = await reverseRig(t, 'nftables');
  const { lab } = rig;
  const { proc, port } = rig.proxies.get('vsftpd')!;
  const target = { host: lab.env.gwLan4, port, timeoutMs: 20_000 };
  // The admin (or a bad script) removes the proxy's table while a session is open.
  const session = lab.pyftp(target, ['raw', 'SLEEP=1', 'PASV', 'NOOP', 'EPSV', 'SYST']);
  await new Promise((r) => setTimeout(r, 400));
  await lab.nft(['delete', 'table', 'inet', 'ftp_proxy_0']);
  const r = await session;
  t.ok(r.ok, r.error ?? '');
  t.match(r.raw_replies, [/^425 /, /^200 /, /^425 /, /^215 /], 'PASV and EPSV refused with 425, other commands answered');
  t.ok(proc.logs.some((l) => l.msg === 'data plane failed' && l.level >= 50), 'the failure is logged as an error');
  t.equal(await nftElements(lab, 'ftp_proxy_0'), null, 'nothing was re-created behind the admin’s back');
  const again = await lab.pyftp({ ...target }, ['raw', 'NOOP']);
  t.match(again.raw_replies, [/^200 /], 'the proxy still serves new sessions');
  proc.logs.length = 0;
});
