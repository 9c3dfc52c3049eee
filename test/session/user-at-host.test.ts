// --user-at-host: parsing USER name@host[:port], resolving with a timeout, and sessions of
// clients that connect to the proxy itself (through the real listener and session shell).
import t from 'tap';
import { OrigDstError } from '../../src/errors.js';
import { parseUserAtHost, resolveHost, type Lookup } from '../../src/net/user-at-host.js';
import { DIRECT_GREETING, directLine } from '../../src/session/direct-login.js';
import { createLogger } from '../../src/log.js';
import { SessionMachine } from '../../src/session/machine.js';
import { Control } from '../lib/scripted.js';
import { config, rig, type Rig } from '../lib/session-rig.js';

t.test('parse: the forms of name@host', async (t) => {
  t.same(parseUserAtHost('anonymous@ftp.example.org'), { user: 'anonymous', host: 'ftp.example.org', port: 21, literal: false });
  t.same(parseUserAtHost('bob@198.51.100.2:2121'), { user: 'bob', host: '198.51.100.2', port: 2121, literal: true });
  t.same(parseUserAtHost('bob@[2001:DB8::0:2]:2121'), { user: 'bob', host: '2001:db8::2', port: 2121, literal: true });
  t.same(parseUserAtHost('bob@[2001:db8::2]'), { user: 'bob', host: '2001:db8::2', port: 21, literal: true });
  t.same(parseUserAtHost('me@mail.example@ftp.example.'), { user: 'me@mail.example', host: 'ftp.example.', port: 21, literal: false }, 'the last @ separates');
  t.same(parseUserAtHost('a@[::ffff:192.0.2.7]'), { user: 'a', host: '192.0.2.7', port: 21, literal: true }, 'an IPv4-mapped literal is IPv4');
  const bad: [string, string, RegExp][] = [
    ['anonymous', 'NO_HOST', /no @host/],
    ['@', 'BAD_USER_AT_HOST', /no user name/],
    ['@host', 'BAD_USER_AT_HOST', /no user name/],
    ['a@', 'BAD_USER_AT_HOST', /no host/],
    ['a@[::1', 'BAD_USER_AT_HOST', /not closed/],
    ['a@[::1]x', 'BAD_USER_AT_HOST', /only :port/],
    ['a@[nope]:21', 'BAD_USER_AT_HOST', /not an IPv6 address/],
    ['a@[fe80::1%eth0]', 'BAD_USER_AT_HOST', /not an IPv6 address/],
    ['a@host:99999', 'BAD_USER_AT_HOST', /'99999' is not a port/],
    ['a@host:0', 'BAD_USER_AT_HOST', /not a port/],
    ['a@host:', 'BAD_USER_AT_HOST', /not a port/],
    ['a@host:21x', 'BAD_USER_AT_HOST', /not a port/],
    ['a@2001:db8::1', 'BAD_USER_AT_HOST', /in brackets/],
    ['a@bad_name', 'BAD_USER_AT_HOST', /not a host name/],
    ['a@-x.example', 'BAD_USER_AT_HOST', /not a host name/],
    ['a@host name', 'BAD_USER_AT_HOST', /not a host name/],
    ['a@1.2.3', 'BAD_USER_AT_HOST', /not an IPv4 address/],
    ['a@256.1.1.1', 'BAD_USER_AT_HOST', /not an IPv4 address/],
    [`a@${'x'.repeat(64)}.example`, 'BAD_USER_AT_HOST', /not a host name/],
  ];
  for (const [arg, code, re] of bad) t.throws(() => parseUserAtHost(arg), { code, message: re }, arg);
});

t.test('resolve: literals need no lookup; a lookup is bounded by the timeout', async (t) => {
  const never: Lookup = () => new Promise(() => undefined);
  t.same(await resolveHost(parseUserAtHost('a@192.0.2.1'), 10, never), ['192.0.2.1']);
  const started = Date.now();
  await t.rejects(resolveHost(parseUserAtHost('a@silent.example'), 200, never), { code: 'RESOLVE_TIMEOUT', message: /no answer from the resolver for silent.example/ });
  t.ok(Date.now() - started < 1000, 'gave up at the timeout');
  const failing = (code: string): Lookup => () => Promise.reject(Object.assign(new Error(code), { code }));
  await t.rejects(resolveHost(parseUserAtHost('a@nx.example'), 1000, failing('ENOTFOUND')), { code: 'NOT_FOUND' });
  await t.rejects(resolveHost(parseUserAtHost('a@nx.example'), 1000, failing('EAI_AGAIN')), { code: 'RESOLVE_FAILED' });
  await t.rejects(resolveHost(parseUserAtHost('a@nx.example'), 1000, async () => []), { code: 'NOT_FOUND' });
});

