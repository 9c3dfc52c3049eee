// --server-mode passive in the pure machine: a client's PORT/EPRT becomes PASV/EPSV toward the
// server, answered 200 by the proxy once it has joined the server's port; the client is connected
// to only when the transfer starts (1xx, or a 2xx that came without one); a refusal or an ABOR
// before the 1xx releases the path and never reaches the client's port.
import t from 'tap';
import type { Action, MachineOptions, SessionMachine } from '../../src/session/machine.js';
import { addressing, machine as base, of, reply, sent } from '../lib/machine-rig.js';
import { DataPlaneError } from '../../src/errors.js';
import { eventually, login, rig } from '../lib/session-rig.js';
import { parseArgs } from '../../src/cli.js';
import { buildConfig } from '../../src/config.js';
import { Control, basicResponder } from '../lib/scripted.js';

const machine = (over: Partial<MachineOptions> = {}) => base({ serverMode: 'passive', ...over });

/** PORT through to the 200: returns the machine and the join's path id. */
function converted(m: SessionMachine, cmd = 'PORT 192,0,2,2,156,64', id = 'j1') {
  const a = m.clientLine(cmd);
  const b = m.serverReply(reply('227 Entering Passive Mode (198,51,100,2,19,137).'));
  const [join] = of(b, 'join');
  const c = m.dataOpened(join!.token, { id, port: 41000, via: 'relay' });
  return { a, b, c, join: join! };
}

t.test('PORT becomes PASV toward the server; the proxy joins, then says 200', async (t) => {
  const m = machine();
  const { a, b, c, join } = converted(m);
  t.same(sent(a, 'toServer'), ['PASV'], 'the server is asked for a passive port');
  t.same(sent(a, 'toClient'), [], 'nothing to the client yet');
  t.same(sent(b, 'toClient'), [], 'the 227 never reaches the client');
  t.same(join.request, {
    sid: '7',
    server: { address: '198.51.100.2', port: 5001 },
    serverSource: '198.51.100.1',
    client: { address: '192.0.2.2', port: 40000 },
    clientSource: '192.0.2.1',
  });
  t.same(sent(c, 'toClient'), ['200 PORT command successful']);
  const log = of(c, 'log').find((l) => l.msg === 'active data path');
  t.match(log?.fields, { converted: true, plane: 'relay', toServer: 'PASV', dataPort: 41000 }, 'the path says it is converted and where it goes');
  t.equal(of(c, 'proceed').length, 0, 'the client is not connected to yet');

  t.same(sent(m.clientLine('RETR f'), 'toServer'), ['RETR f']);
  const d = m.serverReply(reply('150 Opening'));
  t.same(of(d, 'proceed').map((p) => p.id), ['j1'], 'the 150 connects the client');
  t.same(sent(d, 'toClient'), ['150 Opening']);
  t.same(of(m.serverReply(reply('150 again')), 'proceed'), [], 'once');
  const e = m.serverReply(reply('226 done'));
  t.same(of(e, 'release').map((r) => r.id), ['j1'], 'the path goes after the transfer');
  t.match(of(e, 'transferEnded')[0], { path: { id: 'j1', kind: 'active' }, mode: 'active', code: 226 });
});

t.test('EPRT toward an IPv6 server becomes EPSV; -r asks for source port 20 toward the client', async (t) => {
  const m = machine({ server: { address: '2001:db8::2', port: 21 }, rewriteSourcePort: true });
  const a = m.clientLine('EPRT |1|192.0.2.2|40001|');
  t.same(sent(a, 'toServer'), ['EPSV']);
  const [join] = of(m.serverReply(reply('229 Entering Extended Passive Mode (|||6000|)')), 'join');
  t.match(join!.request, { server: { address: '2001:db8::2', port: 6000 }, client: { port: 40001 }, clientSourcePort: 20 });
  t.same(sent(m.dataOpened(join!.token, { id: 'j', port: 1 }), 'toClient'), ['200 EPRT command successful']);
});

