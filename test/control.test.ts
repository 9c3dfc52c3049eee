import t, { type Test } from 'tap';
import net from 'node:net';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { once } from 'node:events';
import { spawnSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { ControlServer } from '../src/control/server.js';
import { formatTable, killCommand, sessionsCommand } from '../src/control/client.js';
import { hostPort, parseRequest, type SessionProvider, type SessionView } from '../src/control/protocol.js';
import { createLogger } from '../src/log.js';

const BIN = fileURLToPath(new URL('../dist/bin.js', import.meta.url));

const VIEWS: SessionView[] = [
  {
    id: '3',
    client: '192.0.2.5:40112',
    server: '198.51.100.2:21',
    user: 'anonymous',
    state: 'transfer',
    ageSeconds: 65.4,
    transfers: 2,
    bytes: 1048576,
    dataPath: { mode: 'passive', port: 50001 },
  },
  {
    id: '12',
    client: '[2001:db8::5]:50000',
    server: null,
    user: null,
    state: 'connect',
    ageSeconds: 3,
    transfers: 0,
    bytes: 0,
    dataPath: null,
  },
];

/** A provider over a fixed list; kill removes the session, as the real one ends it. */
function provider(): SessionProvider & { killed: string[] } {
  const live = [...VIEWS];
  const killed: string[] = [];
  return {
    killed,
    list: () => [...live],
    kill: (id) => {
      const i = live.findIndex((v) => v.id === id);
      if (i < 0) return false;
      live.splice(i, 1);
      killed.push(id);
      return true;
    },
  };
}

function logCollector() {
  const lines: Record<string, unknown>[] = [];
  const logger = createLogger({ debugLevel: 7, foreground: false, destination: { write: (s: string) => void lines.push(JSON.parse(s)) } });
  return { logger, lines };
}

function tmpdir(t: Test): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fp-control-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

async function serve(t: Test, p?: string) {
  const sock = p ?? path.join(tmpdir(t), 'ftp-proxy.sock');
  const prov = provider();
  const { logger, lines } = logCollector();
  const server = await ControlServer.open(sock, prov, logger);
  t.teardown(() => server.close());
  return { sock, prov, server, lines };
}

/** A client connection that sends lines and reads reply lines. */
async function connect(sock: string) {
  const c = net.connect({ path: sock });
  await once(c, 'connect');
  let buf = '';
  const waiting: ((l: string) => void)[] = [];
  const ready: string[] = [];
  c.on('data', (d) => {
    buf += d.toString();
    let i: number;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      const w = waiting.shift();
      if (w) w(line);
      else ready.push(line);
    }
  });
  const reply = (): Promise<unknown> =>
    new Promise<string>((resolve) => (ready.length > 0 ? resolve(ready.shift()!) : waiting.push(resolve))).then((l) => JSON.parse(l));
  return { c, reply, send: (s: string) => c.write(s) };
}

function io() {
  const o = { out: '', err: '' };
  return { o, io: { out: (s: string) => void (o.out += s), err: (s: string) => void (o.err += s) } };
}

t.test('requests: sessions and kill; one reply line each, in order', async (t) => {
  const { sock, prov, lines } = await serve(t);
  const mode = fs.statSync(sock).mode & 0o777;
  t.equal(mode.toString(8), '600', 'the socket is mode 0600');
  const { c, reply, send } = await connect(sock);
  send('{"cmd":"sessions"}\n{"cmd":"kill","id":"3"}\r\n{"cmd":"kill","id":"3"}\n{"cmd":"sessions"}\n');
  t.same(await reply(), { ok: true, sessions: VIEWS });
  t.same(await reply(), { ok: true });
  t.same(await reply(), { ok: false, error: 'no session 3' }, 'a second kill of the same id: gone');
  t.same(await reply(), { ok: true, sessions: [VIEWS[1]] });
  t.same(prov.killed, ['3']);
  t.ok(lines.some((l) => l.msg === 'session killed through the control socket' && l.sid === '3'), 'a kill is logged');
  c.destroy();
});

