// The relay data plane against a real server (vsftpd) in the namespace lab: a session that
// hoards half-closed data connections, measured in the proxy's descriptors; a slowly read
// download that outlasts the idle timeout; in outbound mode, a second LAN host going for the
// passive address and port another client was told (privileged, and the unprivileged fallback).
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Test } from 'tap';
import { isRoot, sha256File, startLab, SYSTEM_PYTHON, type Lab } from './lib/lab.js';
import { startProxy, startUnprivilegedProxy, type ProxyProcess } from './lib/proxy.js';

const PROBE = fileURLToPath(new URL('./lib/dataprobe.py', import.meta.url));
const PROXY_PORT = 8021;
/** Outbound mode: the gateway's redirect sends LAN clients' FTP here. */
const OUTBOUND = ['-b', '::', '-p', String(PROXY_PORT), '--backend', 'relay'];
/** The default --route-table. */
const TABLE = 2121;

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
const fds = (pid: number): number => readdirSync(`/proc/${pid}/fd`).length;

/** The proxy in reverse mode in front of the lab's vsftpd, relaying data. */
async function reverseRelay(lab: Lab, extra: string[] = []): Promise<ProxyProcess> {
  return startProxy(lab, [
    '-R', lab.env.server4, '-P', String(lab.env.ports.vsftpd),
    '-b', lab.env.gwLan4, '-p', String(PROXY_PORT), '--backend', 'relay', ...extra,
  ]);
}

/** Polls until `cond` holds, for at most `ms`; false if it never did. */
async function until(ms: number, cond: () => boolean): Promise<boolean> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) return false;
    await sleep(50);
  }
  return true;
}

/**
 * The proxy in outbound mode, relaying data, started by `start` with `extra` flags, and the
 * gateway's redirect to it; both undone when `t` ends.
 */
async function outbound(t: Test, lab: Lab, start: typeof startProxy, extra: readonly string[] = []): Promise<ProxyProcess> {
  await lab.redirect(true, PROXY_PORT);
  t.teardown(() => lab.redirect(false));
  const proxy = await start(lab, [...OUTBOUND, ...extra]);
  t.teardown(() => proxy.stop());
  return proxy;
}

/** Host A (the client), host B (another LAN host) and the server, of one family. */
function hosts(lab: Lab, family: 4 | 6): { client: string; thief: string; server: string } {
  const e = lab.env;
  return family === 4 ? { client: e.client4, thief: e.client4Alt, server: e.server4 } : { client: e.client6, thief: e.client6Alt, server: e.server6 };
}

interface Stolen {
  thief?: { connect: string; bytes?: number; end?: string };
  victim?: { reply: string; host: string; port: number; bytes?: number; sha256?: string; final?: string; error?: string };
}

/**
 * dataprobe.py steal, outbound mode: A gets a PASV (or EPSV) reply from the server through the
 * proxy; B connects to that address and port first, then A connects and downloads 1MiB.bin.
 */
async function steal(t: Test, lab: Lab, family: 4 | 6, epsv: boolean): Promise<Stolen> {
  const { client, thief, server } = hosts(lab, family);
  const r = await lab.exec('client', SYSTEM_PYTHON, [
    PROBE, '--host', server, '--port', String(lab.env.ports.vsftpd),
    'steal', '1MiB.bin', '--source', client, '--thief', thief, ...(epsv ? ['--epsv'] : []),
  ]);
  const got = JSON.parse(r.stdout) as Stolen & { ok: boolean; error?: string };
  t.ok(got.ok, `the probe ran: ${got.error ?? ''} ${r.stderr}`);
  return got;
}

