import t from 'tap';
import net from 'node:net';
import { once } from 'node:events';
import { PortAllocator } from '../../src/net/ports.js';
import { Control, ScriptedServer, basicResponder } from '../lib/scripted.js';
import { eventually, login, rig } from '../lib/session-rig.js';

t.test('relays a session and rewrites PASV through the data plane', async (t) => {
  const r = await rig(t);
  const c = new Control(r.proxyPort);
  await login(t, c);
  c.send('PASV');
  t.match(await c.line(), /^227 Entering Passive Mode \(127,0,0,1,\d+,\d+\)\.$/);
  t.equal(r.dp.live.size, 1);
  const path = r.dp.opened[0]!;
  t.same(path.target, { address: '127.0.0.1', port: 5001 }, "the server's announced port, on the control address");
  t.equal(path.peer, '127.0.0.1');
  c.send('QUIT');
  t.equal(await c.line(), '221 bye');
  await c.closedWithin();
  t.ok(await eventually(() => r.dp.live.size === 0), 'teardown released the path');
  t.ok(await eventually(() => r.proxy.sessions.size === 0));
});

t.test('bounce attempt: 501, nothing admitted, nothing sent to the server', async (t) => {
  const r = await rig(t);
  const c = new Control(r.proxyPort);
  await login(t, c);
  c.send('PORT 10,1,2,3,200,1');
  t.match(await c.line(), /^501 /);
  c.send('PORT 127,0,0,1,0,25');
  t.match(await c.line(), /^501 .*1024/);
  c.send('EPRT |1|192.0.2.77|40000|');
  t.match(await c.line(), /^501 /);
  t.equal(r.dp.opened.length, 0);
  t.notOk(r.server.received.some((l) => /^(PORT|EPRT)/.test(l)));
  c.send('NOOP');
  t.equal(await c.line(), '200 NOOP ok', 'session goes on');
  c.end();
});

t.test('range exhaustion: 425 and the session goes on', async (t) => {
  const r = await rig(t, { ports: new PortAllocator(50000, 50000) });
  const a = new Control(r.proxyPort);
  await login(t, a);
  a.send('PASV');
  t.match(await a.line(), /^227 /);
  const b = new Control(r.proxyPort);
  await login(t, b);
  b.send('PASV');
  t.match(await b.line(), /^425 .*no free data port/);
  b.send('NOOP');
  t.equal(await b.line(), '200 NOOP ok');
  a.end();
  t.ok(await eventually(() => r.dp.live.size === 0));
  b.send('PASV');
  t.match(await b.line(), /^227 /, 'the port came back when the other session ended');
  b.end();
});

t.test('backend failure mid-session: 425, session goes on', async (t) => {
  const r = await rig(t);
  const c = new Control(r.proxyPort);
  await login(t, c);
  r.dp.failNextOpen('BACKEND_FAILED');
  c.send('PORT 127,0,0,1,200,1');
  t.match(await c.line(), /^425 /);
  c.send('PORT 127,0,0,1,200,1');
  t.equal(await c.line(), '200 PORT ok');
  t.match(r.server.received.at(-1), /^PORT 127,0,0,1,\d+,\d+$/);
  t.not(r.server.received.at(-1), 'PORT 127,0,0,1,200,1', "the server is told the proxy's port");
  c.end();
});

t.test('server unreachable: 421 at once when refused', async (t) => {
  const closed = net.createServer();
  closed.listen(0, '127.0.0.1');
  await once(closed, 'listening');
  const port = (closed.address() as net.AddressInfo).port;
  await new Promise((r) => closed.close(r));
  const r = await rig(t, { resolve: async () => ({ address: '127.0.0.1', port }) });
  const c = new Control(r.proxyPort);
  t.match(await c.line(2000), /^421 .*cannot connect/);
  await c.closedWithin();
});

t.test('server silent: 421 within the connect timeout', async (t) => {
  const r = await rig(t, { flags: ['--connect-timeout', '1'], resolve: () => new Promise(() => undefined) });
  const c = new Control(r.proxyPort);
  const started = Date.now();
  t.match(await c.line(3000), /^421 .*did not answer/);
  t.ok(Date.now() - started < 2500);
  await c.closedWithin();
});

