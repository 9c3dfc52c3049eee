// The shipped systemd unit: `systemd-analyze verify` accepts it, and its exact ExecStart= run as
// an unprivileged user with only the unit's capabilities carries PASV and PORT transfers in the
// outbound lab on both data planes (and in reverse mode on port 21); its ExecStopPost= removes
// what a killed proxy left.
import t from 'tap';
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Test } from 'tap';
import { isRoot, sha256File, startLab, type FtpMode } from './lib/lab.js';
import { asUser, CLI, startAsUser, type LogRecord } from './lib/proxy.js';
import { capNames, serviceSettings, setting, UNIT_FILE, UNIT_PROGRAM, unitCommand } from './lib/unit.js';

const PROXY_PORT = 8021;
/** The user the test runs the unit's commands as (setpriv in lib/proxy.ts). */
const UID = 65534;
const ROUTE_TABLE = 2121;
const MAN_PAGE = fileURLToPath(new URL('../man/ftp-proxy.8', import.meta.url));

const unitText = readFileSync(UNIT_FILE, 'utf8');
const unit = serviceSettings(unitText);

/**
 * What systemd makes for the unit, in a scratch directory: the config file (root's and
 * readable, as /etc/ftp-proxy/ftp-proxy.conf would be) holding `options` plus a control socket
 * in a directory owned by the service's user (RuntimeDirectory=); and the unit's ExecStart=
 * and ExecStopPost= with that file.
 */
function prepare(t: Test, name: string, options: readonly string[]): { config: string; socket: string; start: string[]; stopPost: string[] } {
  const dir = mkdtempSync(join(tmpdir(), `fp-service-${name}-`));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  chmodSync(dir, 0o755);
  const run = join(dir, 'run');
  mkdirSync(run, { mode: 0o755 });
  chownSync(run, UID, UID);
  const socket = join(run, 'ftp-proxy.sock');
  const config = join(dir, 'ftp-proxy.conf');
  writeFileSync(config, [...options, `control-socket ${socket}`, 'debug-level 7', ''].join('\n'), { mode: 0o644 });
  return { config, socket, start: unitCommand(setting(unit, 'ExecStart'), config), stopPost: unitCommand(setting(unit, 'ExecStopPost'), config) };
}

t.test('the unit asks for a user of its own with exactly the two capabilities, and no more', async (t) => {
  t.equal(setting(unit, 'DynamicUser'), 'yes');
  t.equal(setting(unit, 'AmbientCapabilities'), 'CAP_NET_ADMIN CAP_NET_BIND_SERVICE');
  t.equal(setting(unit, 'CapabilityBoundingSet'), setting(unit, 'AmbientCapabilities'), 'the bounding set is the ambient set');
  t.equal(setting(unit, 'NoNewPrivileges'), 'yes');
  t.equal(setting(unit, 'RestrictAddressFamilies'), 'AF_UNIX AF_INET AF_INET6 AF_NETLINK');
  t.equal(setting(unit, 'RuntimeDirectory'), 'ftp-proxy', 'the default control socket directory, /run/ftp-proxy');
  t.equal(setting(unit, 'ExecReload'), '/bin/kill -HUP $MAINPID');
  t.notOk(unit.has('MemoryDenyWriteExecute'), "not MemoryDenyWriteExecute: V8's JIT needs W+X pages");
  t.notOk(unit.has('User'), 'no fixed user');
});

t.test('the sample config the README has you copy to /etc/ftp-proxy is valid', async (t) => {
  const sample = fileURLToPath(new URL('../examples/ftp-proxy.conf', import.meta.url));
  const r = spawnSync(process.execPath, [CLI, '--check-config', '--config', sample], { encoding: 'utf8' });
  t.equal(r.status, 0, r.stderr);
  t.match(r.stdout, /\nbind ::\n/);
});

