import t, { type Test } from 'tap';
import net from 'node:net';
import http from 'node:http';
import { once } from 'node:events';
import { MetricsListener } from '../src/metrics/http.js';
import { NO_METRICS, PromMetrics, type Metrics } from '../src/metrics/metrics.js';
import { createLogger } from '../src/log.js';
import { sample } from './lib/scrape.js';

const quiet = createLogger({ debugLevel: 0, foreground: false, destination: { write: () => undefined } });

function get(port: number, path: string, method = 'GET'): Promise<{ status: number; type: string; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, method, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode!, type: String(res.headers['content-type']), body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** Sends raw bytes; resolves with everything the server sent until it closed. */
function raw(port: number, bytes: string | Buffer): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1');
    let got = '';
    s.on('data', (d) => (got += d.toString('latin1')));
    s.on('error', (e: NodeJS.ErrnoException) => (e.code === 'ECONNRESET' ? resolve(got) : reject(e)));
    s.on('close', () => resolve(got));
    s.on('connect', () => s.write(bytes));
  });
}


async function started(t: Test): Promise<{ m: PromMetrics; port: number }> {
  const m = new PromMetrics();
  const l = await MetricsListener.listen({ address: '127.0.0.1', port: 0 }, m, quiet);
  t.teardown(() => l.close());
  return { m, port: l.address.port };
}

t.test('every series of issue 12 is exposed from the start at 0, and moves by what was called', async (t) => {
  const { m, port } = await started(t);
  const before = await get(port, '/metrics');
  t.equal(before.status, 200);
  t.match(before.type, /^text\/plain; version=0\.0\.4/);
  for (const s of [
    'ftpproxy_sessions_active',
    'ftpproxy_sessions_total',
    'ftpproxy_sessions_refused_total{reason="limit"}',
    'ftpproxy_sessions_refused_total{reason="no_server"}',
    'ftpproxy_data_connections_total{mode="passive"}',
    'ftpproxy_data_connections_total{mode="active"}',
    'ftpproxy_data_plane_errors_total{code="PORTS_EXHAUSTED"}',
    'ftpproxy_data_plane_open_seconds_count',
    'ftpproxy_transfers_total{command="MLSD",result="aborted"}',
    'ftpproxy_transfer_bytes_total{direction="download"}',
    'ftpproxy_transfer_bytes_total{direction="upload"}',
  ]) {
    t.equal(sample(before.body, s), 0, s);
  }
  for (const s of ['process_cpu_seconds_total', 'process_resident_memory_bytes', 'nodejs_eventloop_lag_seconds']) {
    t.ok(sample(before.body, s) >= 0, s);
  }
  t.ok(sample(before.body, 'process_open_fds') > 3, 'open descriptors counted by the kernel');
  t.notMatch(before.body, /nodejs_active_handles/, 'no per-handle series (their cost grows with sessions)');

  m.sessionStarted();
  m.sessionStarted();
  m.sessionEnded();
  m.refused('per_client_limit');
  m.dataPathOpened('passive', 0.0004);
  m.dataPathOpened('active', 0.02);
  m.dataPlaneError('PORTS_EXHAUSTED');
  m.transferEnded('RETR', 'ok', 1000);
  m.transferEnded('RETR', 'ok', 24);
  m.transferEnded('STOR', 'aborted', 500);
  m.transferEnded('LIST', 'failed', 0);
  const after = (await get(port, '/metrics')).body;
  t.equal(sample(after, 'ftpproxy_sessions_active'), 1);
  t.equal(sample(after, 'ftpproxy_sessions_total'), 2);
  t.equal(sample(after, 'ftpproxy_sessions_refused_total{reason="per_client_limit"}'), 1);
  t.equal(sample(after, 'ftpproxy_sessions_refused_total{reason="limit"}'), 0);
  t.equal(sample(after, 'ftpproxy_data_connections_total{mode="passive"}'), 1);
  t.equal(sample(after, 'ftpproxy_data_connections_total{mode="active"}'), 1);
  t.equal(sample(after, 'ftpproxy_data_plane_errors_total{code="PORTS_EXHAUSTED"}'), 1);
  t.equal(sample(after, 'ftpproxy_data_plane_open_seconds_bucket{le="0.0005"}'), 1);
  t.equal(sample(after, 'ftpproxy_data_plane_open_seconds_bucket{le="0.025"}'), 2);
  t.equal(sample(after, 'ftpproxy_data_plane_open_seconds_count'), 2);
  t.equal(sample(after, 'ftpproxy_transfers_total{command="RETR",result="ok"}'), 2);
  t.equal(sample(after, 'ftpproxy_transfers_total{command="STOR",result="aborted"}'), 1);
  t.equal(sample(after, 'ftpproxy_transfers_total{command="LIST",result="failed"}'), 1);
  t.equal(sample(after, 'ftpproxy_transfer_bytes_total{direction="download"}'), 1024);
  t.equal(sample(after, 'ftpproxy_transfer_bytes_total{direction="upload"}'), 500);
});

