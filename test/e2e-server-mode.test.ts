// --server-mode passive behind a gateway nothing on the WAN can connect to (the lab's second NAT
// drops every unsolicited inbound connection): active-mode clients fail without it (the control
// case) and get their downloads, uploads, REST, ABOR then RETR, and LIST with it, on both planes,
// through real servers; nothing of a converted path outlives its session.

import t, { type Test } from 'tap';
import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isRoot, sha256File, startLab, type FtpMode, type FtpTarget, type Lab, type ServerName } from './lib/lab.js';
import { proxyConnectionsLeft, startProxy } from './lib/proxy.js';
import { nftDrained } from './lib/nft-state.js';

const SERVERS: readonly ServerName[] = ['vsftpd', 'pureftpd', 'pyftpd'];
const INETUTILS_FTP = '/usr/bin/inetutils-ftp';

/** inetutils ftp (active by default): `commands` after an anonymous or user login, -v for replies. */
async function inetutilsFtp(lab: Lab, to: FtpTarget, commands: string[]) {
  const login = `user ${to.user ?? 'anonymous'} ${to.pass ?? 'lab@example.org'}`;
  return lab.exec('client', INETUTILS_FTP, ['-n', '-v', to.host, String(to.port)], {
    input: [login, 'binary', ...commands, 'quit', ''].join('\n'),
    timeoutMs: to.timeoutMs ?? 30_000,
  });
}