t.test('the same bounce rules as unconverted PORT', async (t) => {
  const m = machine();
  t.same(sent(m.clientLine('PORT 10,9,9,9,156,64'), 'toClient'), ["501 PORT refused: address is not the client's own"]);
  t.same(sent(m.clientLine('PORT 192,0,2,2,0,21'), 'toClient'), ['501 PORT refused: ports below 1024 are not allowed']);
  t.equal(m.outstanding, 0, 'nothing sent to the server');
});

t.test('a transfer refused without a 1xx releases the path at once and never connects the client', async (t) => {
  const m = machine();
  converted(m);
  m.clientLine('RETR missing');
  const a = m.serverReply(reply('550 No such file'));
  t.same(of(a, 'proceed'), [], 'no connection to the client');
  const rel = of(a, 'release');
  t.same(rel.map((r) => [r.id, r.urgent]), [['j1', true]], 'released before the reply');
  t.ok(a.indexOf(rel[0]!) < a.findIndex((x) => x.type === 'toClient'), 'path first, then the 550');
});

t.test('ABOR before the 1xx: 426 releases the path; ABOR after it: data already flowing ends by itself', async (t) => {
  const m = machine();
  converted(m);
  m.clientLine('RETR big');
  m.clientLine('ABOR');
  const a = m.serverReply(reply('426 aborted'));
  t.same(of(a, 'proceed'), []);
  t.same(of(a, 'release').map((r) => r.id), ['j1']);
  m.serverReply(reply('226 ABOR ok'));
  // A second transfer on a new conversion works.
  converted(m, 'PORT 192,0,2,2,156,65', 'j2');
  m.clientLine('RETR small');
  t.same(of(m.serverReply(reply('150 go')), 'proceed').map((p) => p.id), ['j2']);
  m.clientLine('ABOR');
  const b = m.serverReply(reply('426 cut'));
  t.same(of(b, 'release').map((r) => r.id), ['j2'], 'released; the relay carries what was sent to its end');
});

t.test('a 2xx without any 1xx still delivers: the client is connected to before the path goes', async (t) => {
  const m = machine();
  converted(m);
  m.clientLine('LIST');
  const a = m.serverReply(reply('226 done'));
  const p = a.findIndex((x) => x.type === 'proceed');
  const r = a.findIndex((x) => x.type === 'release');
  t.ok(p >= 0 && r > p, 'proceed, then release');
});

t.test('PASV errors go to the client as the answer to its PORT; join failures are 425', async (t) => {
  const m = machine();
  m.clientLine('PORT 192,0,2,2,156,64');
  t.same(sent(m.serverReply(reply('502 PASV not implemented')), 'toClient'), ['502 PASV not implemented']);
  m.clientLine('PORT 192,0,2,2,156,64');
  const [join] = of(m.serverReply(reply('227 (198,51,100,2,19,137)')), 'join');
  const f = m.dataFailed(join!.token, new DataPlaneError('BACKEND_FAILED', 'refused'));
  t.same(sent(f, 'toClient'), ["425 Can't open data connection: the proxy could not set it up"]);
  t.same(sent(m.clientLine('PORT 192,0,2,2,156,64'), 'toServer'), ['PASV'], 'the session goes on');
});

t.test('pipelined PORT + RETR + NOOP: replies in order, the 200 before the 150', async (t) => {
  const m = machine();
  const out: Action[] = [];
  out.push(...m.clientLine('PORT 192,0,2,2,156,64'), ...m.clientLine('RETR f'), ...m.clientLine('NOOP'));
  t.same(sent(out, 'toServer'), ['PASV', 'RETR f', 'NOOP'], 'the server gets RETR at once: it waits for the data connection');
  const b = m.serverReply(reply('227 (198,51,100,2,19,137)'));
  out.push(...b, ...m.serverReply(reply('150 go')), ...m.serverReply(reply('226 ok')), ...m.serverReply(reply('200 NOOP')));
  const [join] = of(b, 'join');
  const c = m.dataOpened(join!.token, { id: 'j', port: 1 });
  t.same(sent(c, 'toClient'), ['200 PORT command successful', '150 go', '226 ok', '200 NOOP']);
  t.same(of(c, 'proceed').map((p) => p.id), ['j']);
});