t.test('garbage lines get an error reply and the connection and socket serve on', async (t) => {
  const { sock } = await serve(t);
  const { c, reply, send } = await connect(sock);
  send('hello\n');
  t.match(await reply(), { ok: false, error: /^not JSON/ });
  send('[1,2]\n{"cmd":"reboot"}\n{"cmd":"kill"}\n{"cmd":"kill","id":7}\n\n{"cmd":"sessions"}\n');
  t.match(await reply(), { ok: false, error: 'a request is a JSON object' });
  t.match(await reply(), { ok: false, error: /^unknown cmd "reboot"/ });
  t.match(await reply(), { ok: false, error: /^kill needs "id"/ });
  t.match(await reply(), { ok: false, error: /^kill needs "id"/ });
  t.match(await reply(), { ok: true, sessions: { length: 2 } }, 'an empty line is skipped; the next request is served');
  send(Buffer.from([0xff, 0xfe, 0x00, 0x0a]).toString('latin1'));
  t.match(await reply(), { ok: false, error: /bad request line: NUL byte/ });
  await once(c, 'close');
  t.pass('a line with a NUL byte ends that connection');
  const huge = await connect(sock);
  huge.send('x'.repeat(5000));
  t.match(await huge.reply(), { ok: false, error: /bad request line: line longer than 4096 bytes/ });
  await once(huge.c, 'close');
  const again = await connect(sock);
  again.send('{"cmd":"sessions"}\n');
  t.match(await again.reply(), { ok: true }, 'the socket still serves');
  again.c.destroy();
});

t.test('a client that sends and half-closes still gets every reply', async (t) => {
  const { sock } = await serve(t);
  const c = net.connect({ path: sock });
  let got = '';
  c.on('data', (d) => (got += d));
  c.end('{"cmd":"sessions"}\n'.repeat(2000));
  await once(c, 'close');
  t.equal(got.split('\n').filter((l) => l !== '').length, 2000, 'replies are paced by the reader, none lost');
});

t.test('taking the path: live socket refused, stale one replaced, other files and missing directories refused', async (t) => {
  const { sock, server } = await serve(t);
  const { logger } = logCollector();
  await t.rejects(ControlServer.open(sock, provider(), logger), { code: 'IN_USE', message: `control socket ${sock}: another ftp-proxy is answering on it` });
  const { c, reply, send } = await connect(sock);
  send('{"cmd":"sessions"}\n');
  t.match(await reply(), { ok: true }, 'the first proxy keeps its socket');
  c.destroy();

  const dir = tmpdir(t);
  // A socket file nobody listens on: what a proxy killed with SIGKILL leaves.
  const stale = path.join(dir, 'stale.sock');
  const leftover = net.createServer().listen(stale);
  await once(leftover, 'listening');
  const ino = fs.statSync(stale).ino;
  // Closing a listener unlinks its file; make a stale file the way a crash does, by a hard link.
  fs.linkSync(stale, stale + '.keep');
  leftover.close();
  fs.renameSync(stale + '.keep', stale);
  t.equal(fs.statSync(stale).ino, ino);
  t.ok(fs.statSync(stale).isSocket());
  const { logger: l2, lines } = logCollector();
  const taken = await ControlServer.open(stale, provider(), l2);
  t.ok(lines.some((l) => l.msg === 'removed a stale control socket'));
  const fresh = await connect(stale);
  fresh.send('{"cmd":"sessions"}\n');
  t.match(await fresh.reply(), { ok: true }, 'the new proxy answers there');
  fresh.c.destroy();
  await taken.close();
  t.notOk(fs.existsSync(stale), 'close removes the socket file');

  const file = path.join(dir, 'plain');
  fs.writeFileSync(file, 'keep me');
  await t.rejects(ControlServer.open(file, provider(), logger), { code: 'NOT_A_SOCKET' });
  t.equal(fs.readFileSync(file, 'utf8'), 'keep me', 'a file that is not a socket is left alone');
  await t.rejects(ControlServer.open(path.join(dir, 'missing', 'x.sock'), provider(), logger), {
    code: 'NO_DIRECTORY',
    message: `control socket ${path.join(dir, 'missing', 'x.sock')}: directory ${path.join(dir, 'missing')} does not exist`,
  });
  await t.rejects(ControlServer.open(path.join(file, 'x.sock'), provider(), logger), { code: 'NO_DIRECTORY', message: /is not a directory/ });
  const made = path.join(dir, 'made', 'x.sock');
  const own = await ControlServer.open(made, provider(), logger, true);
  t.equal(fs.statSync(path.dirname(made)).mode & 0o777, 0o755, 'the default path: its missing directory is made, 0755');
  t.equal(fs.statSync(made).mode & 0o777, 0o600, 'the socket in it is 0600 as ever');
  await own.close();
  await t.rejects(ControlServer.open(path.join(dir, 'missing', 'deeper', 'x.sock'), provider(), logger, true), { code: 'NO_DIRECTORY' }, 'one that cannot be made is still NO_DIRECTORY');
  await server.close();
  t.notOk(fs.existsSync(sock));
});

