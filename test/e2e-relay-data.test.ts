// The relay data plane against a real server (vsftpd) in the namespace lab: a session that
// hoards half-closed data connections, measured in the proxy's descriptors; a slowly read
// download that outlasts the idle timeout; in outbound mode, a second LAN host going for the
// passive port another client was told.
import t from 'tap';
import { createHash, randomBytes } from 'node:crypto';
import { readdirSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isRoot, startLab, SYSTEM_PYTHON, type Lab } from './lib/lab.js';
import { startProxy, type ProxyProcess } from './lib/proxy.js';

const PROBE = fileURLToPath(new URL('./lib/dataprobe.py', import.meta.url));
const PROXY_PORT = 8021;

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

  await t.test('outbound: a second LAN host connecting first to the port a client was told gets nothing', async (t) => {
    await lab.redirect(true, PROXY_PORT);
    t.teardown(() => lab.redirect(false));
    const proxy = await startProxy(lab, ['-b', '::', '-p', String(PROXY_PORT), '--backend', 'relay']);
    t.teardown(() => proxy.stop());
    const file = await lab.expectedSha256('1MiB.bin');
    // Host A (client4) gets a PASV reply; host B (client4Alt) connects there first, then A.
    const r = await lab.exec('client', SYSTEM_PYTHON, [
      PROBE, '--host', lab.env.server4, '--port', String(lab.env.ports.vsftpd),
      'steal', '1MiB.bin', '--source', lab.env.client4, '--thief', lab.env.client4Alt,
    ]);
    const got = JSON.parse(r.stdout) as {
      ok: boolean;
      error?: string;
      thief?: { connect: string; bytes?: number; end?: string };
      victim?: { pasv: string; bytes?: number; sha256?: string; final?: string; error?: string };
    };
    t.ok(got.ok, `the probe ran: ${got.error ?? ''} ${r.stderr}`);
    const { thief, victim } = got;
    t.match(victim?.pasv, `(${lab.env.gwLan4.replaceAll('.', ',')},`, "A is told the gateway's own address");
    t.equal(thief?.bytes ?? 0, 0, `B gets no data (${JSON.stringify(thief)})`);
    t.not(thief?.end, 'timeout', 'B is refused or closed, not left waiting');
    t.equal(victim?.sha256, file, `A gets its whole file (${JSON.stringify(victim)})`);
    t.match(victim?.final, /^226/);
    t.ok(
      proxy.find('data connection from unexpected source refused').some((l) => l.from === lab.env.client4Alt),
      'the proxy logged the refused source',
    );
    const epsv = await lab.pyftp(lab.target('vsftpd', 4), ['raw', 'EPSV']);
    t.match(epsv.raw_replies?.[0], /^502 /, 'EPSV from an IPv4 client: 502, use PASV');
    const curl = await lab.curlGet({ ...lab.target('vsftpd', 4), mode: 'epsv', trustPasvAddress: true, path: '1MiB.bin' });
    t.equal(curl.sha256, await lab.expectedSha256('1MiB.bin'), `curl trying EPSV first falls back to PASV ${curl.stderr}`);
  });
});
