// A client that floods commands the proxy answers itself and never reads its replies (issue 11,
// defect 1): the built proxy as a child process on loopback, its RSS, its log and a second session.
//
// Each flood is short and capped (FLOOD_MS, FLOOD_BYTES, and stopped early when the proxy's RSS
// passes RSS_RUNAWAY_MIB), so a proxy that buffers without bound fails the test, not the machine.
import t, { type Test } from 'tap';
import net from 'node:net';
import { once } from 'node:events';
import { Control, ScriptedServer, basicResponder } from './lib/scripted.js';
import { startLoopbackProxy, type LoopbackProxy } from './lib/loopback-proxy.js';
import { fdOf, int32, loadLibc } from '../src/net/libc.js';

const FLOOD_MS = 4000;
const FLOOD_BYTES = 256 * 1024 * 1024;
const RSS_RUNAWAY_MIB = 512;
/** Generous: the proxy's RSS may grow this much during a flood (kernel socket buffers are not in it). */
const RSS_GROWTH_MIB = 100;
/**
 * Bytes the proxy may take in all from a client that never reads. A proxy that pauses reading
 * takes what fills the buffers between it and the client (its own fixed 128 KiB socket buffers
 * each way, the client's receive buffer for the replies, one read of lines): a few MiB at most,
 * whatever the flood's length. One that does not pause takes all it can process (tens of MiB
 * in these 4 s).
 */
const ACCEPTED_BOUND = 4 * 1024 * 1024;
const ROUND_TRIP_MS = 1000;

/** Lines the proxy refuses itself, and the reply code each gets. */
const KINDS = [
  { line: 'LPRT', code: '502' },
  { line: 'AUTH TLS', code: '534' },
  { line: 'PORT 1,2,3', code: '501' },
  { line: 'A\rB', code: '500' },
] as const;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

interface FloodResult {
  /** Bytes that left this process toward the proxy. */
  accepted: number;
  /** Of these, the bytes that left in the second half of the flood. */
  lateAccepted: number;
  /**
   * The proxy ended the session during the flood (its log says so). Its 421 cannot be checked:
   * it sits behind the unread replies, and the proxy resets a peer that never reads.
   */
  cutOff: boolean;
  /** The last bytes the client could read afterwards. */
  tail: string;
  /** The flood stopped because the proxy's RSS passed RSS_RUNAWAY_MIB. */
  runaway: boolean;
  peakRssMiB: number;
}

/**
 * After the server's greeting has had time to pass (the flood is of a client before login,
 * not before the greeting), send `line` CRLF over and over for FLOOD_MS without reading.
 */
async function flood(proxy: LoopbackProxy, line: string): Promise<FloodResult> {
  const sock = net.connect(proxy.port, '127.0.0.1');
  await once(sock, 'connect');
  // What the client's own kernel holds is not what the proxy took: keep it small (16 KiB,
  // doubled by the kernel), or its send buffer, growing to megabytes, passes for the proxy's.
  const fd = fdOf(sock);
  if (fd === null || loadLibc()?.setsockopt(fd, 1, 7, int32(16384), 4) !== 0) throw new Error('cannot set the flooding client SO_SNDBUF');
  await sleep(300);
  let closed = false;
  sock.on('error', () => (closed = true));
  sock.on('close', () => (closed = true));
  const sid = (): string | undefined => proxy.sidOf(sock.localPort!);
  const cutOff = (): boolean => {
    const s = sid();
    return s !== undefined && proxy.ended.has(s);
  };
  const unit = line + '\r\n';
  const chunk = Buffer.from(unit.repeat(Math.ceil(65536 / unit.length)), 'latin1');
  let handed = 0;
  let atHalf: number | null = null;
  let runaway = false;
  let peakRssMiB = 0;
  const end = Date.now() + FLOOD_MS;
  let nextRss = 0;
  while (Date.now() < end && handed < FLOOD_BYTES && !closed && !cutOff()) {
    if (atHalf === null && Date.now() >= end - FLOOD_MS / 2) atHalf = handed - sock.writableLength;
    if (Date.now() >= nextRss) {
      nextRss = Date.now() + 50;
      peakRssMiB = Math.max(peakRssMiB, proxy.rssMiB());
      if (peakRssMiB > RSS_RUNAWAY_MIB) {
        runaway = true;
        break;
      }
    }
    // Our own queue stays small: what is not taken is the proxy's doing.
    if (sock.writableLength > 1024 * 1024) {
      await sleep(20);
      continue;
    }
    sock.write(chunk);
    handed += chunk.length;
    await new Promise((r) => setImmediate(r));
  }
  const accepted = handed - sock.writableLength;
  peakRssMiB = Math.max(peakRssMiB, proxy.rssMiB(), proxy.peakRssMiB());
  // Now read what is there, keeping only the end: a proxy that cut the client off said 421 last.
  let tail = '';
  sock.on('data', (d: Buffer) => (tail = (tail + d.toString('latin1')).slice(-300)));
  if (!runaway) await Promise.race([once(sock, 'close'), sleep(200)]);
  sock.destroy();
  return { accepted, lateAccepted: accepted - (atHalf ?? 0), cutOff: cutOff(), tail, runaway, peakRssMiB };
}

