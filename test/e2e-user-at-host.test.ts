// --user-at-host end to end: lftp and ftplib log in to the proxy itself as user@host and
// user@host:port and transfer (PASV and PORT, both data planes); a host outside --allow-server
// is refused before any connection; bad input and a silent resolver get clear replies.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdir, rm, rmdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isRoot, sha256File, startLab, SYSTEM_PYTHON, type FtpTarget, type Lab } from './lib/lab.js';
import { CLI, startProxy } from './lib/proxy.js';

/**
 * A DNS server for the gateway's resolver: NXDOMAIN for names under nx.lab, silence for any
 * other (a resolver that never answers). Prints 'ready' once bound.
 */
const FAKE_DNS = `
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
print('ready', flush=True)
while True:
    q, peer = s.recvfrom(512)
    i, labels = 12, []
    while q[i]:
        labels.append(q[i + 1:i + 1 + q[i]].decode('ascii', 'replace').lower())
        i += 1 + q[i]
    if labels[-2:] == ['nx', 'lab']:
        s.sendto(q[:2] + b'\\x81\\x83' + q[4:6] + b'\\x00\\x00\\x00\\x00\\x00\\x00' + q[12:i + 5], peer)
`;

/** Counts connections to it (one line each on stdout); never answers. */
const LISTENER = `
import socket, sys
s = socket.create_server((sys.argv[1], int(sys.argv[2])))
print('ready', flush=True)
while True:
    c, peer = s.accept()
    print('connection', peer[0], flush=True)
    c.close()
`;

/** Start `script` in namespace `ns` and wait for its 'ready'; its later stdout lines are collected. */
async function startPython(lab: Lab, ns: 'client' | 'server', script: string, args: string[]): Promise<string[]> {
  const child = lab.spawn(ns, SYSTEM_PYTHON, ['-c', script, ...args]);
  const lines: string[] = [];
  await new Promise<void>((resolve, reject) => {
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      const parts = buf.split('\n');
      buf = parts.pop()!;
      for (const l of parts) (l === 'ready' ? resolve() : lines.push(l));
    });
    child.once('exit', (code) => reject(new Error(`python exited ${code}`)));
  });
  return lines;
}

