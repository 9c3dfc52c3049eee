// Outbound mode with the relay: active data reaches the client from the server's address (and
// port 20 with -r), as the kernel helper and the nftables plane deliver it; careful clients
// (ncftp) refuse anything else. The policy routing this takes leaves with the proxy.

import t from 'tap';
import { join } from 'node:path';
import { isRoot, sha256File, startLab, type FtpTarget, type Lab } from './lib/lab.js';
import { startProxy, startUnprivilegedProxy } from './lib/proxy.js';

const TABLE = 2121;
const ARGS = ['-b', '::', '-p', '8021', '--backend', 'relay'];
const routing = (lab: Lab): Promise<string[]> => lab.proxyRouting(TABLE);

/** The client's data port from the PORT command of an ftplib transcript. */
function portOf(replies: readonly string[]): number {
  const line = replies.find((l) => l.startsWith('> PORT '));
  const f = line?.slice(7).split(',').map(Number) ?? [];
  return f.length === 6 ? f[4]! * 256 + f[5]! : NaN;
}

t.test("outbound relay: active data comes from the server's address", async (t) => {
  if (!isRoot) return t.fail('end-to-end tests need root (network namespaces)');
  const lab = await startLab(t);
  await lab.redirect(true, 8021);
  const sha = await lab.expectedSha256('1MiB.bin');
  const { client4, server4, server6, gwLan4 } = lab.env;
  const vsftpd = (family: 4 | 6, mode: FtpTarget['mode']): FtpTarget => ({ ...lab.target('vsftpd', family), mode, timeoutMs: 20_000 });

  await t.test('ncftpget -E, ftplib PORT and EPRT; one narrow rule per connection', async (t) => {
    const proxy = await startProxy(lab, ARGS);
    const nc = await lab.ncftpGet({ ...vsftpd(4, 'port'), path: '1MiB.bin' });
    t.equal(nc.sha256, sha, `ncftpget -E accepts the data connection and gets the file ${nc.stderr}`);

    const v4 = await lab.pyftp(vsftpd(4, 'port'), ['get', '1MiB.bin']);
    t.equal(v4.sha256, sha, `ftplib PORT ${v4.error ?? ''}`);
    t.equal(v4.data_peers[0]?.[0], server4, 'the IPv4 data connection comes from the server');
    // The rule outlives its connection by a few seconds (the closing handshake needs it).
    t.ok(
      (await routing(lab)).some((l) =>
        l.endsWith(`from ${client4} to ${server4} ipproto tcp sport ${portOf(v4.replies)} dport ${v4.data_peers[0]?.[1]} lookup ${TABLE}`),
      ),
      'the rule matches this one connection: client, server, both ports',
    );

    const login = { user: lab.env.user, pass: lab.env.pass };
    const up = await lab.pyftp({ ...vsftpd(4, 'port'), ...login }, ['put', join(lab.env.cacheDir, '1MiB.bin'), 'active-up']);
    t.ok(up.ok, `ftplib PORT upload ${up.error ?? ''}`);
    t.equal(await sha256File(join(lab.env.upload.vsftpd, 'active-up')), sha, 'the upload arrives whole (the client sends first)');

    const v6 = await lab.pyftp(vsftpd(6, 'eprt'), ['get', '1MiB.bin']);
    t.equal(v6.sha256, sha, `ftplib EPRT ${v6.error ?? ''}`);
    t.equal(v6.data_peers[0]?.[0], server6, 'the IPv6 data connection comes from the server');

    t.same(proxy.logs.filter((l) => l.level >= 50), [], 'no error-level log lines');
    t.equal((await proxy.stop()).code, 0, 'SIGTERM exits 0');
    t.same(await routing(lab), [], 'no rule and no route of ours is left');
  });

  await t.test('-r: from port 20; after a crash the next start removes what was left', async (t) => {
    const first = await startProxy(lab, [...ARGS, '-r']);
    const r = await lab.pyftp(vsftpd(4, 'port'), ['get', '1MiB.bin']);
    t.equal(r.sha256, sha, `ftplib PORT ${r.error ?? ''}`);
    t.same(r.data_peers[0], [server4, 20], "from the server's address and port 20");
    // Killed while the last connection's rule lingers: the rule and the table's routes stay.
    await first.stop('SIGKILL');
    const left = await routing(lab);
    t.ok(left.some((l) => l.includes(`dport 20 lookup ${TABLE}`)), `a rule was left: ${left.join(' | ')}`);

    const second = await startProxy(lab, [...ARGS, '-r']);
    t.ok((second.find('removed policy routing rules left by an earlier run')[0]?.rules as number) >= 1, 'the next start removed it');
    const nc = await lab.ncftpGet({ ...vsftpd(4, 'port'), path: '1MiB.bin' });
    t.equal(nc.sha256, sha, `ncftpget -E ${nc.stderr}`);
    t.equal((await second.stop()).code, 0);
    t.same(await routing(lab), [], 'nothing is left');
  });

  await t.test("without CAP_NET_ADMIN: one warning, data from the gateway's address as before", async (t) => {
    const proxy = await startUnprivilegedProxy(lab, ARGS);
    const warned = proxy.logs.filter((l) => /cannot use the server's address/.test(l.msg));
    t.equal(warned.length, 1, 'one log line says so');
    t.match(warned[0]?.err, /EPERM/, 'and why');
    const r = await lab.pyftp(vsftpd(4, 'port'), ['get', '1MiB.bin']);
    t.equal(r.sha256, sha, `ftplib PORT still works ${r.error ?? ''}`);
    t.equal(r.data_peers[0]?.[0], gwLan4, "from the gateway's LAN address");
    const nc = await lab.ncftpGet({ ...vsftpd(4, 'port'), path: 'small.txt', timeoutMs: 10_000 });
    t.notOk(nc.ok, 'ncftpget -E refuses that (the documented limit)');
    t.equal((await proxy.stop()).code, 0);
    t.same(await routing(lab), [], 'nothing was installed');
  });
});