async function suite(t: Test, backend: 'nftables' | 'relay'): Promise<void> {
  if (!isRoot) return void t.fail('end-to-end tests need root (network namespaces)');
  const lab = await startLab(t, { upstreamNat: true });
  const e = lab.env;
  const file = await readFile(join(e.cacheDir, '1MiB.bin'));
  const small = await lab.expectedSha256('1MiB.bin');
  const restAt = 300_000;
  const restSum = createHash('sha256').update(file.subarray(restAt)).digest('hex');
  const uploadSrc = join(e.cacheDir, '1MiB.bin');
  const table = `ftp_proxy_sm`;
  const at = (s: ServerName, mode: FtpMode, family: 4 | 6 = 4, user = false): FtpTarget => ({
    ...lab.target(s, family),
    mode,
    timeoutMs: 30_000,
    ...(user ? { user: e.user, pass: e.pass } : {}),
  });
  await lab.redirect(true, 8021);
  const base = ['-b', '::', '-p', '8021', '--backend', backend, '--nft-table', table, '--data-timeout', '5'];

  await t.test('control: without --server-mode passive, active transfers fail behind the second NAT', async (t) => {
    const proc = await startProxy(lab, base);
    const probe = `import socket,sys\ntry:\n socket.create_connection((sys.argv[1], 8021), timeout=3); print('open')\nexcept OSError as e: print('closed', e)`;
    const inbound = await lab.exec('server', '/usr/bin/python3', ['-c', probe, e.gwWan4]);
    t.match(inbound.stdout, /^closed/, "the server cannot open a connection to the gateway's WAN address");
    const curl = await lab.curlGet({ ...at('vsftpd', 'port'), path: '1MiB.bin', timeoutMs: 12_000 });
    t.notOk(curl.ok, 'curl --ftp-port - fails');
    const py = await lab.pyftp({ ...at('pyftpd', 'port'), timeoutMs: 12_000 }, ['get', '1MiB.bin']);
    t.notOk(py.ok, `ftplib set_pasv(False) fails (${py.error ?? ''})`);
    const passive = await lab.curlGet({ ...at('vsftpd', 'pasv'), path: '1MiB.bin' });
    t.equal(passive.sha256, small, 'passive works: the lab is otherwise fine');
    t.equal((await proc.stop()).code, 0);
  });

  const proc = await startProxy(lab, [...base, '--server-mode', 'passive']);
  const leaks = async (t: Test): Promise<void> => {
    if (backend === 'nftables') t.same(await nftDrained(lab, table), {}, 'the kernel table holds no element');
    t.same(await proxyConnectionsLeft(lab, proc), [], 'no connection of the proxy outlives its session');
  };

  for (const s of SERVERS) {
    await t.test(`${s}: curl --ftp-port -, down and up`, async (t) => {
      const get = await lab.curlGet({ ...at(s, 'port'), path: '1MiB.bin' });
      t.equal(get.sha256, small, `download ${get.stderr}`);
      const name = `sm-${backend}-curl.bin`;
      const put = await lab.curlPut({ ...at(s, 'eprt', 4, true), path: name, file: uploadSrc });
      t.ok(put.ok, `upload (EPRT) ${put.stderr}`);
      t.equal(await sha256File(join(e.upload[s], name)), small, 'upload checksum');
      await leaks(t);
    });
    await t.test(`${s}: lftp passive off, get, put, LIST`, async (t) => {
      const out = lab.tmpPath(`lftp-${s}`);
      const r = await lab.lftp(at(s, 'port'), [`get /1MiB.bin -o ${out}`, 'cls -1 /dir1000']);
      t.equal(r.code, 0, `lftp: ${r.stderr}`);
      t.equal(await sha256File(out), small, 'download checksum');
      t.equal(r.stdout.trim().split('\n').length, 1000, 'LIST of 1000');
      const name = `sm-${backend}-lftp.bin`;
      const up = await lab.lftp(at(s, 'port', 4, true), [`put ${uploadSrc} -o ${name}`]);
      t.equal(up.code, 0, `lftp upload: ${up.stderr}`);
      t.equal(await sha256File(join(e.upload[s], name)), small, 'upload checksum');
      await leaks(t);
    });
    await t.test(`${s}: ftplib set_pasv(False): get, REST, ABOR then RETR, put, LIST on one session`, async (t) => {
      const name = `sm-${backend}-py.bin`;
      const r = await lab.pyftp({ ...at(s, 'port'), timeoutMs: 60_000 }, [
        'session', 'get=1MiB.bin', `rest=1MiB.bin@${restAt}`, 'abor=100MiB.bin', 'get=1MiB.bin', 'list=dir1000',
      ]);
      t.ok(r.ok, `session: ${r.error ?? ''}`);
      const [get, rest, abor, again, list] = r.steps ?? [];
      t.equal(get?.sha256, small, 'download checksum');
      t.equal(rest?.sha256, restSum, 'REST resume checksum');
      t.ok(abor?.noop_ok, `ABOR answered (${abor?.abort_replies?.join(' | ')}) and the session goes on`);
      t.equal(again?.sha256, small, 'RETR after ABOR');
      t.equal(list?.count, 1000, 'LIST');
      t.ok(r.replies.some((l) => /^< 200 PORT command successful/.test(l)), 'the proxy answered PORT itself');
      const put = await lab.pyftp(at(s, 'port', 4, true), ['put', uploadSrc, name]);
      t.ok(put.ok, `upload: ${put.error ?? ''}`);
      t.equal(await sha256File(join(e.upload[s], name)), small, 'upload checksum');
      await leaks(t);
    });
  }

  for (const s of SERVERS) {
    await t.test(`${s}: ftplib set_pasv(False): APPE, STOU, NLST`, async (t) => {
      const user = at(s, 'port', 4, true);
      const name = `sm-${backend}-appe.bin`;
      t.ok((await lab.pyftp(user, ['put', uploadSrc, name])).ok, 'STOR');
      const appe = await lab.pyftp(user, ['put', uploadSrc, name, '--verb', 'APPE']);
      t.ok(appe.ok, `APPE: ${appe.error ?? ''}`);
      const twice = createHash('sha256').update(file).update(file).digest('hex');
      t.equal(await sha256File(join(e.upload[s], name)), twice, 'APPE appended the whole file');
      const before = new Set(await readdir(e.upload[s]));
      const stou = await lab.pyftp(user, ['put', uploadSrc, 'ignored', '--verb', 'STOU']);
      t.ok(stou.ok, `STOU: ${stou.error ?? ''} ${stou.final ?? ''}`);
      const made = (await readdir(e.upload[s])).filter((f) => !before.has(f));
      t.equal(made.length, 1, `STOU made one file (${stou.final ?? ''})`);
      t.equal(await sha256File(join(e.upload[s], made[0] ?? 'none')), small, 'STOU checksum');
      const nlst = await lab.pyftp(at(s, 'port'), ['nlst', 'dir1000']);
      // pure-ftpd lists . and .. too.
      t.equal(nlst.lines?.filter((x) => /f\d{4}\.txt$/.test(x)).length, 1000, 'NLST of 1000');
      await leaks(t);
    });
  }

  await t.test('ftplib EPRT over IPv6, vsftpd', async (t) => {
    const r = await lab.pyftp(at('vsftpd', 'eprt', 6), ['get', '1MiB.bin']);
    t.equal(r.sha256, small, `IPv6 download ${r.error ?? ''}`);
    await leaks(t);
  });

  await t.test('inetutils ftp (active by default): get and put', async (t) => {
    const out = lab.tmpPath('inetutils');
    const name = `sm-${backend}-inetutils.bin`;
    const anon = await inetutilsFtp(lab, at('vsftpd', 'port'), [`get 1MiB.bin ${out}`]);
    t.match(anon.stdout, /226 /, `download finished: ${anon.stdout.slice(-300)}`);
    t.equal(await sha256File(out), small, 'download checksum');
    const up = await inetutilsFtp(lab, at('vsftpd', 'port', 4, true), [`put ${uploadSrc} ${name}`]);
    t.match(up.stdout, /226 /, `upload finished: ${up.stdout.slice(-300)}`);
    t.equal(await sha256File(join(e.upload.vsftpd, name)), small, 'upload checksum');
    await leaks(t);
  });

  await t.test('each converted path says so, and which plane carried it; no errors; clean stop', async (t) => {
    const paths = proc.logs.filter((l) => l.msg === 'active data path');
    t.ok(paths.length >= 20, `${paths.length} active data paths logged`);
    t.ok(paths.every((l) => l.converted === true && l.plane === 'relay'), 'all converted, all carried by the relay');
    t.same(proc.logs.filter((l) => l.level >= 50), [], 'no error-level log lines');
    t.equal((await proc.stop()).code, 0, 'exit 0 after SIGTERM');
  });
}

t.test('--server-mode passive behind a second NAT, nftables plane', (t) => suite(t, 'nftables'));
t.test('--server-mode passive behind a second NAT, relay plane', (t) => suite(t, 'relay'));
