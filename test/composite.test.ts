// The composite plane on loopback: a cross-family path goes to the relay (and carries bytes from
// ::1 to 127.0.0.1), a same-family one to the kernel plane (the fake here); release, transferred,
// carrying and endSession reach whichever plane holds the path, and both share one port range.
import t from 'tap';
import net from 'node:net';
import { once } from 'node:events';
import { CompositeDataPlane, crossFamily } from '../src/dataplane/composite.js';
import { RelayDataPlane } from '../src/dataplane/relay.js';
import { FakeDataPlane } from '../src/dataplane/fake.js';
import { PortAllocator } from '../src/net/ports.js';
import { createLogger } from '../src/log.js';
import type { DataPathRequest, DataTls } from '../src/dataplane/types.js';

const logger = createLogger({ debugLevel: 0, foreground: false, destination: { write: () => undefined } });

const same: DataPathRequest = {
  sid: 's1',
  kind: 'passive',
  family: 4,
  peer: '127.0.0.1',
  listen: '127.0.0.1',
  target: { address: '127.0.0.1', port: 2121 },
  source: '127.0.0.1',
};

t.test('crossFamily', async (t) => {
  t.equal(crossFamily(same), false, 'all IPv4');
  t.equal(crossFamily({ ...same, family: 6, peer: '::1', listen: '::1' }), true, 'IPv6 client, IPv4 server');
  t.equal(crossFamily({ ...same, kind: 'active', target: { address: '2001:db8::2', port: 5000 }, source: '2001:db8::1' }), true, 'IPv4 server, IPv6 client');
});

t.test('paths go to the plane that can carry them, and come back from it', async (t) => {
  const ports = new PortAllocator(50600, 50601);
  const kernel = new FakeDataPlane(ports);
  const relay = new RelayDataPlane({ ports, dataTimeout: 10, logger, splice: false });
  const dp = new CompositeDataPlane(kernel, relay);
  t.teardown(() => dp.close());
  await dp.start();
  t.equal(dp.name, 'fake', 'named after the kernel plane');

  const srv = net.createServer({ allowHalfOpen: true }, (s) => s.on('end', () => s.end('hello from v4')));
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  t.teardown(() => srv.close());
  const v4 = (srv.address() as net.AddressInfo).port;

  const k = await dp.open(same);
  t.equal(kernel.live.size, 1, 'same-family path admitted by the kernel plane');
  const x = await dp.open({ ...same, family: 6, peer: '::1', listen: '::1', target: { address: '127.0.0.1', port: v4 } });
  t.equal(x.via, 'relay', 'cross-family path carried by the relay');
  t.equal(kernel.live.size, 1, 'not by the kernel plane');
  t.not(x.port, k.port, 'one port range for both');
  await t.rejects(dp.open(same), { code: 'PORTS_EXHAUSTED' }, 'the shared range is exhausted by the two of them');

  const c = net.connect({ host: '::1', port: x.port });
  const got: Buffer[] = [];
  c.on('data', (d: Buffer) => got.push(d));
  await once(c, 'connect');
  c.end();
  await once(c, 'close');
  t.equal(Buffer.concat(got).toString(), 'hello from v4', 'bytes carried from ::1 to 127.0.0.1');
  t.same(await dp.transferred(x.id), { fromPeer: 0, toPeer: 13 }, 'transferred asked of the relay');

  await dp.release(k.id, false);
  t.same(kernel.released, [{ id: k.id, abort: false }], 'release of a kernel path reaches the kernel plane');
  await dp.release(x.id, false);
  t.equal(kernel.released.length, 1, 'release of a relay path does not (the fake would throw)');
  t.equal(relay.size, 0, 'the relay holds nothing');
  t.equal(ports.used, 0, 'every port back');

  const y = await dp.open({ ...same, family: 6, peer: '::1', listen: '::1' });
  await dp.open(same);
  await dp.endSession('s1');
  t.same(kernel.ended, ['s1'], 'endSession reaches the kernel plane');
  t.equal(kernel.live.size, 0, 'which released its path');
  t.equal(relay.size, 0, 'and the relay let go of its listener');
  t.equal(dp.carrying('s1'), false, 'nothing carrying');
  t.equal(ports.used, 0, 'every port back');
  t.ok(y.id.startsWith('relay-') && relay.owns(y.id) && !relay.owns(k.id), 'ids tell the planes apart');
});

t.test('paths with a TLS side (PROT P, --server-tls) go to the relay; the rest stay on the kernel plane', async (t) => {
  const ports = new PortAllocator(50610, 50619);
  const kernel = new FakeDataPlane(ports);
  const relay = new RelayDataPlane({ ports, dataTimeout: 5, logger });
  const dp = new CompositeDataPlane(kernel, relay);
  t.teardown(() => dp.close());
  await dp.start();
  const tls: DataTls = { secure: () => Promise.reject(new Error('not reached')) };
  const plain = await dp.open(same);
  const prot = await dp.open({ ...same, tls });
  const serverSide = await dp.open({ ...same, serverTls: tls });
  t.same(kernel.opened.map((o) => o.id), [plain.id], 'only the plain request reached the kernel plane');
  t.equal(prot.via, 'relay');
  t.equal(serverSide.via, 'relay');
  t.equal(relay.size, 2, 'the relay listens for the two TLS paths');
  t.equal(new Set([plain.port, prot.port, serverSide.port]).size, 3, 'one port range, no port twice');
  await dp.release(prot.id, false);
  t.equal(relay.size, 1, 'released on the relay');
  await dp.release(plain.id, false);
  t.same(kernel.released, [{ id: plain.id, abort: false }], 'released on the kernel plane');
  t.same(await dp.transferred(prot.id), { fromPeer: 0, toPeer: 0 }, "the relay's count for its path");
  await dp.endSession(same.sid);
  t.equal(relay.size, 0, 'endSession reaches both planes');
});
