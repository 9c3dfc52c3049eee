// Test helpers for the nftables data plane: a bare per-run network namespace, running a test
// file inside a namespace (so the in-process runner acts there), and TCP peers in namespaces.

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { SYSTEM_PYTHON as PYTHON } from '../../lib/lab.js';

const INSIDE_ENV = 'FTP_PROXY_NFT_TEST_NETNS';

/** A per-run prefix for namespace names: 'nf' + 6 base-36 characters. */
export function runPrefix(): string {
  return `nf${BigInt('0x' + randomBytes(5).toString('hex')).toString(36).slice(0, 6)}`;
}

function must(cmd: string, args: readonly string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')}: ${r.stderr || r.error?.message || r.status}`);
  return r.stdout;
}

/** Names created in this process, removed at exit if a teardown never ran. */
const ours = new Set<string>();
process.on('exit', () => {
  for (const ns of ours) spawnSync('ip', ['netns', 'del', ns]);
});

export function addNetns(name: string): void {
  must('ip', ['netns', 'add', name]);
  ours.add(name);
  must('ip', ['-n', name, 'link', 'set', 'lo', 'up']);
}

export function delNetns(name: string): void {
  if (!ours.has(name)) return;
  spawnSync('ip', ['netns', 'del', name]);
  ours.delete(name);
}

// --- running a test file inside a namespace ------------------------------------------------

/** What a test file gets when it runs inside the namespace (undefined outside). */
export function insideNetns<T>(): T | undefined {
  const v = process.env[INSIDE_ENV];
  return v === undefined ? undefined : (JSON.parse(v) as T);
}

/** The part of a tap Test this needs. */
export interface Spawner {
  spawn(cmd: string, args: string[], options: { env: NodeJS.ProcessEnv }, name?: string): unknown;
}

/**
 * Run the current test file again inside `ns` (same node flags, so the TypeScript loader too),
 * as a tap subtest; inside, `insideNetns()` returns `info`. The in-process libnftables runner
 * talks to the namespace of its process, so this is how both runners reach a test namespace.
 */
export function runInside(t: Spawner, ns: string, info: unknown, name: string): unknown {
  const args = ['netns', 'exec', ns, process.execPath, ...process.execArgv, process.argv[1]!];
  return t.spawn('ip', args, { env: { ...process.env, [INSIDE_ENV]: JSON.stringify(info) } }, name);
}

// --- TCP peers in namespaces ---------------------------------------------------------------

const children = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of children) if (c.pid !== undefined && c.exitCode === null) c.kill('SIGKILL');
});

/** Start `cmd` inside `ns` (`ip netns exec` execs it, so the PID is cmd's own). */
function spawnIn(ns: string, cmd: string, args: readonly string[]): ChildProcess {
  const c = spawn('ip', ['netns', 'exec', ns, cmd, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
  children.add(c);
  c.once('exit', () => children.delete(c));
  return c;
}

/** End a process started here, by its PID, and wait for it. */
export function stop(c: ChildProcess): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    c.once('exit', () => resolve());
    c.kill('SIGTERM');
  });
}

/** Reads JSON lines from a child's stdout, one at a time. */
class Lines {
  private readonly queue: unknown[] = [];
  private readonly waiters: ((v: unknown) => void)[] = [];
  private ended = false;

  constructor(
    c: ChildProcess,
    private readonly what: string,
  ) {
    const rl = createInterface({ input: c.stdout! });
    rl.on('line', (l) => {
      const v: unknown = JSON.parse(l);
      const w = this.waiters.shift();
      if (w) w(v);
      else this.queue.push(v);
    });
    rl.on('close', () => {
      this.ended = true;
      for (const w of this.waiters.splice(0)) w(undefined);
    });
  }