t.test('--user-at-host', async (t) => {
  if (!isRoot) return t.fail('end-to-end tests need root (network namespaces)');
  const lab = await startLab(t);
  const { env } = lab;

  await t.test('refused at start without --allow-server: one line, exit 2', async (t) => {
    const r = spawnSync(process.execPath, [CLI, '--user-at-host'], { encoding: 'utf8' });
    t.equal(r.status, 2);
    t.match(r.stderr, /^ftp-proxy: --user-at-host: needs --allow-server .*\n$/);
    t.equal(r.stderr.split('\n').length, 2, 'one line');
  });

  // The gateway's resolver, as `ip netns exec` gives it: /etc/netns/<ns>/{hosts,resolv.conf}.
  const netnsEtc = join('/etc/netns', lab.nsName('gw'));
  await mkdir(netnsEtc, { recursive: true });
  t.teardown(async () => {
    await rm(netnsEtc, { recursive: true, force: true });
    await rmdir('/etc/netns').catch(() => undefined);
  });
  await writeFile(join(netnsEtc, 'hosts'), `127.0.0.1 localhost\n${env.server4} ftp.lab\n${env.server6} ftp6.lab\n${env.client4Alt} outside.lab\n`);
  await writeFile(join(netnsEtc, 'resolv.conf'), `nameserver ${env.server4}\noptions timeout:30 attempts:1\n`);
  await startPython(lab, 'server', FAKE_DNS, [env.server4]);
  const outside = await startPython(lab, 'client', LISTENER, [env.client4Alt, '2121']);

  await lab.redirect(true, 8021);
  const proxies = {
    nftables: await startProxy(lab, [
      '-b', '::', '-p', '8021', '--backend', 'nftables', '--connect-timeout', '3',
      '--user-at-host', '--allow-server', `${env.server4},${env.server6}`,
    ]),
    relay: await startProxy(lab, [
      '-b', '::', '-p', '8022', '--backend', 'relay', '--nft-table', 'ftp_proxy_relay', '--data-ports', '40000-40999',
      '--connect-timeout', '3', '--user-at-host', '--allow-server', `${env.server4},${env.server6}`,
    ]),
  };
  const small = await lab.expectedSha256('1MiB.bin');
  const upload = join(env.cacheDir, '1MiB.bin');

  for (const [i, backend] of (['nftables', 'relay'] as const).entries()) {
    const port = 8021 + i;
    const via = (user: string, extra: Partial<FtpTarget> = {}): FtpTarget => ({ host: env.gwLan4, port, user, pass: env.pass, timeoutMs: 20_000, ...extra });
    await t.test(`${backend}: lftp and ftplib log in as user@host and user@host:port, PASV and PORT`, async (t) => {
      for (const mode of ['pasv', 'port'] as const) {
        for (const user of [`${env.user}@${env.server4}`, `${env.user}@ftp.lab:2121`]) {
          // The lab user's login directory is its upload directory: up first, then down again.
          const name = `${backend}-${mode}-${user.includes(':') ? 'pyftpd' : 'vsftpd'}.bin`;
          const out = lab.tmpPath('lftp');
          const l = await lab.lftp(via(user, { mode }), [`put ${upload} -o ${name}`, `get ${name} -o ${out}`]);
          t.equal(l.code, 0, `lftp ${user} ${mode}: ${l.stderr}`);
          if (l.code === 0) t.equal(await sha256File(out), small, `lftp ${user} ${mode}: download`);
          t.equal(await sha256File(join(env.upload[user.includes(':') ? 'pyftpd' : 'vsftpd'], name)), small, `lftp ${user} ${mode}: upload arrived`);
          const py = await lab.pyftp(via(user, { mode }), ['get', name]);
          t.equal(py.sha256, small, `ftplib ${user} ${mode}: ${py.error ?? ''}`);
          t.match(py.welcome, /^220 ftp-proxy ready: log in as USER name@host/, 'ftplib was greeted by the proxy, not the server');
        }
      }
      for (const [user, mode] of [[`anonymous@[${env.server6}]:2121`, 'epsv'], ['anonymous@ftp6.lab:21', 'eprt']] as const) {
        const py = await lab.pyftp(via(user, { host: env.gwLan6, mode }), ['get', '1MiB.bin']);
        t.equal(py.sha256, small, `ftplib over IPv6 ${user} ${mode}: ${py.error ?? ''}`);
      }
    });
  }

  const proxy = proxies.nftables;
  const login = (user: string, extra: Partial<FtpTarget> = {}) =>
    lab.pyftp({ host: env.gwLan4, port: 8021, user, pass: env.pass, timeoutMs: 15_000, ...extra }, ['login']);

  await t.test('a host outside --allow-server is refused before any connection to it', async (t) => {
    for (const user of [`x@${env.client4Alt}:2121`, 'x@outside.lab:2121']) {
      const r = await login(user);
      t.notOk(r.ok);
      t.match(r.error, new RegExp(`530 Access to ${env.client4Alt.replaceAll('.', '\\.')} is not permitted through this proxy`), user);
    }
    t.same(outside, [], 'the host outside saw no connection');
    const control = await lab.exec('gw', SYSTEM_PYTHON, ['-c', `import socket; socket.create_connection(('${env.client4Alt}', 2121), timeout=5).close()`]);
    t.equal(control.code, 0, 'control: the gateway can reach it');
    await new Promise((r) => setTimeout(r, 200));
    t.equal(outside.length, 1, 'control: and the listener counts that connection');
  });

  await t.test('bad input and resolver failures: clear replies, the proxy serves on', async (t) => {
    const started = proxy.find('session started').length;
    const cases: [string, RegExp][] = [
      [env.user, /530 This is a proxy: log in as USER name@host/],
      ['@', /501 Bad USER name@host: no user name before the @/],
      ['a@', /501 Bad USER name@host: no host after the @/],
      ['a@[::1', /501 .*not closed/],
      ['a@host:99999', /501 .*'99999' is not a port from 1 to 65535/],
      ['a@nothing.nx.lab', /530 Cannot log in: cannot resolve nothing\.nx\.lab: ENOTFOUND/],
    ];
    for (const [user, re] of cases) {
      const r = await login(user);
      t.notOk(r.ok, user);
      t.match(r.error, re, user);
    }
    const silentAt = Date.now();
    const silent = await login('a@silent.lab');
    t.match(silent.error, /421 Service not available: no answer from the resolver for silent\.lab in 3 s/);
    t.ok(Date.now() - silentAt < 10_000, 'within --connect-timeout, not the resolver\'s own 30 s');
    t.equal(proxy.find('session started').length, started, 'no connection to any server was made');
    const after = await login(`${env.user}@ftp.lab`);
    t.ok(after.ok, `the next login works: ${after.error ?? ''}`);
  });

  await t.test('a redirected client of the same proxy is served as before', async (t) => {
    const get = await lab.curlGet({ ...lab.target('vsftpd'), path: '1MiB.bin' });
    t.equal(get.sha256, small, get.stderr);
    t.ok(proxy.logs.some((l) => l.msg === 'session started' && l.server === `${env.server4}:21` && !proxy.logs.some((m) => m.sid === l.sid && m.msg === 'user@host login')), 'logged as a transparent session');
  });

  await t.test('both proxies logged no errors and stop cleanly', async (t) => {
    for (const [backend, p] of Object.entries(proxies)) {
      t.same(p.logs.filter((l) => l.level >= 50), [], `${backend}: no error-level log lines`);
      t.equal((await p.stop()).code, 0, `${backend}: exit 0`);
    }
  });
});