t.test('server closing mid-transfer: client told, path released', async (t) => {
  const r = await rig(t, {
    respond: (line, sock) => {
      if (line.startsWith('RETR')) {
        sock.write('150 here it comes\r\n');
        setTimeout(() => sock.destroy(), 50);
        return null;
      }
      return basicResponder(line, sock);
    },
  });
  const c = new Control(r.proxyPort);
  await login(t, c);
  c.send('PASV');
  t.match(await c.line(), /^227 /);
  c.send('RETR big');
  t.match(await c.line(), /^150 /);
  await c.closedWithin();
  t.ok(await eventually(() => r.dp.live.size === 0));
  t.same(r.dp.released.map((x) => x.abort), [true]);
});

t.test('client closing mid-transfer: server side closed, path released', async (t) => {
  const r = await rig(t, {
    respond: (line, sock) => (line.startsWith('RETR') ? '150 here it comes' : basicResponder(line, sock)),
  });
  const c = new Control(r.proxyPort);
  await login(t, c);
  c.send('PASV');
  await c.line();
  c.send('RETR big');
  t.match(await c.line(), /^150 /);
  c.end();
  t.ok(await eventually(() => r.dp.live.size === 0));
  t.ok(await eventually(() => r.server.sockets.size === 0), 'server connection closed');
});

t.test('session limit answers 421 and recovers', async (t) => {
  const r = await rig(t, { flags: ['-m', '1'] });
  const a = new Control(r.proxyPort);
  t.match(await a.line(), /^220 /);
  const b = new Control(r.proxyPort);
  t.match(await b.line(), /^421 Too many sessions/);
  await b.closedWithin();
  a.end();
  t.ok(await eventually(() => r.proxy.sessions.size === 0));
  const c = new Control(r.proxyPort);
  t.match(await c.line(), /^220 /);
  c.end();
});

t.test('per-client limit', async (t) => {
  const r = await rig(t, { flags: ['--max-sessions-per-client', '1'] });
  const a = new Control(r.proxyPort);
  t.match(await a.line(), /^220 /);
  const b = new Control(r.proxyPort);
  t.match(await b.line(), /^421 Too many sessions from your address/);
  a.end();
  b.end();
});

t.test('an over-long line ends the session with 500', async (t) => {
  const r = await rig(t);
  const c = new Control(r.proxyPort);
  await login(t, c);
  c.sock.write('NOOP ' + 'x'.repeat(2000));
  t.match(await c.line(), /^500 .*too long/);
  await c.closedWithin();
  t.ok(await eventually(() => r.proxy.sessions.size === 0));
});

t.test('idle timeout: 421, but not while a transfer runs', async (t) => {
  const r = await rig(t, {
    flags: ['-t', '1'],
    respond: (line, sock) => {
      if (line.startsWith('RETR')) {
        sock.write('150 slow transfer\r\n');
        setTimeout(() => sock.write('226 done\r\n'), 1600);
        return null;
      }
      return basicResponder(line, sock);
    },
  });
  const c = new Control(r.proxyPort);
  await login(t, c);
  c.send('PASV');
  await c.line();
  c.send('RETR slow');
  t.match(await c.line(), /^150 /);
  t.equal(await c.line(3000), '226 done', 'quiet control connection survived the transfer');
  t.match(await c.line(3000), /^421 Timeout/);
  await c.closedWithin();
});

t.test('graceful close: sessions get 421, everything released', async (t) => {
  const r = await rig(t);
  const c = new Control(r.proxyPort);
  await login(t, c);
  c.send('PASV');
  await c.line();
  await r.proxy.close(0);
  t.match(await c.line(), /^421 .*shutting down/);
  t.equal(r.dp.live.size, 0);
  t.equal(r.proxy.sessions.size, 0);
});

t.test('split and pipelined commands are handled as whole lines in order', async (t) => {
  const r = await rig(t);
  const c = new Control(r.proxyPort);
  t.match(await c.line(), /^220 /);
  const bytes = Buffer.from('USER anonymous\r\nPASS x\r\nNOOP\r\nPASV\r\nNOOP\r\n', 'latin1');
  for (let i = 0; i < bytes.length; i += 3) {
    c.sock.write(bytes.subarray(i, i + 3));
    await new Promise((res) => setImmediate(res));
  }
  t.match(await c.line(), /^331 /);
  t.match(await c.line(), /^230 /);
  t.equal(await c.line(), '200 NOOP ok');
  t.match(await c.line(), /^227 /);
  t.equal(await c.line(), '200 NOOP ok');
  c.end();
  // Every split position of one pipelined buffer, and all of it in one segment.
  for (let cut = 0; cut <= bytes.length; cut += 7) {
    const d = new Control(r.proxyPort);
    t.match(await d.line(), /^220 /);
    d.sock.write(bytes.subarray(0, cut));
    await new Promise((res) => setTimeout(res, 5));
    d.sock.write(bytes.subarray(cut));
    const got = [await d.line(), await d.line(), await d.line(), await d.line(), await d.line()];
    t.match(got, [/^331 /, /^230 /, /^200 /, /^227 /, /^200 /], `cut at ${cut}`);
    d.end();
  }
});

