// Zero-copy relaying for the userspace data plane: one worker thread moves the bytes of every
// relayed data connection between its two sockets with splice(2) (socket -> pipe -> socket),
// so file data never enters JavaScript and the main thread's event loop never sees it.
//
// Why: a Node stream pipe copies every byte into a JS buffer and out again and pays a
// callback per 64 KiB; on a 2-CPU gateway that capped an active-mode relay at about a third
// of what the kernel forwards. splice keeps the pages in the kernel and the worker keeps the
// main thread free for control connections.
//
// Ownership of the file descriptors is the one subtle point. The main thread created the
// sockets and closes them; while the worker splices it must not, because a closed fd number
// is reused at once by the next accept and the worker would write into a stranger's socket.
// So the main thread only destroys a pair after the worker said `done` for it (or died).

import { createRequire } from 'node:module';
import { MessageChannel, Worker, type MessagePort } from 'node:worker_threads';
import type net from 'node:net';
import type Koffi from 'koffi';
import { fdOf, loadLibc, type Libc } from '../net/libc.js';

/** What one spliced connection carried, and why it ended when that was not both EOFs. */
export interface SpliceResult {
  readonly aToB: number;
  readonly bToA: number;
  readonly error?: string;
  /**
   * The worker could not take the pair (no pipe: out of file descriptors, say) and never
   * touched it: the caller may still carry it another way.
   */
  readonly untouched?: true;
}

export interface SpliceHandle {
  readonly id: number;
  /** Settles (never rejects) once the worker has let go of both descriptors. */
  readonly done: Promise<SpliceResult>;
}

type ToWorker = { op: 'add'; id: number; a: number; b: number } | { op: 'abort'; id: number } | { op: 'stop' };
type FromWorker =
  | { op: 'done'; id: number; aToB: number; bToA: number; error?: string; untouched?: true }
  | { op: 'ready' }
  | { op: 'stopped' };

interface WorkerInput {
  readonly koffiPath: string;
  readonly wakeFd: number;
  readonly port: MessagePort;
  /** Bytes each direction's pipe may hold. */
  readonly pipeSize: number;
  /** sizeof(struct epoll_event): 12 where the kernel packs it (x86-64), 16 elsewhere. */
  readonly eventSize: number;
}

const EFD_CLOEXEC = 0o2000000;
const EFD_NONBLOCK = 0o4000;

/**
 * The worker's whole program. It runs in the worker thread from its source text (see start()),
 * so it must not use anything from this module's scope: all it needs comes in `input`.
 */
