// Issue 12 through the real session shell and server (fake data plane, scripted server): the
// transfer records, the metrics they move, the xferlog lines, the session view and kill.

import t from 'tap';
import { PromMetrics } from '../../src/metrics/metrics.js';
import { createLogger } from '../../src/log.js';
import type { TransferRecord } from '../../src/transfer.js';
import { Control, basicResponder, type Responder } from '../lib/scripted.js';
import { eventually, login, rig } from '../lib/session-rig.js';
import { moved } from '../lib/scrape.js';

/** basicResponder, plus PWD, TYPE and transfers that answer as their argument says. */
const respond: Responder = (line, sock) => {
  const [verb, arg = ''] = line.split(' ');
  switch (verb!.toUpperCase()) {
    case 'PWD':
      return '257 "/pub" is current';
    case 'TYPE':
      return '200 type set';
    case 'RETR':
    case 'STOR':
      if (arg === 'missing') return '550 no such file';
      if (arg === 'slow') return '150 go';
      return ['150 go', '226 done'];
    case 'ABOR':
      return ['426 aborted', '226 abort ok'];
    default:
      return basicResponder(line, sock);
  }
};

t.test('one record per transfer command, metrics and xferlog moved by exactly that', async (t) => {
  const logged: Record<string, unknown>[] = [];
  const logger = createLogger({ debugLevel: 6, foreground: false, destination: { write: (s: string) => void logged.push(JSON.parse(s)) } });
  const metrics = new PromMetrics();
  const xferlog: TransferRecord[] = [];
  const r = await rig(t, { respond, metrics, xferlog, logger });
  const before = await metrics.scrape();
  const c = new Control(r.proxyPort);
  t.teardown(() => c.sock.destroy());
  await login(t, c);
  c.send('PWD');
  await c.line();
  c.send('TYPE I');
  await c.line();

  c.send('PASV');
  t.match(await c.line(), /^227 /);
  r.dp.moved.set(r.dp.opened.at(-1)!.id, { fromPeer: 7, toPeer: 1000 });
  c.send('RETR a.bin');
  t.match(await c.line(), /^150 /);
  t.match(await c.line(), /^226 /);

  c.send('RETR missing');
  t.match(await c.line(), /^550 /);

  c.send('PORT 127,0,0,1,200,10');
  t.match(await c.line(), /^200 /);
  // Active: the peer is the server, so an upload is what went to it.
  r.dp.moved.set(r.dp.opened.at(-1)!.id, { fromPeer: 300, toPeer: 2000 });
  c.send('STOR slow');
  t.match(await c.line(), /^150 /);
  const view = r.proxy.provider.list();
  t.match(view, [{ id: '1', client: /^127\.0\.0\.1:\d+$/, server: /^127\.0\.0\.1:\d+$/, user: 'anonymous', state: 'transfer', transfers: 2, bytes: 1000, dataPath: { mode: 'active' } }]);
  c.send('ABOR');
  t.match(await c.line(), /^426 /);
  t.match(await c.line(), /^226 /);

  c.send('PASV');
  t.match(await c.line(), /^227 /);
  c.send('RETR slow');
  t.match(await c.line(), /^150 /);
  t.ok(r.proxy.provider.kill('1'), 'kill finds the session');
  t.notOk(r.proxy.provider.kill('99'), 'an unknown id is not found');
  t.match(await c.line(), /^421 .*administrator/);
  t.ok(await eventually(() => r.proxy.sessions.size === 0));
  t.same(r.proxy.provider.list(), []);
  t.ok(await eventually(() => logged.filter((l) => l.msg === 'transfer').length === 4));

  const records = logged.filter((l) => l.msg === 'transfer');
  t.match(records, [
    { sid: '1', user: 'anonymous', command: 'RETR', path: 'a.bin', directory: '/pub', type: 'binary', mode: 'passive', bytes: 1000, replyCode: 226, result: 'ok', client: /^127\.0\.0\.1:/, server: /^127\.0\.0\.1:/ },
    { command: 'RETR', path: 'missing', bytes: 0, replyCode: 550, result: 'failed' },
    { command: 'STOR', path: 'slow', mode: 'active', bytes: 2000, replyCode: 426, result: 'aborted' },
    { command: 'RETR', path: 'slow', bytes: 0, replyCode: null, result: 'aborted' },
  ]);
  for (const rec of records) t.type(rec.durationMs, 'number');
  t.same(xferlog.map((x) => [x.command, x.path, x.bytes, x.result]), [
    ['RETR', 'a.bin', 1000, 'ok'],
    ['RETR', 'missing', 0, 'failed'],
    ['STOR', 'slow', 2000, 'aborted'],
    ['RETR', 'slow', 0, 'aborted'],
  ]);

  const series = [
    'ftpproxy_sessions_total',
    'ftpproxy_sessions_active',
    'ftpproxy_transfers_total{command="RETR",result="ok"}',
    'ftpproxy_transfers_total{command="RETR",result="failed"}',
    'ftpproxy_transfers_total{command="RETR",result="aborted"}',
    'ftpproxy_transfers_total{command="STOR",result="aborted"}',
    'ftpproxy_transfer_bytes_total{direction="download"}',
    'ftpproxy_transfer_bytes_total{direction="upload"}',
    'ftpproxy_data_connections_total{mode="passive"}',
    'ftpproxy_data_connections_total{mode="active"}',
    'ftpproxy_data_plane_open_seconds_count',
  ];
  t.same(moved(before, await metrics.scrape(), series), {
    ftpproxy_sessions_total: 1,
    ftpproxy_sessions_active: 0,
    'ftpproxy_transfers_total{command="RETR",result="ok"}': 1,
    'ftpproxy_transfers_total{command="RETR",result="failed"}': 1,
    'ftpproxy_transfers_total{command="RETR",result="aborted"}': 1,
    'ftpproxy_transfers_total{command="STOR",result="aborted"}': 1,
    'ftpproxy_transfer_bytes_total{direction="download"}': 1000,
    'ftpproxy_transfer_bytes_total{direction="upload"}': 2000,
    'ftpproxy_data_connections_total{mode="passive"}': 2,
    'ftpproxy_data_connections_total{mode="active"}': 1,
    ftpproxy_data_plane_open_seconds_count: 3,
  });
});

