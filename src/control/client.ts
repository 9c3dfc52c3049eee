// The subcommands' end of the control socket: `ftp-proxy sessions [--json]` and `ftp-proxy kill
// ID` send one request to the running proxy and print its answer (exit 0, 1 refused, 2 no proxy).

import net from 'node:net';
import type { Reply, Request, SessionView } from './protocol.js';

export interface Output {
  out: (s: string) => void;
  err: (s: string) => void;
}

/** No answer within this long counts as no proxy. */
const TIMEOUT_MS = 5000;

class NoProxy extends Error {}

/** Sends `req` on the socket at `socketPath` and resolves with the one reply line. */
export function request(socketPath: string, req: Request, timeoutMs = TIMEOUT_MS): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const sock = net.connect({ path: socketPath });
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new NoProxy(`no answer on ${socketPath} within ${timeoutMs / 1000} s`));
    }, timeoutMs);
    const done = (f: () => void): void => {
      clearTimeout(timer);
      sock.destroy();
      f();
    };
    sock.on('connect', () => sock.end(JSON.stringify(req) + '\n'));
    sock.on('error', (e: NodeJS.ErrnoException) =>
      done(() => reject(new NoProxy(`no proxy answers on ${socketPath} (${e.code ?? e.message})`))),
    );
    sock.on('data', (d: Buffer) => {
      const nl = d.indexOf(0x0a);
      if (nl < 0) return void chunks.push(d);
      chunks.push(d.subarray(0, nl));
      const line = Buffer.concat(chunks).toString('utf8');
      done(() => {
        try {
          resolve(JSON.parse(line) as Reply);
        } catch {
          reject(new NoProxy(`${socketPath} answered something other than ftp-proxy's protocol`));
        }
      });
    });
    sock.on('end', () => done(() => reject(new NoProxy(`the proxy on ${socketPath} closed without answering`))));
  });
}

/** Text from a peer made safe for a terminal: control characters shown as '?'. */
function printable(s: string): string {
  return s.replace(/\p{Cc}/gu, '?');
}

function age(seconds: number): string {
  const s = Math.floor(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  if (h > 0) return `${h}h${String(m).padStart(2, '0')}m`;
  if (m > 0) return `${m}m${String(s % 60).padStart(2, '0')}s`;
  return `${s}s`;
}

/** The table `ftp-proxy sessions` prints: a header and one aligned row per session. */
export function formatTable(views: readonly SessionView[]): string {
  const rows = [
    ['ID', 'CLIENT', 'SERVER', 'USER', 'STATE', 'AGE', 'XFERS', 'BYTES', 'DATA'],
    ...views.map((v) => [
      v.id,
      v.client,
      v.server ?? '-',
      v.user === null ? '-' : printable(v.user),
      v.state,
      age(v.ageSeconds),
      String(v.transfers),
      String(v.bytes),
      v.dataPath ? `${v.dataPath.mode}:${v.dataPath.port}` : '-',
    ]),
  ];
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  return rows.map((r) => r.map((cell, i) => (i === r.length - 1 ? cell : cell.padEnd(widths[i]!))).join('  ') + '\n').join('');
}

async function ask(socketPath: string, req: Request, io: Output): Promise<Reply | number> {
  try {
    return await request(socketPath, req);
  } catch (e) {
    if (!(e instanceof NoProxy)) throw e;
    io.err(`ftp-proxy: ${e.message}\n`);
    return 2;
  }
}

export async function sessionsCommand(socketPath: string, json: boolean, io: Output): Promise<number> {
  const reply = await ask(socketPath, { cmd: 'sessions' }, io);
  if (typeof reply === 'number') return reply;
  if (!reply.ok || !('sessions' in reply)) {
    io.err(`ftp-proxy: ${'error' in reply ? reply.error : 'the proxy sent no session list'}\n`);
    return 1;
  }
  io.out(json ? JSON.stringify(reply.sessions, null, 2) + '\n' : formatTable(reply.sessions));
  return 0;
}

export async function killCommand(socketPath: string, id: string, io: Output): Promise<number> {
  const reply = await ask(socketPath, { cmd: 'kill', id }, io);
  if (typeof reply === 'number') return reply;
  if (!reply.ok) {
    io.err(`ftp-proxy: ${reply.error}\n`);
    return 1;
  }
  return 0;
}