t.test('only GET /metrics: other paths and methods get 404', async (t) => {
  const { port } = await started(t);
  t.equal((await get(port, '/metrics?x=1')).status, 200, 'a query string is ignored');
  for (const [path, method] of [['/', 'GET'], ['/metrics/', 'GET'], ['/favicon.ico', 'GET'], ['/metrics', 'POST'], ['/metrics', 'DELETE']] as const) {
    t.equal((await get(port, path, method)).status, 404, `${method} ${path}`);
  }
});

t.test('bytes that are not HTTP get a 400 status line, then the close; the listener serves on', async (t) => {
  const { port } = await started(t);
  const junk = await raw(port, 'hello there\r\n\r\n');
  t.match(junk, /^HTTP\/1\.1 400 Bad Request\r\n/);
  t.match(junk, /Connection: close\r\n/);
  const binary = await raw(port, Buffer.from([0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03, 0x0d, 0x0a, 0x0d, 0x0a]));
  t.match(binary, /^HTTP\/1\.1 400 Bad Request\r\n/, 'a TLS ClientHello too');
  const huge = await raw(port, `GET /metrics HTTP/1.1\r\nHost: x\r\nX-Pad: ${'a'.repeat(20000)}\r\n\r\n`);
  t.match(huge, /^HTTP\/1\.1 431 Request Header Fields Too Large\r\n/, 'oversized headers are refused');
  t.equal((await get(port, '/metrics')).status, 200, 'still serving');
});

t.test('a request that never completes is cut off; it does not hold the listener', async (t) => {
  const { port } = await started(t);
  const s = net.connect(port, '127.0.0.1');
  await once(s, 'connect');
  s.write('GET /metrics HTTP/1.1\r\nHost: x\r\n');
  t.equal((await get(port, '/metrics')).status, 200, 'others are served meanwhile');
  const t0 = Date.now();
  let got = '';
  s.on('data', (d) => (got += d.toString()));
  await once(s, 'close');
  t.ok(Date.now() - t0 < 10_000, `closed after ${Date.now() - t0} ms (headers timeout 5 s)`);
  t.match(got, /^HTTP\/1\.1 408 Request Timeout\r\n/);
});

t.test('an address in use is a listen error; close ends kept-alive connections', async (t) => {
  const { port } = await started(t);
  await t.rejects(MetricsListener.listen({ address: '127.0.0.1', port }, new PromMetrics(), quiet), { code: 'EADDRINUSE' });
  const m = new PromMetrics();
  const l = await MetricsListener.listen({ address: '::1', port: 0 }, m, quiet);
  t.equal(l.address.address, '::1', 'IPv6');
  const agent = new http.Agent({ keepAlive: true });
  const res = await new Promise<http.IncomingMessage>((resolve) =>
    http.get({ host: '::1', port: l.address.port, path: '/metrics', agent }, resolve),
  );
  res.resume();
  await once(res, 'end');
  const t0 = Date.now();
  await l.close();
  t.ok(Date.now() - t0 < 1000, 'close does not wait for the keep-alive timeout');
  agent.destroy();
});

t.test('with --metrics off the calls exist and do nothing', async (t) => {
  const m: Metrics = NO_METRICS;
  m.sessionStarted();
  m.sessionEnded();
  m.refused('limit');
  m.dataPathOpened('active', 1);
  m.dataPlaneError('BACKEND_FAILED');
  m.transferEnded('RETR', 'ok', 5);
  t.ok(Object.isFrozen(m));
  t.same(Object.keys(m).sort(), ['dataPathOpened', 'dataPlaneError', 'refused', 'sessionEnded', 'sessionStarted', 'transferEnded']);
});
