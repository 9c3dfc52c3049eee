// Reverse mode on the default (nftables) plane between address families: an IPv6 client in
// front of an IPv4 server and an IPv4 client in front of an IPv6 server. The kernel cannot NAT
// between families, so these paths go to the relay beside it; the rest stay in the kernel.

import t from 'tap';
import { join } from 'node:path';
import { isRoot, sha256File, startLab, type FtpMode, type ServerName } from './lib/lab.js';
import { proxyConnectionsLeft, startProxy } from './lib/proxy.js';
import { nftDrained } from './lib/nft-state.js';

const SERVERS: readonly ServerName[] = ['vsftpd', 'pyftpd'];

t.test('cross-family paths on the nftables plane are relayed, both directions', async (t) => {
  if (!isRoot) return void t.fail('end-to-end tests need root (network namespaces)');
  const lab = await startLab(t);
  const e = lab.env;
  const small = await lab.expectedSha256('1MiB.bin');
  const uploadSrc = join(e.cacheDir, '1MiB.bin');
  // v6 client -> v4 server (EPSV/EPRT from the client; PASV/PORT toward the server), and
  // v4 client -> v6 server (PASV/PORT from the client; EPSV/EPRT toward the server).
  const directions = [
    { name: 'IPv6 client, IPv4 server', bind: e.gwLan6, server: e.server4, modes: ['epsv', 'eprt'] as FtpMode[], toServer: /^(PASV|PORT)\b/ },
    { name: 'IPv4 client, IPv6 server', bind: e.gwLan4, server: e.server6, modes: ['pasv', 'port', 'epsv', 'eprt'] as FtpMode[], toServer: /^(EPSV|EPRT)\b/ },
  ];
  let n = 0;
  for (const d of directions) {
    for (const server of SERVERS) {
      const port = 8021 + n;
      const table = `ftp_proxy_x${n}`;
      n++;
      const proc = await startProxy(lab, [
        '-R', d.server, '-P', String(e.ports[server]), '-b', d.bind, '-p', String(port),
        '--nft-table', table, '--data-ports', `${50000 + n * 1000}-${50000 + n * 1000 + 999}`,
      ]);
      for (const mode of d.modes) {
        await t.test(`${d.name}, ${server}, ${mode}: down, up, LIST`, async (t) => {
          const via = { host: d.bind, port, mode, timeoutMs: 30_000 };
          const get = await lab.pyftp(via, ['get', '1MiB.bin']);
          t.ok(get.ok, `download: ${get.error ?? ''}`);
          t.equal(get.sha256, small, 'download checksum');
          t.notOk(get.replies.some((l) => l.startsWith('< 425')), 'no 425');
          t.notOk(get.replies.some((l) => /::ffff:/i.test(l)), 'no IPv4-mapped address toward the client');
          const name = `x-${n}-${mode}.bin`;
          const put = await lab.pyftp({ ...via, user: e.user, pass: e.pass }, ['put', uploadSrc, name]);
          t.ok(put.ok, `upload: ${put.error ?? ''}`);
          t.equal(await sha256File(join(e.upload[server], name)), small, 'upload checksum');
          const list = await lab.pyftp(via, ['nlst', 'dir1000']);
          t.equal(list.count, 1000, 'NLST of 1000 through the relay');
          const curl = await lab.curlGet({ ...via, path: '1MiB.bin' });
          t.ok(curl.ok, `curl download: ${curl.stderr}`);
          t.equal(curl.sha256, small, 'curl checksum');
          t.same(await nftDrained(lab, table), {}, 'the kernel table holds no element: nothing went to it');
          t.same(await proxyConnectionsLeft(lab, proc), [], 'no relayed connection outlives its session');
        });
      }
      await t.test(`${d.name}, ${server}: what the proxy said and carried`, async (t) => {
        const paths = proc.logs.filter((l) => l.msg === 'passive data path' || l.msg === 'active data path');
        t.ok(paths.length > 0, 'data paths logged');
        t.ok(paths.every((l) => l.plane === 'relay' && l.converted === false), 'each path says the relay carried it');
        const toServer = proc.logs.filter((l) => l.msg === 'server line').map((l) => String(l.line));
        t.ok(toServer.length > 0 && toServer.filter((l) => /^(PASV|EPSV|PORT|EPRT)\b/.test(l)).every((l) => d.toServer.test(l)), 'the right commands toward the server');
        t.notOk(toServer.some((l) => /::ffff:/i.test(l)), 'no IPv4-mapped address toward the server');
        t.same(proc.logs.filter((l) => l.level >= 50), [], 'no error-level log lines');
        t.equal((await proc.stop()).code, 0, 'exit 0 after SIGTERM');
      });
    }
  }

  // Mode translation across families: the client's EPRT/PORT becomes the other family's
  // PASV/EPSV, and the proxy connects to the client in the client's family.
  for (const d of directions) {
    await t.test(`${d.name}, vsftpd, --server-mode passive: active client converted`, async (t) => {
      const port = 8121 + n++;
      const proc = await startProxy(lab, [
        '-R', d.server, '-P', String(e.ports.vsftpd), '-b', d.bind, '-p', String(port),
        '--nft-table', `ftp_proxy_x${n}`, '--server-mode', 'passive',
      ]);
      const via = { host: d.bind, port, mode: 'eprt' as FtpMode, timeoutMs: 30_000 };
      const get = await lab.pyftp(via, ['get', '1MiB.bin']);
      t.equal(get.sha256, small, `download ${get.error ?? ''}`);
      const name = `xc-${n}.bin`;
      const put = await lab.pyftp({ ...via, user: e.user, pass: e.pass }, ['put', uploadSrc, name]);
      t.ok(put.ok, `upload ${put.error ?? ''}`);
      t.equal(await sha256File(join(e.upload.vsftpd, name)), small, 'upload checksum');
      const toServer = proc.logs.filter((l) => l.msg === 'server line').map((l) => String(l.line));
      t.same([...new Set(toServer.filter((l) => /^(PASV|EPSV|PORT|EPRT)\b/.test(l)))], [d.server.includes(':') ? 'EPSV' : 'PASV'], "the server is asked for its family's passive mode only");
      const paths = proc.logs.filter((l) => l.msg === 'active data path');
      t.ok(paths.length === 2 && paths.every((l) => l.converted === true && l.plane === 'relay'), 'both paths converted, on the relay');
      t.same(await proxyConnectionsLeft(lab, proc), [], 'nothing outlives the sessions');
      t.equal((await proc.stop()).code, 0);
    });
  }
});
