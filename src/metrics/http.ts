// The --metrics listener: GET /metrics in the Prometheus text format and nothing else (404);
// bytes that are not HTTP get a 400 status line, oversized or slow requests are cut short.

import http from 'node:http';
import type net from 'node:net';
import type { Endpoint } from '../dataplane/types.js';
import type { AppLogger } from '../log.js';
import type { PromMetrics } from './metrics.js';

/** A scrape request is a few hundred bytes; anything near this is not one. */
const MAX_HEADER_BYTES = 8 * 1024;
/** Scrapers connect every few seconds; more at once than this is not a scraper. */
const MAX_CONNECTIONS = 32;

/** Status line and headers of a reply that ends the connection. */
function closing(status: number, reason: string): string {
  return `HTTP/1.1 ${status} ${reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`;
}

export class MetricsListener {
  private constructor(private readonly server: http.Server) {}

  /** Listens on `at`; rejects (e.g. EADDRINUSE) when it cannot. */
  static async listen(at: Endpoint, metrics: PromMetrics, logger: AppLogger): Promise<MetricsListener> {
    const server = http.createServer(
      {
        maxHeaderSize: MAX_HEADER_BYTES,
        // A client that trickles its request must not hold a connection for the default minutes.
        headersTimeout: 5000,
        requestTimeout: 10_000,
        keepAliveTimeout: 5000,
        // How often those two are checked (node's default, 30 s, would let them run on that long).
        connectionsCheckingInterval: 1000,
      },
      (req, res) => {
        const url = req.url ?? '';
        const target = url.split('?', 1)[0];
        if (req.method !== 'GET' || target !== '/metrics') {
          res.writeHead(404, { 'Content-Type': 'text/plain; charset=utf-8' }).end('not found: only GET /metrics\n');
          return;
        }
        metrics.scrape().then(
          (body) => res.writeHead(200, { 'Content-Type': metrics.contentType }).end(body),
          (err: unknown) => {
            logger.error({ err: err instanceof Error ? err.message : String(err) }, 'metrics scrape failed');
            res.writeHead(500).end();
          },
        );
      },
    );
    server.maxConnections = MAX_CONNECTIONS;
    // Replaces node's own handling, so every bad request gets a status line of ours and a close.
    server.on('clientError', (err: NodeJS.ErrnoException, socket: net.Socket) => {
      if (err.code === 'ECONNRESET' || !socket.writable) {
        socket.destroy();
        return;
      }
      const reply =
        err.code === 'HPE_HEADER_OVERFLOW'
          ? closing(431, 'Request Header Fields Too Large')
          : err.code === 'ERR_HTTP_REQUEST_TIMEOUT'
            ? closing(408, 'Request Timeout')
            : closing(400, 'Bad Request');
      socket.end(reply);
      setTimeout(() => socket.destroy(), 1000).unref();
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: at.address, port: at.port }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => logger.error({ err: err.message }, 'metrics listener error'));
    return new MetricsListener(server);
  }

  get address(): net.AddressInfo {
    return this.server.address() as net.AddressInfo;
  }

  /** Stops listening and ends every connection, kept-alive ones included. */
  close(): Promise<void> {
    return new Promise((resolve) => {
      this.server.close(() => resolve());
      this.server.closeAllConnections();
    });
  }
}
