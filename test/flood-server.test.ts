// A server that answers with a huge multi-line reply (issue 11, defect 4): the built proxy as a
// child process on loopback with --max-line-length 65536, its RSS measured while 20,000 lines
// of 65,536 bytes (1.3 GB) pass through it.
//
// The proxy runs with a V8 heap cap (HEAP_MIB): one that collects the reply whole dies at the cap
// instead of taking the test machine's memory, and the test fails.
import t, { type Test } from 'tap';
import net from 'node:net';
import { ScriptedServer, basicResponder } from './lib/scripted.js';
import { startLoopbackProxy, type LoopbackProxy } from './lib/loopback-proxy.js';

const MAX_LINE = 65536;
/** Lines in the reply, first and last included: the proxy's old line bound, reached exactly. */
const LINES = 20_000;
const HEAP_MIB = 512;
/** Generous: a proxy that forwards lines as they come holds a few of them at a time. */
const RSS_GROWTH_MIB = 128;

/** Inner line `i` of the long reply: its number, then padding to exactly MAX_LINE bytes. */
function innerLine(i: number): Buffer {
  const b = Buffer.alloc(MAX_LINE + 2, 'x');
  b.write(` ${String(i).padStart(6, '0')} `, 0, 'latin1');
  b.write('\r\n', MAX_LINE, 'latin1');
  return b;
}

/** Writes `first`, LINES - 2 inner lines and `last` with backpressure; stops if the peer goes. */
async function sendLong(sock: net.Socket, first: string, last: string): Promise<void> {
  sock.write(first + '\r\n');
  for (let i = 1; i < LINES - 1; i++) {
    if (sock.destroyed) return;
    if (!sock.write(innerLine(i))) {
      await new Promise<void>((r) => {
        const done = (): void => {
          sock.off('drain', done);
          sock.off('close', done);
          r();
        };
        sock.on('drain', done);
        sock.on('close', done);
      });
    }
  }
  if (!sock.destroyed) sock.write(last + '\r\n');
}

/** Lines from a socket as Buffers, read as they are used (the socket pauses when ahead). */
class ByteLines {
  private chunks: Buffer[] = [];
  private partial: Buffer[] = [];
  private buffered = 0;
  private waiter: (() => void) | null = null;
  closed = false;

  constructor(readonly sock: net.Socket) {
    sock.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.buffered += d.length;
      if (this.buffered > 16 * 1024 * 1024) sock.pause();
      this.waiter?.();
    });
    sock.on('error', () => undefined);
    sock.on('close', () => {
      this.closed = true;
      this.waiter?.();
    });
  }

  /** The next line without its CR LF, or null when the connection closed or `ms` passed. */
  async next(ms = 10_000): Promise<Buffer | null> {
    const end = Date.now() + ms;
    for (;;) {
      while (this.chunks.length > 0) {
        const c = this.chunks[0]!;
        const i = c.indexOf(0x0a);
        if (i < 0) {
          this.partial.push(this.chunks.shift()!);
          continue;
        }
        if (i + 1 < c.length) this.chunks[0] = c.subarray(i + 1);
        else this.chunks.shift();
        const line = Buffer.concat([...this.partial, c.subarray(0, i)]);
        this.buffered -= line.length + 1;
        this.partial = [];
        if (this.buffered < 4 * 1024 * 1024) this.sock.resume();
        return line.at(-1) === 0x0d ? line.subarray(0, -1) : line;
      }
      if (this.closed || Date.now() > end) return null;
      await new Promise<void>((r) => {
        const timer = setTimeout(r, end - Date.now());
        this.waiter = () => {
          clearTimeout(timer);
          this.waiter = null;
          r();
        };
      });
    }
  }
}

interface Measured {
  proxy: LoopbackProxy;
  baseline: number;
  lines: ByteLines;
}

