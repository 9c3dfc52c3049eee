// Test-side handle on a real ftp-proxy process (dist/bin.js) running inside a lab namespace:
// start it, wait until it listens, read its JSON log, stop it with SIGTERM and check the exit.

import type { ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Lab, NsName } from './lab.js';

export const CLI = fileURLToPath(new URL('../../dist/bin.js', import.meta.url));

export interface LogRecord {
  level: number;
  msg: string;
  [k: string]: unknown;
}

export class ProxyProcess {
  readonly logs: LogRecord[] = [];
  stderr = '';
  private exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;

  constructor(readonly child: ChildProcess) {
    let buf = '';
    child.stdout!.on('data', (d: Buffer) => {
      buf += d.toString();
      let i: number;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        try {
          this.logs.push(JSON.parse(line) as LogRecord);
        } catch {
          this.logs.push({ level: 0, msg: line });
        }
      }
    });
    child.stderr!.on('data', (d: Buffer) => (this.stderr += d.toString()));
    this.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  }

  /** Resolves once the proxy logged 'listening'; rejects if it exits first. */
  async ready(ms = 15000): Promise<void> {
    const end = Date.now() + ms;
    while (!this.logs.some((l) => l.msg === 'listening')) {
      if (this.child.exitCode !== null) throw new Error(`ftp-proxy exited ${this.child.exitCode}: ${this.stderr}`);
      if (Date.now() > end) throw new Error(`ftp-proxy not listening after ${ms} ms: ${this.stderr}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** SIGTERM and wait; returns the exit status. */
  async stop(signal: NodeJS.Signals = 'SIGTERM'): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill(signal);
    return this.exited;
  }

  get exit(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    return this.exited;
  }

  find(msg: string): LogRecord[] {
    return this.logs.filter((l) => l.msg === msg);
  }
}

/** Start `node dist/bin.js args` in namespace `ns` (default: the gateway) and wait until it listens. */
export async function startProxy(lab: Lab, args: readonly string[], ns: NsName = 'gw'): Promise<ProxyProcess> {
  const child = lab.spawn(ns, process.execPath, [CLI, '-D', '7', ...args]);
  const p = new ProxyProcess(child);
  await p.ready();
  return p;
}

/**
 * The proxy's established TCP connections in its namespace (control and data, both planes'),
 * polled until there are none or `ms` has passed: a leak check once every client is done.
 */
export async function proxyConnectionsLeft(lab: Lab, proc: ProxyProcess, ns: NsName = 'gw', ms = 8000): Promise<string[]> {
  const end = Date.now() + ms;
  for (;;) {
    const r = await lab.exec(ns, 'ss', ['-Htnp', 'state', 'established']);
    const mine = r.stdout.split('\n').filter((l) => l.includes(`pid=${proc.child.pid},`));
    if (mine.length === 0 || Date.now() > end) return mine;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The unprivileged user the tests run the proxy as. */
const NOBODY = 65534;

/**
 * `argv` as `cmd, args` that run it as uid 65534 holding only `caps` (setpriv's names:
 * net_admin), as systemd's AmbientCapabilities=, CapabilityBoundingSet= and NoNewPrivileges=
 * give them; with no caps, none at all. `env -i` keeps tap's coverage hooks (NODE_OPTIONS) out
 * of a child that could not write them.
 */
export function asUser(argv: readonly string[], caps: readonly string[] = []): [string, string[]] {
  const set = ['-all', ...caps.map((c) => `+${c}`)].join(',');
  const capArgs = caps.length > 0 ? [`--inh-caps=${set}`, `--ambient-caps=${set}`, `--bounding-set=${set}`, '--no-new-privs'] : [];
  return [
    'env',
    ['-i', `PATH=${process.env.PATH ?? '/usr/bin:/bin'}`, 'setpriv', `--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', ...capArgs, ...argv],
  ];
}

/** `argv` as asUser() makes it, in the gateway namespace, once it listens. */
export async function startAsUser(lab: Lab, argv: readonly string[], caps: readonly string[] = []): Promise<ProxyProcess> {
  const p = new ProxyProcess(lab.spawn('gw', ...asUser(argv, caps)));
  await p.ready();
  return p;
}

/** The proxy with `args` as an unprivileged user without capabilities, in the gateway namespace. */
export function startUnprivilegedProxy(lab: Lab, args: readonly string[]): Promise<ProxyProcess> {
  return startAsUser(lab, [process.execPath, CLI, '-D', '7', ...args]);
}