t.test('a server refused by policy is counted by its reason', async (t) => {
  const metrics = new PromMetrics();
  const r = await rig(t, { respond, metrics, flags: ['--deny-server', '127.0.0.0/8'] });
  const before = await metrics.scrape();
  const a = new Control(r.proxyPort);
  t.teardown(() => a.sock.destroy());
  t.match(await a.line(), /^530 /, 'server policy');
  t.ok(await eventually(() => r.proxy.sessions.size === 0));
  const series = ['ftpproxy_sessions_refused_total{reason="server_policy"}', 'ftpproxy_sessions_total', 'ftpproxy_sessions_active'];
  t.same(moved(before, await metrics.scrape(), series), {
    'ftpproxy_sessions_refused_total{reason="server_policy"}': 1,
    ftpproxy_sessions_total: 1,
    ftpproxy_sessions_active: 0,
  });
});

t.test('a data-plane error is counted by its code', async (t) => {
  const metrics = new PromMetrics();
  const r = await rig(t, { respond, metrics });
  const before = await metrics.scrape();
  const c = new Control(r.proxyPort);
  t.teardown(() => c.sock.destroy());
  await login(t, c);
  r.dp.failNextOpen('PORTS_EXHAUSTED');
  c.send('PASV');
  t.match(await c.line(), /^425 /);
  const series = ['ftpproxy_data_plane_errors_total{code="PORTS_EXHAUSTED"}', 'ftpproxy_data_connections_total{mode="passive"}'];
  t.same(moved(before, await metrics.scrape(), series), {
    'ftpproxy_data_plane_errors_total{code="PORTS_EXHAUSTED"}': 1,
    'ftpproxy_data_connections_total{mode="passive"}': 0,
  });
});
