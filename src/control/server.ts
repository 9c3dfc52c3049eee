// The proxy's end of the control socket: taking the path (never from a live proxy), mode 0600,
// and answering request lines from a SessionProvider, one at a time, bounded per connection.

import net from 'node:net';
import fs from 'node:fs/promises';
import path from 'node:path';
import { FtpProxyError } from '../errors.js';
import type { AppLogger } from '../log.js';
import { LineFramer } from '../protocol/lines.js';
import { MAX_REQUEST_LINE, answer, parseRequest, type Reply, type SessionProvider } from './protocol.js';

/** Connections served at once; the socket is root's alone, so this only stops a runaway script. */
const MAX_CONNECTIONS = 16;
/** A connection that sends no line this long is closed. */
const IDLE_MS = 30_000;
/** Reply bytes queued to one connection past which its next request waits. */
const HIGH_WATER = 64 * 1024;
/** How long a socket file's owner has to accept before the file is taken as stale. */
const PROBE_MS = 1000;

export class ControlSocketError extends FtpProxyError {}

/** Whether something accepts connections on the unix socket `p`. */
function probe(p: string): Promise<'live' | 'stale'> {
  return new Promise((resolve, reject) => {
    const c = net.connect({ path: p });
    const timer = setTimeout(() => {
      // Bound but never accepting: a wedged process still owns it.
      c.destroy();
      resolve('live');
    }, PROBE_MS);
    c.once('connect', () => {
      clearTimeout(timer);
      c.destroy();
      resolve('live');
    });
    c.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      // Nobody listens: the file is left over from a proxy that did not exit cleanly.
      if (err.code === 'ECONNREFUSED') resolve('stale');
      else reject(err);
    });
  });
}

function fail(p: string, code: string, why: string, cause?: unknown): never {
  throw new ControlSocketError(code, `control socket ${p}: ${why}`, cause !== undefined ? { cause } : undefined);
}

export class ControlServer {
  private readonly conns = new Set<net.Socket>();

  private constructor(
    readonly path: string,
    private readonly server: net.Server,
    private readonly logger: AppLogger,
  ) {}

  /**
   * Takes `p` and serves `provider` on it; with `makeDirectory`, first creates its directory
   * (mode 0755) if it is missing. Rejects with ControlSocketError: NO_DIRECTORY, NOT_A_SOCKET
   * (a file we will not remove), IN_USE (another proxy answers there), or FAILED.
   */
  static async open(p: string, provider: SessionProvider, logger: AppLogger, makeDirectory = false): Promise<ControlServer> {
    const dir = path.dirname(p);
    // Only the default path's directory is ours to make: systemd's RuntimeDirectory= makes it
    // for the unit's user; root run by hand makes it here. Failing (no write access to its
    // parent) is reported below as the missing directory.
    if (makeDirectory) await fs.mkdir(dir, { mode: 0o755 }).catch(() => undefined);
    const dirStat = await fs.stat(dir).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') fail(p, 'NO_DIRECTORY', `directory ${dir} does not exist`, e);
      return fail(p, 'FAILED', `cannot use directory ${dir} (${e.code ?? e.message})`, e);
    });
    if (!dirStat.isDirectory()) fail(p, 'NO_DIRECTORY', `${dir} is not a directory`);
    const existing = await fs.lstat(p).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return null;
      return fail(p, 'FAILED', e.code ?? e.message, e);
    });
    if (existing) {
      if (!existing.isSocket()) fail(p, 'NOT_A_SOCKET', 'exists and is not a socket (not removing it)');
      const state = await probe(p).catch((e: NodeJS.ErrnoException) => fail(p, 'FAILED', `cannot probe it (${e.code ?? e.message})`, e));
      if (state === 'live') fail(p, 'IN_USE', 'another ftp-proxy is answering on it');
      await fs.unlink(p).catch((e: NodeJS.ErrnoException) => {
        if (e.code !== 'ENOENT') fail(p, 'FAILED', `cannot remove the stale socket (${e.code ?? e.message})`, e);
      });
      logger.notice({ controlSocket: p }, 'removed a stale control socket');
    }
    const server = net.createServer({ allowHalfOpen: true });
    await new Promise<void>((resolve, reject) => {
      server.once('error', (e: NodeJS.ErrnoException) =>
        reject(
          new ControlSocketError(
            e.code === 'EADDRINUSE' ? 'IN_USE' : 'FAILED',
            `control socket ${p}: ${e.code === 'EADDRINUSE' ? 'another ftp-proxy took it meanwhile' : (e.code ?? e.message)}`,
            { cause: e },
          ),
        ),
      );
      // bind(2) creates the file with the umask's mode: make that 0600 from the start, so there
      // is no moment in which others may connect. The bind happens inside listen().
      const umask = process.umask(0o177);
      try {
        server.listen({ path: p, backlog: MAX_CONNECTIONS }, resolve);
      } finally {
        process.umask(umask);
      }
    });
    await fs.chmod(p, 0o600);
    const control = new ControlServer(p, server, logger);
    server.on('connection', (sock) => control.serve(sock, provider));
    server.on('error', (e) => logger.error({ controlSocket: p, err: e.message }, 'control socket error'));
    return control;
  }

  private serve(sock: net.Socket, provider: SessionProvider): void {
    if (this.conns.size >= MAX_CONNECTIONS) {
      sock.end(JSON.stringify({ ok: false, error: 'too many control connections' }) + '\n');
      return;
    }
    this.conns.add(sock);
    sock.on('close', () => this.conns.delete(sock));
    sock.on('error', () => sock.destroy());
    sock.setTimeout(IDLE_MS, () => sock.destroy());
    const framer = new LineFramer(MAX_REQUEST_LINE);
    const send = (r: Reply): boolean => sock.write(JSON.stringify(r) + '\n');
    // Lines of the chunk in hand; reading stops while replies are backed up, so one chunk at most.
    const inbox: string[] = [];
    // The client has sent all it will (e.g. `echo ... | nc -U`): answer what is in hand, then close.
    let ended = false;
    const pump = (): void => {
      while (inbox.length > 0 && sock.writableLength <= HIGH_WATER) {
        const line = inbox.shift()!;
        if (line.trim() === '') continue;
        const req = parseRequest(line);
        if ('error' in req) {
          send({ ok: false, error: req.error });
          continue;
        }
        const reply = answer(req, provider);
        send(reply);
        if (req.cmd === 'kill' && reply.ok) this.logger.notice({ sid: req.id }, 'session killed through the control socket');
      }
      if (inbox.length > 0) sock.pause();
      else if (ended) sock.end();
      else sock.resume();
    };
    sock.on('drain', pump);
    sock.on('data', (chunk: Buffer) => {
      let lines: string[];
      try {
        lines = framer.push(chunk);
      } catch (e) {
        send({ ok: false, error: `bad request line: ${(e as Error).message}` });
        sock.end();
        return;
      }
      inbox.push(...lines);
      pump();
    });
    sock.on('end', () => {
      ended = true;
      pump();
    });
  }

  /** Stops serving; the socket file goes with the listener (libuv unlinks the path it bound). */
  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    for (const c of this.conns) c.destroy();
    await closed;
  }
}