  next<T>(ms = 5000): Promise<T> {
    if (this.queue.length) return Promise.resolve(this.queue.shift() as T);
    if (this.ended) return Promise.reject(new Error(`${this.what} ended`));
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.what}: nothing after ${ms} ms`)), ms);
      this.waiters.push((v) => {
        clearTimeout(timer);
        if (v === undefined) reject(new Error(`${this.what} ended`));
        else resolve(v as T);
      });
    });
  }
}

// Accepts connections, reports each peer as a JSON line and echoes lines back on it.
const LISTENER = `
import json, socket, sys, threading
host, port = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((host, port)); s.listen(16)
print(json.dumps({'listening': port}), flush=True)
def echo(c):
    f = c.makefile('rwb', buffering=0)
    for line in f:
        f.write(line)
    c.close()
while True:
    c, a = s.accept()
    print(json.dumps({'peer': a[0], 'port': a[1]}), flush=True)
    threading.Thread(target=echo, args=(c,), daemon=True).start()
`;

// Connects (from a given source), reports the outcome, then sends each stdin line and reports
// the echo; ends the connection at stdin EOF.
const CONNECTOR = `
import json, socket, sys
host, port, source = sys.argv[1], int(sys.argv[2]), sys.argv[3]
try:
    c = socket.create_connection((host, port), timeout=float(sys.argv[4]), source_address=(source, 0))
except OSError as e:
    print(json.dumps({'ok': False, 'error': e.strerror or str(e)}), flush=True); sys.exit(0)
print(json.dumps({'ok': True}), flush=True)
f = c.makefile('rwb', buffering=0)
for line in sys.stdin:
    f.write(line.encode())
    print(json.dumps({'echo': f.readline().decode().rstrip('\\n')}), flush=True)
c.close()
`;

export interface Listener {
  /** The next accepted connection's peer address and port. */
  accepted(ms?: number): Promise<{ peer: string; port: number }>;
  close(): Promise<void>;
}

export async function listen(ns: string, host: string, port: number): Promise<Listener> {
  const c = spawnIn(ns, PYTHON, ['-c', LISTENER, host, String(port)]);
  const lines = new Lines(c, `listener ${host}:${port}`);
  await lines.next();
  return {
    accepted: (ms) => lines.next(ms),
    close: () => stop(c),
  };
}

export interface Connection {
  /** Sends one line and resolves with the line echoed back. */
  roundTrip(line: string): Promise<string>;
  close(): Promise<void>;
}

export type ConnectResult = { ok: true; conn: Connection } | { ok: false; error: string };

/** Connect from `source` in `ns` to host:port; `ok: false` carries the OS error text. */
export async function connect(ns: string, host: string, port: number, source: string, timeoutSec = 2): Promise<ConnectResult> {
  const c = spawnIn(ns, PYTHON, ['-c', CONNECTOR, host, String(port), source, String(timeoutSec)]);
  const lines = new Lines(c, `connection to ${host}:${port}`);
  const first = await lines.next<{ ok: boolean; error?: string }>((timeoutSec + 3) * 1000);
  if (!first.ok) {
    await stop(c);
    return { ok: false, error: first.error ?? 'failed' };
  }
  return {
    ok: true,
    conn: {
      roundTrip: async (line) => {
        c.stdin!.write(`${line}\n`);
        return (await lines.next<{ echo: string }>()).echo;
      },
      close: async () => {
        c.stdin!.end();
        await new Promise((r) => c.once('exit', r));
      },
    },
  };
}

type Listed = { elem: { val: unknown } } | { concat: unknown[] } | string | number;

function keyText(v: Listed): string {
  if (typeof v !== 'object') return String(v);
  if ('elem' in v) return keyText(v.elem.val as Listed);
  return v.concat.map((x) => keyText(x as Listed)).join(' . ');
}

/** The elements of a set or map of our table, as 'k1 . k2 . k3' or 'k1 . k2 . k3 : value'. */
export function elements(table: string, kind: 'set' | 'map', name: string): string[] {
  const doc = JSON.parse(must('nft', ['-j', 'list', kind, 'inet', table, name])) as { nftables: Record<string, unknown>[] };
  const obj = doc.nftables.find((o) => kind in o)?.[kind] as { elem?: unknown[] } | undefined;
  return (obj?.elem ?? []).map((e) =>
    Array.isArray(e) ? `${keyText(e[0] as Listed)} : ${keyText(e[1] as Listed)}` : keyText(e as Listed),
  );
}

/** Run nft (in this process's namespace); throws with nft's message on failure. */
export function nft(...args: string[]): string {
  return must('nft', args);
}
