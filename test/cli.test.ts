import t from 'tap';
import { spawn, spawnSync } from 'node:child_process';
import net from 'node:net';
import { once } from 'node:events';
import { existsSync } from 'node:fs';
import { parseArgs } from '../src/cli.js';
import { buildClientConfig, buildConfig } from '../src/config.js';
import { ConfigError } from '../src/errors.js';

/** What main() would do with these flags: exit status and what it printed on stderr. */
function run(argv: string[]): { code: number; err: string; out: string; config?: ReturnType<typeof buildConfig> } {
  let err = '';
  let out = '';
  const parsed = parseArgs(argv, { out: (s) => (out += s), err: (s) => (err += s) });
  if (parsed.kind === 'exit') return { code: parsed.code, err, out };
  if (parsed.kind !== 'run') throw new Error(`${argv.join(' ')}: a subcommand, not the proxy`);
  try {
    return { code: 0, err, out, config: buildConfig(parsed.options) };
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    return { code: 2, err: `ftp-proxy: ${e.message}\n`, out };
  }
}

t.test('defaults match the documented contract', async (t) => {
  const c = run([]).config!;
  t.equal(c.mode, 'outbound');
  t.equal(c.bind, '127.0.0.1');
  t.equal(c.port, 8021);
  t.same(c.dataPorts, { low: 49152, high: 65535 });
  t.equal(c.backend, 'nftables');
  t.equal(c.maxSessions, 100);
  t.equal(c.idleTimeout, 86400);
  t.equal(c.debugLevel, 5);
  t.equal(c.connectTimeout, 30);
  t.equal(c.maxLineLength, 1024);
  t.equal(c.nftTable, 'ftp_proxy');
  t.equal(c.routeTable, 2121);
  t.equal(run(['--route-table', '0']).config!.routeTable, 0, '--route-table 0: off');
  t.notOk(c.anonymousOnly || c.rewriteSourcePort || c.logRules || c.foreground);
  t.equal(run(['-6']).config!.bind, '::1');
  t.ok(Object.isFrozen(c));
});

t.test('--deny-command and --read-only make the command policy', async (t) => {
  t.ok(run([]).config!.commandPolicy.empty, 'no policy by default');
  const c = run(['--deny-command', 'dele,XMKD', '--deny-command', 'site']).config!.commandPolicy;
  t.same(['DELE', 'MKD', 'SITE', 'STOR'].map((v) => c.refusal(v)?.policy ?? null), ['deny-command', 'deny-command', 'deny-command', null]);
  t.equal(run(['--read-only']).config!.commandPolicy.refusal('APPE')?.policy, 'read-only');
});