t.test('relay against vsftpd', { skip: isRoot ? false : 'needs root (network namespaces)' }, async (t) => {
  const lab = await startLab(t);
  const probeArgs = (...args: string[]): string[] => [PROBE, '--host', lab.env.gwLan4, '--port', String(PROXY_PORT), ...args];

  await t.test('200 x (PASV, LIST, read to EOF, never close): descriptors stay bounded and return after QUIT', async (t) => {
    const proxy = await reverseRelay(lab);
    t.teardown(() => proxy.stop());
    const pid = proxy.child.pid!;
    // One short session first: what the proxy opens once, on first use, is part of its baseline.
    const warm = await lab.exec('client', SYSTEM_PYTHON, probeArgs('hoard', '--count', '1'));
    t.match(warm.stdout, /"ok": true/, warm.stderr);
    t.ok(await until(5000, () => proxy.find('session ended').length === 1), 'warm-up session ended');
    await sleep(1000);
    const baseline = fds(pid);

    const hoarder = lab.spawn('client', SYSTEM_PYTHON, probeArgs('hoard', '--count', '200'));
    let out = '';
    hoarder.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    let peak = baseline;
    while (!out.includes('\n') && hoarder.exitCode === null) {
      peak = Math.max(peak, fds(pid));
      await sleep(20);
    }
    const result = JSON.parse(out) as { ok: boolean; lists?: number; quit?: string; error?: string };
    t.ok(result.ok, `the hoarding session ran: ${result.error ?? ''}`);
    t.equal(result.lists, 200, '200 listings read to EOF, their data sockets all still open');
    t.match(result.quit, /^221/);
    // Four pairs of six descriptors (two sockets, two splice pipes), a listener, the control
    // connection, and room for a pair being set up while the oldest is cut.
    t.ok(peak - baseline <= 48, `at most ${peak - baseline} descriptors above the baseline of ${baseline} during the session`);
    t.ok(await until(5000, () => proxy.find('session ended').length === 2), 'session ended');
    const endedAt = Date.now();
    const back = await until(3000, () => fds(pid) <= baseline);
    t.ok(back, `back to ${baseline} descriptors ${Date.now() - endedAt} ms after the session ended (now ${fds(pid)}), while the client still holds its sockets`);
    hoarder.stdin!.end();
  });

  await t.test('-t 10: a PORT download read slowly for over 20 s arrives whole, and the next command gets 200', async (t) => {
    const file = randomBytes(8 << 20);
    await writeFile(join(lab.env.upload.vsftpd, 'slow-8MiB.bin'), file, { mode: 0o644 });
    const proxy = await reverseRelay(lab, ['-t', '10']);
    t.teardown(() => proxy.stop());
    // 8 KiB every 25 ms through a 16 KiB receive buffer: some 26 s. The server has long sent
    // everything (and its 226) while the relay is still delivering.
    const r = await lab.exec(
      'client',
      SYSTEM_PYTHON,
      probeArgs('--user', lab.env.user, '--password', lab.env.pass, '--timeout', '60', 'slowget', 'slow-8MiB.bin', '--rcvbuf', '8192', '--chunk', '8192', '--pause', '0.025'),
      { timeoutMs: 120_000 },
    );
    const got = JSON.parse(r.stdout) as { ok: boolean; error?: string; bytes?: number; sha256?: string; seconds?: number; final?: string; noop?: string };
    t.ok(got.ok, `the download ran: ${got.error ?? ''} ${r.stderr}`);
    t.ok((got.seconds ?? 0) > 20, `it took ${got.seconds} s, over twice the idle timeout`);
    t.equal(got.bytes, file.length);
    t.equal(got.sha256, createHash('sha256').update(file).digest('hex'), 'the file is whole');
    t.match(got.final, /^226/, 'the transfer reply');
    t.match(got.noop, /^200/, 'NOOP after it: the session is still there');
    t.same(proxy.find('session ended').filter((l) => l.reason === 'idle timeout'), [], 'no idle timeout');
  });

  await t.test("outbound: passive data is caught on the server's address, for the session's client alone", async (t) => {
    const proxy = await outbound(t, lab, startProxy);
    const file = await lab.expectedSha256('1MiB.bin');
    t.ok(proxy.find("data paths use the server's address: passive data is caught there for the session's client alone, active data comes from it (policy routing)").length === 1, 'one log line says which passive mode is in effect');
    for (const [family, epsv] of [[4, false], [4, true], [6, true]] as const) {
      const { client, server } = hosts(lab, family);
      const verb = `IPv${family} ${epsv ? 'EPSV' : 'PASV'}`;
      const { thief: b, victim: a } = await steal(t, lab, family, epsv);
      t.match(a?.reply, epsv ? /^229 / : /^227 /, `${verb}: answered`);
      t.equal(a?.host, server, `${verb}: A is sent to the server's own address`);
      t.equal(b?.connect, 'refused', `${verb}: B's connection goes on to the real server, where nothing listens on that port`);
      t.equal(b?.bytes ?? 0, 0, `${verb}: B gets no data`);
      t.equal(a?.sha256, file, `${verb}: A gets its whole file (${JSON.stringify(a)})`);
      t.match(a?.final, /^226/);
      // The rule lingers a few seconds after its connection has closed.
      const mine = (await lab.proxyRouting(TABLE)).filter((l) => l.includes(` dport ${a?.port} `));
      t.same(mine.map((l) => l.replace(/^\d+:\s+/, '')), [`from ${client} to ${server} ipproto tcp dport ${a?.port} lookup ${TABLE}`], `${verb}: one rule, for A's connections to that address and port`);
    }
    t.same(proxy.find('data connection from unexpected source refused'), [], "B's connections never reached the proxy");

    // A path nobody connected to has no closing handshake to wait for: its rule goes with it.
    const unused = await lab.pyftp(lab.target('vsftpd', 4), ['raw', 'PASV', 'EPSV']);
    const ports = (unused.raw_replies ?? []).map((r) => {
      const f = /\((?:\d+,){4}(\d+),(\d+)\)|\(\|\|\|(\d+)\|\)/.exec(r) ?? [];
      return f[3] ? Number(f[3]) : Number(f[1]) * 256 + Number(f[2]);
    });
    t.equal(ports.filter((p) => p > 0).length, 2, `two paths: ${JSON.stringify(unused.raw_replies)}`);
    const stale = async (): Promise<string[]> => (await lab.proxyRouting(TABLE)).filter((l) => ports.some((p) => l.includes(` dport ${p} `)));
    const began = Date.now();
    let left = await stale();
    while (left.length > 0 && Date.now() - began < 1500) {
      await sleep(50);
      left = await stale();
    }
    t.same(left, [], `their rules went within ${Date.now() - began} ms of the session's end (a connection's linger is 3 s)`);

    // Stock clients: curl 7.74+ and Python's ftplib connect to the control connection's
    // address whatever a 227 says, and IPv6 has only EPSV, which carries no address.
    for (const [family, mode] of [[4, 'pasv'], [4, 'epsv'], [6, 'epsv']] as const) {
      const curl = await lab.curlGet({ ...lab.target('vsftpd', family), mode, path: '1MiB.bin' });
      t.equal(curl.sha256, file, `stock curl, IPv${family} ${mode} ${curl.stderr}`);
    }
    for (const family of [4, 6] as const) {
      const py = await lab.pyftp({ ...lab.target('vsftpd', family), mode: family === 4 ? 'pasv' : 'epsv', trustPasvAddress: false }, ['get', '1MiB.bin']);
      t.equal(py.sha256, file, `stock ftplib, IPv${family} ${py.error ?? ''}`);
    }
    const lftpOut = lab.tmpPath('lftp-epsv-4');
    const l = await lab.lftp({ ...lab.target('vsftpd', 4), mode: 'epsv' }, [`get /1MiB.bin -o ${lftpOut}`]);
    t.equal(l.code === 0 ? await sha256File(lftpOut) : l.stderr, file, 'lftp, IPv4 EPSV');

    t.equal((await proxy.stop()).code, 0, 'SIGTERM exits 0');
    t.same(await lab.proxyRouting(TABLE), [], 'no rule and no route of ours is left');
  });

  await t.test('outbound: 600 short passive transfers in a row leave at most 128 rules lingering', async (t) => {
    await outbound(t, lab, startProxy);
    const run = lab.pyftp({ ...lab.target('vsftpd', 4), timeoutMs: 60_000 }, ['session', ...Array<string>(600).fill('get=small.txt')]);
    let done = false;
    void run.finally(() => (done = true));
    let peak = 0;
    while (!done) {
      peak = Math.max(peak, (await lab.proxyRouting(TABLE)).filter((l) => l.includes(' ipproto tcp ')).length);
      await sleep(20);
    }
    const r = await run;
    t.equal(r.steps?.length, 600, `every transfer ran ${r.error ?? ''}`);
    t.ok(peak > 0, `rules were seen (peak ${peak})`);
    t.ok(peak <= 128 + 2, `at most 128 lingering and the live path's (peak ${peak})`);
  });

  await t.test('outbound, --data-ports 65534-65535: port 65535, which no policy rule can name, is passed over', async (t) => {
    const proxy = await outbound(t, lab, startProxy, ['--data-ports', '65534-65535']);
    const file = await lab.expectedSha256('1MiB.bin');
    for (const family of [4, 4, 6, 6] as const) {
      const curl = await lab.curlGet({ ...lab.target('vsftpd', family), mode: 'epsv', path: '1MiB.bin' });
      t.equal(curl.sha256, file, `IPv${family} EPSV ${curl.stderr}`);
    }
    t.same([...new Set(proxy.find('passive data path').map((l) => l.dataPort))], [65534], 'every path on 65534');
    t.same(proxy.find('data plane failed'), [], 'none failed');
  });

  await t.test('outbound, unprivileged: IPv4 passive data through the gateway for A alone, EPSV 502, IPv6 direct', async (t) => {
    const proxy = await outbound(t, lab, startUnprivilegedProxy);
    const file = await lab.expectedSha256('1MiB.bin');
    const warned = proxy.logs.filter((l) => /^data paths cannot use the server's address/.test(l.msg));
    t.equal(warned.length, 1, 'one log line says which passive mode is in effect');
    t.match(warned[0]?.err, /EPERM/, 'and why');

    const { thief: b, victim: a } = await steal(t, lab, 4, false);
    t.equal(a?.host, lab.env.gwLan4, "A is told the gateway's own address");
    t.equal(b?.bytes ?? 0, 0, `B gets no data (${JSON.stringify(b)})`);
    t.not(b?.end, 'timeout', 'B is refused or closed, not left waiting');
    t.equal(a?.sha256, file, `A gets its whole file (${JSON.stringify(a)})`);
    t.match(a?.final, /^226/);
    t.ok(
      proxy.find('data connection from unexpected source refused').some((l) => l.from === lab.env.client4Alt),
      'the proxy refused B, and logged it',
    );

    const epsv = await lab.pyftp(lab.target('vsftpd', 4), ['raw', 'EPSV']);
    t.match(epsv.raw_replies?.[0], /^502 /, 'EPSV from an IPv4 client: 502, use PASV');
    const curl = await lab.curlGet({ ...lab.target('vsftpd', 4), mode: 'epsv', trustPasvAddress: true, path: '1MiB.bin' });
    t.equal(curl.sha256, file, `curl --no-ftp-skip-pasv-ip goes from EPSV to PASV and to the 227 address ${curl.stderr}`);
    const stock = await lab.curlGet({ ...lab.target('vsftpd', 4), mode: 'pasv', path: 'small.txt', timeoutMs: 10_000 });
    t.notOk(stock.ok, 'stock curl, which ignores the 227 address, fails (the documented limit)');
    const v6 = await lab.pyftp({ ...lab.target('vsftpd', 6), mode: 'epsv' }, ['get', '1MiB.bin']);
    t.equal(v6.sha256, file, `IPv6 EPSV goes straight to the server ${v6.error ?? ''}`);

    t.equal((await proxy.stop()).code, 0, 'SIGTERM exits 0');
    t.same(await lab.proxyRouting(TABLE), [], 'nothing was installed');
  });
});
