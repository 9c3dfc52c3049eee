// --masquerade-for end to end, both data planes: one reverse proxy listening on :: tells LAN and
// WAN clients different addresses in 227 (most specific block first), and each of them transfers.
import t from 'tap';
import { isRoot, startLab, type FtpTarget, type NsName } from './lib/lab.js';
import { startProxy } from './lib/proxy.js';

/** The address a 227 in an ftplib transcript carries. */
function told227(replies: readonly string[]): string | undefined {
  const m = replies.map((l) => /^< 227 .*\((\d+),(\d+),(\d+),(\d+),\d+,\d+\)/.exec(l)).find((x) => x !== null);
  return m ? m.slice(1, 5).join('.') : undefined;
}

t.test('--masquerade-for on both data planes', async (t) => {
  if (!isRoot) return t.fail('end-to-end tests need root (network namespaces)');
  const lab = await startLab(t);
  const { env } = lab;
  const small = await lab.expectedSha256('1MiB.bin');

  for (const [i, backend] of (['nftables', 'relay'] as const).entries()) {
    await t.test(`${backend} plane`, async (t) => {
      const port = 8021 + i;
      const proxy = await startProxy(lab, [
        '-R', env.server4, '-P', String(env.ports.vsftpd), '-b', '::', '-p', String(port),
        '--backend', backend, '--nft-table', `ftp_proxy_${backend}`,
        '--data-ports', `${50000 + i * 1000}-${50999 + i * 1000}`,
        // As if the WAN address were a NAT's public one: without the blocks, LAN clients would
        // be sent round through it too.
        '--masquerade-address', env.gwWan4,
        '--masquerade-for', `192.0.2.0/24=${env.gwLan4}`,
        '--masquerade-for', `${env.client4Alt}/32=${env.gwWan4}`,
      ]);
      const cases: { name: string; ns: NsName; source: string; host: string; want: string }[] = [
        { name: 'LAN client to the LAN address', ns: 'client', source: env.client4, host: env.gwLan4, want: env.gwLan4 },
        { name: 'LAN client to the WAN address (told the LAN one: the path waits there)', ns: 'client', source: env.client4, host: env.gwWan4, want: env.gwLan4 },
        { name: 'LAN client in a more specific block', ns: 'client', source: env.client4Alt, host: env.gwLan4, want: env.gwWan4 },
        { name: 'WAN client (no block: --masquerade-address)', ns: 'server', source: env.server4, host: env.gwWan4, want: env.gwWan4 },
      ];
      for (const c of cases) {
        const target: FtpTarget = { host: c.host, port, ns: c.ns, source: c.source, timeoutMs: 20_000 };
        const pasv = await lab.pyftp({ ...target, mode: 'pasv' }, ['get', '1MiB.bin']);
        t.equal(told227(pasv.replies), c.want, `${c.name}: told ${c.want}`);
        t.equal(pasv.sha256, small, `${c.name}: PASV download ${pasv.error ?? ''}`);
        t.same(pasv.data_peers.map((p) => p[0]), [c.want], `${c.name}: the data connection went to ${c.want}`);
        const active = await lab.pyftp({ ...target, mode: 'port' }, ['get', '1MiB.bin']);
        t.equal(active.sha256, small, `${c.name}: PORT download ${active.error ?? ''}`);
      }
      const curl = await lab.curlGet({ host: env.gwLan4, port, mode: 'pasv', trustPasvAddress: true, path: '1MiB.bin' });
      t.equal(curl.sha256, small, `curl, trusting the 227 address ${curl.stderr}`);
      t.same(proxy.logs.filter((l) => l.level >= 50), [], 'no error-level log lines');
      t.equal((await proxy.stop()).code, 0, 'SIGTERM exits 0');
    });
  }
});