t.test('client: table, JSON, kill exit codes, and no proxy', async (t) => {
  const { sock } = await serve(t);
  const a = io();
  t.equal(await sessionsCommand(sock, false, a.io), 0);
  t.equal(
    a.o.out,
    'ID  CLIENT               SERVER           USER       STATE     AGE    XFERS  BYTES    DATA\n' +
      '3   192.0.2.5:40112      198.51.100.2:21  anonymous  transfer  1m05s  2      1048576  passive:50001\n' +
      '12  [2001:db8::5]:50000  -                -          connect   3s     0      0        -\n',
  );
  const j = io();
  t.equal(await sessionsCommand(sock, true, j.io), 0);
  const parsed = JSON.parse(j.o.out) as SessionView[];
  t.same(parsed, VIEWS);
  for (const v of parsed) for (const k of ['id', 'client', 'server', 'user', 'ageSeconds', 'transfers']) t.ok(k in v, k);
  const k = io();
  t.equal(await killCommand(sock, '12', k.io), 0);
  t.equal(k.o.out + k.o.err, '', 'a kill that worked prints nothing');
  const u = io();
  t.equal(await killCommand(sock, '99', u.io), 1, 'unknown id: exit 1');
  t.equal(u.o.err, 'ftp-proxy: no session 99\n');
  const n = io();
  const nowhere = path.join(tmpdir(t), 'none.sock');
  t.equal(await sessionsCommand(nowhere, false, n.io), 2, 'no proxy: exit 2');
  t.equal(n.o.err, `ftp-proxy: no proxy answers on ${nowhere} (ENOENT)\n`);
  const n2 = io();
  t.equal(await killCommand(nowhere, '1', n2.io), 2);
  t.equal(n2.o.err.split('\n').length, 2, 'one line');
});

t.test('client: a peer that accepts and never answers, or answers junk, is no proxy', async (t) => {
  const dir = tmpdir(t);
  const mute = path.join(dir, 'mute.sock');
  const held: net.Socket[] = [];
  const srv = net.createServer((s) => void held.push(s)).listen(mute);
  await once(srv, 'listening');
  t.teardown(() => {
    for (const s of held) s.destroy();
    srv.close();
  });
  const { request } = await import('../src/control/client.js');
  await t.rejects(request(mute, { cmd: 'sessions' }, 300), { message: `no answer on ${mute} within 0.3 s` });
  const junk = path.join(dir, 'junk.sock');
  const j = net.createServer((s) => s.end('HTTP/1.1 400 Bad Request\r\n\r\n')).listen(junk);
  await once(j, 'listening');
  t.teardown(() => j.close());
  const out = io();
  t.equal(await sessionsCommand(junk, false, out.io), 2);
  t.equal(out.o.err, `ftp-proxy: ${junk} answered something other than ftp-proxy's protocol\n`);
});

t.test('a user name with control characters cannot write to the terminal', async (t) => {
  const table = formatTable([{ ...VIEWS[0]!, user: 'evil\x1b[2J\r\nroot' }]);
  t.notMatch(table, /\x1b/);
  t.match(table, /evil\?\[2J\?\?root/);
  t.equal(table.split('\n').length, 3, 'header, one row, final newline');
});

t.test('protocol helpers', async (t) => {
  t.equal(hostPort('192.0.2.1', 21), '192.0.2.1:21');
  t.equal(hostPort('2001:db8::1', 21), '[2001:db8::1]:21');
  t.same(parseRequest('{"cmd":"kill","id":"5","extra":1}'), { cmd: 'kill', id: '5' });
  t.same(parseRequest('null'), { error: 'a request is a JSON object' });
});

t.test('the built program: ftp-proxy sessions --json and kill against a running control socket', async (t) => {
  if (!fs.existsSync(BIN)) {
    t.fail('dist/bin.js missing: npm test builds it first');
    return;
  }
  const { sock, prov } = await serve(t);
  const run = (args: string[]) =>
    new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
      // Asynchronously: the control server runs in this process's event loop.
      import('node:child_process').then(({ execFile }) =>
        execFile(process.execPath, [BIN, ...args], (err, stdout, stderr) =>
          resolve({ status: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
        ),
      );
    });
  const s = await run(['sessions', '--json', '--control-socket', sock]);
  t.equal(s.status, 0, s.stderr);
  t.same(JSON.parse(s.stdout), VIEWS);
  const k = await run(['--control-socket', sock, 'kill', '3']);
  t.equal(k.status, 0, k.stderr);
  t.same(prov.killed, ['3']);
  const u = await run(['kill', '3', '--control-socket', sock]);
  t.equal(u.status, 1);
  t.equal(u.stderr, 'ftp-proxy: no session 3\n');
  const none = spawnSync(process.execPath, [BIN, 'sessions', '--control-socket', path.join(tmpdir(t), 'no.sock')], { encoding: 'utf8' });
  t.equal(none.status, 2);
  t.match(none.stderr, /^ftp-proxy: no proxy answers on \S+ \(ENOENT\)\n$/);
});