t.test('before the login: plain USER gets the hint, QUIT ends, AUTH and the rest are refused', async (t) => {
  t.match(directLine('USER alice'), { kind: 'reply', text: /^530 .*USER name@host/ });
  t.match(directLine('USER @'), { kind: 'reply', text: /^501 Bad USER name@host: no user name/ });
  t.match(directLine('user a@[::1'), { kind: 'reply', text: /^501 / });
  t.match(directLine('\xff\xf4USER bob@h.example:2121'), { kind: 'login', target: { user: 'bob', host: 'h.example', port: 2121 } });
  t.match(directLine('QUIT'), { kind: 'quit', text: /^221 / });
  t.match(directLine('AUTH TLS'), { kind: 'reply', text: /^534 / });
  t.match(directLine('FEAT'), { kind: 'reply', text: /^530 Log in with USER name@host first/ });
  t.match(directLine('PASS x\rSTOR y'), { kind: 'reply', text: /^500 / });
});

t.test('config: --user-at-host needs --allow-server and outbound mode', async (t) => {
  t.throws(() => config(['--user-at-host'], true), /--user-at-host: needs --allow-server/);
  t.throws(() => config(['--user-at-host', '--allow-server', '10.0.0.0/8']), /--user-at-host: only has a meaning in outbound mode/);
  t.ok(config(['--user-at-host', '--allow-server', '10.0.0.0/8'], true).userAtHost);
});

const serverPort = (r: Rig): number => (r.server.server.address() as { port: number }).port;

/** An outbound proxy whose clients all connect to it directly (no redirect), unless `redirected`. */
async function directRig(t: Parameters<typeof rig>[0], extra: string[] = [], lookup?: Lookup): Promise<Rig & { redirect: (on: boolean) => void }> {
  let redirected: { address: string; port: number } | null = null;
  let on = false;
  const r = await rig(t, {
    outbound: true,
    flags: ['--user-at-host', '--allow-server', '127.0.0.0/8', '--connect-timeout', '1', ...extra],
    resolve: async () => {
      if (on && redirected) return redirected;
      throw new OrigDstError('LOOP', 'connection was not redirected');
    },
    ...(lookup ? { lookup } : {}),
  });
  redirected = { address: '127.0.0.1', port: serverPort(r) };
  return { ...r, redirect: (v) => (on = v) };
}

t.test('name@host: the proxy greets, connects, swallows the server greeting and sends USER name', async (t) => {
  const r = await directRig(t);
  const c = new Control(r.proxyPort);
  t.equal(await c.line(), DIRECT_GREETING);
  c.send('USER alice');
  t.match(await c.line(), /^530 This is a proxy: log in as USER name@host/);
  t.equal(r.server.accepted, 0, 'no connection for a plain USER');
  // Pipelined: the rest waits for the server and keeps its order.
  c.send(`USER alice@127.0.0.1:${serverPort(r)}\r\nPASS secret\r\nNOOP`);
  t.equal(await c.line(), '331 password please', "the server's reply to USER alice");
  t.equal(await c.line(), '230 logged in');
  t.equal(await c.line(), '200 NOOP ok');
  t.same(r.server.received.slice(0, 3), ['USER alice', 'PASS secret', 'NOOP']);
  c.send('PASV');
  t.match(await c.line(), /^227 Entering Passive Mode \(127,0,0,1,\d+,\d+\)\.$/);
  t.match(r.dp.opened.at(-1), { kind: 'passive', listen: '127.0.0.1', target: { address: '127.0.0.1', port: 5001 } }, "the data path is the proxy's own address");
  c.end();
});

t.test('name@host with a DNS name: the resolved address is checked against --allow-server before connecting', async (t) => {
  const names: Record<string, string[]> = { 'ftp.example': ['127.0.0.1'], 'outside.example': ['192.0.2.99'], 'mixed.example': ['192.0.2.99', '127.0.0.1'] };
  const r = await directRig(t, [], async (host) => names[host] ?? Promise.reject(Object.assign(new Error('nx'), { code: 'ENOTFOUND' })));
  const port = serverPort(r);
  const a = new Control(r.proxyPort);
  await a.line();
  a.send(`USER bob@ftp.example:${port}`);
  t.equal(await a.line(), '331 password please');
  a.end();

  const mixed = new Control(r.proxyPort);
  await mixed.line();
  mixed.send(`USER bob@mixed.example:${port}`);
  t.equal(await mixed.line(), '331 password please', 'the first address the policy admits');
  mixed.end();

  const before = r.server.accepted;
  const out = new Control(r.proxyPort);
  await out.line();
  out.send(`USER bob@outside.example:${port}`);
  t.match(await out.line(), /^530 Access to 192.0.2.99 is not permitted through this proxy/);
  await out.closedWithin();
  const literal = new Control(r.proxyPort);
  await literal.line();
  literal.send('USER bob@[2001:db8::5]:21');
  t.match(await literal.line(), /^530 Access to 2001:db8::5 is not permitted/);
  t.equal(r.server.accepted, before, 'no connection for a host outside --allow-server');

  const nx = new Control(r.proxyPort);
  await nx.line();
  nx.send('USER bob@nx.example');
  t.match(await nx.line(), /^530 Cannot log in: cannot resolve nx.example: ENOTFOUND/);
  nx.send(`USER bob@ftp.example:${port}`);
  t.equal(await nx.line(), '331 password please', 'the client may try again on the same connection');
  nx.end();
});

