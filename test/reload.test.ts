// SIGHUP reload without a lab: which options change live and which are kept (planReload), the
// Reloader against real files (a bad file, an xferlog moved or changed, two in a row), and a
// real listener taking a new configuration for new connections while a running session goes on.

import t from 'tap';
import fs from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { ACTIONS, buildCommand, parseArgs, type RawOptions } from '../src/cli.js';
import type { Config } from '../src/config.js';
import { loadConfig, type ConfigSource, type Loaded } from '../src/configfile.js';
import { createLogger } from '../src/log.js';
import { LIVE, planReload, Reloader } from '../src/reload.js';
import type { TransferRecord } from '../src/transfer.js';
import { XferlogTarget } from '../src/xferlog.js';
import { Control } from './lib/scripted.js';
import { config, login, rig } from './lib/session-rig.js';

const dir = fs.mkdtempSync(path.join(tmpdir(), 'fp-reload-'));
t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));

function source(argv: string[]): ConfigSource {
  const parsed = parseArgs(argv, { out: () => undefined, err: (s) => { throw new Error(s); } });
  if (parsed.kind !== 'run') throw new Error('not the proxy');
  return { cli: parsed.options, given: parsed.given };
}

const loaded = (argv: string[]): Loaded => loadConfig(source(argv));

t.test('planReload: live options change, the others keep their running value and are named', async (t) => {
  const now = loaded(['-m', '10', '--deny-client', '10.9.0.0/16', '-p', '2100', '--backend', 'relay']);
  const next = loaded(['-m', ' 20', '--deny-client', '10.9.0.0/16,10.8.0.0/16', '-p', '2200', '--backend', 'relay', '-A', '-D', '7', '--nft-table', 'other']);
  const plan = planReload(now, next);
  t.same(plan.changed, ['anonymous-only', 'debug-level', 'deny-client', 'max-sessions']);
  t.same(plan.restart, ['nft-table', 'port']);
  t.equal(plan.config.maxSessions, 20);
  t.equal(plan.config.anonymousOnly, true);
  t.equal(plan.config.debugLevel, 7);
  t.equal(plan.config.clients.refusal('10.8.0.1'), 'denied');
  t.equal(plan.config.port, 2100, 'the port needs a restart: the running one is kept');
  t.equal(plan.config.nftTable, 'ftp_proxy');
  t.equal(plan.raw.port, '2100', 'and so is its raw value, for the next reload to compare with');
  const same = planReload(now, loaded(['-m', '10 ', '--deny-client', ' 10.9.0.0/16', '-p', '2100', '--backend', 'relay']));
  t.same([same.changed, same.restart], [[], []], 'the same values written differently are no change');
  t.ok(Object.isFrozen(plan.config));
  for (const key of ['port', 'bind', 'reverse', 'backend', 'nftTable', 'dataPorts', 'metrics', 'controlSocket', 'dataTimeout', 'dataIdleTimeout'] as const) {
    t.notOk(LIVE.has(key), `${key} needs a restart`);
  }
});

t.test('planReload: the command policy, the masquerade blocks and --user-at-host change live', async (t) => {
  const plan = planReload(
    loaded(['-R', '10.0.0.2']),
    loaded(['-R', '10.0.0.2', '--read-only', '--deny-command', 'DELE', '--masquerade-for', '10.0.0.0/8=10.0.0.1', '--masquerade-address', '203.0.113.1']),
  );
  t.same(plan.changed, ['deny-command', 'masquerade-address', 'masquerade-for', 'read-only']);
  t.same(plan.restart, []);
  t.equal(plan.config.commandPolicy.refusal('STOR')?.policy, 'read-only');
  t.equal(plan.config.masquerade.advertisedTo('10.1.1.1'), '10.0.0.1');
  const direct = planReload(loaded(['--allow-server', '10.0.0.0/8']), loaded(['--allow-server', '10.0.0.0/8', '--user-at-host']));
  t.same([direct.changed, direct.config.userAtHost], [['user-at-host'], true]);
});

/** A logger whose JSON lines land in `lines`. */
function capture(): { lines: { level: number; msg: string; [k: string]: unknown }[]; logger: ReturnType<typeof createLogger> } {
  const lines: { level: number; msg: string }[] = [];
  const logger = createLogger({ debugLevel: 5, foreground: false, destination: { write: (s: string) => void lines.push(JSON.parse(s)) } });
  return { lines, logger };
}

