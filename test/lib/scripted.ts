// Test plumbing: a scripted FTP server and a line-oriented control client on loopback,
// for session tests with the fake data plane (no namespaces, no real data connections).

import net from 'node:net';
import { once } from 'node:events';

export type Responder = (line: string, sock: net.Socket) => string | string[] | null | void;

/** A tiny FTP server that greets and answers each command through `respond`. */
export class ScriptedServer {
  readonly server: net.Server;
  readonly received: string[] = [];
  readonly sockets = new Set<net.Socket>();
  /** Connections accepted so far. */
  accepted = 0;

  /** `greetAfterMs`: the greeting comes that long after the connection (a slow server). */
  constructor(
    private respond: Responder,
    private greeting: string | null = '220 scripted ready',
    private greetAfterMs = 0,
  ) {
    this.server = net.createServer((sock) => {
      this.accepted++;
      this.sockets.add(sock);
      sock.on('close', () => this.sockets.delete(sock));
      sock.on('error', () => undefined);
      const greeting = this.greeting;
      if (greeting && this.greetAfterMs > 0) setTimeout(() => sock.writable && sock.write(greeting + '\r\n'), this.greetAfterMs);
      else if (greeting) sock.write(greeting + '\r\n');
      let buf = '';
      sock.on('data', (d) => {
        buf += d.toString('latin1');
        let i: number;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i).replace(/\r$/, '');
          buf = buf.slice(i + 1);
          this.received.push(line);
          const r = this.respond(line, sock);
          if (r === null || r === undefined) continue;
          for (const l of Array.isArray(r) ? r : [r]) sock.write(l + '\r\n');
        }
      });
    });
  }

  async listen(host = '127.0.0.1'): Promise<number> {
    this.server.listen(0, host);
    await once(this.server, 'listening');
    return (this.server.address() as net.AddressInfo).port;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise((r) => this.server.close(r));
  }
}

/** The usual login and a few commands; PASV answers with a fixed port. */
export const basicResponder: Responder = (line, sock) => {
  const verb = line.split(' ')[0]!.toUpperCase();
  switch (verb) {
    case 'USER':
      return '331 password please';
    case 'PASS':
      return '230 logged in';
    case 'PASV':
      return '227 Entering Passive Mode (127,0,0,1,19,137)';
    case 'EPSV':
      return '229 Entering Extended Passive Mode (|||5001|)';
    case 'PORT':
    case 'EPRT':
      return '200 PORT ok';
    case 'QUIT':
      sock.end('221 bye\r\n');
      return null;
    case 'NOOP':
      return '200 NOOP ok';
    default:
      return '502 not here';
  }
};

/** A control client that reads whole replies. */
export class Control {
  private buf = '';
  private waiters: (() => void)[] = [];
  closed = false;
  readonly sock: net.Socket;

  constructor(port: number, host = '127.0.0.1') {
    this.sock = net.connect(port, host);
    this.sock.on('data', (d) => {
      this.buf += d.toString('latin1');
      for (const w of this.waiters.splice(0)) w();
    });
    this.sock.on('error', () => undefined);
    this.sock.on('close', () => {
      this.closed = true;
      for (const w of this.waiters.splice(0)) w();
    });
  }

  send(line: string): void {
    this.sock.write(line + '\r\n', 'latin1');
  }

  /** Next complete line, or null when the connection closed first. Fails after `ms`. */
  async line(ms = 5000): Promise<string | null> {
    const deadline = Date.now() + ms;
    for (;;) {
      const i = this.buf.indexOf('\n');
      if (i >= 0) {
        const l = this.buf.slice(0, i).replace(/\r$/, '');
        this.buf = this.buf.slice(i + 1);
        return l;
      }
      if (this.closed) return null;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no line within ${ms} ms (have ${JSON.stringify(this.buf)})`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  /** Wait for the connection to close; returns what was still unread. */
  async closedWithin(ms = 5000): Promise<string> {
    const deadline = Date.now() + ms;
    while (!this.closed) {
      if (Date.now() > deadline) throw new Error('connection still open');
      await new Promise((r) => setTimeout(r, 10));
    }
    return this.buf;
  }

  end(): void {
    this.sock.destroy();
  }
}
