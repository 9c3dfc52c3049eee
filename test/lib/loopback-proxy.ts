// The built proxy (dist/bin.js) as a child process on loopback, in reverse mode with the relay
// data plane in front of a test's own server: for tests that measure the proxy process itself.

import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { once } from 'node:events';
import type { Teardownable } from './lab.js';
import { CLI, type LogRecord } from './proxy.js';

/** Log records kept in full; past this only counts are kept (a flood may log millions of lines). */
const KEPT_RECORDS = 5000;

export interface LoopbackProxyOptions {
  /** The test's FTP server on 127.0.0.1. */
  readonly serverPort: number;
  /** More flags (e.g. --max-line-length 65536); -D defaults to 6. */
  readonly args?: readonly string[];
  /**
   * V8 heap cap: a proxy that buffers without bound dies at it rather than taking the test
   * machine's memory (what it buffers in Buffers, outside the heap, is watched by the test).
   */
  readonly heapMiB?: number;
}

export class LoopbackProxy {
  readonly records: LogRecord[] = [];
  /** Log lines by session id ('' for lines of no session), all of them. */
  readonly linesBySid = new Map<string, number>();
  /** Sessions that logged 'session ended'. */
  readonly ended = new Set<string>();
  lines = 0;
  stderr = '';
  private exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(
    readonly child: ChildProcess,
    readonly port: number,
  ) {
    let buf = '';
    child.stdout!.setEncoding('utf8');
    child.stdout!.on('data', (d: string) => {
      buf += d;
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        this.record(buf.slice(0, i));
        buf = buf.slice(i + 1);
      }
    });
    child.stderr!.on('data', (d: Buffer) => {
      if (this.stderr.length < 100_000) this.stderr += d.toString();
    });
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  }

  private record(line: string): void {
    this.lines++;
    let r: LogRecord;
    try {
      r = JSON.parse(line) as LogRecord;
    } catch {
      r = { level: 0, msg: line };
    }
    const sid = typeof r.sid === 'string' ? r.sid : '';
    this.linesBySid.set(sid, (this.linesBySid.get(sid) ?? 0) + 1);
    if (r.msg === 'session ended') this.ended.add(sid);
    if (this.records.length < KEPT_RECORDS) this.records.push(r);
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Resident set size now, in MiB (0 once the process is gone). */
  rssMiB(): number {
    return this.status('VmRSS');
  }

  /** The largest resident set size the process ever had, in MiB. */
  peakRssMiB(): number {
    return this.status('VmHWM');
  }

  private status(field: string): number {
    try {
      const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${this.child.pid}/status`, 'utf8'));
      return m ? Number(m[1]) / 1024 : 0;
    } catch {
      return 0;
    }
  }

  /** The session id the proxy gave the session whose client used local port `clientPort`. */
  sidOf(clientPort: number): string | undefined {
    const r = this.records.find((l) => typeof l.client === 'string' && l.client.endsWith(`:${clientPort}`) && typeof l.sid === 'string');
    return r?.sid as string | undefined;
  }

  async stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.alive) this.child.kill('SIGKILL');
    return this.exited;
  }
}

/** A free port on 127.0.0.1 (closed again at once: the proxy binds it next). */
async function freePort(): Promise<number> {
  const s = net.createServer();
  s.listen(0, '127.0.0.1');
  await once(s, 'listening');
  const { port } = s.address() as net.AddressInfo;
  await new Promise((r) => s.close(r));
  return port;
}

/** Start the proxy, wait until it listens; it is killed in `t`'s teardown. */
export async function startLoopbackProxy(t: Teardownable, o: LoopbackProxyOptions): Promise<LoopbackProxy> {
  const port = await freePort();
  const args = [
    ...(o.heapMiB ? [`--max-old-space-size=${o.heapMiB}`] : []),
    CLI,
    '-D', '6',
    '-R', '127.0.0.1', '-P', String(o.serverPort),
    '-b', '127.0.0.1', '-p', String(port),
    '--backend', 'relay',
    ...(o.args ?? []),
  ];
  const p = new LoopbackProxy(spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] }), port);
  t.teardown(() => p.stop());
  const end = Date.now() + 15_000;
  while (!p.records.some((l) => l.msg === 'listening')) {
    if (!p.alive) throw new Error(`ftp-proxy exited: ${p.stderr}`);
    if (Date.now() > end) throw new Error(`ftp-proxy not listening: ${p.stderr}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return p;
}
