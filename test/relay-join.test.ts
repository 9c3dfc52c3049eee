// The relay's joined paths (--server-mode passive) on loopback: connected to the server's port at
// once, to the client's only on proceed(); bytes both ways with both carriers; a path released or
// its session ended before proceed() closes the server leg and never touches the client.
import t, { type Test } from 'tap';
import net from 'node:net';
import { once } from 'node:events';
import { createHash, randomBytes } from 'node:crypto';
import { RelayDataPlane } from '../src/dataplane/relay.js';
import { PortAllocator } from '../src/net/ports.js';
import { createLogger } from '../src/log.js';
import type { JoinRequest } from '../src/dataplane/types.js';

const logger = createLogger({ debugLevel: 0, foreground: false, destination: { write: () => undefined } });
const payload = randomBytes(4 << 20);
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** A listener that records its connections and what each sent; `send` is written to each then ended. */
async function endpoint(t: Test, send: Buffer | null) {
  const conns: { got: Buffer[]; ended: Promise<void> }[] = [];
  const srv = net.createServer({ allowHalfOpen: true }, (s) => {
    const got: Buffer[] = [];
    s.on('data', (d: Buffer) => got.push(d));
    const ended = once(s, 'end').then(() => undefined, () => undefined);
    conns.push({ got, ended });
    if (send) s.end(send);
    else void ended.then(() => s.end());
  });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  t.teardown(() => new Promise((r) => srv.close(r)));
  return { port: (srv.address() as net.AddressInfo).port, conns };
}

const req = (server: number, client: number, sid = 's'): JoinRequest => ({
  sid,
  server: { address: '127.0.0.1', port: server },
  serverSource: '127.0.0.1',
  client: { address: '127.0.0.1', port: client },
  clientSource: '127.0.0.1',
});

