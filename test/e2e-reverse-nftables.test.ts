import t from 'tap';
import { reverseSuite, reverseRig } from './lib/reverse-suite.js';
import { nftDrained, nftElements } from './lib/nft-state.js';
import { startProxy } from './lib/proxy.js';
import { SYSTEM_PYTHON } from './lib/lab.js';

const TABLES = ['ftp_proxy_0', 'ftp_proxy_1'];

t.test('reverse mode, nftables data plane, real clients, servers and nft', (t) =>
  reverseSuite(t, 'nftables', {
    afterEach: async (rig, t) => {
      for (const table of TABLES) t.same(await nftDrained(rig.lab, table), {}, `${table} holds no element`);
    },
    atEnd: async (rig, t) => {
      for (const table of TABLES) t.equal(await nftElements(rig.lab, table), null, `${table} removed at exit`);
    },
  }),
);

// Log in, ask for PASV, print the reply, then hold the session open for a while.
const HOLD_PASV = `
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
f = s.makefile('rb')
def reply():
    line = f.readline().decode()
    while line[3:4] == '-':
        line = f.readline().decode()
    return line.strip()
reply()
for cmd in ('USER anonymous', 'PASS lab@example.org', 'PASV'):
    s.sendall((cmd + '\\r\\n').encode())
    last = reply()
print(last, flush=True)
time.sleep(float(sys.argv[3]))
`;

t.test('kill -9 leaves entries that the next start removes; SIGTERM removes the table', async (t) => {
  const rig = await reverseRig(t, 'nftables');
  const { lab } = rig;
  const first = rig.proxies.get('vsftpd')!;
  const holder = lab.spawn('client', SYSTEM_PYTHON, ['-c', HOLD_PASV, lab.env.gwLan4, String(first.port), '20']);
  const line = await new Promise<string>((resolve) => holder.stdout!.once('data', (d: Buffer) => resolve(d.toString())));
  t.match(line, /^227 /, 'the session holds an admitted passive path');
  t.match(await nftElements(lab, 'ftp_proxy_0'), { admit4: 1 }, 'one admission in the kernel');

  first.proc.child.kill('SIGKILL');
  await first.proc.exit;
  t.match(await nftElements(lab, 'ftp_proxy_0'), { admit4: 1 }, 'the dead run left its entry (it would time out)');

  const again = await startProxy(lab, [
    '-R', lab.env.server4, '-P', String(lab.env.ports.vsftpd), '-b', lab.env.gwLan4, '-p', String(first.port),
    '--backend', 'nftables', '--nft-table', 'ftp_proxy_0',
  ]);
  t.same(await nftElements(lab, 'ftp_proxy_0'), {}, 'the restart replaced the table: no element of the dead run');
  t.equal((await again.stop()).code, 0);
  t.equal(await nftElements(lab, 'ftp_proxy_0'), null, 'SIGTERM removed the table');
  holder.kill();
});
