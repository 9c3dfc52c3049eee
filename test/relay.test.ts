// The userspace relay on loopback: only the negotiated peer, only once, within the data
// timeout; bytes and half-closes carried both ways; nothing held after release or timeout.
// Every case runs with both carriers: splice(2) in the worker thread, and Node streams.
import t, { type Test } from 'tap';
import net from 'node:net';
import { once } from 'node:events';
import { createHash, randomBytes } from 'node:crypto';
import { RelayDataPlane } from '../src/dataplane/relay.js';
import { PortAllocator } from '../src/net/ports.js';
import { createLogger } from '../src/log.js';
import type { DataPathRequest } from '../src/dataplane/types.js';
import { readdirSync, readlinkSync } from 'node:fs';
import { execFileSync, spawn } from 'node:child_process';

const logger = createLogger({ debugLevel: 0, foreground: false, destination: { write: () => undefined } });
const payload = randomBytes(1 << 20);
const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

/** A target that sends `payload`, then ends; it records what it received. */
async function target(t: Test): Promise<{ port: number; got: () => Buffer; peers: string[] }> {
  const chunks: Buffer[] = [];
  const peers: string[] = [];
  const srv = net.createServer({ allowHalfOpen: true }, (s) => {
    peers.push(s.remoteAddress ?? '');
    s.on('data', (d: Buffer) => chunks.push(d));
    s.on('end', () => s.end(payload));
  });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  t.teardown(() => new Promise((r) => srv.close(r)));
  return { port: (srv.address() as net.AddressInfo).port, got: () => Buffer.concat(chunks), peers };
}

type Copy = 'splice' | 'streams';

async function rig(t: Test, copy: Copy, dataTimeout = 30) {
  const ports = new PortAllocator(50500, 50509);
  const relay = new RelayDataPlane({ ports, dataTimeout, logger, splice: copy === 'splice' });
  t.teardown(() => relay.close());
  await relay.start();
  t.equal(relay.copyMode, copy, `bytes carried by ${copy}`);
  return { ports, relay };
}

const request = (targetPort: number): DataPathRequest => ({
  sid: '1',
  kind: 'passive',
  family: 4,
  peer: '127.0.0.1',
  listen: '127.0.0.1',
  target: { address: '127.0.0.1', port: targetPort },
  source: '127.0.0.1',
});

/** Connect from `from`, send `data`, half-close, read to the end. */
async function exchange(port: number, from: string, data: Buffer): Promise<{ got: Buffer; error?: string }> {
  const c = net.connect({ port, host: '127.0.0.1', localAddress: from, allowHalfOpen: true });
  const chunks: Buffer[] = [];
  c.on('data', (d: Buffer) => chunks.push(d));
  return new Promise((resolve) => {
    c.on('error', (e: NodeJS.ErrnoException) => resolve({ got: Buffer.concat(chunks), error: e.code ?? e.message }));
    c.on('close', () => resolve({ got: Buffer.concat(chunks) }));
    c.on('connect', () => c.end(data));
  });
}

