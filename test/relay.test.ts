// The userspace relay on loopback: only the negotiated peer, only once, within the data
// timeout; bytes and half-closes carried both ways; nothing held after release or timeout;
// nothing outlives its session, a half-closed or idle pair ends, a session's pairs are bounded.
// Every case runs with both carriers: splice(2) in the worker thread, and Node streams.
import t, { type Test } from 'tap';
import net from 'node:net';
import { once } from 'node:events';
import { createHash, randomBytes } from 'node:crypto';
import {
  HALF_CLOSED_LINGER_MS,
  MAX_PAIRS_PER_SESSION,
  RelayDataPlane,
  SESSION_END_LINGER_MS,
} from '../src/dataplane/relay.js';
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

async function rig(t: Test, copy: Copy, dataTimeout = 30, dataIdleTimeout?: number) {
  const ports = new PortAllocator(50500, 50509);
  const relay = new RelayDataPlane({ ports, dataTimeout, logger, splice: copy === 'splice', ...(dataIdleTimeout ? { dataIdleTimeout } : {}) });
  t.teardown(() => relay.close());
  await relay.start();
  t.equal(relay.copyMode, copy, `bytes carried by ${copy}`);
  return { ports, relay };
}

const request = (targetPort: number, sid = '1'): DataPathRequest => ({
  sid,
  kind: 'passive',
  family: 4,
  peer: '127.0.0.1',
  listen: '127.0.0.1',
  target: { address: '127.0.0.1', port: targetPort },
  source: '127.0.0.1',
});

/**
 * A target that, for each connection, runs `serve` (default: send 64 KiB and stay open), and
 * records when each of its sockets closed (ms since the test's start).
 */
async function server(t: Test, serve: (s: net.Socket) => void = (s) => void s.write(Buffer.alloc(1 << 16))) {
  const closedAt: number[] = [];
  const started = Date.now();
  const live = new Set<net.Socket>();
  const srv = net.createServer({ allowHalfOpen: true }, (s) => {
    live.add(s);
    s.on('error', () => undefined);
    s.on('close', () => closedAt.push(Date.now() - started));
    serve(s);
  });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  t.teardown(() => {
    for (const s of live) s.destroy();
    return new Promise((r) => srv.close(r));
  });
  return { port: (srv.address() as net.AddressInfo).port, closedAt, started };
}

/**
 * A client of the relay that reads nothing yet; `closed` says whether the relay has ended its
 * side (seen once the client reads: its end, or a reset).
 */