function spliceWorker(req: NodeJS.Require, input: WorkerInput): void {
  const { receiveMessageOnPort } = req('node:worker_threads') as typeof import('node:worker_threads');
  const koffi = req(input.koffiPath) as typeof Koffi;
  const lib = koffi.load('libc.so.6');
  const epollCreate = lib.func('int epoll_create1(int flags)') as (f: number) => number;
  const epollCtl = lib.func('int epoll_ctl(int epfd, int op, int fd, void *event)') as (e: number, op: number, fd: number, ev: Buffer | null) => number;
  const epollWait = lib.func('int epoll_wait(int epfd, void *events, int max, int timeout)') as (e: number, ev: Buffer, max: number, t: number) => number;
  const splice = lib.func('intptr_t splice(int fdIn, void *offIn, int fdOut, void *offOut, size_t len, unsigned int flags)') as (
    i: number, oi: null, o: number, oo: null, len: number, flags: number,
  ) => number;
  const pipe2 = lib.func('int pipe2(int *fds, int flags)') as (fds: Int32Array, flags: number) => number;
  const fcntl = lib.func('int fcntl(int fd, int cmd, int arg)') as (fd: number, cmd: number, arg: number) => number;
  const shutdown = lib.func('int shutdown(int fd, int how)') as (fd: number, how: number) => number;
  const read = lib.func('intptr_t read(int fd, void *buf, size_t len)') as (fd: number, b: Buffer, n: number) => number;
  const close = lib.func('int close(int fd)') as (fd: number) => number;
  const errno = (): number => koffi.errno();

  const EPOLLIN = 0x1, EPOLLOUT = 0x4, EPOLLRDHUP = 0x2000, EPOLLET = 0x80000000;
  const ADD = 1, DEL = 2;
  const O_NONBLOCK = 0o4000, O_CLOEXEC = 0o2000000, F_SETPIPE_SZ = 1031;
  const SPLICE_F_MOVE = 1, SPLICE_F_NONBLOCK = 2;
  const EAGAIN = 11, EINTR = 4, SHUT_WR = 1;
  const WAKE = 0xffffffff;
  /** Bytes one relay may move per turn before the others get theirs. */
  const TURN_BUDGET = 4 << 20;
  const { pipeSize, eventSize } = input;
  const dataOffset = eventSize === 12 ? 4 : 8;

  interface Direction {
    readonly src: number;
    readonly dst: number;
    readonly pr: number;
    readonly pw: number;
    inPipe: number;
    bytes: number;
    eof: boolean;
    shut: boolean;
  }
  interface Relay {
    readonly id: number;
    readonly a: number;
    readonly b: number;
    readonly ab: Direction;
    readonly ba: Direction;
  }
  const relays = new Map<number, Relay>();
  /** Relays that used up their turn with data still to move: edge-triggered epoll will not tell again. */
  const again = new Set<Relay>();
  const ev = Buffer.alloc(eventSize);
  const events = Buffer.alloc(eventSize * 64);
  const scratch = Buffer.alloc(8);

  const epfd = epollCreate(O_CLOEXEC);
  if (epfd < 0) throw new Error(`epoll_create1: errno ${errno()}`);
  const watch = (fd: number, key: number, mask: number): boolean => {
    ev.fill(0);
    ev.writeUInt32LE(mask >>> 0, 0);
    ev.writeUInt32LE(key >>> 0, dataOffset);
    return epollCtl(epfd, ADD, fd, ev) === 0;
  };
  if (!watch(input.wakeFd, WAKE, EPOLLIN)) throw new Error(`epoll_ctl(wake): errno ${errno()}`);

  const post = (m: FromWorker): void => input.port.postMessage(m);
  post({ op: 'ready' });

  const direction = (src: number, dst: number): Direction | string => {
    const fds = new Int32Array(2);
    if (pipe2(fds, O_NONBLOCK | O_CLOEXEC) < 0) return `pipe2: errno ${errno()}`;
    // A bigger pipe means fewer wake-ups per megabyte; the default (64 KiB) still works.
    fcntl(fds[1]!, F_SETPIPE_SZ, pipeSize);
    return { src, dst, pr: fds[0]!, pw: fds[1]!, inPipe: 0, bytes: 0, eof: false, shut: false };
  };

  const finish = (r: Relay, error?: string, untouched = false): void => {
    if (!relays.delete(r.id)) return;
    again.delete(r);
    epollCtl(epfd, DEL, r.a, null);
    epollCtl(epfd, DEL, r.b, null);
    for (const d of [r.ab, r.ba]) {
      close(d.pr);
      close(d.pw);
    }
    post({ op: 'done', id: r.id, aToB: r.ab.bytes, bToA: r.ba.bytes, ...(error ? { error } : {}), ...(untouched ? { untouched } : {}) });
  };

  /** Moves what it can; returns bytes moved, or an error text. */
  const pump = (d: Direction, budget: number): number | string => {
    let moved = 0;
    for (;;) {
      let progress = false;
      if (!d.eof && d.inPipe < pipeSize) {
        const n = splice(d.src, null, d.pw, null, pipeSize - d.inPipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n > 0) {
          d.inPipe += n;
          progress = true;
        } else if (n === 0) {
          d.eof = true;
        } else {
          const e = errno();
          if (e !== EAGAIN && e !== EINTR) return `splice from socket: errno ${e}`;
        }
      }
      if (d.inPipe > 0) {
        const n = splice(d.pr, null, d.dst, null, d.inPipe, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
        if (n > 0) {
          d.inPipe -= n;
          d.bytes += n;
          moved += n;
          progress = true;
        } else {
          const e = errno();
          if (e !== EAGAIN && e !== EINTR) return `splice to socket: errno ${e}`;
        }
      }
      if (d.eof && d.inPipe === 0) {
        // This direction is over: pass the FIN on, as a pipe would.
        if (!d.shut) {
          d.shut = true;
          shutdown(d.dst, SHUT_WR);
        }
        return moved;
      }
      if (!progress || moved >= budget) return moved;
    }
  };

  const service = (r: Relay): void => {
    again.delete(r);
    let busy = false;
    for (const d of [r.ab, r.ba]) {
      if (d.shut) continue;
      const moved = pump(d, TURN_BUDGET);
      if (typeof moved === 'string') return finish(r, moved);
      if (moved >= TURN_BUDGET) busy = true;
    }
    if (r.ab.shut && r.ba.shut) return finish(r);
    if (busy) again.add(r);
  };

  const add = (m: { id: number; a: number; b: number }): void => {
    const ab = direction(m.a, m.b);
    const ba = typeof ab === 'string' ? ab : direction(m.b, m.a);
    if (typeof ab === 'string' || typeof ba === 'string') {
      if (typeof ab !== 'string') {
        close(ab.pr);
        close(ab.pw);
      }
      post({ op: 'done', id: m.id, aToB: 0, bToA: 0, error: typeof ab === 'string' ? ab : (ba as string), untouched: true });
      return;
    }
    const r: Relay = { id: m.id, a: m.a, b: m.b, ab, ba };
    relays.set(m.id, r);
    // Edge-triggered: every change of either socket wakes us once, and service() then moves
    // all it can. The key is the relay id (ids fit in 32 bits; WAKE is never one).
    const mask = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    if (!watch(m.a, m.id, mask) || !watch(m.b, m.id, mask)) return finish(r, `epoll_ctl: errno ${errno()}`, true);
    // Data may be waiting already (the server often sends before we get here).
    service(r);
  };

  /** One pass: wait (at most a second, so terminate() can always take effect), then serve. */
  const turn = (): boolean => {
    const n = epollWait(epfd, events, 64, again.size > 0 ? 0 : 1000);
    if (n < 0) {
      if (errno() === EINTR) return true;
      throw new Error(`epoll_wait: errno ${errno()}`);
    }
    for (let i = 0; i < n; i++) {
      const key = events.readUInt32LE(i * eventSize + dataOffset);
      if (key !== WAKE) {
        const r = relays.get(key);
        if (r) service(r);
        continue;
      }
      read(input.wakeFd, scratch, 8);
      let msg: { message: ToWorker } | undefined;
      while ((msg = receiveMessageOnPort(input.port) as { message: ToWorker } | undefined)) {
        const m = msg.message;
        if (m.op === 'add') add(m);
        else if (m.op === 'abort') {
          const r = relays.get(m.id);
          if (r) finish(r, 'aborted');
        } else {
          for (const r of [...relays.values()]) finish(r, 'aborted');
          return false;
        }
      }
    }
    for (const r of [...again]) service(r);
    return true;
  };

  try {
    while (turn());
  } catch (e) {
    // A bug here must not strand the sockets: give every pair back before dying.
    for (const r of [...relays.values()]) finish(r, `splice worker error: ${(e as Error).message}`);
    throw e;
  } finally {
    close(epfd);
  }
  post({ op: 'stopped' });
}

export interface SplicerOptions {
  /** Bytes per direction the kernel pipe may hold (F_SETPIPE_SZ). Default 1 MiB. */
  readonly pipeSize?: number;
  /** Told once if the worker dies; relays fall back to streams after that. */
  readonly onFailure?: (err: Error) => void;
}

/**
 * The main thread's side: hands socket pairs to the worker and hears when it is done with
 * them. `Splicer.start()` gives null where splice cannot work (not Linux, koffi missing).
 */
export class Splicer {
  private nextId = 1;
  private readonly live = new Map<number, (r: SpliceResult) => void>();
  private failed: Error | null = null;
  private stopping: Promise<void> | null = null;
  private readonly one = Buffer.alloc(8);
  private started = false;
  private onReady!: (ok: boolean) => void;
  /** True once the worker runs its loop; false if it died first. */
  readonly ready = new Promise<boolean>((resolve) => (this.onReady = resolve));

  private constructor(
    private readonly worker: Worker,
    private readonly port: MessagePort,
    private readonly libc: Libc,
    private readonly wakeFd: number,
    private readonly o: SplicerOptions,
  ) {
    this.one.writeBigUInt64LE(1n);
    port.on('message', (m: FromWorker) => {
      if (m.op === 'ready') {
        this.started = true;
        this.onReady(true);
        // From now on only the relays themselves keep the process up.
        port.unref();
      }
      if (m.op !== 'done') return;
      const settle = this.live.get(m.id);
      this.live.delete(m.id);
      settle?.({
        aToB: m.aToB,
        bToA: m.bToA,
        ...(m.error !== undefined ? { error: m.error } : {}),
        ...(m.untouched ? { untouched: true as const } : {}),
      });
    });
    // Referenced until the worker is ready, so that awaiting `ready` keeps the process up.
    worker.unref();
    worker.on('error', (err) => this.fail(err));
    worker.on('exit', (code) => {
      if (!this.stopping) this.fail(new Error(`splice worker exited with code ${code}`));
    });
  }

  static start(o: SplicerOptions = {}): Splicer | null {
    if (process.platform !== 'linux') return null;
    const libc = loadLibc();
    if (!libc) return null;
    // The worker loads koffi itself, from the same file (it has no module resolution of ours).
    const koffiPath = createRequire(import.meta.url).resolve('koffi');
    const wakeFd = libc.eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (wakeFd < 0) return null;
    const { port1, port2 } = new MessageChannel();
    const input: WorkerInput = {
      koffiPath,
      wakeFd,
      port: port2,
      pipeSize: o.pipeSize ?? 1 << 20,
      eventSize: process.arch === 'x64' ? 12 : 16,
    };
    // The worker runs spliceWorker's own text: one module, type-checked, nothing to locate
    // at run time (the tests run this file as TypeScript, the program as compiled JavaScript).
    // It is plain JavaScript needing no loader or flag of ours: execArgv stays empty.
    const source = `(${spliceWorker.toString()})(require, require('node:worker_threads').workerData);`;
    const worker = new Worker(source, { eval: true, workerData: input, transferList: [port2], execArgv: [] });
    return new Splicer(worker, port1, libc, wakeFd, o);
  }

  /** False once the worker has died; callers then relay with streams. */
  get usable(): boolean {
    return this.failed === null && this.stopping === null;
  }

  /**
   * Hand `a` and `b` (connected, paused, nothing read from them yet) to the worker, which
   * carries bytes both ways and passes each FIN on. The caller keeps the sockets, must not
   * read, write or destroy them until `done` settles, and destroys both then.
   */
  relay(a: net.Socket, b: net.Socket): SpliceHandle {
    const id = this.nextId++;
    const fa = fdOf(a);
    const fb = fdOf(b);
    if (!this.usable || fa === null || fb === null) {
      const error = this.failed?.message ?? (this.stopping ? 'splicer stopped' : 'socket has no file descriptor');
      return { id, done: Promise.resolve({ aToB: 0, bToA: 0, error, untouched: true }) };
    }
    const done = new Promise<SpliceResult>((resolve) => this.live.set(id, resolve));
    this.send({ op: 'add', id, a: fa, b: fb });
    return { id, done };
  }

  /** Stop relaying `id` at once; its `done` settles with error 'aborted'. */
  abort(id: number): void {
    if (this.live.has(id) && this.usable) this.send({ op: 'abort', id });
  }

  /** Aborts everything still relayed and ends the worker. */
  close(): Promise<void> {
    this.stopping ??= (async () => {
      if (!this.failed) {
        const stopped = new Promise<void>((resolve) => {
          const t = setTimeout(resolve, 2000);
          this.port.on('message', (m: FromWorker) => {
            if (m.op === 'stopped') {
              clearTimeout(t);
              resolve();
            }
          });
        });
        this.port.ref();
        this.send({ op: 'stop' });
        await stopped;
      }
      // Only once the worker is gone may the owners close what it may still have held.
      await this.worker.terminate();
      this.settleAll('splicer stopped');
      this.port.close();
      this.libc.close(this.wakeFd);
    })();
    return this.stopping;
  }

  private send(m: ToWorker): void {
    this.port.postMessage(m);
    this.libc.write(this.wakeFd, this.one, 8);
  }

  private fail(err: Error): void {
    if (this.failed) return;
    this.failed = err;
    this.onReady(false);
    this.port.unref();
    // The worker is gone, and with it every use of the descriptors: the owners may close them,
    // or, if it died before its loop ran, carry them another way.
    this.settleAll(`splice worker failed: ${err.message}`, !this.started);
    this.o.onFailure?.(err);
  }

  private settleAll(error: string, untouched = false): void {
    for (const settle of this.live.values()) settle({ aToB: 0, bToA: 0, error, ...(untouched ? { untouched: true as const } : {}) });
    this.live.clear();
  }
}