for (const copy of ['splice', 'streams'] as const) {
  t.test(`${copy}: carries both directions with half-close, for the peer only, once`, async (t) => {
    const tgt = await target(t);
    const { relay, ports } = await rig(t, copy);
    const path = await relay.open(request(tgt.port));
    const stranger = await exchange(path.port, '127.0.0.2', Buffer.from('x'));
    t.equal(stranger.got.length, 0, 'another source gets nothing');
    t.equal(tgt.peers.length, 0, 'and reaches nothing');
    const up = randomBytes(200_000);
    const r = await exchange(path.port, '127.0.0.1', up);
    t.equal(r.error, undefined);
    t.equal(sha(r.got), sha(payload), 'target to peer intact');
    t.equal(sha(tgt.got()), sha(up), 'peer to target intact, then FIN passed on');
    t.same(tgt.peers, ['127.0.0.1'], 'the target sees the source address');
    const again = await exchange(path.port, '127.0.0.1', Buffer.from('y'));
    t.equal(again.error, 'ECONNREFUSED', 'single use: the listener is gone');
    await relay.release(path.id, false);
    t.equal(ports.used, 0, 'port given back');
    t.equal(relay.size, 0, 'nothing held');
  });

  t.test(`${copy}: the data timeout closes an unused listener and frees its port`, async (t) => {
    const tgt = await target(t);
    const { relay, ports } = await rig(t, copy, 1);
    const path = await relay.open(request(tgt.port));
    t.equal(ports.used, 1);
    await new Promise((r) => setTimeout(r, 1300));
    t.equal(ports.used, 0);
    t.equal(relay.size, 0);
    t.equal((await exchange(path.port, '127.0.0.1', Buffer.from('z'))).error, 'ECONNREFUSED');
  });

  t.test(`${copy}: release with abort cuts a transfer in progress`, async (t) => {
    const hold = net.createServer((s) => s.write(Buffer.alloc(1 << 16)));
    hold.listen(0, '127.0.0.1');
    await once(hold, 'listening');
    t.teardown(() => new Promise((r) => hold.close(r)));
    const { relay } = await rig(t, copy);
    const path = await relay.open(request((hold.address() as net.AddressInfo).port));
    const c = net.connect({ port: path.port, host: '127.0.0.1' });
    c.on('error', () => undefined);
    await once(c, 'data');
    const cut = once(c, 'close');
    await relay.release(path.id, true);
    await cut;
    t.equal(relay.size, 0);
  });

  t.test(`${copy}: a listen address that is not ours fails at once, not as exhaustion`, async (t) => {
    const { relay, ports } = await rig(t, copy);
    await t.rejects(relay.open({ ...request(21), listen: '192.0.2.99' }), { code: 'BACKEND_FAILED', message: /cannot listen on 192.0.2.99/ });
    t.equal(ports.used, 0);
  });

  t.test(`${copy}: 8 MiB each way at once, with a slow reader, arrive intact`, async (t) => {
    const down = randomBytes(8 << 20);
    const up = randomBytes(8 << 20);
    const got: Buffer[] = [];
    const srv = net.createServer({ allowHalfOpen: true }, (s) => {
      s.on('data', (d: Buffer) => got.push(d));
      s.on('end', () => s.end());
      s.write(down);
    });
    srv.listen(0, '127.0.0.1');
    await once(srv, 'listening');
    t.teardown(() => new Promise((r) => srv.close(r)));
    const { relay } = await rig(t, copy);
    const path = await relay.open(request((srv.address() as net.AddressInfo).port));
    const c = net.connect({ port: path.port, host: '127.0.0.1', allowHalfOpen: true });
    const chunks: Buffer[] = [];
    // Read nothing for a while: the relay must hold back, not drop or buffer without bound.
    c.pause();
    setTimeout(() => c.resume(), 300);
    c.on('data', (d: Buffer) => chunks.push(d));
    c.on('connect', () => c.end(up));
    await once(c, 'close');
    t.equal(sha(Buffer.concat(chunks)), sha(down), 'target to peer intact');
    t.equal(sha(Buffer.concat(got)), sha(up), 'peer to target intact');
    await relay.release(path.id, false);
    t.equal(relay.size, 0, 'nothing held');
  });

  t.test(`${copy}: close() during a transfer cuts it and returns`, async (t) => {
    const hold = net.createServer((s) => s.write(Buffer.alloc(1 << 16)));
    hold.listen(0, '127.0.0.1');
    await once(hold, 'listening');
    t.teardown(() => new Promise((r) => hold.close(r)));
    const { relay, ports } = await rig(t, copy);
    const path = await relay.open(request((hold.address() as net.AddressInfo).port));
    const c = net.connect({ port: path.port, host: '127.0.0.1' });
    c.on('error', () => undefined);
    await once(c, 'data');
    // Listen first: the client may be closed before close() has finished with the worker.
    const cut = once(c, 'close');
    await relay.close();
    await cut;
    t.equal(relay.size, 0);
    t.equal(ports.used, 0);
  });
}

