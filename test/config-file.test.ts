// The --config file: its parser (commander's option definitions), the merge under the
// command-line flags, file:line errors from the one validation pass, and --check-config.

import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseArgs } from '../src/cli.js';
import { formatConfig, loadConfig, mergeConfig, parseConfigFile, type Loaded } from '../src/configfile.js';
import { ConfigError } from '../src/errors.js';
import { CLI } from './lib/proxy.js';

const dir = mkdtempSync(path.join(tmpdir(), 'fp-config-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));
let nfiles = 0;
function file(text: string): string {
  const f = path.join(dir, `${++nfiles}.conf`);
  writeFileSync(f, text);
  return f;
}

/** What the start would get from these flags (--config included): the merged config, or the error line. */
function load(argv: string[]): Loaded | string {
  const parsed = parseArgs(argv, { out: () => undefined, err: (s) => { throw new Error(s); } });
  if (parsed.kind !== 'run') throw new Error('not the proxy');
  try {
    return loadConfig({ cli: parsed.options, given: parsed.given });
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    return e.message;
  }
}

function ok(argv: string[]): Loaded {
  const r = load(argv);
  if (typeof r === 'string') throw new Error(r);
  return r;
}

t.test('a file sets options: comments, blank lines, bare booleans, repeated and comma-separated lists', async (t) => {
  const f = file(
    [
      '# the gateway',
      '',
      '   deny-client 10.9.0.0/16',
      'deny-client 10.8.0.0/16, 10.7.0.1',
      'max-sessions 500\r',
      '\tanonymous-only',
      'reverse 192.0.2.10',
      'xferlog /var/log/ftp proxy.xferlog',
      '  # an indented comment',
    ].join('\n'),
  );
  const c = ok(['--config', f]).config;
  t.equal(c.maxSessions, 500, 'CRLF line ends are fine');
  t.equal(c.anonymousOnly, true);
  t.equal(c.mode, 'reverse');
  t.equal(c.xferlog, '/var/log/ftp proxy.xferlog', 'the value is the rest of the line');
  t.equal(c.clients.refusal('10.9.1.1'), 'denied');
  t.equal(c.clients.refusal('10.8.200.1'), 'denied');
  t.equal(c.clients.refusal('10.7.0.1'), 'denied');
  t.equal(c.clients.refusal('10.6.0.1'), null);
  t.equal(c.port, 8021, 'what neither sets keeps its default');
});

t.test('the command line wins; a repeatable flag replaces all of the file\'s values', async (t) => {
  const f = file('max-sessions 500\ndeny-client 10.9.0.0/16\ndeny-client 10.8.0.0/16\nallow-server 198.51.100.0/24\nport 2100\n');
  const c = ok(['--config', f, '-m', '7', '--deny-client', '192.0.2.66']).config;
  t.equal(c.maxSessions, 7);
  t.equal(c.port, 2100);
  t.equal(c.clients.refusal('192.0.2.66'), 'denied');
  t.equal(c.clients.refusal('10.9.0.1'), null, "the file's deny-client lines are replaced, not added to");
  t.equal(c.servers.refusal('203.0.113.1'), 'not allowed', 'a list the command line does not give is the file\'s');
  t.equal(ok(['--config', f, '--port', '8021']).config.port, 8021, 'a flag given with its default value still wins');
});

t.test('a bad file: one line naming file, line and option', async (t) => {
  const cases: [string, RegExp][] = [
    ['# ok\n\nmax-sessions 0\n', /^F:3: max-sessions: '0' is not a whole number from 1 to 100000$/],
    ['port 21\nport 22\n', /^F:2: port: given again \(first on line 1\)$/],
    ['colour blue\n', /^F:1: colour: unknown option$/],
    ['m 5\n', /^F:1: m: a short name: write max-sessions$/],
    ['-m 5\n', /^F:1: -m: a short name: write max-sessions$/],
    ['--port 21\n', /^F:1: --port: write the name without the leading dashes: port$/],
    ['port\n', /^F:1: port: needs a value$/],
    ['anonymous-only yes\n', /^F:1: anonymous-only: takes no value/],
    ['max-sessions=5\n', /^F:1: max-sessions=5: unknown option$/],
    ['print-ruleset\n', /^F:1: print-ruleset: not allowed in a config file/],
    ['cleanup\n', /^F:1: cleanup: not allowed in a config file/],
    ['check-config\n', /^F:1: check-config: not allowed in a config file/],
    ['config /etc/other.conf\n', /^F:1: config: not allowed in a config file/],
    ['help\n', /^F:1: help: not allowed in a config file/],
    ['version\n', /^F:1: version: not allowed in a config file/],
    ['deny-client 10.0.0.0/8\n\ndeny-client 10.1.0.0/16,lan\n', /^F:3: deny-client: 'lan' is not an address or CIDR block$/],
    ['allow-client 10.0.0.0/33\n', /^F:1: allow-client: '10.0.0.0\/33'/],
    ['\nserver-port 2121\n', /^F:2: server-port: only has a meaning with -R\/--reverse$/],
    ['backend pf\n', /^F:1: backend: 'pf' is not one of nftables, relay$/],
    ['tag 1\nmark 2\n', /^F:1: tag: give either -T\/--tag or --mark, not both$/],
  ];
  for (const [text, re] of cases) {
    const f = file(text);
    const r = load(['--config', f]);
    t.type(r, 'string', JSON.stringify(text));
    t.match(String(r).replace(f, 'F'), re, JSON.stringify(text));
  }
  t.equal(load(['--config', path.join(dir, 'missing.conf')]), `--config: cannot read ${path.join(dir, 'missing.conf')}: ENOENT`);
  const flagWins = file('max-sessions 0\n');
  t.equal(ok(['--config', flagWins, '-m', '3']).config.maxSessions, 3, "a bad value the command line overrides is not the file's to answer for");
  t.equal(load(['--config', file('max-sessions 5\n'), '-m', '0']), "-m/--max-sessions: '0' is not a whole number from 1 to 100000", 'a bad flag is named as a flag');
  t.throws(() => parseConfigFile('x.conf', 'nope\n'), { code: 'BAD_CONFIG_FILE' });
});

t.test('the effective configuration reads back to the same configuration', async (t) => {
  const f = file('deny-client 10.9.0.0/16,10.8.0.0/16\nanonymous-only\nreverse 2001:db8::2\nmasquerade-address 203.0.113.1\nmark 0x10\n');
  const first = ok(['--config', f, '--backend', 'relay', '-D', '7']);
  const text = formatConfig(first.raw);
  t.match(text, /^# ftp-proxy: effective configuration/);
  t.match(text, /\ndeny-client 10\.9\.0\.0\/16\ndeny-client 10\.8\.0\.0\/16\n/, 'one line per value');
  t.match(text, /\nanonymous-only\n/);
  t.match(text, /\nmax-sessions 100\n/, 'defaults included');
  t.notMatch(text, /\n(ipv6|foreground|print-ruleset|check-config|config|version|help)\b/, 'no actions, no options that are off');
  const again = ok(['--config', file(text)]);
  t.same(formatConfig(again.raw), text);
  t.same({ ...again.config, clients: null, servers: null }, { ...first.config, clients: null, servers: null });
  t.equal(again.config.clients.refusal('10.8.0.1'), 'denied');
  t.equal(mergeConfig({ cli: first.raw, given: new Set() }).config.mark, 16, 'a merge without a file is the flags alone');
});

t.test('ftp-proxy --check-config: prints and exits 0, or one line and exit 2; never starts', async (t) => {
  const good = file('max-sessions 42\ndeny-client 10.9.0.0/16\n');
  const run = (argv: string[]) => spawnSync(process.execPath, [CLI, ...argv], { encoding: 'utf8', timeout: 20_000 });
  const r = run(['--check-config', '--config', good, '-p', '2121', '--nft-table', 'never_made']);
  t.equal(r.status, 0);
  t.equal(r.stderr, '');
  t.match(r.stdout, /\nmax-sessions 42\n/);
  t.match(r.stdout, /\nport 2121\n/);
  t.match(r.stdout, /\ndeny-client 10\.9\.0\.0\/16\n/);
  const nft = spawnSync('nft', ['list', 'table', 'inet', 'never_made'], { encoding: 'utf8' });
  t.not(nft.status, 0, 'no nftables table was made');
  const plain = run(['--check-config']);
  t.equal(plain.status, 0, 'without a file: the flags and defaults');
  t.match(plain.stdout, /\nbackend nftables\n/);
  const bad = file('\nmax-sessions 0\n');
  for (const [argv, re] of [
    [['--check-config', '--config', bad], new RegExp(`^ftp-proxy: ${bad}:2: max-sessions: '0' is not a whole number from 1 to 100000\\n$`)],
    [['--check-config', '-p', '0'], /^ftp-proxy: -p\/--port: '0' is not a whole number from 1 to 65535\n$/],
    [['--check-config', '--print-ruleset'], /^ftp-proxy: --check-config: give either --check-config or --print-ruleset, not both\n$/],
  ] as const) {
    const b = run([...argv]);
    t.equal(b.status, 2, argv.join(' '));
    t.equal(b.stdout, '', argv.join(' '));
    t.match(b.stderr, re, argv.join(' '));
  }
  const start = run(['--config', bad, '-p', '1']);
  t.equal(start.status, 2, 'the start fails the same way');
  t.match(start.stderr, new RegExp(`^ftp-proxy: ${bad}:2: max-sessions:`));
});

t.test('--help names --config and --check-config', async (t) => {
  let out = '';
  t.same(parseArgs(['--help'], { out: (s) => (out += s), err: () => undefined }), { kind: 'exit', code: 0 });
  t.match(out, /\s--config <file>\s+read options from this file/);
  t.match(out, /\s--check-config\s+validate the options/);
});
