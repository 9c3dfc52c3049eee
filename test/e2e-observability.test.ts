// Issue 12 end to end, both data planes: real servers and clients through the proxy in a lab
// gateway; the scraped metrics move by exactly what a known set of sessions did, the control
// socket lists and kills a session mid-transfer, the transfer records and the xferlog say what
// was transferred, with exact bytes on both (the relay counts them, the nftables plane reads
// the data connections' sequence numbers through NFLOG).

import t, { type Test } from 'tap';
import net from 'node:net';
import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { startLab, isRoot, SYSTEM_PYTHON, type Lab } from './lib/lab.js';
import { CLI, startProxy, type ProxyProcess } from './lib/proxy.js';
import { nftElements } from './lib/nft-state.js';
import { moved } from './lib/scrape.js';

const MIB = 1048576;

/** Logs in, PASV, RETR of a big file read slowly; prints 'transferring', then the control connection's next line. */
const SLOW_READER = `
import json, select, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
c = socket.create_connection((host, port), timeout=20)
f = c.makefile('rb')
def reply():
    line = f.readline().decode()
    while line[3:4] == '-':
        line = f.readline().decode()
    return line.strip()
def cmd(s):
    c.sendall((s + '\\r\\n').encode())
    return reply()
reply(); cmd('USER anonymous'); cmd('PASS slow@example.org'); cmd('TYPE I')
pasv = cmd('PASV')
n = [int(x) for x in pasv[pasv.index('(') + 1:pasv.index(')')].split(',')]
d = socket.socket()
d.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
d.connect(('.'.join(map(str, n[:4])), n[4] * 256 + n[5]))
print(json.dumps({'retr': cmd('RETR 100MiB.bin')}), flush=True)
got = 0
while True:
    r, _, _ = select.select([c], [], [], 0.05)
    if r:
        print(json.dumps({'control': f.readline().decode().strip(), 'got': got}), flush=True)
        break
    got += len(d.recv(2048))
`;

function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { timeout: 10_000 }, (err, stdout, stderr) =>
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
    );
  });
}

async function scrape(lab: Lab, port: number): Promise<string> {
  const r = await lab.exec('gw', 'curl', ['-sS', `http://127.0.0.1:${port}/metrics`]);
  if (r.code !== 0) throw new Error(`scrape failed: ${r.stderr}`);
  return r.stdout;
}

/** What a raw connection to the metrics port gets back for `bytes`. */
async function rawMetrics(lab: Lab, port: number, bytes: string): Promise<string> {
  const py = `import socket,sys\ns=socket.create_connection(('127.0.0.1',${port}),timeout=5)\ns.sendall(bytes.fromhex(sys.argv[1]))\nprint(s.recv(200).decode('latin1').split('\\r\\n')[0])`;
  const r = await lab.exec('gw', SYSTEM_PYTHON, ['-c', py, Buffer.from(bytes, 'latin1').toString('hex')]);
  return r.stdout.trim();
}

/** One request line on the control socket; the reply line. */
function controlLine(path: string, line: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = net.connect(path);
    let buf = '';
    s.on('data', (d) => {
      buf += d.toString();
      const i = buf.indexOf('\n');
      if (i >= 0) {
        s.destroy();
        resolve(buf.slice(0, i));
      }
    });
    s.on('error', reject);
    s.on('connect', () => s.write(line + '\n'));
  });
}

async function until<T>(f: () => T | undefined | Promise<T | undefined>, ms: number, what: string): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await f();
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const SERIES = [
  'ftpproxy_sessions_total',
  'ftpproxy_sessions_active',
  'ftpproxy_transfers_total{command="RETR",result="ok"}',
  'ftpproxy_transfers_total{command="RETR",result="failed"}',
  'ftpproxy_transfers_total{command="RETR",result="aborted"}',
  'ftpproxy_transfers_total{command="STOR",result="ok"}',
  'ftpproxy_transfers_total{command="STOR",result="failed"}',
  'ftpproxy_transfer_bytes_total{direction="upload"}',
  'ftpproxy_data_connections_total{mode="passive"}',
  'ftpproxy_data_connections_total{mode="active"}',
  'ftpproxy_data_plane_open_seconds_count',
  'ftpproxy_data_plane_errors_total{code="BACKEND_FAILED"}',
  'ftpproxy_data_plane_errors_total{code="PORTS_EXHAUSTED"}',
  'ftpproxy_sessions_refused_total{reason="limit"}',
];