t.test('splice: a dead worker ends what it carried and later transfers use streams', async (t) => {
  const hold = net.createServer((s) => s.write(Buffer.alloc(1 << 16)));
  hold.listen(0, '127.0.0.1');
  await once(hold, 'listening');
  t.teardown(() => new Promise((r) => hold.close(r)));
  const { relay } = await rig(t, 'splice');
  const path = await relay.open(request((hold.address() as net.AddressInfo).port));
  const c = net.connect({ port: path.port, host: '127.0.0.1' });
  c.on('error', () => undefined);
  await once(c, 'data');
  // What a crash in the worker looks like from the main thread.
  const splicer = (relay as unknown as { splicer: { worker: { terminate(): Promise<number> } } }).splicer;
  const cut = once(c, 'close');
  await splicer.worker.terminate();
  await cut;
  t.equal(relay.copyMode, 'streams', 'fell back');
  const tgt = await target(t);
  const again = await relay.open(request(tgt.port));
  const r = await exchange(again.port, '127.0.0.1', Buffer.from('after'));
  t.equal(sha(r.got), sha(payload), 'streams carry the next transfer');
  await relay.release(path.id, false);
  await relay.release(again.id, false);
  t.equal(relay.size, 0);
});

t.test('splice: a pair the worker cannot take (no descriptor left for its pipes) goes through streams', async (t) => {
  const tgt = await target(t);
  const lines: string[] = [];
  const ports = new PortAllocator(50500, 50509);
  const relay = new RelayDataPlane({
    ports,
    dataTimeout: 30,
    logger: createLogger({ debugLevel: 6, foreground: false, destination: { write: (l: string) => void lines.push(l) } }),
  });
  t.teardown(() => relay.close());
  await relay.start();
  const path = await relay.open(request(tgt.port));
  // Lower this process's descriptor limit so that exactly four more fit: the client socket,
  // the accepted peer, the relay's connection to the target and the target's accepted one.
  // pipe2 needs two more and fails with EMFILE, whichever of them comes first.
  const limits = (): string => execFileSync('prlimit', ['--pid', String(process.pid), '--nofile', '--output=SOFT,HARD', '--noheadings', '--raw'], { encoding: 'utf8' }).trim();
  const [soft, hard] = limits().split(/\s+/);
  // (readdir's own descriptor is in the listing but closed by now: readlink drops it.)
  const open = readdirSync('/proc/self/fd')
    .map(Number)
    .filter((f) => {
      try {
        return readlinkSync(`/proc/self/fd/${f}`) !== '';
      } catch {
        return false;
      }
    });
  let limit = 0;
  while (limit - open.filter((f) => f < limit).length < 4) limit++;
  // Restoring needs a process, and starting one needs descriptors: start it now, let it wait.
  const restorer = spawn('sh', ['-c', `read _; exec prlimit --pid ${process.pid} --nofile=${soft}:${hard}`], {
    stdio: ['pipe', 'ignore', 'inherit'],
  });
  execFileSync('prlimit', ['--pid', String(process.pid), `--nofile=${limit}:${hard}`]);
  let r: { got: Buffer; error?: string };
  try {
    r = await exchange(path.port, '127.0.0.1', Buffer.from('up'));
  } finally {
    restorer.stdin.end('go\n');
    await once(restorer, 'exit');
  }
  t.equal(limits(), `${soft} ${hard}`, 'limit restored');
  t.equal(r.error, undefined);
  t.equal(sha(r.got), sha(payload), 'carried intact');
  t.equal(sha(tgt.got()), sha(Buffer.from('up')), 'both ways');
  t.ok(lines.some((l) => l.includes('relaying through streams')), 'through streams, and the log says why');
  t.equal(relay.copyMode, 'splice', 'the worker is still there for the next pair');
  await relay.release(path.id, false);
  t.equal(relay.size, 0);
});