/** Proxy in front of a server answering `verb` with the long reply; a client past the greeting. */
async function setup(t: Test, verb: string, first: string, last: string): Promise<Measured> {
  const server = new ScriptedServer((line, sock) => {
    if (line === verb) {
      void sendLong(sock, first, last);
      return null;
    }
    return basicResponder(line, sock);
  });
  const serverPort = await server.listen();
  t.teardown(() => server.close());
  const proxy = await startLoopbackProxy(t, { serverPort, heapMiB: HEAP_MIB, args: ['--max-line-length', String(MAX_LINE)] });
  const sock = net.connect(proxy.port, '127.0.0.1');
  t.teardown(() => sock.destroy());
  const lines = new ByteLines(sock);
  t.match((await lines.next())?.toString('latin1'), /^220 /);
  return { proxy, baseline: proxy.rssMiB(), lines };
}

t.test(`STAT answered with ${LINES} lines of ${MAX_LINE} bytes: small proxy memory, every line delivered in order`, async (t) => {
  const { proxy, baseline, lines } = await setup(t, 'STAT', '211-status follows', '211 end of status');
  lines.sock.write('STAT\r\n');
  let peak = 0;
  const sampler = setInterval(() => (peak = Math.max(peak, proxy.rssMiB())), 50);
  t.teardown(() => clearInterval(sampler));
  const first = await lines.next(20_000);
  let good = 0;
  let bad = '';
  for (let i = 1; i < LINES - 1; i++) {
    const l = await lines.next();
    if (l === null) {
      bad ||= `connection closed or silent after ${good} inner lines`;
      break;
    }
    if (l.length === MAX_LINE && l.toString('latin1', 0, 8) === ` ${String(i).padStart(6, '0')} `) good++;
    else bad ||= `inner line ${i}: ${l.length} bytes, starting ${JSON.stringify(l.toString('latin1', 0, 20))}`;
  }
  const last = await lines.next();
  clearInterval(sampler);
  peak = Math.max(peak, proxy.peakRssMiB());
  t.equal(first?.toString('latin1'), '211-status follows', 'the first line');
  t.equal(good, LINES - 2, `every inner line whole and in order ${bad ? `(${bad})` : ''}`);
  t.equal(last?.toString('latin1'), '211 end of status', 'the last line');
  t.ok(peak - baseline < RSS_GROWTH_MIB, `proxy RSS grew ${(peak - baseline).toFixed(0)} MiB (from ${baseline.toFixed(0)}), bound ${RSS_GROWTH_MIB}`);
  t.ok(proxy.alive, `the proxy is still running ${/FATAL ERROR[^\n]*/.exec(proxy.stderr)?.[0] ?? ''}`);
  if (proxy.alive && !lines.closed) {
    lines.sock.write('NOOP\r\n');
    t.equal((await lines.next())?.toString('latin1'), '200 NOOP ok', 'the session goes on in step');
  }
});

t.test(`a 227 of ${LINES} lines of ${MAX_LINE} bytes: a clean 4xx, not unbounded buffering`, async (t) => {
  const { proxy, baseline, lines } = await setup(t, 'PASV', '227-Entering Passive Mode (127,0,0,1,19,137)', '227 OK');
  lines.sock.write('PASV\r\n');
  let peak = 0;
  const sampler = setInterval(() => (peak = Math.max(peak, proxy.rssMiB())), 50);
  t.teardown(() => clearInterval(sampler));
  const reply = (await lines.next(60_000))?.toString('latin1', 0, 200) ?? null;
  // However the proxy goes on, it must not keep collecting the rest of the reply.
  await new Promise((r) => setTimeout(r, 2000));
  clearInterval(sampler);
  peak = Math.max(peak, proxy.peakRssMiB());
  t.match(reply, /^4[0-9][0-9] /, `PASV answered with a 4xx: ${JSON.stringify(reply)}`);
  t.ok(peak - baseline < RSS_GROWTH_MIB, `proxy RSS grew ${(peak - baseline).toFixed(0)} MiB (from ${baseline.toFixed(0)}), bound ${RSS_GROWTH_MIB}`);
  t.ok(proxy.alive, `the proxy is still running ${/FATAL ERROR[^\n]*/.exec(proxy.stderr)?.[0] ?? ''}`);
});