t.test('a server that never greets: 421 within the login timeout', async (t) => {
  const silent = new ScriptedServer(() => null, null);
  const port = await silent.listen();
  t.teardown(() => silent.close());
  const r = await rig(t, { flags: ['--login-timeout', '1'], resolve: async () => ({ address: '127.0.0.1', port }) });
  const c = new Control(r.proxyPort);
  t.match(await c.line(3000), /^421 Login timeout/);
  await c.closedWithin();
});

t.test('slowloris: a client dribbling a line byte by byte is idle', async (t) => {
  const r = await rig(t, { flags: ['-t', '1'] });
  const c = new Control(r.proxyPort);
  await login(t, c);
  let stop = false;
  void (async () => {
    for (const ch of 'NOOP'.repeat(100)) {
      if (stop || c.closed) return;
      c.sock.write(ch);
      await new Promise((res) => setTimeout(res, 200));
    }
  })();
  t.match(await c.line(4000), /^421 Timeout/);
  stop = true;
  await c.closedWithin();
});

t.test('login timeout stops counting once logged in', async (t) => {
  const r = await rig(t, { flags: ['--login-timeout', '1'] });
  const c = new Control(r.proxyPort);
  await login(t, c);
  await new Promise((res) => setTimeout(res, 1500));
  c.send('NOOP');
  t.equal(await c.line(), '200 NOOP ok');
  c.end();
});

t.test('access policy: clients and servers by CIDR, checked before connecting', async (t) => {
  const denied = await rig(t, { flags: ['--deny-client', '127.0.0.0/8'] });
  const c = new Control(denied.proxyPort);
  t.match(await c.line(), /^530 Access denied/);
  await c.closedWithin();
  t.equal(denied.server.received.length, 0);

  const notAllowed = await rig(t, { flags: ['--allow-client', '192.0.2.0/24,2001:db8::/32'] });
  const d = new Control(notAllowed.proxyPort);
  t.match(await d.line(), /^530 /);

  const serverDenied = await rig(t, { flags: ['--allow-server', '10.0.0.0/8'] });
  const e = new Control(serverDenied.proxyPort);
  t.match(await e.line(), /^530 Access to 127.0.0.1 is not permitted/);
  await e.closedWithin();
  t.equal(serverDenied.server.sockets.size, 0, 'never connected to the server');

  const allowed = await rig(t, { flags: ['--allow-client', '::ffff:127.0.0.0/104', '--deny-server', '10.0.0.0/8'] });
  const f = new Control(allowed.proxyPort);
  t.match(await f.line(), /^220 /);
  f.end();
});

t.test('--tls pass: after 234 the session is relayed as opaque bytes', async (t) => {
  const r = await rig(t, {
    flags: ['--tls', 'pass'],
    respond: (line, sock) => {
      if (line === 'AUTH TLS') {
        sock.write('234 go ahead\r\n');
        // From here on a real server speaks TLS; echo raw bytes to show they pass untouched.
        sock.removeAllListeners('data');
        sock.on('data', (d) => sock.write(Buffer.concat([Buffer.from('echo:'), d])));
        return null;
      }
      return basicResponder(line, sock);
    },
  });
  const c = new Control(r.proxyPort);
  t.match(await c.line(), /^220 /);
  c.send('AUTH TLS');
  t.equal(await c.line(), '234 go ahead');
  // A NUL would end a parsed session; PASV would be rewritten: neither happens now.
  c.sock.write(Buffer.concat([Buffer.from([0x16, 0x03, 0x01, 0x00, 0x05]), Buffer.from('PASV\r\n')]));
  t.equal(await c.line(), 'echo:\x16\x03\x01\x00\x05PASV', 'bytes pass unparsed');
  t.equal(r.dp.opened.length, 0);
  c.end();
});