t.test('every flag, short and long', async (t) => {
  const c = run([
    '-6', '-A', '-a', '198.51.100.1', '-b', '::', '-D', '7', '-d', '-m', '500', '-P', '2121', '-p', '21',
    '-R', '2001:DB8:0::2', '-r', '-T', '0x10', '-t', '60', '-v', '--masquerade-address', '203.0.113.1',
    '--data-ports', '50000-50100', '--backend', 'relay',
  ]).config!;
  t.match(c, {
    mode: 'reverse',
    bind: '::',
    port: 21,
    reverse: { address: '2001:db8::2', port: 2121 },
    proxyAddress: '198.51.100.1',
    masqueradeAddress: '203.0.113.1',
    dataPorts: { low: 50000, high: 50100 },
    backend: 'relay',
    rewriteSourcePort: true,
    maxSessions: 500,
    idleTimeout: 60,
    anonymousOnly: true,
    debugLevel: 7,
    foreground: true,
    logRules: true,
    mark: 16,
  });
  const l = run([
    '--ipv6', '--anonymous-only', '--proxy-address', '198.51.100.1', '--bind', '192.0.2.1', '--debug-level', '3',
    '--foreground', '--max-sessions', '5', '--reverse', '192.0.2.10', '--server-port', '21', '--port', '8021',
    '--rewrite-source-port', '--mark', '7', '--timeout', '0', '--log-rules',
  ]).config!;
  t.match(l, { bind: '192.0.2.1', debugLevel: 3, maxSessions: 5, mark: 7, idleTimeout: 0, reverse: { address: '192.0.2.10' } });
  t.equal(run(['--tag', '3']).config!.mark, 3);
  const p = run(['--allow-client', '192.0.2.0/24,2001:db8:1::/48', '--allow-client', '203.0.113.7', '--deny-client', '192.0.2.66', '--deny-server', '::ffff:10.0.0.0/104']).config!;
  t.equal(p.clients.refusal('192.0.2.5'), null);
  t.equal(p.clients.refusal('203.0.113.7'), null, 'a bare address is a /32');
  t.equal(p.clients.refusal('2001:db8:1::2'), null);
  t.equal(p.clients.refusal('192.0.2.66'), 'denied', 'deny wins over allow');
  t.equal(p.clients.refusal('198.51.100.9'), 'not allowed');
  t.equal(p.clients.refusal('::ffff:192.0.2.5'), null, 'IPv4-mapped clients match IPv4 blocks');
  t.equal(p.servers.refusal('10.1.2.3'), 'denied', 'IPv4-mapped blocks match IPv4 servers');
  t.equal(p.servers.refusal('198.51.100.2'), null, 'no allow list: everything else passes');
  t.equal(run([]).config!.tls, 'refuse');
  t.same(run(['-R', '192.0.2.1', '--tls', 'terminate', '--tls-cert', 'c.pem', '--tls-key', 'k.pem']).config!.tlsTerminate, {
    certFile: 'c.pem',
    keyFile: 'k.pem',
    required: false,
    reuseCheck: true,
    implicit: false,
  });
  t.match(run(['-R', '192.0.2.1', '--tls', 'terminate', '--tls-cert', 'c', '--tls-key', 'k', '--tls-required', '--tls-no-reuse-check']).config!.tlsTerminate, {
    required: true,
    reuseCheck: false,
  });
  t.equal(run([]).config!.tlsTerminate, undefined);
  const terminate = ['-R', '192.0.2.1', '--tls', 'terminate', '--tls-cert', 'c', '--tls-key', 'k'];
  t.same(run([...terminate, '--server-tls', 'explicit', '--server-ca', 'ca.pem']).config!.tlsTerminate?.server, { caFile: 'ca.pem', insecure: false });
  t.same(run([...terminate, '--server-tls', 'explicit', '--server-tls-insecure']).config!.tlsTerminate?.server, { insecure: true });
  t.equal(run(terminate).config!.tlsTerminate?.server, undefined, '--server-tls off: plain FTP to the server');
  t.equal(run([]).config!.dataIdleTimeout, 300);
  const mapped = run(['-R', '::ffff:10.0.0.21', '-a', '::FFFF:198.51.100.1', '-b', '::ffff:127.0.0.1']).config!;
  t.same([mapped.reverse?.address, mapped.proxyAddress, mapped.bind], ['10.0.0.21', '198.51.100.1', '127.0.0.1'], 'IPv4-mapped addresses are IPv4');
  t.equal(run(['-R', '::ffff:10.0.0.21']).config!.reverse?.address, '10.0.0.21', 'so a reverse server given so is family 4');
  t.equal(run([]).config!.loginTimeout, 120);
});