t.test('bad input and a silent resolver: clear replies, no connection, the proxy serves on', async (t) => {
  const r = await directRig(t, [], () => new Promise(() => undefined));
  const c = new Control(r.proxyPort);
  await c.line();
  for (const [line, re] of [
    ['USER @', /^501 Bad USER name@host: no user name before the @$/],
    ['USER a@', /^501 .*no host after the @/],
    ['USER a@[::1', /^501 .*not closed/],
    ['USER a@host:99999', /^501 .*'99999' is not a port from 1 to 65535/],
    ['PASS x', /^530 Log in with USER name@host first/],
  ] as const) {
    c.send(line);
    t.match(await c.line(), re, line);
  }
  const started = Date.now();
  c.send('USER a@silent.example');
  t.match(await c.line(3000), /^421 Service not available: no answer from the resolver for silent.example in 1 s/);
  t.ok(Date.now() - started >= 900, 'after --connect-timeout');
  await c.closedWithin();
  t.equal(r.server.accepted, 0, 'no connection made');
  const next = new Control(r.proxyPort);
  t.equal(await next.line(), DIRECT_GREETING, 'the proxy serves the next client');
  next.send(`USER a@127.0.0.1:${serverPort(r)}`);
  t.equal(await next.line(), '331 password please');
  next.end();
});

t.test('a redirected connection works as before in the same proxy', async (t) => {
  const r = await directRig(t);
  r.redirect(true);
  const c = new Control(r.proxyPort);
  t.equal(await c.line(), '220 scripted ready', "the server's own greeting");
  c.send('USER alice@elsewhere.example');
  t.equal(await c.line(), '331 password please', 'USER goes to the server unchanged');
  t.same(r.server.received, ['USER alice@elsewhere.example']);
  c.end();
});

t.test('a server greeting that is not 220 reaches the client; a 120 before it does not', async (t) => {
  const r = await directRig(t);
  r.server.server.removeAllListeners('connection');
  let greeting = ['120 wait a moment', '220 ready now'];
  r.server.server.on('connection', (sock) => {
    sock.on('error', () => undefined);
    sock.write(greeting.map((l) => l + '\r\n').join(''));
    sock.on('data', () => sock.write('331 pw\r\n'));
  });
  const a = new Control(r.proxyPort);
  await a.line();
  a.send(`USER x@127.0.0.1:${serverPort(r)}`);
  t.equal(await a.line(), '331 pw', 'the 120 and the 220 stay at the proxy');
  a.end();
  greeting = ['421 too many users'];
  const b = new Control(r.proxyPort);
  await b.line();
  b.send(`USER x@127.0.0.1:${serverPort(r)}`);
  t.equal(await b.line(), '421 too many users');
  b.end();
});

t.test('a refused login is logged once per kind in a session', async (t) => {
  const lines: { msg: string; code?: string }[] = [];
  const logger = createLogger({ debugLevel: 5, foreground: false, destination: { write: (s: string) => void lines.push(JSON.parse(s)) } });
  const r = await rig(t, {
    outbound: true,
    flags: ['--user-at-host', '--allow-server', '127.0.0.0/8'],
    resolve: () => Promise.reject(new OrigDstError('LOOP', 'connection was not redirected')),
    logger,
  });
  const c = new Control(r.proxyPort);
  await c.line();
  for (let i = 0; i < 5; i++) c.send('USER alice');
  c.send('USER @');
  for (let i = 0; i < 6; i++) t.match(await c.line(), /^5\d\d /);
  const refused = lines.filter((l) => l.msg === 'user@host login refused');
  t.same(refused.map((l) => l.code), ['NO_HOST', 'BAD_USER_AT_HOST']);
  c.end();
});

t.test('machine: a long greeting in pieces stays at the proxy, then USER name goes to the server', async (t) => {
  const m = new SessionMachine({
    sid: '1',
    client: { address: '192.0.2.2', port: 40000 },
    server: { address: '198.51.100.2', port: 21 },
    addressing: { passiveListen: '192.0.2.1', passiveAdvertise: '192.0.2.1', passiveSource: '198.51.100.1', activeListen: '198.51.100.1', activeSource: '192.0.2.1' },
    anonymousOnly: false,
    rewriteSourcePort: false,
    loginAs: 'alice',
  });
  const held = m.clientLine('PASS secret');
  t.same(held, [], 'a line before the greeting waits');
  const piece = m.serverReply({ code: 220, lines: ['220-welcome', ' '.repeat(100)], partial: true });
  t.same(piece.filter((a) => a.type === 'toClient'), [], 'the first piece is not passed on');
  const last = m.serverReply({ code: 220, lines: ['220 ready'], partial: false });
  t.same(last.filter((a) => a.type === 'toClient'), []);
  t.same(last.filter((a) => a.type === 'toServer').map((a) => (a as { text: string }).text), ['USER alice', 'PASS secret'], 'USER name, then what the client sent after its USER');
  t.equal(m.user, 'alice');
});
