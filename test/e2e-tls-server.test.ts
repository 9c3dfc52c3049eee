// --server-tls explicit (issue 14): FTPS from the client ends at the proxy, which speaks FTPS
// again to a vsftpd with ssl_enable=YES and require_ssl_reuse=YES (so every data connection
// toward it must resume the proxy's control session), checked against a CA of the test's own.

import t from 'tap';
import { spawnSync } from 'node:child_process';
import { randomBytes, createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isRoot, sha256File, startLab, type FtpMode, type FtpTarget } from './lib/lab.js';
import { ftpsSession, viaProxy } from './lib/ftps.js';
import { startProxy } from './lib/proxy.js';
import { eventually } from './lib/session-rig.js';

const FIVE_MIB = 5 * 1024 * 1024;
const TLS_PORT = 2990;

function openssl(args: string[]): void {
  const r = spawnSync('openssl', args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
}

t.test('FTPS to the proxy, FTPS again to vsftpd with require_ssl_reuse', async (t) => {
  if (!isRoot) return void t.fail('end-to-end tests need root (network namespaces)');
  const lab = await startLab(t);
  const { env } = lab;
  await lab.isolateServer();
  const p = (name: string) => lab.tmpPath(name);
  const key = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-days', '2'];
  const proxyCert = { cert: p('proxy.crt'), key: p('proxy.key') };
  openssl(['req', '-x509', ...key, '-keyout', proxyCert.key, '-out', proxyCert.cert, '-subj', '/CN=ftp.example.test']);
  const ca = { cert: p('ca.crt'), key: p('ca.key') };
  openssl(['req', '-x509', ...key, '-keyout', ca.key, '-out', ca.cert, '-subj', '/CN=lab CA']);
  // The server's certificate names its address: the proxy checks it against -R.
  const server = { cert: p('server.crt'), key: p('server.key') };
  openssl(['req', '-x509', ...key, '-keyout', server.key, '-out', server.cert, '-subj', '/CN=ftp server', '-addext', `subjectAltName=IP:${env.server4}`, '-CA', ca.cert, '-CAkey', ca.key]);

  // A second vsftpd, the lab's own configuration plus FTPS that it requires of everyone.
  const vsftpdLog = p('vsftpd-tls.log');
  const conf = (await readFile(join(env.stateDir, 'etc', 'vsftpd.conf'), 'utf8'))
    .replace(/^listen_port=.*$/m, `listen_port=${TLS_PORT}`)
    .replace(/^vsftpd_log_file=.*$/m, `vsftpd_log_file=${vsftpdLog}`);
  const confFile = p('vsftpd-tls.conf');
  await writeFile(confFile, `${conf}
ssl_enable=YES
allow_anon_ssl=YES
force_anon_logins_ssl=YES
force_anon_data_ssl=YES
force_local_logins_ssl=YES
force_local_data_ssl=YES
require_ssl_reuse=YES
rsa_cert_file=${server.cert}
rsa_private_key_file=${server.key}
`);
  lab.spawn('server', 'vsftpd', [confFile]);
  const up = await lab.exec('server', 'bash', ['-c', `for i in $(seq 50); do (echo > /dev/tcp/${env.server4}/${TLS_PORT}) 2>/dev/null && exit 0; sleep 0.1; done; exit 1`]);
  t.equal(up.code, 0, 'vsftpd with TLS listens');

  const common = ['-R', env.server4, '-P', String(TLS_PORT), '-b', env.gwLan4, '--tls', 'terminate', '--tls-cert', proxyCert.cert, '--tls-key', proxyCert.key, '--server-tls', 'explicit', '--data-timeout', '5'];
  const strictRelay = await startProxy(lab, [...common, '-p', '8021', '--backend', 'relay', '--data-ports', '51000-51999', '--server-ca', ca.cert]);
  const strictNft = await startProxy(lab, [...common, '-p', '8022', '--backend', 'nftables', '--nft-table', 'ftp_proxy_stls', '--data-ports', '52000-52999', '--server-ca', ca.cert]);
  const wrongCa = await startProxy(lab, [...common, '-p', '8023', '--backend', 'relay', '--data-ports', '53000-53999', '--server-ca', proxyCert.cert]);
  const insecure = await startProxy(lab, [...common, '-p', '8024', '--backend', 'relay', '--data-ports', '54000-54999', '--server-tls-insecure']);

  const five = p('5MiB.bin');
  const bytes = randomBytes(FIVE_MIB);
  await writeFile(five, bytes);
  const fiveSum = createHash('sha256').update(bytes).digest('hex');
  const small = await lab.expectedSha256('1MiB.bin');
  const via = (port: number, mode: FtpMode, login = false): FtpTarget => viaProxy(lab, port, mode, login);

  for (const [name, port] of [['relay', 8021], ['nftables', 8022]] as const) {
    for (const mode of ['pasv', 'epsv', 'port', 'eprt'] as const) {
      await t.test(`${name}: Python FTP_TLS ${mode}: RETR, REST, ABOR, LIST; 5 MiB up and down`, async (t) => {
        await ftpsSession(t, lab, via(port, mode), via(port, mode, true), `stls-${name}-${mode}.bin`, { small, five, fiveSum });
      });
    }
    await t.test(`${name}: curl --ssl-reqd and lftp with clear data (PROT C) to the client, TLS to the server`, async (t) => {
      const out = p(`curl-${name}.bin`);
      const c = await lab.exec('client', 'curl', ['-sS', '-k', '--ssl-reqd', '--max-time', '60', '-o', out, `ftp://${env.gwLan4}:${port}/1MiB.bin`], { timeoutMs: 70_000 });
      t.equal(c.code, 0, `curl: ${c.stderr}`);
      t.equal(await sha256File(out), small);
      const lout = p(`lftp-${name}.bin`);
      const l = await lab.lftp(via(port, 'pasv'), [`get /1MiB.bin -o ${lout}`, 'cls -1 /dir1000'], {
        'ftp:ssl-allow': 'yes', 'ftp:ssl-force': 'true', 'ftp:ssl-protect-data': 'false', 'ssl:verify-certificate': 'no',
      });
      t.equal(l.code, 0, `lftp: ${l.stderr}`);
      t.equal(await sha256File(lout), small);
      t.equal(l.stdout.trim().split('\n').length, 1000);
    });
  }

  await t.test('a server certificate that does not chain to --server-ca: 421, logged; --server-tls-insecure goes on, warned', async (t) => {
    const r = await lab.pyftp(via(8023, 'pasv'), ['--tls', 'login']);
    t.notOk(r.ok);
    t.ok(r.replies.some((l) => l.startsWith('< 421 Service not available: TLS to the server failed')), JSON.stringify(r.replies));
    t.ok(await eventually(() => wrongCa.find('TLS handshake with the server failed').length > 0), 'logged');
    const ok = await lab.pyftp(via(8024, 'pasv'), ['--tls', 'get', '1MiB.bin']);
    t.equal(ok.sha256, small);
    t.ok(insecure.logs.some((l) => l.level === 40 && /--server-tls-insecure/.test(l.msg)), 'the warning at start');
  });

  await t.test('vsftpd saw every data connection over TLS, resumed (else it would have answered 522)', async (t) => {
    const log = await readFile(vsftpdLog, 'utf8');
    t.match(log, /"226 Transfer complete\."/, 'its protocol log has the transfers');
    t.notMatch(log, /"522 /);
  });

  await t.test('no error-level log lines but the refused certificate; the proxies stop cleanly', async (t) => {
    for (const proc of [strictRelay, strictNft, insecure]) {
      t.same(proc.logs.filter((l) => l.level >= 50), []);
      t.equal((await proc.stop()).code, 0);
    }
    t.equal((await wrongCa.stop()).code, 0);
  });
});