const record = (file: string): TransferRecord => ({
  sid: '1', client: { address: '192.0.2.7', port: 40000 }, server: { address: '198.51.100.2', port: 21 }, user: 'ftp',
  command: 'RETR', path: file, directory: '/', type: 'binary', mode: 'passive', startedAt: Date.now(), durationMs: 1000,
  replyCode: 226, result: 'ok', bytes: 10,
});

async function until(cond: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 10));
  }
}

t.test('Reloader: good, bad and unopenable configurations; the xferlog reopened, moved, or changed', async (t) => {
  const conf = path.join(dir, 'a.conf');
  const log1 = path.join(dir, 'x1.log');
  const log2 = path.join(dir, 'x2.log');
  fs.writeFileSync(conf, `max-sessions 10\nxferlog ${log1}\n`);
  const src = source(['--config', conf, '-p', '2100']);
  const start = loadConfig(src);
  const { lines, logger } = capture();
  const xferlog = await XferlogTarget.open(start.config.xferlog, logger);
  t.teardown(() => xferlog.close());
  const applied: Config[] = [];
  const r = new Reloader(start, () => loadConfig(src), { logger, xferlog, reconfigure: (c) => void applied.push(c) });

  fs.writeFileSync(conf, `max-sessions 20\ndeny-client 192.0.2.0/24\nport 2200\nxferlog ${log1}\ndebug-level 6\n`);
  fs.renameSync(log1, `${log1}.1`);
  await r.reload();
  t.equal(applied.length, 1);
  t.equal(applied[0]!.maxSessions, 20);
  t.equal(applied[0]!.clients.refusal('192.0.2.9'), 'denied');
  t.equal(applied[0]!.port, 2100, 'the port given on the command line wins over the file anyway');
  t.equal(logger.level, 'info', 'debug-level 6 applies at once');
  t.ok(fs.existsSync(log1), 'the xferlog moved away (logrotate) is opened again at its path at once');
  const done = lines.filter((l) => l.msg.startsWith('reloaded'));
  t.equal(done.length, 1, 'one notice line');
  t.same(done[0]!.changed, ['debug-level', 'deny-client', 'max-sessions']);
  t.same(done[0]!.needsRestart, [], 'the file\'s port is overridden by the flag: nothing to restart for');

  fs.writeFileSync(conf, `max-sessions 20\nbind 192.0.2.1\nxferlog ${log1}\n`);
  await r.reload();
  t.equal(applied[1]!.bind, '127.0.0.1', 'bind kept');
  t.same(lines.filter((l) => l.msg.includes('needs a restart')).map((l) => l.option), ['bind'], 'one line per option that needs a restart');

  const before = lines.length;
  fs.writeFileSync(conf, 'max-sessions 0\n');
  await r.reload();
  t.equal(applied.length, 2, 'a bad file applies nothing');
  const errors = lines.slice(before).filter((l) => l.level >= 50);
  t.equal(errors.length, 1, 'one error line');
  t.match(errors[0]!.err, `${conf}:1: max-sessions: '0' is not a whole number from 1 to 100000`);

  fs.writeFileSync(conf, `max-sessions 20\nbind 192.0.2.1\nxferlog ${dir}\n`);
  await r.reload();
  t.equal(applied.length, 2, 'an xferlog that cannot be opened applies nothing either');
  t.match(lines.at(-1), { level: 50, msg: 'reload failed: configuration unchanged', err: new RegExp(`cannot open the xferlog ${dir}: EISDIR`) });
  xferlog.write(record('still-the-old-file'));

  fs.writeFileSync(conf, `max-sessions 30\nbind 192.0.2.1\nxferlog ${log2}\n`);
  await Promise.all([r.reload(), r.reload()]);
  t.equal(applied.length, 4, 'two reloads in a row both run, one after the other');
  t.same(lines.filter((l) => l.msg.startsWith('reloaded')).slice(-2).map((l) => l.changed), [['max-sessions', 'xferlog'], []], 'the second finds nothing new');
  xferlog.write(record('in-the-new-file'));
  await until(() => fs.existsSync(log2) && fs.readFileSync(log2, 'utf8').includes('in-the-new-file'));
  t.match(fs.readFileSync(log1, 'utf8'), /still-the-old-file/, 'lines before the switch went to the old file');
  t.notMatch(fs.readFileSync(log1, 'utf8'), /in-the-new-file/);
});

