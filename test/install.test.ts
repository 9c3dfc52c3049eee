// The package as a user installs it: `npm pack` of a clean copy of the repository (prepack
// builds dist), `npm install -g` of that tarball into a scratch prefix, and the installed
// program runs, its man page is found, and koffi's prebuilt binary loads from the installed tree.
import t from 'tap';
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, realpathSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isRoot } from './lib/lab.js';

const REPO = fileURLToPath(new URL('..', import.meta.url));
const pkg = JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { version: string; files: string[]; man: string[] };

function run(cmd: string, args: readonly string[], cwd: string, env: NodeJS.ProcessEnv = process.env): SpawnSyncReturns<string> {
  return spawnSync(cmd, args, { cwd, env, encoding: 'utf8', timeout: 120_000 });
}

/** `what`, and on failure what the command said. */
const said = (what: string, r: SpawnSyncReturns<string>): string => (r.status === 0 ? what : `${what}: ${r.stderr}`);

t.test('npm pack, npm install -g, and the installed ftp-proxy runs', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'fp-install-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));

  // A copy without dist: the tarball's dist must come from prepack, not from an earlier build
  // (and building in the working tree would rewrite the dist/ other test files are running).
  const src = join(dir, 'src');
  const shipped = pkg.files.filter((f) => !f.startsWith('!') && f !== 'dist');
  for (const f of ['package.json', 'package-lock.json', 'tsconfig.json', 'README.md', 'LICENSE', 'src', ...shipped]) {
    cpSync(join(REPO, f), join(src, f), { recursive: true });
  }
  // prepack's tsc comes from the devDependencies.
  symlinkSync(realpathSync(join(REPO, 'node_modules')), join(src, 'node_modules'));

  const packed = run('npm', ['pack', '--json', '--pack-destination', dir], src);
  t.equal(packed.status, 0, said('npm pack', packed));
  const [info] = JSON.parse(packed.stdout) as { filename: string; files: { path: string }[] }[];
  const files = info!.files.map((f) => f.path);
  for (const f of ['dist/bin.js', 'dist/main.js', 'dist/cleanup.js', 'man/ftp-proxy.8', 'systemd/ftp-proxy.service', 'examples/ftp-proxy.conf', 'README.md', 'LICENSE']) {
    t.ok(files.includes(f), `the tarball has ${f}`);
  }
  t.same(files.filter((f) => /^(src|test)\/|\.map$|\.ts$/.test(f)), [], 'no sources, tests or source maps');

  const prefix = join(dir, 'prefix');
  const installed = run(
    'npm',
    ['install', '-g', '--prefix', prefix, join(dir, info!.filename), '--prefer-offline', '--no-audit', '--no-fund'],
    dir,
  );
  t.equal(installed.status, 0, said('npm install -g', installed));
  const bin = join(prefix, 'bin', 'ftp-proxy');

  const version = run(bin, ['--version'], dir);
  t.equal(version.stdout.trim(), pkg.version, said('ftp-proxy --version', version));
  const man = run('man', ['-w', 'ftp-proxy'], dir, { ...process.env, MANPATH: join(prefix, 'share', 'man') });
  t.equal(man.status, 0, said('man -w finds the page', man));
  t.equal(readFileSync(man.stdout.trim(), 'utf8'), readFileSync(join(REPO, pkg.man[0]!), 'utf8'), "it is the package's page");
  const root = join(prefix, 'lib', 'node_modules', 'ftp-proxy');
  t.ok(existsSync(join(root, 'systemd', 'ftp-proxy.service')) && existsSync(join(root, 'examples', 'ftp-proxy.conf')), 'the unit and the sample config are installed');

  // koffi's prebuilt binary, as the proxy loads it: libnftables for the table and the netlink
  // runner for paths both go through it. In a network namespace of its own, which dies with it.
  if (!isRoot) {
    t.fail('the installed proxy needs root for its nftables table');
    return;
  }
  const proxy = spawn('unshare', ['--net', 'sh', '-c', `ip link set lo up && exec "$0" -b 127.0.0.1 -p 8021 -D 6 --control-socket ${join(dir, 'ctl.sock')}`, bin], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  t.teardown(() => void proxy.kill('SIGKILL'));
  let out = '';
  let err = '';
  proxy.stdout.on('data', (d: Buffer) => (out += d.toString()));
  proxy.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) => proxy.once('exit', (code) => resolve(code)));
  const end = Date.now() + 15_000;
  while (!/"msg":"listening"/.test(out) && proxy.exitCode === null && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
  const lines = out.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
  const table = lines.find((l) => l.msg === 'nftables table installed');
  t.match(table, { tableRunner: 'libnftables', runner: 'netlink' }, `the table through libnftables, paths through netlink: koffi loaded ${err}`);
  t.ok(lines.some((l) => l.msg === 'listening'), 'the installed proxy listens');
  proxy.kill('SIGTERM');
  t.equal(await exited, 0, 'SIGTERM exits 0');
});