async function planeSuite(t: Test, lab: Lab, backend: 'relay' | 'nftables', i: number): Promise<void> {
  const port = 8031 + i;
  const metricsPort = 9464 + i;
  const table = `ftp_obs_${i}`;
  const control = lab.tmpPath(`ctl-${backend}.sock`);
  const xferlog = lab.tmpPath(`xferlog-${backend}`);
  const proxy: ProxyProcess = await startProxy(lab, [
    '-R', lab.env.server4, '-P', String(lab.env.ports.vsftpd),
    '-b', lab.env.gwLan4, '-p', String(port),
    '--backend', backend, '--nft-table', table,
    '--data-ports', `${52000 + i * 1000}-${52000 + i * 1000 + 999}`,
    '--metrics', `127.0.0.1:${metricsPort}`, '--control-socket', control, '--xferlog', xferlog,
  ]);
  t.teardown(() => proxy.stop());
  const via = (mode: 'pasv' | 'port', user = false) => ({
    host: lab.env.gwLan4,
    port,
    mode,
    timeoutMs: 30_000,
    ...(user ? { user: lab.env.user, pass: lab.env.pass } : {}),
  });

  // Bad input first: the proxy must serve on after it.
  t.match(await rawMetrics(lab, metricsPort, '\x16\x03\x01\x02\x00garbage\r\n\r\n'), /^HTTP\/1\.[01] 400 /, 'non-HTTP on the metrics port: 400');
  t.match(await rawMetrics(lab, metricsPort, 'GET /nope HTTP/1.1\r\nHost: x\r\n\r\n'), /^HTTP\/1\.[01] 404 /, 'another path: 404');
  t.match(JSON.parse(await controlLine(control, 'garbage {')), { ok: false, error: /not JSON/ }, 'garbage on the control socket: an error reply');

  const before = await scrape(lab, metricsPort);
  const get = await lab.pyftp(via('pasv'), ['get', '1MiB.bin']);
  t.equal(get.bytes, MIB, `PASV download ${get.error ?? ''}`);
  const put = await lab.pyftp(via('port', true), ['put', join(lab.env.cacheDir, '1MiB.bin'), `obs-${backend}.bin`]);
  t.ok(put.ok, `PORT upload ${put.error ?? ''}`);
  const missing = await lab.pyftp(via('pasv'), ['get', 'no-such-file']);
  t.match(missing.error, /550/, 'a download of a missing file fails with 550');
  const abor = await lab.pyftp(via('port'), ['abor', '100MiB.bin']);
  t.ok(abor.noop_ok, `ABOR mid-download ${abor.error ?? ''}`);
  t.ok((abor.bytes_before_abort ?? 0) > 0);

  // A slow reader mid-transfer: listed with its client, server and user, then killed.
  const slow = lab.spawn('client', SYSTEM_PYTHON, ['-c', SLOW_READER, lab.env.gwLan4, String(port)]);
  const said: Record<string, unknown>[] = [];
  let out = '';
  slow.stdout!.on('data', (d: Buffer) => {
    out += d.toString();
    const lines = out.split('\n');
    out = lines.pop()!;
    for (const l of lines) said.push(JSON.parse(l) as Record<string, unknown>);
  });
  await until(() => (said.length > 0 ? true : undefined), 15_000, 'the slow reader to start');
  t.match(said[0], { retr: /^150 / });
  const listed = await cli(['sessions', '--json', '--control-socket', control]);
  t.equal(listed.code, 0, listed.stderr);
  const sessions = JSON.parse(listed.stdout) as { id: string; client: string; server: string; user: string; state: string; ageSeconds: number; transfers: number }[];
  t.equal(sessions.length, 1, 'only the slow reader is live');
  const s = sessions[0]!;
  t.match(s, { client: new RegExp(`^${lab.env.client4.replaceAll('.', '\\.')}:\\d+$`), server: `${lab.env.server4}:${lab.env.ports.vsftpd}`, user: 'anonymous', state: 'transfer', transfers: 0 });
  t.type(s.ageSeconds, 'number');
  if (backend === 'nftables') t.not(Object.keys((await nftElements(lab, table)) ?? {}).length, 0, 'its data path is in the table');
  const table1 = await cli(['sessions', '--control-socket', control]);
  t.match(table1.stdout, new RegExp(`\\b${s.id}\\b.*anonymous`), 'the table lists it too');

  const killed = await cli(['kill', s.id, '--control-socket', control]);
  t.equal(killed.code, 0, `kill ${killed.stderr}`);
  await until(() => (said.length > 1 ? true : undefined), 10_000, "the slow reader's 421");
  t.match(said[1], { control: /^421 / }, 'the killed client gets 421');
  const unknown = await cli(['kill', '999', '--control-socket', control]);
  t.equal(unknown.code, 1, 'kill of an unknown id: exit 1');
  t.equal(unknown.stderr.trim().split('\n').length, 1, `one line: ${unknown.stderr}`);
  const after = JSON.parse((await cli(['sessions', '--json', '--control-socket', control])).stdout) as unknown[];
  t.same(after, [], 'no session left');
  if (backend === 'nftables') t.same(await nftElements(lab, table), {}, 'its entries are gone');

  // Records: the four sessions' transfers and the killed one.
  // A record is written when its bytes are final, which need not be in session order (a
  // failed transfer's may wait for the kernel's word); the sessions ran in sid order.
  const written = await until(() => {
    const r = proxy.find('transfer');
    return r.length === 5 ? r : undefined;
  }, 15_000, 'five transfer records');
  const records = [...written].sort((a, b) => Number(a.sid) - Number(b.sid));
  t.match(records, [
    { command: 'RETR', path: '1MiB.bin', user: 'anonymous', mode: 'passive', result: 'ok', replyCode: 226, bytes: MIB },
    { command: 'STOR', path: `obs-${backend}.bin`, user: lab.env.user, mode: 'active', result: 'ok', replyCode: 226, bytes: MIB },
    { command: 'RETR', path: 'no-such-file', result: 'failed', replyCode: 550, bytes: 0 },
    { command: 'RETR', path: '100MiB.bin', mode: 'active', result: 'aborted' },
    { command: 'RETR', path: '100MiB.bin', mode: 'passive', result: 'aborted', replyCode: null },
  ]);
  for (const r of records) {
    t.match(r, { sid: /^\d+$/, client: new RegExp(`^${lab.env.client4.replaceAll('.', '\\.')}:`), server: `${lab.env.server4}:${lab.env.ports.vsftpd}` });
    t.type(r.durationMs, 'number');
  }
  t.ok((records[3]!.bytes as number) >= (abor.bytes_before_abort ?? 0), 'the aborted download: at least what the client read');
  t.ok((records[4]!.bytes as number) >= (said[1]!.got as number), 'the killed download: at least what the client read');

  const delta = moved(before, await scrape(lab, metricsPort), [...SERIES, 'ftpproxy_transfer_bytes_total{direction="download"}']);
  const downloaded = records.filter((r) => r.command === 'RETR').reduce((n, r) => n + ((r.bytes as number | null) ?? 0), 0);
  t.same(delta, {
    ftpproxy_sessions_total: 5,
    ftpproxy_sessions_active: 0,
    'ftpproxy_transfers_total{command="RETR",result="ok"}': 1,
    'ftpproxy_transfers_total{command="RETR",result="failed"}': 1,
    'ftpproxy_transfers_total{command="RETR",result="aborted"}': 2,
    'ftpproxy_transfers_total{command="STOR",result="ok"}': 1,
    'ftpproxy_transfers_total{command="STOR",result="failed"}': 0,
    'ftpproxy_transfer_bytes_total{direction="upload"}': MIB,
    'ftpproxy_data_connections_total{mode="passive"}': 3,
    'ftpproxy_data_connections_total{mode="active"}': 2,
    ftpproxy_data_plane_open_seconds_count: 5,
    'ftpproxy_data_plane_errors_total{code="BACKEND_FAILED"}': 0,
    'ftpproxy_data_plane_errors_total{code="PORTS_EXHAUSTED"}': 0,
    'ftpproxy_sessions_refused_total{reason="limit"}': 0,
    'ftpproxy_transfer_bytes_total{direction="download"}': downloaded,
  }, 'counters moved by exactly what the sessions did');
  t.ok(downloaded > MIB, 'download bytes: the whole file and what the aborted ones carried');

  // xferlog: one line per file transfer, in order, with the bytes the records have.
  const lines = await until(async () => {
    const l = (await readFile(xferlog, 'utf8')).trimEnd().split('\n');
    return l.length >= 5 ? l : undefined;
  }, 5000, 'five xferlog lines');
  t.equal(lines.length, 5, 'one xferlog line per file transfer');
  // ctime pads a one-digit day with a second space.
  const fields = lines.map((l) => l.split(/ +/));
  for (const f of fields) t.equal(f.length, 18, `18 space-separated fields (5 of them the date): ${f.join(' ')}`);
  const cols = fields.map((f) => ({ host: f[6], bytes: f[7], file: f[8], type: f[9], dir: f[11], access: f[12], user: f[13], status: f[17] }));
  // The xferlog has the records' order.
  const want = [
    { host: lab.env.client4, bytes: String(MIB), file: '1MiB.bin', type: 'b', dir: 'o', access: 'a', user: 'anonymous', status: 'c' },
    { host: lab.env.client4, bytes: String(MIB), file: `obs-${backend}.bin`, type: 'b', dir: 'i', access: 'r', user: lab.env.user, status: 'c' },
    { bytes: '0', file: 'no-such-file', dir: 'o', status: 'i' },
    { bytes: String(records[3]!.bytes), file: '100MiB.bin', status: 'i' },
    { bytes: String(records[4]!.bytes), file: '100MiB.bin', status: 'i' },
  ];
  t.match(cols, written.map((r) => want[records.indexOf(r)]));
  await until(() => (slow.exitCode !== null ? true : undefined), 10_000, 'the slow reader to exit');
}

t.test('metrics, live sessions, transfer records and the xferlog through a real gateway', async (t) => {
  if (!isRoot) {
    t.fail('end-to-end tests need root (network namespaces)');
    return;
  }
  const lab = await startLab(t);
  await t.test('relay data plane', (t) => planeSuite(t, lab, 'relay', 0));
  await t.test('nftables data plane', (t) => planeSuite(t, lab, 'nftables', 1));
});