t.test('Reloader without --config: nothing changes, the xferlog is reopened', async (t) => {
  const file = path.join(dir, 'plain.log');
  const src = source(['--xferlog', file]);
  const { lines, logger } = capture();
  const xferlog = await XferlogTarget.open(file, logger);
  t.teardown(() => xferlog.close());
  const r = new Reloader(loadConfig(src), () => loadConfig(src), { logger, xferlog, reconfigure: () => undefined });
  fs.renameSync(file, `${file}.1`);
  await r.reload();
  t.ok(fs.existsSync(file), 'a new file at the path');
  t.match(lines.at(-1), { msg: /^reloaded/, changed: [], needsRestart: [] });
});

t.test('Reloader with --tls terminate: the certificate is re-read; a pair that fails keeps the old one, the rest applies', async (t) => {
  const file = path.join(dir, 'tls.log');
  const conf = path.join(dir, 'tls.conf');
  fs.writeFileSync(conf, 'max-sessions 10\n');
  const src = source(['--config', conf, '--xferlog', file]);
  const { lines, logger } = capture();
  const xferlog = await XferlogTarget.open(file, logger);
  t.teardown(() => xferlog.close());
  const answers: (string | null)[] = [null, 'cannot read /etc/ftp-proxy/cert.pem: ENOENT'];
  let reads = 0;
  const certificates = { reload: () => answers[reads++] ?? null };
  const applied: Config[] = [];
  const r = new Reloader(loadConfig(src), () => loadConfig(src), { logger, xferlog, reconfigure: (c) => void applied.push(c), certificates });
  await r.reload();
  t.equal(reads, 1, 'a reload re-reads the certificate and key');
  t.equal(lines.filter((l) => l.level >= 50).length, 0, 'a pair that loads logs no error');
  fs.writeFileSync(conf, 'max-sessions 20\n');
  await r.reload();
  t.equal(reads, 2);
  t.match(lines.filter((l) => l.level >= 50), [{ msg: 'reload: TLS certificate and key unchanged', err: /ENOENT/ }], 'one error line naming why');
  t.equal(applied.at(-1)!.maxSessions, 20, 'the rest of the reload applies');
  fs.writeFileSync(conf, 'max-sessions 0\n');
  await r.reload();
  t.equal(reads, 2, 'a configuration that fails validation changes nothing, the certificate included');
});

t.test('a listener reconfigured: new connections get the new policy, a running session goes on', async (t) => {
  const r = await rig(t);
  const running = new Control(r.proxyPort);
  await login(t, running);
  r.proxy.reconfigure(config(['--deny-client', '127.0.0.0/8']));
  const next = new Control(r.proxyPort);
  t.match(await next.line(), /^530 Access denied/, 'the next session is refused');
  running.send('NOOP');
  t.match(await running.line(), /^200 /, 'the running session still answers');
  r.proxy.reconfigure(config(['-m', '1']));
  const third = new Control(r.proxyPort);
  t.match(await third.line(), /^421 Too many sessions \(1\)/, 'a lower session limit counts the running session');
  running.send('NOOP');
  t.match(await running.line(), /^200 /);
  running.end();
});

t.test('the README names every option on the right side of its reload table', async (t) => {
  const readme = fs.readFileSync(new URL('../README.md', import.meta.url), 'utf8');
  const row = /\n\| changes live \| needs a restart \|\n\|---\|---\|\n\|([^|]*)\|([^|]*)\|\n/.exec(readme);
  t.ok(row, 'the table is there');
  const names = (cell: string) => new Set([...cell.matchAll(/`([a-z0-9-]+)`/g)].map((m) => m[1]!));
  const [live, restart] = [names(row![1]!), names(row![2]!)];
  for (const opt of buildCommand().options) {
    const key = opt.attributeName() as keyof RawOptions;
    if (ACTIONS.has(key)) continue;
    const name = opt.long!.slice(2);
    t.ok(LIVE.has(key) ? live.has(name) && !restart.has(name) : restart.has(name) && !live.has(name), `${name}: ${LIVE.has(key) ? 'live' : 'restart'}`);
  }
});