const until = async (f: () => boolean, ms = 5000): Promise<boolean> => {
  const end = Date.now() + ms;
  while (!f() && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
  return f();
};

/** A relay plane closed in `t`'s teardown: ports 50700-50701 unless given, started unless `start` is false. */
async function relayFor(t: Test, o: { splice: boolean; ports?: PortAllocator; dataTimeout?: number; start?: boolean }): Promise<RelayDataPlane> {
  const relay = new RelayDataPlane({ ports: o.ports ?? new PortAllocator(50700, 50701), dataTimeout: o.dataTimeout ?? 5, logger, splice: o.splice });
  t.teardown(() => relay.close());
  if (o.start !== false) await relay.start();
  return relay;
}

for (const copy of ['splice', 'streams'] as const) {
  t.test(`${copy}: download joined, nothing to the client before proceed`, async (t) => {
    const relay = await relayFor(t, { splice: copy === 'splice' });
    const server = await endpoint(t, payload);
    const client = await endpoint(t, null);
    const path = await relay.join(req(server.port, client.port));
    t.equal(server.conns.length, 1, 'the server leg is connected when join resolves');
    t.ok(path.port > 0 && path.via === 'relay', 'its local port and plane');
    await new Promise((r) => setTimeout(r, 200));
    t.equal(client.conns.length, 0, 'the client is not connected to before proceed');
    relay.proceed(path.id);
    t.ok(await until(() => client.conns.length === 1), 'proceed connects to the client');
    await client.conns[0]!.ended;
    t.equal(sha(Buffer.concat(client.conns[0]!.got)), sha(payload), 'the whole file reached the client');
    t.same(await relay.transferred(path.id), { fromPeer: payload.length, toPeer: 0 }, 'counted with the server as the peer');
    await relay.release(path.id, false);
    t.ok(await until(() => relay.size === 0), 'nothing left');
  });

  t.test(`${copy}: upload joined`, async (t) => {
    const relay = await relayFor(t, { splice: copy === 'splice' });
    const server = await endpoint(t, null);
    const client = await endpoint(t, payload);
    const path = await relay.join(req(server.port, client.port));
    relay.proceed(path.id);
    t.ok(await until(() => server.conns.length === 1));
    await server.conns[0]!.ended;
    t.equal(sha(Buffer.concat(server.conns[0]!.got)), sha(payload), 'the whole file reached the server');
    t.same(await relay.transferred(path.id), { fromPeer: 0, toPeer: payload.length });
  });
}

t.test('released or session ended before proceed: the server leg closes, the client is never reached', async (t) => {
  const relay = await relayFor(t, { splice: false });
  const server = await endpoint(t, null);
  const client = await endpoint(t, null);
  const a = await relay.join(req(server.port, client.port, 'a'));
  const b = await relay.join(req(server.port, client.port, 'b'));
  t.equal(relay.size, 2);
  await relay.release(a.id, false);
  relay.proceed(a.id);
  await relay.endSession('b');
  relay.proceed(b.id);
  await Promise.all(server.conns.map((c) => c.ended));
  t.pass('both server legs were closed');
  await new Promise((r) => setTimeout(r, 200));
  t.equal(client.conns.length, 0, 'proceed after release is a no-op');
  t.equal(relay.size, 0, 'nothing held');
  t.same(await relay.transferred(a.id), { fromPeer: 0, toPeer: 0 }, 'zeros for a path that carried nothing');
});

t.test('a server port that refuses: join rejects with BACKEND_FAILED and holds nothing', async (t) => {
  const relay = await relayFor(t, { splice: false, start: false });
  const closed = net.createServer();
  closed.listen(0, '127.0.0.1');
  await once(closed, 'listening');
  const port = (closed.address() as net.AddressInfo).port;
  await new Promise((r) => closed.close(r));
  await t.rejects(relay.join(req(port, 1)), { code: 'BACKEND_FAILED' });
  t.equal(relay.size, 0);
});

t.test('met paths (--server-mode active): both listeners admit their own peer once; the first waits for the second', async (t) => {
  const relay = await relayFor(t, { splice: true, ports: new PortAllocator(50700, 50703) });
  const path = await relay.meet({ sid: 'm', client: { peer: '127.0.0.1', listen: '127.0.0.1' }, server: { peer: '127.0.0.1', listen: '127.0.0.1' } });
  t.ok(path.serverPort !== undefined && path.serverPort !== path.port, 'two ports');
  const got: Buffer[] = [];
  const client = net.connect({ host: '127.0.0.1', port: path.port });
  client.on('data', (d: Buffer) => got.push(d));
  await once(client, 'connect');
  await new Promise((r) => setTimeout(r, 200));
  const second = net.connect({ host: '127.0.0.1', port: path.port });
  const refused = await Promise.race([once(second, 'close').then(() => true), new Promise((r) => setTimeout(() => r(false), 2000))]);
  t.ok(refused, 'a second client connection is closed at once');
  const stranger = net.connect({ host: '127.0.0.1', port: path.serverPort!, localAddress: '127.0.0.2' });
  const shut = await Promise.race([once(stranger, 'close').then(() => true), new Promise((r) => setTimeout(() => r(false), 2000))]);
  t.ok(shut, "a connection to the server's port from another address is closed at once");
  const server = net.connect({ host: '127.0.0.1', port: path.serverPort! });
  await once(server, 'connect');
  server.end(payload);
  await once(client, 'end');
  client.end();
  t.equal(sha(Buffer.concat(got)), sha(payload), 'the server\'s data reached the waiting client');
  t.same(await relay.transferred(path.id), { fromPeer: 0, toPeer: payload.length }, 'counted with the client as the peer');
  t.ok(await until(() => relay.size === 0), 'nothing left');
});

t.test('a met path whose server never comes: released after the data timeout, both ports back', async (t) => {
  const ports = new PortAllocator(50700, 50703);
  const relay = await relayFor(t, { splice: false, ports, dataTimeout: 1, start: false });
  const path = await relay.meet({ sid: 'm', client: { peer: '127.0.0.1', listen: '127.0.0.1' }, server: { peer: '127.0.0.1', listen: '127.0.0.1' } });
  t.equal(ports.used, 2);
  const client = net.connect({ host: '127.0.0.1', port: path.port });
  await once(client, 'connect');
  await once(client, 'close');
  t.pass('the waiting client is closed when the timeout comes');
  t.equal(relay.size, 0);
  t.equal(ports.used, 0, 'both ports back');
});