t.test('a server closing right after 227: client told, path released', async (t) => {
  const r = await rig(t, {
    respond: (line, sock) => {
      if (line === 'PASV') {
        sock.end('227 Entering Passive Mode (127,0,0,1,19,137)\r\n');
        return null;
      }
      return basicResponder(line, sock);
    },
  });
  const c = new Control(r.proxyPort);
  await login(t, c);
  c.send('PASV');
  const got = await c.line();
  t.ok(got === null || /^227 /.test(got), `227 or nothing: ${got}`);
  await c.closedWithin();
  t.ok(await eventually(() => r.dp.live.size === 0), 'no path outlives the session');
});

t.test('NUL and CR floods end the session with 500', async (t) => {
  const r = await rig(t);
  const c = new Control(r.proxyPort);
  await login(t, c);
  c.sock.write('NOOP\x00\r\n');
  t.match(await c.line(), /^500 /);
  await c.closedWithin();
  const d = new Control(r.proxyPort);
  await login(t, d);
  d.sock.write('\r'.repeat(5000));
  t.match(await d.line(), /^500 .*too long/);
  await d.closedWithin();
  t.ok(await eventually(() => r.proxy.sessions.size === 0));
});

t.test('resets at every phase: during login, during ABOR; the proxy serves the next client', async (t) => {
  const r = await rig(t, {
    respond: (line, sock) => {
      if (line.startsWith('RETR')) return '150 sending';
      if (line === 'ABOR') return ['426 aborted', '226 ABOR ok'];
      return basicResponder(line, sock);
    },
  });
  const rst = (c: Control): void => {
    c.sock.resetAndDestroy();
  };
  const a = new Control(r.proxyPort);
  t.match(await a.line(), /^220 /);
  a.send('USER anonymous');
  await a.line();
  rst(a);
  const b = new Control(r.proxyPort);
  await login(t, b);
  b.send('PASV');
  await b.line();
  b.send('RETR big');
  await b.line();
  b.send('ABOR');
  rst(b);
  t.ok(await eventually(() => r.proxy.sessions.size === 0), 'both sessions torn down');
  t.ok(await eventually(() => r.dp.live.size === 0), 'nothing left admitted');
  const c = new Control(r.proxyPort);
  await login(t, c);
  c.send('NOOP');
  t.equal(await c.line(), '200 NOOP ok');
  c.end();
});

t.test('what one read produces toward a peer leaves in one write: a multi-line reply, pipelined commands', async (t) => {
  const feat = ['211-Features:', ' EPSV', ' PASV', ' MDTM', ' SIZE', ' REST STREAM', ' UTF8', '211 End'];
  // The whole reply in one write of the server's, so that it reaches the proxy in one read.
  const r = await rig(t, { respond: (line, sock) => (line === 'FEAT' ? feat.join('\r\n') : basicResponder(line, sock)) });
  const serverPort = (r.server.server.address() as net.AddressInfo).port;
  const c = new Control(r.proxyPort);
  await login(t, c);
  // Every write system call of a socket of this process goes through _writeGeneric (one write
  // or one writev): counted per socket.
  const writes = new Map<net.Socket, number>();
  const proto = net.Socket.prototype as unknown as { _writeGeneric: (this: net.Socket, ...a: unknown[]) => unknown };
  const original = proto._writeGeneric;
  proto._writeGeneric = function (this: net.Socket, ...a: unknown[]) {
    writes.set(this, (writes.get(this) ?? 0) + 1);
    return original.apply(this, a);
  };
  t.teardown(() => (proto._writeGeneric = original));
  const count = (remotePort: number): number[] => [...writes].filter(([s]) => s.remotePort === remotePort).map(([, n]) => n);
  c.send('FEAT');
  for (const l of feat) t.equal(await c.line(), l);
  t.same(count(c.sock.localPort!), [1], 'the eight lines of the reply went to the client in one write');
  writes.clear();
  c.sock.write('NOOP\r\nNOOP\r\nNOOP\r\n');
  for (let i = 0; i < 3; i++) t.equal(await c.line(), '200 NOOP ok');
  t.same(count(serverPort), [1], 'three commands of one read went to the server in one write');
  c.send('QUIT');
  t.equal(await c.line(), '221 bye');
});