async function login(t: Test, c: Control): Promise<void> {
  t.match(await c.line(), /^220 /);
  c.send('USER anonymous');
  await c.line();
  c.send('PASS x');
  await c.line();
}

for (const kind of KINDS) {
  t.test(`a client flooding ${JSON.stringify(kind.line)} without reading: bounded, and another session goes on`, async (t) => {
    const server = new ScriptedServer(basicResponder);
    const serverPort = await server.listen();
    t.teardown(() => server.close());
    const proxy = await startLoopbackProxy(t, { serverPort });
    const other = new Control(proxy.port);
    t.teardown(() => other.end());
    await login(t, other);
    const baseline = proxy.rssMiB();

    const rtts: number[] = [];
    let flooding = true;
    const sampler = (async () => {
      while (flooding) {
        const started = Date.now();
        other.send('NOOP');
        const reply = await other.line(5000).catch(() => null);
        rtts.push(reply === '200 NOOP ok' ? Date.now() - started : Infinity);
        await sleep(100);
      }
    })();
    const r = await flood(proxy, kind.line);
    flooding = false;
    await sampler;

    const growth = r.peakRssMiB - baseline;
    t.notOk(r.runaway, `the flood was not stopped for a runaway RSS (peak ${r.peakRssMiB.toFixed(0)} MiB)`);
    t.ok(growth < RSS_GROWTH_MIB, `proxy RSS grew ${growth.toFixed(0)} MiB (from ${baseline.toFixed(0)}), bound ${RSS_GROWTH_MIB}`);
    t.ok(
      r.accepted <= ACCEPTED_BOUND || r.cutOff,
      `the proxy paused reading (${(r.accepted / 2 ** 20).toFixed(1)} MiB taken, ${(r.lateAccepted / 2 ** 20).toFixed(1)} of it in the second half; bound ${ACCEPTED_BOUND / 2 ** 20}) or ended the session (${r.cutOff}; last bytes the client got ${JSON.stringify(r.tail.slice(-60))})`,
    );
    t.ok(proxy.alive, 'the proxy is still running');
    const worst = Math.max(...rtts);
    t.ok(rtts.length >= 5 && worst < ROUND_TRIP_MS, `another session's NOOP round trips during the flood: ${rtts.length}, worst ${worst} ms (bound ${ROUND_TRIP_MS}): ${rtts.join(" ")}`);
    t.notMatch(proxy.stderr, /MaxListenersExceededWarning/, 'no listener leak warning');
    other.send('NOOP');
    t.equal(await other.line(), '200 NOOP ok', 'the other session still works after the flood');
  });
}

t.test('10,000 refusals of each kind are logged in a bounded number of lines', async (t) => {
  const server = new ScriptedServer(basicResponder);
  const serverPort = await server.listen();
  t.teardown(() => server.close());
  const proxy = await startLoopbackProxy(t, { serverPort, args: ['-D', '6'] });
  const c = new Control(proxy.port);
  t.teardown(() => c.end());
  t.match(await c.line(), /^220 /);
  const BATCH = 500;
  const PER_KIND = 10_000;
  for (const kind of KINDS) {
    let wrong = 0;
    let first = '';
    for (let sent = 0; sent < PER_KIND; sent += BATCH) {
      c.sock.write((kind.line + '\r\n').repeat(BATCH), 'latin1');
      for (let i = 0; i < BATCH; i++) {
        const reply = (await c.line()) ?? '(closed)';
        if (!reply.startsWith(kind.code + ' ')) {
          wrong++;
          first ||= reply;
        }
      }
    }
    t.equal(wrong, 0, `${PER_KIND} × ${JSON.stringify(kind.line)}: every reply is ${kind.code} ${first ? `(first other: ${first})` : ''}`);
  }
  c.send('QUIT');
  t.equal(await c.line(), '221 bye');
  const sid = proxy.sidOf(c.sock.localPort!);
  t.ok(sid, 'the session is in the log');
  const end = Date.now() + 3000;
  while (!proxy.ended.has(sid!) && Date.now() < end) await sleep(20);
  const lines = proxy.linesBySid.get(sid!) ?? 0;
  t.ok(lines <= 50, `${KINDS.length * PER_KIND} refused commands made ${lines} log lines for the session (-D 6), bound 50`);
});