t.test('every invalid value: exit 2 and one line naming the flag', async (t) => {
  const bad: [string[], RegExp][] = [
    [['-p', '0'], /-p\/--port/],
    [['-p', '65536'], /-p\/--port/],
    [['-p', '80x'], /-p\/--port/],
    [['-p', '-1'], /-p/],
    [['-P', '70000', '-R', '192.0.2.1'], /-P\/--server-port/],
    [['-P', '2121'], /-P\/--server-port: only has a meaning with -R/],
    [['-m', '0'], /-m\/--max-sessions/],
    [['-m', '100001'], /-m\/--max-sessions/],
    [['-m', 'lots'], /-m\/--max-sessions/],
    [['--max-sessions-per-client', '-3'], /--max-sessions-per-client/],
    [['-t', '86401'], /-t\/--timeout/],
    [['-t', '1.5'], /-t\/--timeout/],
    [['-D', '8'], /-D\/--debug-level/],
    [['-D', 'debug'], /-D\/--debug-level/],
    [['-b', '1.2.3'], /-b\/--bind: '1.2.3' is not an IP address/],
    [['-b', 'localhost'], /-b\/--bind/],
    [['-b', '01.02.03.04'], /-b\/--bind/],
    [['-b', 'fe80::1%eth0'], /-b\/--bind/],
    [['-R', '999.1.1.1'], /-R\/--reverse/],
    [['-R', '0.0.0.0'], /-R\/--reverse: '0.0.0.0' is a unspecified address/],
    [['-R', '224.0.0.1'], /-R\/--reverse: .* multicast/],
    [['-a', 'gateway'], /-a\/--proxy-address/],
    [['-R', '192.0.2.1', '--masquerade-address', '2001:db8::1'], /--masquerade-address: must be an IPv4/],
    [['--masquerade-address', '203.0.113.1'], /--masquerade-address: only has a meaning with -R/],
    [['--data-ports', '100-200'], /--data-ports/],
    [['--data-ports', '60000-50000'], /--data-ports: .*above/],
    [['--data-ports', '50000'], /--data-ports: '50000' is not a range/],
    [['--data-ports', '50000-70000'], /--data-ports/],
    [['--backend', 'pf'], /--backend: 'pf' is not one of nftables, relay/],
    [['-T', 'ftpproxy'], /-T\/--tag/],
    [['--mark', '0'], /--mark/],
    [['--mark', '0x100000000'], /--mark/],
    [['-T', '1', '--mark', '2'], /-T\/--tag: give either/],
    [['--connect-timeout', '0'], /--connect-timeout/],
    [['--data-timeout', '3601'], /--data-timeout/],
    [['--max-line-length', '100'], /--max-line-length/],
    [['--nft-table', 'my-table'], /--nft-table/],
    [['--route-table', '32766'], /--route-table: '32766' is not a whole number from 0 to 32765/],
    [['--route-table', '254'], /--route-table: 254 is one of the kernel's own tables/],
    [['--shutdown-grace', 'x'], /--shutdown-grace/],
    [['--login-timeout', '0'], /--login-timeout/],
    [['--tls', 'starttls'], /--tls: 'starttls' is not one of refuse, pass, terminate/],
    [['--tls', 'terminate', '--tls-cert', 'c', '--tls-key', 'k'], /--tls: 'terminate' needs reverse mode \(-R\)/],
    [['-R', '192.0.2.1', '--tls', 'terminate', '--tls-key', 'k'], /--tls-cert: is needed with --tls terminate/],
    [['-R', '192.0.2.1', '--tls', 'terminate', '--tls-cert', 'c'], /--tls-key: is needed with --tls terminate/],
    [['-R', '192.0.2.1', '--tls-cert', 'c'], /--tls-cert: only has a meaning with --tls terminate/],
    [['-R', '192.0.2.1', '--tls', 'pass', '--tls-required'], /--tls-required: only has a meaning with --tls terminate/],
    [['-R', '192.0.2.1', '--tls-no-reuse-check'], /--tls-no-reuse-check: only has a meaning with --tls terminate/],
    [['-R', '192.0.2.1', '--implicit-tls'], /--implicit-tls: only has a meaning with --tls terminate/],
    [['-R', '192.0.2.1', '--server-tls', 'explicit'], /--server-tls: only has a meaning with --tls terminate/],
    [['-R', '192.0.2.1', '--tls', 'terminate', '--tls-cert', 'c', '--tls-key', 'k', '--server-tls', 'implicit'], /--server-tls: 'implicit' is not one of off, explicit/],
    [['-R', '192.0.2.1', '--tls', 'terminate', '--tls-cert', 'c', '--tls-key', 'k', '--server-ca', 'ca.pem'], /--server-ca: only has a meaning with --server-tls explicit/],
    [['-R', '192.0.2.1', '--tls', 'terminate', '--tls-cert', 'c', '--tls-key', 'k', '--server-tls', 'explicit', '--server-ca', 'ca', '--server-tls-insecure'], /--server-tls-insecure: give either --server-ca or --server-tls-insecure/],
    [['-A', '--tls', 'pass'], /--tls: 'pass' cannot be combined with -A\/--anonymous-only/],
    [['--data-idle-timeout', '0'], /--data-idle-timeout/],
    [['--allow-client', '192.0.2.0/33'], /--allow-client: '192.0.2.0\/33' is not an address or CIDR block/],
    [['--deny-client', 'lan'], /--deny-client/],
    [['--allow-server', '10.0.0.0/8,nope'], /--allow-server: 'nope'/],
    [['--deny-server', '::1/200'], /--deny-server/],
    [['--bogus'], /unknown option '--bogus'/],
    [['-x'], /unknown option '-x'/],
    [['-p'], /argument missing/],
    [['stray'], /too many arguments/],
    [['--metrics', '9464'], /--metrics: '9464' is not ADDR:PORT/],
    [['--metrics', '::1:9464'], /--metrics: '::1:9464' is not ADDR:PORT \(an IPv6 address in brackets/],
    [['--metrics', 'localhost:9464'], /--metrics: 'localhost' is not an IP address/],
    [['--metrics', '127.0.0.1:0'], /--metrics: '0' is not a whole number from 1 to 65535/],
    [['--metrics', '127.0.0.1:'], /--metrics: '127.0.0.1:' is not ADDR:PORT/],
    [['--metrics', ':9464'], /--metrics: ':9464' is not ADDR:PORT/],
    [['--control-socket', ''], /--control-socket: is empty/],
    [['--control-socket', `/run/${'x'.repeat(110)}`], /--control-socket: .* longer than 107 bytes/],
    [['--xferlog', ' '], /--xferlog: is empty/],
    [['--user-at-host'], /--user-at-host: needs --allow-server/],
    [['--user-at-host', '--allow-server', '10.0.0.0/8', '-R', '10.0.0.1'], /--user-at-host: only has a meaning in outbound mode/],
    [['--deny-command', 'STOR,RE TR'], /--deny-command: 'RE TR' is not an FTP command verb/],
    [['--deny-command', 'ST0R'], /--deny-command: 'ST0R' is not an FTP command verb/],
    [['--read-only', '--tls', 'pass'], /--tls: 'pass' cannot be combined with --read-only or --deny-command/],
    [['--deny-command', 'DELE', '--tls', 'pass'], /--tls: 'pass' cannot be combined/],
  ];
  for (const [argv, re] of bad) {
    const r = run(argv);
    t.equal(r.code, 2, argv.join(' '));
    t.match(r.err, re, argv.join(' '));
    t.match(r.err, /^ftp-proxy: [^\n]+\n$/, `one line: ${argv.join(' ')}`);
  }
});

t.test('--cleanup is an action of its own', async (t) => {
  t.equal(run([]).config!.cleanup, false);
  t.equal(run(['--cleanup', '--nft-table', 'other', '--route-table', '0']).config!.cleanup, true);
  for (const other of ['--check-config', '--print-ruleset']) {
    const r = run(['--cleanup', other]);
    t.equal(r.code, 2, other);
    t.equal(r.err, 'ftp-proxy: --cleanup: give it without --check-config and --print-ruleset\n');
  }
});

t.test('--metrics, --control-socket, --xferlog', async (t) => {
  const d = run([]).config!;
  t.equal(d.metrics, undefined, 'metrics are off by default');
  t.same(d.controlSocket, { path: '/run/ftp-proxy/ftp-proxy.sock', explicit: false });
  t.equal(d.xferlog, undefined);
  const c = run(['--metrics', '0.0.0.0:9464', '--control-socket', '/tmp/fp.sock', '--xferlog', '/var/log/ftp-proxy.xferlog']).config!;
  t.same(c.metrics, { address: '0.0.0.0', port: 9464 });
  t.same(c.controlSocket, { path: '/tmp/fp.sock', explicit: true });
  t.equal(c.xferlog, '/var/log/ftp-proxy.xferlog');
  t.same(run(['--metrics', '[2001:DB8::1]:80']).config!.metrics, { address: '2001:db8::1', port: 80 }, 'IPv6 in brackets, canonical');
  t.same(run(['--metrics', '[::ffff:127.0.0.1]:9464']).config!.metrics, { address: '127.0.0.1', port: 9464 });
  t.same(run(['--metrics', '[::]:9464']).config!.metrics, { address: '::', port: 9464 });
});

t.test('subcommands: sessions [--json] and kill ID, with the control socket before or after the name', async (t) => {
  const parse = (argv: string[]) => {
    let err = '';
    const r = parseArgs(argv, { out: () => undefined, err: (s) => (err += s) });
    return { r, err };
  };
  t.match(parse(['sessions']).r, { kind: 'sessions', options: {} });
  t.same(buildClientConfig({}), { controlSocket: '/run/ftp-proxy/ftp-proxy.sock', json: false });
  t.match(parse(['sessions', '--json']).r, { kind: 'sessions', options: { json: true } });
  t.match(parse(['sessions', '--control-socket', '/a.sock']).r, { kind: 'sessions', options: { controlSocket: '/a.sock' } });
  t.match(parse(['--control-socket', '/b.sock', 'sessions', '--json']).r, { kind: 'sessions', options: { controlSocket: '/b.sock', json: true } });
  t.match(parse(['--control-socket', '/b.sock', 'kill', '7', '--control-socket', '/c.sock']).r, { kind: 'kill', id: '7', options: { controlSocket: '/c.sock' } }, 'the later one wins');
  t.match(parse(['kill', '42']).r, { kind: 'kill', id: '42' });
  for (const [argv, re] of [
    [['kill'], /^ftp-proxy: missing required argument 'id'\n$/],
    [['kill', '1', '2'], /^ftp-proxy: too many arguments for 'kill'/],
    [['sessions', '-p', '21'], /^ftp-proxy: unknown option '-p'\n$/],
    [['-p', '21', 'sessions'], /^ftp-proxy: -p\/--port: not an option of 'sessions'\n$/],
    [['--metrics', '127.0.0.1:1', 'kill', '3'], /^ftp-proxy: --metrics: not an option of 'kill'\n$/],
    [['sessions', 'extra'], /^ftp-proxy: too many arguments for 'sessions'/],
  ] as const) {
    const { r, err } = parse([...argv]);
    t.same(r, { kind: 'exit', code: 2 }, argv.join(' '));
    t.match(err, re, argv.join(' '));
  }
  t.throws(() => buildClientConfig({ controlSocket: '' }), { message: /--control-socket: is empty/ });
});

t.test('--help documents every flag with its default; the built program runs', async (t) => {
  const h = run(['--help']);
  t.equal(h.code, 0);
  for (const flag of ['-6', '-A', '-a', '-b', '-D', '-d', '-m', '-P', '-p', '-R', '-r', '-T', '-t', '-v', '--masquerade-address', '--data-ports', '--backend', '--mark']) {
    t.match(h.out, new RegExp(`(^|\\s)${flag}[, ]`), flag);
  }
  for (const def of ['"8021"', '"21"', '"100"', '"86400"', '"5"', '"49152-65535"', '"nftables"']) t.match(h.out, def);
  for (const flag of ['--metrics', '--control-socket', '--xferlog']) t.match(h.out, new RegExp(`\\s${flag} <`), flag);
  t.match(h.out, /default:\s+\/run\/ftp-proxy\/ftp-proxy\.sock/);
  t.match(h.out, /Commands:\n\s+sessions \[options\]\s+list the live sessions/);
  t.match(h.out, /\n\s+kill \[options\] <id>\s+end one live session/);
  const cli = new URL('../dist/bin.js', import.meta.url);
  if (!existsSync(cli)) {
    t.fail('dist/bin.js missing: npm test builds it first');
    return;
  }
  const help = spawnSync(process.execPath, [cli.pathname, '--help'], { encoding: 'utf8' });
  t.equal(help.status, 0);
  t.match(help.stdout, /Usage: ftp-proxy/);
  const dry = spawnSync(process.execPath, [cli.pathname, '--print-ruleset', '--nft-table', 'fp_dry', '--mark', '0x10'], { encoding: 'utf8' });
  t.equal(dry.status, 0, '--print-ruleset exits 0 without touching nftables');
  t.match(dry.stdout, /^table inet fp_dry \{/);
  t.match(dry.stdout, /meta mark set 0x00000010 ct mark set 0x00000010/);
  t.match(dry.stdout, /chain count \{\n\t\ttype filter hook forward priority filter - 10;[^}]*tcp flags & \(fin \| syn \| rst\) != 0 log group 2121 snaplen 100/, 'bytes counted through NFLOG group 2121 by default');
  const uncounted = spawnSync(process.execPath, [cli.pathname, '--print-ruleset', '--nflog-group', '0'], { encoding: 'utf8' });
  t.notMatch(uncounted.stdout, /chain count|log group/, '--nflog-group 0: no count chain');
  const badGroup = spawnSync(process.execPath, [cli.pathname, '--nflog-group', '65536'], { encoding: 'utf8' });
  t.equal(badGroup.status, 2);
  t.match(badGroup.stderr, /^ftp-proxy: --nflog-group:/);
  const bad = spawnSync(process.execPath, [cli.pathname, '--port', 'nope'], { encoding: 'utf8' });
  t.equal(bad.status, 2);
  t.equal(bad.stderr.trim().split('\n').length, 1);
  t.match(bad.stderr, /^ftp-proxy: -p\/--port:/);
  const taken = net.createServer().listen(0, '127.0.0.1');
  await once(taken, 'listening');
  const port = String((taken.address() as net.AddressInfo).port);
  const busy = spawn(process.execPath, [cli.pathname, '-R', '127.0.0.1', '--backend', 'relay', '-p', port], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  busy.stderr.on('data', (d) => (stderr += d));
  const [status] = (await once(busy, 'exit')) as [number];
  taken.close();
  t.equal(status, 1, 'a listen failure exits 1');
  t.match(stderr, /cannot listen on 127.0.0.1 port \d+: EADDRINUSE/);
});