async function connectPaused(port: number): Promise<{ c: net.Socket; closed: () => boolean }> {
  const c = net.connect({ port, host: '127.0.0.1', allowHalfOpen: true });
  let closed = false;
  c.on('error', () => (closed = true));
  c.on('end', () => (closed = true));
  c.on('close', () => (closed = true));
  c.pause();
  await once(c, 'connect');
  return { c, closed: () => closed };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Polls `cond` every 50 ms for at most `ms`; resolves with the time it took, or -1. */
async function within(ms: number, cond: () => boolean): Promise<number> {
  const start = Date.now();
  while (!cond()) {
    if (Date.now() - start > ms) return -1;
    await sleep(50);
  }
  return Date.now() - start;
}

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

  t.test(`${copy}: endSession closes the session's listeners and cuts its pair carrying both ways at once`, async (t) => {
    const srv = await server(t);
    const { relay, ports } = await rig(t, copy);
    const busy = await relay.open(request(srv.port, '1'));
    const unused = await relay.open(request(srv.port, '1'));
    const other = await relay.open(request(srv.port, '2'));
    const mine = await connectPaused(busy.port);
    const theirs = await connectPaused(other.port);
    mine.c.resume();
    theirs.c.resume();
    await sleep(200);
    t.ok(relay.carrying('1'), 'carrying while bytes move');
    const ended = Date.now();
    await relay.endSession('1');
    const took = await within(1000, mine.closed);
    t.ok(took >= 0, `cut at once, not after a linger (${Date.now() - ended} ms)`);
    t.equal((await exchange(unused.port, '127.0.0.1', Buffer.from('late'))).error, 'ECONNREFUSED', 'its listener is closed');
    await sleep(300);
    t.notOk(theirs.closed(), 'another session is untouched');
    t.ok(relay.carrying('2') && !relay.carrying('1'));
    t.equal(relay.size, 1, 'only the other session is held');
    t.equal(ports.used, 0, 'every listener gave its port back');
  });

  t.test(`${copy}: endSession lets a pair flushing a finished side's data finish, within a bounded linger`, async (t) => {
    const file = randomBytes(4 << 20);
    const srv = await server(t, (s) => void s.end(file));
    const { relay } = await rig(t, copy);
    const path = await relay.open(request(srv.port));
    // A reader that takes nothing for a while: the target has finished, the relay holds the rest.
    const { c } = await connectPaused(path.port);
    await sleep(500);
    await relay.endSession('1');
    await sleep(1000);
    const chunks: Buffer[] = [];
    c.on('data', (d: Buffer) => chunks.push(d));
    c.resume();
    await once(c, 'end');
    t.equal(sha(Buffer.concat(chunks)), sha(file), 'the whole file, after the session ended');
    t.ok((await within(2 * SESSION_END_LINGER_MS, () => relay.size === 0)) >= 0, 'then nothing is held');
  });

  t.test(`${copy}: after endSession, a pair whose reader never reads is cut when the linger runs out`, async (t) => {
    const srv = await server(t, (s) => void s.end(randomBytes(2 << 20)));
    const { relay } = await rig(t, copy);
    const path = await relay.open(request(srv.port));
    await connectPaused(path.port);
    await sleep(500);
    const ended = Date.now();
    await relay.endSession('1');
    t.equal(relay.size, 1, 'not cut at once: it is flushing');
    const took = await within(SESSION_END_LINGER_MS + 3000, () => relay.size === 0);
    t.ok(took >= SESSION_END_LINGER_MS - 100, `lingered ${took} ms`);
    t.ok((await within(1000, () => srv.closedAt.length === 1)) >= 0, 'and the target side is closed');
    t.ok(Date.now() - ended < SESSION_END_LINGER_MS + 3000, 'cut soon after the linger');
  });

  t.test(`${copy}: a half-closed pair (reader at EOF that never closes) ends after a short linger, session or not`, async (t) => {
    const listing = randomBytes(3000);
    const srv = await server(t, (s) => void s.end(listing));
    const { relay, ports } = await rig(t, copy);
    const path = await relay.open(request(srv.port));
    const { c } = await connectPaused(path.port);
    const chunks: Buffer[] = [];
    c.on('data', (d: Buffer) => chunks.push(d));
    c.resume();
    await once(c, 'end');
    const eof = Date.now();
    t.equal(sha(Buffer.concat(chunks)), sha(listing), 'the reader got everything');
    const took = await within(HALF_CLOSED_LINGER_MS + 3000, () => relay.size === 0);
    t.ok(took >= HALF_CLOSED_LINGER_MS - 500, `ended ${Date.now() - eof} ms after EOF`);
    t.ok((await within(1000, () => srv.closedAt.length === 1)) >= 0, 'the target side is closed');
    t.ok(c.writable, 'though the reader never closed its end');
    t.notOk(relay.carrying('1'));
    t.equal(ports.used, 0);
  });

  t.test(`${copy}: a pair that carries nothing for the data idle timeout is cut; a slow one is not`, async (t) => {
    const silent = await server(t, () => undefined);
    const trickle = randomBytes(12 * 1024);
    const slow = await server(t, (s) => {
      let i = 0;
      const tick = setInterval(() => {
        if (i === 12) {
          clearInterval(tick);
          s.end();
        } else s.write(trickle.subarray(i++ * 1024, i * 1024));
      }, 250);
      s.on('close', () => clearInterval(tick));
    });
    const { relay } = await rig(t, copy, 30, 1);
    const quiet = await connectPaused((await relay.open(request(silent.port, '1'))).port);
    const moving = await connectPaused((await relay.open(request(slow.port, '2'))).port);
    const chunks: Buffer[] = [];
    moving.c.on('data', (d: Buffer) => chunks.push(d));
    const trickled = once(moving.c, 'end');
    moving.c.resume();
    quiet.c.resume();
    const took = await within(4000, quiet.closed);
    t.ok(took >= 900 && took <= 3500, `the silent pair was cut after ${took} ms`);
    t.notOk(relay.carrying('1'));
    t.ok(relay.carrying('2'), 'the trickling one is carrying');
    await trickled;
    t.equal(sha(Buffer.concat(chunks)), sha(trickle), 'the trickle arrived whole over 3 s with a 1 s idle timeout');
  });

  t.test(`${copy}: carrying while a slow reader takes what a finished side sent, not once it is delivered`, async (t) => {
    const file = randomBytes(2 << 20);
    const srv = await server(t, (s) => void s.end(file));
    const { relay } = await rig(t, copy);
    const path = await relay.open(request(srv.port));
    const { c } = await connectPaused(path.port);
    // 16 KiB every 20 ms: some 3 s for the file.
    const chunks: Buffer[] = [];
    const samples: boolean[] = [];
    let last = Date.now();
    const reader = setInterval(() => {
      const d = c.read(16384) as Buffer | null;
      if (d) chunks.push(d);
      if (Date.now() - last >= 200) {
        last = Date.now();
        samples.push(relay.carrying('1'));
      }
    }, 20);
    t.teardown(() => clearInterval(reader));
    await once(c, 'end');
    clearInterval(reader);
    t.equal(sha(Buffer.concat(chunks)), sha(file), 'whole file');
    t.ok(samples.length >= 8, `read for ${samples.length * 200} ms`);
    t.ok(samples.every(Boolean), `carrying at every look: ${samples.map(Number).join('')}`);
    t.ok((await within(4000, () => !relay.carrying('1'))) >= 0, 'not carrying once delivered and quiet');
  });

  t.test(`${copy}: a session holds at most ${MAX_PAIRS_PER_SESSION} pairs: a new one cuts its oldest`, async (t) => {
    const srv = await server(t);
    const { relay } = await rig(t, copy);
    const clients: Awaited<ReturnType<typeof connectPaused>>[] = [];
    const theirs = await connectPaused((await relay.open(request(srv.port, '2'))).port);
    theirs.c.resume();
    for (let i = 0; i <= MAX_PAIRS_PER_SESSION; i++) {
      const path = await relay.open(request(srv.port, '1'));
      clients.push(await connectPaused(path.port));
      clients.at(-1)!.c.resume();
      // Accepted before the next one comes: age is the order of acceptance.
      await sleep(100);
    }
    t.ok((await within(2000, () => clients[0]!.closed())) >= 0, 'the oldest was cut');
    await sleep(300);
    t.same(clients.slice(1).map((c) => c.closed()), Array(MAX_PAIRS_PER_SESSION).fill(false), 'the newer ones go on');
    t.notOk(theirs.closed(), "another session's pair does not count");
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