t.test('PASV from the client is not converted; client mode leaves PORT alone', async (t) => {
  const m = machine();
  t.same(sent(m.clientLine('PASV'), 'toServer'), ['PASV']);
  t.equal(of(m.serverReply(reply('227 (198,51,100,2,19,137)')), 'open').length, 1, 'a passive path as usual');
  const plain = machine({ serverMode: 'client' });
  const a = plain.clientLine('PORT 192,0,2,2,156,64');
  t.same(sent(a, 'toServer'), []);
  t.equal(of(a, 'open').length, 1, 'an active path as usual');
});

t.test('through the session shell and the fake plane: joined, proceeded on 150, released; nothing left at the end', async (t) => {
  const r = await rig(t, {
    flags: ['--server-mode', 'passive'],
    respond: (line, sock) => {
      if (line === 'RETR f') {
        sock.write('150 go\r\n');
        setTimeout(() => sock.write('226 done\r\n'), 20);
        return null;
      }
      if (line === 'RETR missing') return '550 no such file';
      return basicResponder(line, sock);
    },
  });
  const c = new Control(r.proxyPort);
  await login(t, c);
  c.send('PORT 127,0,0,1,156,64');
  t.equal(await c.line(), '200 PORT command successful');
  const [[id, join]] = [...r.dp.joins];
  t.match(join, { server: { address: '127.0.0.1', port: 5001 }, client: { address: '127.0.0.1', port: 40000 } });
  t.same(r.server.received.filter((l) => /^(PASV|PORT)/.test(l)), ['PASV'], 'the server saw PASV, never PORT');
  c.send('RETR f');
  t.equal(await c.line(), '150 go');
  t.equal(await c.line(), '226 done');
  t.same(r.dp.proceeded, [id], 'proceeded once, on the 150');
  t.ok(await eventually(() => r.dp.joins.size === 0), 'released after the transfer');

  c.send('PORT 127,0,0,1,156,65');
  t.equal(await c.line(), '200 PORT command successful');
  c.send('RETR missing');
  t.equal(await c.line(), '550 no such file');
  t.equal(r.dp.proceeded.length, 1, 'a refused transfer never proceeds');
  t.ok(await eventually(() => r.dp.joins.size === 0), 'and its path is released');

  c.send('PORT 127,0,0,1,156,66');
  t.equal(await c.line(), '200 PORT command successful');
  t.equal(r.dp.joins.size, 1);
  c.end();
  t.ok(await eventually(() => r.dp.joins.size === 0 && r.dp.live.size === 0), 'the session end releases a joined path never used');
});

t.test('--server-mode active: PASV meets PORT at the proxy; the 227 only after the server took the PORT', async (t) => {
  const m = machine({ serverMode: 'active' });
  const a = m.clientLine('PASV');
  t.same(sent(a, 'toServer'), [], 'nothing to the server before both listeners exist');
  const [meet] = of(a, 'meet');
  t.same(meet!.request, {
    sid: '7',
    client: { peer: '192.0.2.2', listen: '192.0.2.1' },
    server: { peer: '198.51.100.2', listen: '198.51.100.1' },
  });
  const b = m.dataOpened(meet!.token, { id: 'm1', port: 50001, serverPort: 50002, via: 'relay' });
  t.same(sent(b, 'toServer'), ['PORT 198,51,100,1,195,82'], "the server is sent the proxy's second port");
  t.same(sent(b, 'toClient'), [], 'the client waits for the server to take it');
  t.match(of(b, 'log').find((l) => l.msg === 'passive data path')?.fields, { converted: true, toServer: 'PORT', plane: 'relay' });
  t.same(sent(m.serverReply(reply('200 PORT ok')), 'toClient'), ['227 Entering Passive Mode (203,0,113,9,195,81).']);
  m.clientLine('RETR f');
  m.serverReply(reply('150 go'));
  const c = m.serverReply(reply('226 done'));
  t.same(of(c, 'release').map((r) => r.id), ['m1']);
  t.match(of(c, 'transferEnded')[0], { path: { id: 'm1', kind: 'passive' }, mode: 'passive' });

  const v6 = machine({ serverMode: 'active', server: { address: '2001:db8::2', port: 21 }, addressing: { ...addressing, activeListen: '2001:db8::1' } });
  const [meet6] = of(v6.clientLine('EPSV'), 'meet');
  t.same(sent(v6.dataOpened(meet6!.token, { id: 'm', port: 50003, serverPort: 50004 }), 'toServer'), ['EPRT |2|2001:db8::1|50004|'], 'EPRT toward an IPv6 server');
  t.same(sent(v6.serverReply(reply('200 ok')), 'toClient'), ['229 Entering Extended Passive Mode (|||50003|)']);
});

