// The example rulesets (examples/nftables/), each loaded on the lab's gateway with its define
// lines set to the lab's interfaces and addresses, in place of the lab's own firewall: with the
// proxy in front, passive and active transfers go through their drop policies.

import t, { type Test } from 'tap';
import { join } from 'node:path';
import { startLab, isRoot, sha256File, type FtpMode, type Lab } from './lib/lab.js';
import { startProxy } from './lib/proxy.js';
import { example, loadRuleset, reverseDefines } from './lib/rulesets.js';

const PORT = 8021;
const DATA = ['--mark', '0x2a', '--data-ports', '50000-50999'];
const OUTBOUND: readonly [4 | 6, FtpMode][] = [[4, 'pasv'], [4, 'port'], [6, 'epsv'], [6, 'eprt']];
// The reverse example admits clients on one public IPv4 address.
const REVERSE: readonly [4 | 6, FtpMode][] = [[4, 'pasv'], [4, 'port'], [4, 'epsv'], [4, 'eprt']];

/** Downloads and uploads 1 MiB with curl to `target(family, mode, user)`, checksums checked. */
async function carries(
  t: Test,
  lab: Lab,
  modes: readonly [4 | 6, FtpMode][],
  target: (family: 4 | 6, user: boolean) => { host: string; port: number },
  upload: string,
): Promise<void> {
  const sum = await lab.expectedSha256('1MiB.bin');
  for (const [family, mode] of modes) {
    const get = await lab.curlGet({ ...target(family, false), mode, path: '1MiB.bin', timeoutMs: 20_000 });
    t.equal(get.sha256, sum, `IPv${family} ${mode} download ${get.stderr}`);
    const name = `example-${family}-${mode}.bin`;
    const put = await lab.curlPut({ ...target(family, true), mode, path: name, file: join(lab.env.cacheDir, '1MiB.bin'), timeoutMs: 20_000 });
    t.ok(put.ok, `IPv${family} ${mode} upload ${put.stderr}`);
    t.equal(await sha256File(join(upload, name)), sum, `IPv${family} ${mode} upload checksum`);
  }
}

for (const backend of ['nftables', 'relay'] as const) {
  t.test(`${backend}: examples/nftables/outbound-gateway.nft on the LAN gateway`, { skip: isRoot ? false : 'needs root' }, async (t) => {
    const lab = await startLab(t);
    const ports = lab.env.ports;
    const text = await example('outbound-gateway.nft', {
      LAN_IF: '"lan0"',
      WAN_IF: '"wan0"',
      PROXY_PORT: String(PORT),
      FTP_PORTS: `{ ${ports.vsftpd}, ${ports.pyftpd}, ${ports.pureftpd} }`,
    });
    await loadRuleset(lab, text, 'outbound-gateway.nft');
    t.notMatch(await lab.nft(['list', 'ruleset']), /lab_fw/, 'the lab’s own firewall is gone (flush ruleset)');
    const proxy = await startProxy(lab, ['-b', '::', '-p', String(PORT), '--backend', backend, ...DATA]);
    t.teardown(() => proxy.stop());
    await carries(t, lab, OUTBOUND, (family, user) => ({ ...lab.target('vsftpd', family), ...(user ? { user: lab.env.user, pass: lab.env.pass } : {}) }), lab.env.upload.vsftpd);
  });

  t.test(`${backend}: examples/nftables/reverse-server.nft in front of an internal server`, { skip: isRoot ? false : 'needs root' }, async (t) => {
    const lab = await startLab(t);
    await loadRuleset(lab, await example('reverse-server.nft', reverseDefines(lab, PORT)), 'reverse-server.nft');
    t.notMatch(await lab.nft(['list', 'ruleset']), /lab_fw/, 'the lab’s own firewall is gone (flush ruleset)');
    const proxy = await startProxy(lab, ['-R', lab.env.server4, '-P', String(lab.env.ports.pyftpd), '-b', lab.env.gwLan4, '-p', String(PORT), '--backend', backend, ...DATA]);
    t.teardown(() => proxy.stop());
    const user = { user: lab.env.user, pass: lab.env.pass };
    await carries(t, lab, REVERSE, (_family, withUser) => ({ host: lab.env.gwLan4, port: PORT, ...(withUser ? user : {}) }), lab.env.upload.pyftpd);
  });
}