t.test('systemd-analyze verify passes, without a warning', async (t) => {
  // verify checks that each command's program exists and is executable, and that `man`
  // finds the Documentation= page: where the package is not installed (CI), neither is there.
  // So a copy names the built program instead, `node dist/bin.js`, every other line being the
  // unit's own, and MANPATH leads to the repository's page.
  const dir = mkdtempSync(join(tmpdir(), 'fp-unit-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  mkdirSync(join(dir, 'man', 'man8'), { recursive: true });
  symlinkSync(MAN_PAGE, join(dir, 'man', 'man8', 'ftp-proxy.8'));
  const env = { ...process.env, MANPATH: join(dir, 'man') };
  const swapped = unitText.replace(new RegExp(`^(ExecStart|ExecStopPost)=${UNIT_PROGRAM} `, 'gm'), `$1=${process.execPath} ${CLI} `);
  t.equal(swapped.split(CLI).length - 1, 2, 'both command lines name the program');
  const copy = join(dir, 'ftp-proxy.service');
  writeFileSync(copy, swapped);
  const r = spawnSync('systemd-analyze', ['verify', copy], { encoding: 'utf8', env });
  t.equal(r.error, undefined, 'systemd-analyze runs (scripts/install-deps installs systemd and man-db)');
  t.equal(r.status, 0, r.stderr);
  t.equal(r.stderr, '', 'no warning (an unknown key or a bad value is only a warning)');

  // And it would have caught a broken one.
  writeFileSync(copy, swapped.replace('RestrictAddressFamilies=', 'RestrictAddressFamilys='));
  const bad = spawnSync('systemd-analyze', ['verify', copy], { encoding: 'utf8', env });
  t.match(bad.stderr, /Unknown key 'RestrictAddressFamilys'/, 'a misspelt key is reported');
});

t.test("the unit's ExecStart as an unprivileged user with the unit's capabilities, outbound lab", async (t) => {
  if (!isRoot) {
    t.fail('end-to-end tests need root (network namespaces)');
    return;
  }
  const caps = capNames(setting(unit, 'AmbientCapabilities'));
  const lab = await startLab(t);
  const file = await lab.expectedSha256('1MiB.bin');
  const upload = join(lab.env.cacheDir, '1MiB.bin');
  await lab.redirect(true, PROXY_PORT);

  for (const backend of ['nftables', 'relay'] as const) {
    await t.test(backend, async (t) => {
      const { config, socket, start, stopPost } = prepare(t, backend, [
        '# the lab: outbound mode behind the gateway redirect',
        'bind ::',
        `port ${PROXY_PORT}`,
        `backend ${backend}`,
        // The relay then binds port 20 on the server's address: CAP_NET_BIND_SERVICE.
        'rewrite-source-port',
      ]);
      t.same(start.slice(2), ['--config', config], `ExecStart as run: ${start.join(' ')}`);

      const proxy = await startAsUser(lab, start, caps);
      t.teardown(() => proxy.stop('SIGKILL'));
      const status = readFileSync(`/proc/${proxy.child.pid}/status`, 'utf8');
      // The child is env -> setpriv -> node, each exec'ing the next: the pid is the proxy's.
      t.match(status, new RegExp(`\\nUid:\\s+${UID}\\s+${UID}\\s+${UID}\\s+${UID}\\n`), 'runs as the unprivileged user');
      t.match(status, /\nCapEff:\s+0000000000001400\n/, 'holds CAP_NET_ADMIN and CAP_NET_BIND_SERVICE only');
      t.match(status, /\nCapBnd:\s+0000000000001400\n/, 'and can gain no other');
      t.match(status, /\nNoNewPrivs:\s+1\n/);

      if (backend === 'nftables') {
        const installed = proxy.find('nftables table installed');
        t.equal(installed[0]?.runner, 'netlink', 'paths go over netlink');
        t.match(await lab.nft(['list', 'table', 'inet', 'ftp_proxy']), /chain prerouting/, 'the table is in the kernel');
      } else {
        t.equal(proxy.find("data paths use the server's address: passive data is caught there for the session's client alone, active data comes from it (policy routing)").length, 1, 'transparent sockets and policy routing work');
        t.same(proxy.logs.filter((l) => /^data paths cannot use/.test(l.msg)), [], 'no fallback warning');
      }
      t.same(proxy.logs.filter((l) => l.msg === 'no control socket: ftp-proxy sessions and kill will not reach this proxy'), [], 'the control socket was taken');
      t.equal(statSync(socket).uid, UID, "the control socket is the service user's");

      const modes: [4 | 6, FtpMode][] = [[4, 'pasv'], [4, 'port'], [6, 'epsv'], [6, 'eprt']];
      for (const [family, mode] of modes) {
        const get = await lab.curlGet({ ...lab.target('vsftpd', family), mode, path: '1MiB.bin' });
        t.equal(get.sha256, file, `IPv${family} ${mode} download ${get.stderr}`);
        const name = `service-${backend}-${family}-${mode}`;
        const put = await lab.curlPut({ ...lab.target('vsftpd', family), mode, user: lab.env.user, pass: lab.env.pass, path: name, file: upload });
        t.ok(put.ok, `IPv${family} ${mode} upload ${put.stderr}`);
        t.equal(await sha256File(join(lab.env.upload.vsftpd, name)), file, `IPv${family} ${mode} upload checksum`);
      }
      // -r: active data from the server's address and port 20 (the relay binds it).
      const r = await lab.pyftp({ ...lab.target('vsftpd', 4), mode: 'port' }, ['get', '1MiB.bin']);
      t.equal(r.sha256, file, `ftplib PORT ${r.error ?? ''}`);
      t.same(r.data_peers[0], [lab.env.server4, 20], "from the server's address and port 20");
      const active = proxy.find('active data path');
      t.ok(active.length >= 4, 'PORT and EPRT made active data paths');
      // A record is written once the data plane has said what the transfer carried, which may
      // be after the client has its file (nftables: the count comes from the kernel).
      const downloads = (): LogRecord[] => proxy.find('transfer').filter((l) => l.command === 'RETR');
      for (const end = Date.now() + 5000; downloads().length < 5 && Date.now() < end; ) await new Promise((r) => setTimeout(r, 50));
      const retrs = downloads();
      t.equal(retrs.length, 5, 'one transfer record per download');
      // nftables: the bytes are counted through NFLOG, bound by the unprivileged user.
      t.ok(retrs.every((l) => l.bytes === 1048576), `every download counted whole: ${retrs.map((l) => l.bytes).join(' ')}`);

      // root's `ftp-proxy sessions` reaches the service user's 0600 socket.
      const sessions = spawnSync(process.execPath, [CLI, 'sessions', '--json', '--control-socket', socket], { encoding: 'utf8' });
      t.equal(sessions.status, 0, `ftp-proxy sessions as root ${sessions.stderr}`);
      t.ok(Array.isArray(JSON.parse(sessions.stdout)), `it answers with the session list: ${sessions.stdout}`);

      // A crash: nothing is removed by the proxy itself ...
      t.same((await proxy.stop('SIGKILL')).signal, 'SIGKILL');
      const leftTable = await lab.exec('gw', 'nft', ['list', 'table', 'inet', 'ftp_proxy']);
      if (backend === 'nftables') t.equal(leftTable.code, 0, 'the killed proxy left its table');
      else t.ok((await lab.proxyRouting(ROUTE_TABLE)).length > 0, 'the killed relay left its routes');
      // ... the unit's ExecStopPost, as the same user with the same capabilities, removes it.
      const post = await lab.exec('gw', ...asUser(stopPost, caps));
      t.equal(post.code, 0, `ExecStopPost exits 0: ${stopPost.join(' ')} ${post.stderr}`);
      t.not((await lab.exec('gw', 'nft', ['list', 'table', 'inet', 'ftp_proxy'])).code, 0, 'no table left');
      t.same(await lab.proxyRouting(ROUTE_TABLE), [], 'no policy routing left');
      const again = await lab.exec('gw', ...asUser(stopPost, caps));
      t.equal(again.code, 0, 'with nothing left it does nothing, and exits 0');
    });
  }

  await t.test('reverse mode on port 21 (CAP_NET_BIND_SERVICE), nftables', async (t) => {
    // The outbound redirect would take the LAN's port 21 to the gateway away from this listener.
    await lab.redirect(false);
    const { start } = prepare(t, 'reverse', [
      `reverse ${lab.env.server4}`,
      `server-port ${lab.env.ports.vsftpd}`,
      `bind ${lab.env.gwLan4}`,
      'port 21',
    ]);
    const proxy = await startAsUser(lab, start, caps);
    t.teardown(() => proxy.stop());
    for (const mode of ['pasv', 'port'] as const) {
      const get = await lab.curlGet({ host: lab.env.gwLan4, port: 21, mode, path: '1MiB.bin' });
      t.equal(get.sha256, file, `${mode} download from the proxy's port 21 ${get.stderr}`);
    }
    t.equal((await proxy.stop()).code, 0, 'SIGTERM exits 0');
    t.not((await lab.exec('gw', 'nft', ['list', 'table', 'inet', 'ftp_proxy'])).code, 0, 'and the proxy removed its table itself');
  });
});