t.test('--server-mode active: a refused PORT releases the path before the client hears; a failed meet is 425 in turn', async (t) => {
  const m = machine({ serverMode: 'active' });
  const [meet] = of(m.clientLine('PASV'), 'meet');
  m.dataOpened(meet!.token, { id: 'm1', port: 50001, serverPort: 50002 });
  const a = m.serverReply(reply('500 Illegal PORT command'));
  const rel = a.findIndex((x) => x.type === 'release');
  t.ok(rel >= 0 && rel < a.findIndex((x) => x.type === 'toClient'), 'released first');
  t.same(sent(a, 'toClient'), ['500 Illegal PORT command']);
  m.clientLine('NOOP');
  const [meet2] = of(m.clientLine('PASV'), 'meet');
  t.same(sent(m.serverReply(reply('200 NOOP ok')), 'toClient'), [], 'held while the meet is under way');
  const f = m.dataFailed(meet2!.token, new DataPlaneError('PORTS_EXHAUSTED', 'none'));
  t.same(sent(f, 'toClient'), ['200 NOOP ok', "425 Can't open data connection: no free data port on the proxy, try again later"], 'in command order');
});

t.test('--server-mode active is for reverse mode only', async (t) => {
  const parsed = parseArgs(['--server-mode', 'active'], { out: () => undefined, err: () => undefined });
  t.equal(parsed.kind, 'run');
  if (parsed.kind === 'run') t.throws(() => buildConfig(parsed.options), /--server-mode: 'active' only has a meaning with -R\/--reverse/);
  const ok = parseArgs(['-R', '10.0.0.2', '--server-mode', 'Active'], { out: () => undefined, err: () => undefined });
  if (ok.kind === 'run') t.equal(buildConfig(ok.options).serverMode, 'active');
  const bad = parseArgs(['--server-mode', 'both'], { out: () => undefined, err: () => undefined });
  if (bad.kind === 'run') t.throws(() => buildConfig(bad.options), /is not one of client, passive, active/);
  // TLS is not carried on translated paths: the combination is refused, not silently plain.
  const tls = ['-R', '10.0.0.2', '--tls', 'terminate', '--tls-cert', '/c.pem', '--tls-key', '/k.pem'];
  for (const mode of ['passive', 'active']) {
    const p = parseArgs([...tls, '--server-mode', mode], { out: () => undefined, err: () => undefined });
    if (p.kind === 'run') t.throws(() => buildConfig(p.options), new RegExp(`--server-mode: '${mode}' cannot be combined with --tls terminate`));
  }
  const plain = parseArgs([...tls, '--server-mode', 'client'], { out: () => undefined, err: () => undefined });
  if (plain.kind === 'run') t.equal(buildConfig(plain.options).serverMode, 'client');
});

t.test('--server-mode active: a server one reply behind (pure-ftpd after ABOR) catches up on its PORT reply', async (t) => {
  const m = machine({ serverMode: 'active' });
  m.clientLine('NOOP');
  m.clientLine('TYPE I');
  t.same(sent(m.serverReply(reply('200 NOOP ok')), 'toClient'), ['200 NOOP ok']);
  // The server answered TYPE before (its reply went with an earlier command): TYPE looks outstanding.
  const [meet] = of(m.clientLine('PASV'), 'meet');
  m.dataOpened(meet!.token, { id: 'm1', port: 50001, serverPort: 50002 });
  const a = m.serverReply(reply('200 PORT command successful'));
  t.same(sent(a, 'toClient'), ['227 Entering Passive Mode (203,0,113,9,195,81).'], 'the client gets its 227, not the 200');
  t.equal(m.outstanding, 0, 'the skipped command is dropped from the record');
});
