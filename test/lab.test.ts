// The namespace lab itself, with real clients straight to the real servers (no proxy): what works
// through a plain masquerading gateway, what does not (active FTP), and that it cleans up.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { SERVERS, isRoot, sha256File, startLab, type Lab } from './lib/lab.js';

const LAB_SCRIPT = fileURLToPath(new URL('../scripts/lab', import.meta.url));

function netnsNames(): string[] {
  return spawnSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .stdout.split('\n')
    .map((l) => l.split(' ')[0] ?? '')
    .filter(Boolean);
}

function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

t.test('namespace lab', { skip: isRoot ? false : 'needs root (network namespaces, nftables)' }, async (t) => {
  let prefix = '';
  let stateDir = '';
  let serverPids: number[] = [];
  let spawnedPid: number | undefined;

  await t.test('lab up', async (t) => {
    const started = Date.now();
    const lab: Lab = await startLab(t);
    t.comment(`lab ${lab.prefix} up in ${Date.now() - started} ms`);
    prefix = lab.prefix;
    stateDir = lab.env.stateDir;
    serverPids = Object.values(lab.env.pids);
    t.ok(serverPids.every(running), 'servers running');
    for (const ns of Object.values(lab.env.ns)) t.ok(netnsNames().includes(ns), `${ns} exists`);

    const sha1M = await lab.expectedSha256('1MiB.bin');
    t.equal(await sha256File(join(lab.env.ftpRoot, '1MiB.bin')), sha1M, 'cache matches SHA256SUMS');

    await t.test('passive download through plain masquerade', async (t) => {
      for (const server of SERVERS) {
        const v4 = await lab.curlGet({ ...lab.target(server, 4), path: '1MiB.bin', mode: 'pasv' });
        t.ok(v4.ok, `${server} PASV over IPv4`, { stderr: v4.stderr });
        t.equal(v4.sha256, sha1M, `${server} IPv4 sha256`);
        const v6 = await lab.curlGet({ ...lab.target(server, 6), path: '1MiB.bin', mode: 'epsv' });
        t.ok(v6.ok, `${server} EPSV over IPv6`, { stderr: v6.stderr });
        t.equal(v6.sha256, sha1M, `${server} IPv6 sha256`);
      }
    });

    await t.test('active mode fails through plain masquerade (the case ftp-proxy exists for)', async (t) => {
      for (const server of SERVERS) {
        const r = await lab.curlGet({ ...lab.target(server, 4), path: 'small.txt', mode: 'port', timeoutMs: 10_000 });
        t.notOk(r.ok, `${server}: curl PORT fails`);
        const py = await lab.pyftp(lab.target(server, 4, { mode: 'port', timeoutMs: 10_000 }), ['get', 'small.txt']);
        t.notOk(py.ok, `${server}: ftplib PORT fails`);
        t.match(py.error ?? '', /^error_perm: 50\d/, `${server} refuses the PORT address`);
      }
      const v6 = await lab.pyftp(lab.target('vsftpd', 6, { mode: 'eprt', timeoutMs: 10_000 }), ['get', 'small.txt']);
      t.notOk(v6.ok, 'vsftpd: ftplib EPRT over IPv6 fails');
    });

    await t.test('kernel FTP helper on the gateway makes active mode work', async (t) => {
      await lab.helper(true);
      t.teardown(() => lab.helper(false));
      t.match(await lab.nft(['list', 'chain', 'inet', lab.env.fwTable, 'ftp_helper']), /ct helper set "ftp_std"/);
      const port = await lab.curlGet({ ...lab.target('vsftpd', 4), path: '1MiB.bin', mode: 'port' });
      t.ok(port.ok, 'PORT with the helper', { stderr: port.stderr });
      t.equal(port.sha256, sha1M);
      const eprt = await lab.pyftp(lab.target('vsftpd', 6, { mode: 'eprt' }), ['get', '1MiB.bin']);
      t.ok(eprt.ok, 'EPRT over IPv6 with the helper', { error: eprt.error });
      t.equal(eprt.sha256, sha1M);
      await lab.helper(false);
      const off = await lab.curlGet({ ...lab.target('vsftpd', 4), path: 'small.txt', mode: 'port', timeoutMs: 10_000 });
      t.notOk(off.ok, 'PORT fails again once the helper is off');
    });

    await t.test('upload as the ftplab user', async (t) => {
      const local = lab.tmpPath('upload.bin');
      await writeFile(local, Buffer.alloc(300_000, 7));
      const sha = await sha256File(local);
      for (const server of SERVERS) {
        const name = `up-${server}.bin`;
        const r = await lab.curlPut({ ...lab.target(server, 4), user: lab.env.user, pass: lab.env.pass, path: name, file: local });
        t.ok(r.ok, `${server}: STOR`, { stderr: r.stderr });
        t.equal(await sha256File(join(lab.env.upload[server], name)), sha, `${server}: stored intact`);
      }
      const anon = await lab.curlPut({ ...lab.target('vsftpd', 4), path: 'anon.bin', file: local });
      t.notOk(anon.ok, 'anonymous cannot upload');
    });

    await t.test('other clients: lftp, ftplib, another source address', async (t) => {
      const file = lab.tmpPath('lftp-1MiB.bin');
      const l = await lab.lftp(lab.target('pyftpd', 4), [`get 1MiB.bin -o ${file}`, 'cls -1 dir1000']);
      t.equal(l.code, 0, 'lftp passive', { stderr: l.stderr });
      t.equal(l.stdout.split('\n').filter((x) => /^dir1000\/f\d{4}\.txt$/.test(x)).length, 1000, 'lftp lists dir1000');
      t.equal(await sha256File(file), sha1M);

      const list = await lab.pyftp(lab.target('pureftpd', 4, { mode: 'epsv' }), ['nlst', 'dir1000']);
      t.ok(list.ok, 'ftplib NLST');
      t.equal(list.lines?.filter((x) => /f\d{4}\.txt$/.test(x)).length, 1000);

      const rest = await lab.pyftp(lab.target('vsftpd', 4), ['get', '1MiB.bin', '--rest', String(1024 * 1024 - 10)]);
      t.equal(rest.bytes, 10, 'ftplib REST');

      const abor = await lab.pyftp(lab.target('pyftpd', 4), ['abor', '100MiB.bin']);
      t.ok(abor.ok && abor.noop_ok, 'ftplib ABOR, control connection still usable', { replies: abor.abort_replies });

      const alt = await lab.curlGet({ ...lab.target('vsftpd', 4), path: 'small.txt', source: lab.env.client4Alt });
      t.ok(alt.ok, `from ${lab.env.client4Alt}`, { stderr: alt.stderr });
      const alt6 = await lab.pyftp(lab.target('vsftpd', 6, { mode: 'epsv', source: lab.env.client6Alt }), ['login']);
      t.ok(alt6.ok, `from ${lab.env.client6Alt}`, { error: alt6.error });
    });

    await t.test('the admin redirect rule sends LAN FTP to the gateway', async (t) => {
      await lab.redirect(true, 8021);
      t.teardown(() => lab.redirect(false));
      t.match(await lab.nft(['list', 'chain', 'inet', lab.env.fwTable, 'admin_redir']), /redirect to :8021/);
      // Nothing listens on the gateway's 8021 yet: the redirected connection is refused there.
      const r = await lab.curlGet({ ...lab.target('vsftpd', 4), path: 'small.txt', timeoutMs: 10_000 });
      t.equal(r.code, 7, 'refused by the gateway', { stderr: r.stderr });
      const r6 = await lab.curlGet({ ...lab.target('vsftpd', 6), path: 'small.txt', timeoutMs: 10_000 });
      t.equal(r6.code, 7, 'IPv6 too', { stderr: r6.stderr });
      await lab.redirect(false);
      const back = await lab.curlGet({ ...lab.target('vsftpd', 4), path: 'small.txt' });
      t.ok(back.ok, 'direct again once the rule is gone');
    });

    await t.test('spawned processes are tracked', async (t) => {
      const child = lab.spawn('gw', 'sleep', ['600']);
      spawnedPid = child.pid;
      t.ok(spawnedPid && running(spawnedPid), 'sleep runs in the gateway');
      const ns = await lab.exec('gw', 'ip', ['netns', 'identify', String(spawnedPid)]);
      t.equal(ns.stdout.trim(), lab.env.ns.gw);
      const cat = await lab.exec('server', 'cat', [], { input: 'via stdin' });
      t.same([cat.code, cat.stdout], [0, 'via stdin'], 'exec passes input');
      const slow = await lab.exec('client', 'sleep', ['10'], { timeoutMs: 200 });
      t.ok(slow.timedOut && slow.signal === 'SIGKILL', 'exec enforces its timeout');
    });
  });

  await t.test('after teardown nothing is left', async (t) => {
    t.ok(prefix, 'a lab was up');
    const names = netnsNames();
    for (const suffix of ['cli', 'gw', 'srv']) t.notOk(names.includes(`${prefix}-${suffix}`), `${prefix}-${suffix} gone`);
    t.notOk(existsSync(stateDir), 'state dir gone');
    t.notOk(serverPids.some(running), 'servers ended');
    t.notOk(spawnedPid !== undefined && running(spawnedPid), 'spawned process ended');
    const again = spawnSync(LAB_SCRIPT, ['down', prefix], { encoding: 'utf8' });
    t.equal(again.status, 0, 'down is idempotent', { stderr: again.stderr });
  });
});
