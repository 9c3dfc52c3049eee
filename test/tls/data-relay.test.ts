import t from 'tap';
import { FakeDataPlane } from '../../src/dataplane/fake.js';
import { RelayDataPlane } from '../../src/dataplane/relay.js';
import type { DataPathRequest, DataTls } from '../../src/dataplane/types.js';
import { createLogger } from '../../src/log.js';
import { PortAllocator } from '../../src/net/ports.js';
import { TLS_PATH_PREFIX, TlsRoutedDataPlane } from '../../src/tls/data-relay.js';

const quiet = createLogger({ debugLevel: 0, foreground: false, destination: { write: () => undefined } });
const req: DataPathRequest = {
  sid: '1',
  kind: 'passive',
  family: 4,
  peer: '127.0.0.1',
  listen: '127.0.0.1',
  target: { address: '127.0.0.1', port: 9 },
  source: '127.0.0.1',
};
const tls: DataTls = { secure: () => Promise.reject(new Error('not reached')) };

t.test('requests with a TLS side go to the relay, the rest to the base plane; ids find their plane again', async (t) => {
  const ports = new PortAllocator(47000, 47099);
  const base = new FakeDataPlane(ports);
  const relay = new RelayDataPlane({ ports, dataTimeout: 5, logger: quiet, splice: false, idPrefix: TLS_PATH_PREFIX });
  const dp = new TlsRoutedDataPlane(base, relay);
  t.teardown(() => dp.close());
  await dp.start();
  const plain = await dp.open(req);
  const prot = await dp.open({ ...req, tls });
  const serverSide = await dp.open({ ...req, serverTls: tls });
  t.same(base.opened.map((o) => o.id), [plain.id], 'only the plain request reached the base plane');
  t.match(prot.id, /^tls-/);
  t.equal(relay.size, 2, 'the relay listens for the two TLS paths');
  t.not(prot.port, plain.port, 'one port range, no port twice');
  await dp.release(prot.id, false);
  t.equal(relay.size, 1, 'released on the relay');
  await dp.release(plain.id, false);
  t.same(base.released, [{ id: plain.id, abort: false }], 'released on the base plane');
  t.same(await dp.transferred(prot.id), { fromPeer: 0, toPeer: 0 }, "the relay's count for its path");
  await dp.endSession('1');
  t.equal(relay.size, 0, 'endSession reaches both planes');
  t.notOk(serverSide.id === plain.id);
});
