// --server-mode active in reverse mode, in front of servers whose own firewall drops every
// inbound connection but the control ports (no passive data can reach them): passive clients
// fail without it (the control case) and get downloads, uploads, REST, ABOR then RETR and LIST
// with it, on both planes, through real servers; nothing of a met path outlives its session.

import t, { type Test } from 'tap';
import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isRoot, sha256File, startLab, type FtpMode, type FtpTarget, type ServerName } from './lib/lab.js';
import { proxyConnectionsLeft, startProxy } from './lib/proxy.js';
import { nftDrained } from './lib/nft-state.js';

const SERVERS: readonly ServerName[] = ['vsftpd', 'pureftpd', 'pyftpd'];

async function suite(t: Test, backend: 'nftables' | 'relay'): Promise<void> {
  if (!isRoot) return void t.fail('end-to-end tests need root (network namespaces)');
  const lab = await startLab(t);
  const e = lab.env;
  // The servers take connections to their control ports only.
  const r = await lab.exec('server', 'nft', [
    `add table inet lab_srvfw; add chain inet lab_srvfw in { type filter hook input priority filter; policy accept; }; ` +
      `add rule inet lab_srvfw in ct state new tcp dport != { ${e.ports.vsftpd}, ${e.ports.pyftpd}, ${e.ports.pureftpd} } drop`,
  ]);
  t.equal(r.code, 0, `server firewall: ${r.stderr}`);
  const file = await readFile(join(e.cacheDir, '1MiB.bin'));
  const small = await lab.expectedSha256('1MiB.bin');
  const restAt = 123_457;
  const restSum = createHash('sha256').update(file.subarray(restAt)).digest('hex');
  const uploadSrc = join(e.cacheDir, '1MiB.bin');
  let n = 0;
  const proxy = async (s: ServerName, extra: string[]) => {
    const port = 8021 + n++;
    const table = `ftp_proxy_a${n}`;
    const proc = await startProxy(lab, [
      '-R', e.server4, '-P', String(e.ports[s]), '-b', e.gwLan4, '-p', String(port),
      '--backend', backend, '--nft-table', table, '--data-timeout', '5', ...extra,
    ]);
    const at = (mode: FtpMode, user = false): FtpTarget => ({
      host: e.gwLan4, port, mode, timeoutMs: 30_000, ...(user ? { user: e.user, pass: e.pass } : {}),
    });
    return { proc, table, at };
  };

  await t.test('control: without --server-mode active, passive transfers cannot reach these servers', async (t) => {
    const { proc, at } = await proxy('vsftpd', []);
    const curl = await lab.curlGet({ ...at('pasv'), path: '1MiB.bin', timeoutMs: 12_000 });
    t.notOk(curl.ok, 'curl PASV fails');
    const active = await lab.curlGet({ ...at('port'), path: '1MiB.bin' });
    t.equal(active.sha256, small, 'active works: the lab is otherwise fine');
    t.equal((await proc.stop()).code, 0);
  });

  for (const s of SERVERS) {
    await t.test(`${s}: passive clients through --server-mode active`, async (t) => {
      const { proc, table, at } = await proxy(s, ['--server-mode', 'active']);
      for (const mode of ['pasv', 'epsv'] as const) {
        const get = await lab.curlGet({ ...at(mode), path: '1MiB.bin' });
        t.equal(get.sha256, small, `curl ${mode} download ${get.stderr}`);
      }
      const name = `sma-${backend}.bin`;
      const put = await lab.curlPut({ ...at('epsv', true), path: name, file: uploadSrc });
      t.ok(put.ok, `curl upload ${put.stderr}`);
      t.equal(await sha256File(join(e.upload[s], name)), small, 'upload checksum');
      const out = lab.tmpPath(`lftp-${s}`);
      const l = await lab.lftp(at('pasv'), [`get /1MiB.bin -o ${out}`, 'cls -1 /dir1000']);
      t.equal(l.code, 0, `lftp: ${l.stderr}`);
      t.equal(await sha256File(out), small, 'lftp download checksum');
      t.equal(l.stdout.trim().split('\n').length, 1000, 'LIST of 1000');
      const py = await lab.pyftp({ ...at('pasv'), timeoutMs: 60_000 }, [
        'session', 'get=1MiB.bin', `rest=1MiB.bin@${restAt}`, 'abor=100MiB.bin', 'get=1MiB.bin', 'list=dir1000',
      ]);
      t.ok(py.ok, `ftplib session: ${py.error ?? ''}`);
      const [get, rest, abor, again, list] = py.steps ?? [];
      t.equal(get?.sha256, small, 'ftplib download');
      t.equal(rest?.sha256, restSum, 'REST resume');
      t.ok(abor?.noop_ok, `ABOR (${abor?.abort_replies?.join(' | ')}) and the session goes on`);
      t.equal(again?.sha256, small, 'RETR after ABOR');
      t.equal(list?.count, 1000, 'LIST');
      if (backend === 'nftables') t.same(await nftDrained(lab, table), {}, 'the kernel table holds no element');
      t.same(await proxyConnectionsLeft(lab, proc), [], 'no connection of the proxy outlives its session');
      const paths = proc.logs.filter((x) => x.msg === 'passive data path');
      t.ok(paths.length >= 8 && paths.every((x) => x.converted === true && x.plane === 'relay'), 'every path converted, on the relay');
      t.same(proc.logs.filter((x) => x.level >= 50), [], 'no error-level log lines');
      t.equal((await proc.stop()).code, 0, 'exit 0 after SIGTERM');
    });
  }
}

t.test('--server-mode active in front of servers that take no data connections, nftables plane', (t) => suite(t, 'nftables'));
t.test('--server-mode active in front of servers that take no data connections, relay plane', (t) => suite(t, 'relay'));
