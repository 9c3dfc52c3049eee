// FTPS through the proxy in reverse mode (--tls terminate, issue 14): real clients (curl, lftp,
// Python ftplib) speak FTPS to the proxy on the gateway, which speaks plain FTP to vsftpd behind
// it; the server's own addresses are unreachable from the LAN. Both data planes: PROT P data
// goes through the TLS relay either way.

import t from 'tap';
import { spawnSync } from 'node:child_process';
import { randomBytes, createHash } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { CURL8, curlModeArgs, isRoot, sha256File, startLab, SYSTEM_PYTHON, type FtpMode, type FtpTarget } from './lib/lab.js';
import { ftpsSession, viaProxy } from './lib/ftps.js';
import { startProxy, type ProxyProcess } from './lib/proxy.js';
import { eventually } from './lib/session-rig.js';

const FIVE_MIB = 5 * 1024 * 1024;

t.test('FTPS terminated by the proxy, plain FTP to vsftpd', async (t) => {
  if (!isRoot) return void t.fail('end-to-end tests need root (network namespaces)');
  const lab = await startLab(t);
  const { env } = lab;
  await lab.isolateServer();
  const cert = lab.tmpPath('proxy.crt');
  const key = lab.tmpPath('proxy.key');
  const made = spawnSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-out', cert, '-subj', '/CN=ftp.example.test', '-days', '2']);
  t.equal(made.status, 0, `openssl: ${made.stderr}`);
  const five = lab.tmpPath('5MiB.bin');
  const fiveBytes = randomBytes(FIVE_MIB);
  writeFileSync(five, fiveBytes);
  const fiveSum = createHash('sha256').update(fiveBytes).digest('hex');
  const small = await lab.expectedSha256('1MiB.bin');

  const common = ['-R', env.server4, '-P', String(env.ports.vsftpd), '-b', env.gwLan4, '--tls', 'terminate', '--tls-cert', cert, '--tls-key', key, '--data-timeout', '5'];
  const proxies: Record<'relay' | 'nftables', { proc: ProxyProcess; port: number }> = {
    relay: { proc: await startProxy(lab, [...common, '-p', '8021', '--backend', 'relay', '--data-ports', '51000-51999']), port: 8021 },
    nftables: {
      proc: await startProxy(lab, [...common, '-p', '8022', '--backend', 'nftables', '--nft-table', 'ftp_proxy_tls', '--data-ports', '52000-52999', '--tls-required']),
      port: 8022,
    },
  };
  const relaxed = await startProxy(lab, [...common, '-p', '8023', '--backend', 'relay', '--data-ports', '53000-53999', '--tls-no-reuse-check']);
  const implicit = await startProxy(lab, [...common, '-p', '8990', '--backend', 'nftables', '--nft-table', 'ftp_proxy_ftps', '--data-ports', '54000-54999', '--implicit-tls']);

  // Debian's curl 7.88 for passive; active FTPS needs curl 8 (7.88 never starts TLS on an
  // accepted data connection: curl issue 10666).
  const active = (mode: FtpMode): boolean => mode === 'port' || mode === 'eprt';
  const curlFor = (mode: FtpMode): string => (active(mode) ? CURL8 : 'curl');
  const curl = (port: number, mode: FtpMode, args: string[], path: string) =>
    lab.exec('client', curlFor(mode), [
      '-sS', '-k', '--ssl-reqd', '--max-time', '60', ...curlModeArgs(mode, undefined),
      ...args, `ftp://${env.gwLan4}:${port}/${path}`,
    ], { timeoutMs: 70_000 });
  const user = ['--user', `${env.user}:${env.pass}`];
  const lftpTls = { 'ftp:ssl-allow': 'yes', 'ftp:ssl-force': 'true', 'ftp:ssl-protect-data': 'true', 'ssl:verify-certificate': 'no' };
  const via = (port: number, mode: FtpMode, login = false): FtpTarget => viaProxy(lab, port, mode, login);

  for (const backend of ['relay', 'nftables'] as const) {
    const { proc, port } = proxies[backend];
    for (const mode of ['pasv', 'epsv', 'port', 'eprt'] as const) {
      await t.test(`${backend}: ${active(mode) ? 'curl 8' : 'curl'} --ssl-reqd ${mode}: 5 MiB up and down`, async (t) => {
        const name = `curl-${backend}-${mode}.bin`;
        const dataPaths = (kind: 'passive' | 'active') => proc.find(`${kind} data path`).length;
        const kind = active(mode) ? 'active' : 'passive';
        const before = dataPaths(kind);
        const up = await curl(port, mode, [...user, '-T', five], name);
        t.equal(up.code, 0, `upload: ${up.stderr}`);
        t.equal(await sha256File(join(env.upload.vsftpd, name)), fiveSum, 'the server got the file intact');
        const out = lab.tmpPath(name);
        const down = await curl(port, mode, [...user, '-o', out], name);
        t.equal(down.code, 0, `download: ${down.stderr}`);
        t.equal(await sha256File(out), fiveSum, 'download checksum');
        const record = () => proc.find('transfer').find((r) => r.command === 'RETR' && r.path === name);
        await eventually(() => record() !== undefined);
        t.equal(record()?.bytes, FIVE_MIB, 'the transfer record counts the plaintext bytes');
        t.equal(dataPaths(kind) - before, 2, `both transfers on ${kind} data paths`);
      });
    }
    for (const mode of ['pasv', 'port'] as const) {
      await t.test(`${backend}: lftp ssl-force, ssl-protect-data, ${mode}: 5 MiB up and down, LIST of 1000`, async (t) => {
        const name = `lftp-${backend}-${mode}.bin`;
        const out = lab.tmpPath(name);
        const r = await lab.lftp(via(port, mode, true), [`put ${five} -o ${name}`, `get ${name} -o ${out}`], lftpTls);
        t.equal(r.code, 0, `lftp: ${r.stderr}`);
        t.equal(await sha256File(join(env.upload.vsftpd, name)), fiveSum, 'upload checksum');
        t.equal(await sha256File(out), fiveSum, 'download checksum');
        const ls = await lab.lftp(via(port, mode), ['cls -1 /dir1000'], lftpTls);
        t.equal(ls.code, 0, `lftp cls: ${ls.stderr}`);
        t.equal(ls.stdout.trim().split('\n').filter((l) => l.length > 0).length, 1000, 'LIST of 1000 entries');
      });
    }
    for (const mode of ['pasv', 'epsv', 'port', 'eprt'] as const) {
      await t.test(`${backend}: Python FTP_TLS prot_p ${mode}: RETR, REST, ABOR, LIST on one session; 5 MiB up and down`, async (t) => {
        await ftpsSession(t, lab, via(port, mode), via(port, mode, true), `py-${backend}-${mode}.bin`, { small, five, fiveSum });
      });
    }
    await t.test(`${backend}: third parties racing to the advertised port get nothing; the client gets its file`, async (t) => {
      const r = await lab.pyftp(via(port, 'pasv'), ['--tls', 'race', '1MiB.bin', '--thief', env.client4Alt, '--thief', env.client4]);
      t.ok(r.ok, `race: ${r.error}`);
      const thieves = (r as unknown as { thieves: { source: string; bytes: number }[] }).thieves;
      t.same(thieves.map((x) => [x.source, x.bytes]), [[env.client4Alt, 0], [env.client4, 0]], 'another host, and a connection from the client\'s address without its TLS session');
      t.equal(r.sha256, small, 'the client\'s own transfer is intact');
      t.ok(await eventually(() => proc.find('data connection from unexpected source refused').length > 0), 'the other host was refused by address');
      t.ok(await eventually(() => proc.find('protected data connection refused').some((l) => l.code === 'TLS_NOT_RESUMED')), 'the same-address thief by its TLS session');
    });
  }

  await t.test('nftables: PROT C data takes the kernel plane, not the TLS relay', async (t) => {
    const { proc, port } = proxies.nftables;
    // Each data path's line names the plane that carries it: the relay beside nftables for PROT P.
    const relayed = (): number => proc.find('passive data path').filter((l) => l.plane === 'relay').length;
    const before = relayed();
    t.ok(before > 0, 'the PROT P transfers before went through the TLS relay');
    const out = lab.tmpPath('protc.bin');
    const r = await lab.lftp(via(port, 'pasv', true), [`get ${`curl-nftables-pasv.bin`} -o ${out}`], { ...lftpTls, 'ftp:ssl-protect-data': 'false' });
    t.equal(r.code, 0, `lftp: ${r.stderr}`);
    t.equal(await sha256File(out), fiveSum);
    t.equal(relayed(), before, 'no TLS relay log line for it');
    t.ok(proc.find('passive data path').some((l) => l.plane === 'nftables'), 'its path on the kernel plane');
  });

  await t.test('a data connection that does not resume the control session is refused (--tls-no-reuse-check admits it)', async (t) => {
    const refusedBefore = proxies.relay.proc.find('protected data connection refused').length;
    const r = await lab.pyftp({ ...via(proxies.relay.port, 'pasv'), timeoutMs: 30_000 }, ['--tls', '--no-reuse', 'get', '1MiB.bin']);
    t.notOk(r.ok, 'stock ftplib behaviour: no transfer');
    t.match(r.error, /522 Data connection refused/, 'told why, not a 226 for nothing');
    t.notOk(r.bytes, 'no bytes');
    t.ok(await eventually(() => proxies.relay.proc.find('protected data connection refused').length > refusedBefore), 'the proxy refused it');
    const ok = await lab.pyftp(via(8023, 'pasv'), ['--tls', '--no-reuse', 'get', '1MiB.bin']);
    t.equal(ok.sha256, small, '--tls-no-reuse-check');
    t.ok(relaxed.find('listening').length === 1);
  });

  await t.test('--tls-required: a plain login gets 530; nothing reaches the server', async (t) => {
    const r = await lab.pyftp({ ...via(proxies.nftables.port, 'pasv'), user: env.user, pass: env.pass }, ['login']);
    t.notOk(r.ok);
    t.match(r.error, /530 TLS required/);
    t.ok(r.replies.every((l) => !l.startsWith('< 331')), 'USER was not forwarded');
    const plainAllowed = await lab.pyftp(via(proxies.relay.port, 'pasv'), ['get', '1MiB.bin']);
    t.equal(plainAllowed.sha256, small, 'without --tls-required plain FTP still works');
  });

  await t.test('a client that fails the TLS handshake is closed with a log line; the proxy serves on', async (t) => {
    const script = [
      'import socket,sys',
      `s=socket.create_connection(("${env.gwLan4}",${proxies.relay.port}),timeout=10)`,
      'f=s.makefile("rb")',
      'f.readline()',
      's.sendall(b"AUTH TLS\\r\\n")',
      'print(f.readline().decode().strip())',
      's.sendall(b"this is not a ClientHello\\r\\n"*4)',
      'print(repr(s.recv(100)))',
    ].join('\n');
    const r = await lab.exec('client', SYSTEM_PYTHON, ['-c', script]);
    t.match(r.stdout, /^234 /);
    t.ok(await eventually(() => proxies.relay.proc.find('TLS handshake with the client failed').length > 0), 'logged');
    const after = await lab.pyftp(via(proxies.relay.port, 'pasv'), ['--tls', 'get', '1MiB.bin']);
    t.equal(after.sha256, small, 'the next session works');
  });

  await t.test('--implicit-tls: curl ftps:// 5 MiB up and down, lftp ftps:// LIST', async (t) => {
    const url = (path: string) => `ftps://${env.gwLan4}:8990/${path}`;
    const up = await lab.exec('client', 'curl', ['-sS', '-k', '--max-time', '60', ...user, '-T', five, url('implicit.bin')], { timeoutMs: 70_000 });
    t.equal(up.code, 0, `upload: ${up.stderr}`);
    t.equal(await sha256File(join(env.upload.vsftpd, 'implicit.bin')), fiveSum, 'upload checksum');
    const out = lab.tmpPath('implicit.bin');
    const down = await lab.exec('client', 'curl', ['-sS', '-k', '--max-time', '60', ...user, '-o', out, url('implicit.bin')], { timeoutMs: 70_000 });
    t.equal(down.code, 0, `download: ${down.stderr}`);
    t.equal(await sha256File(out), fiveSum, 'download checksum');
    const ls = await lab.exec('client', 'lftp', ['-c', `set cmd:fail-exit yes; set net:max-retries 1; set ssl:verify-certificate no; open -p 8990 ftps://${env.gwLan4}; cls -1 /dir1000`]);
    t.equal(ls.code, 0, `lftp: ${ls.stderr}`);
    t.equal(ls.stdout.trim().split('\n').length, 1000, 'LIST of 1000 over PROT P');
    t.ok(await eventually(() => implicit.find('transfer').some((r) => r.command === 'RETR' && r.bytes === FIVE_MIB)), 'counted by the TLS relay');
  });

  await t.test('no error-level log lines; the proxies stop cleanly', async (t) => {
    for (const p of [proxies.relay.proc, proxies.nftables.proc, relaxed, implicit]) {
      t.same(p.logs.filter((l) => l.level >= 50), []);
      t.equal((await p.stop()).code, 0);
    }
  });
});
