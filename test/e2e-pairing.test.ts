// Reply pairing against real servers (issue 11, defect 3 a and b), in reverse mode on both data
// planes, with the server's own address out of the LAN's reach as it is where reverse mode is
// deployed: every 227 the client gets must be the proxy's, and the data must flow through it.
//
// (a) pure-ftpd answers a RETR whose data connection the client reset with only a 150, and the
//     ABOR that follows with 226: one reply fewer than commands. The PASV after it must still
//     be rewritten, and LIST and RETR must work through it.
// (b) vsftpd, with a client that sends USER, PASS and PASV in one write before reading the
//     greeting: 220, 331, 230, then the proxy's 227; a transfer through it; and the session is
//     logged in for the proxy too (no 421 once the login timeout has passed).
import t, { type Test } from 'tap';
import { startLab, isRoot, SYSTEM_PYTHON, type Lab, type ServerName } from './lib/lab.js';
import { startProxy } from './lib/proxy.js';
import { fileURLToPath } from 'node:url';
import { copyFile } from 'node:fs/promises';
import { join } from 'node:path';

const PAIRING = fileURLToPath(new URL('./lib/pairing.py', import.meta.url));
const PLANES = ['relay', 'nftables'] as const;
const LOGIN_TIMEOUT = 3;

interface Transfer {
  ok: boolean;
  error?: string;
  final?: string;
  bytes?: number;
  sha256?: string;
}

interface Probe {
  replies: string[];
  pasv: (string | null)[];
  list?: Transfer;
  get?: Transfer;
  noop?: string | null;
  error?: string;
}

async function probe(lab: Lab, port: number, scenario: string, ...extra: string[]): Promise<Probe> {
  const r = await lab.exec('client', SYSTEM_PYTHON, [PAIRING, lab.env.gwLan4, String(port), scenario, ...extra], { timeoutMs: 60_000 });
  try {
    return JSON.parse(r.stdout) as Probe;
  } catch {
    throw new Error(`pairing.py ${scenario}: ${r.stderr || r.stdout}`);
  }
}

t.test('reply pairing through the proxy, reverse mode, pure-ftpd and vsftpd', async (t) => {
  if (!isRoot) return t.fail('needs root (network namespaces)');
  const lab = await startLab(t);
  await lab.isolateServer();
  const small = await lab.expectedSha256('1MiB.bin');
  // The login user's own copy, for the vsftpd probe (it logs in as that user, not anonymously).
  await copyFile(join(lab.env.cacheDir, '1MiB.bin'), join(lab.env.upload.vsftpd, '1MiB.bin'));
  const proxies = new Map<string, { port: number; low: number; high: number }>();
  let i = 0;
  for (const plane of PLANES) {
    for (const server of ['pureftpd', 'vsftpd'] as ServerName[]) {
      const port = 8031 + i;
      const low = 51000 + i * 1000;
      const high = low + 999;
      await startProxy(lab, [
        '-R', lab.env.server4, '-P', String(lab.env.ports[server]),
        '-b', lab.env.gwLan4, '-p', String(port),
        '--backend', plane, '--nft-table', `ftp_proxy_pair${i}`,
        '--data-ports', `${low}-${high}`,
        '--login-timeout', String(LOGIN_TIMEOUT),
      ]);
      proxies.set(`${server}/${plane}`, { port, low, high });
      i++;
    }
  }
  /** Every PASV got the proxy's own 227: its address, a port of its data range. */
  const rewritten = (t: Test, pasv: (string | null)[], range: { low: number; high: number }): void => {
    for (const reply of pasv) {
      const m = /^227 Entering Passive Mode \((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)\.$/.exec(reply ?? '');
      const address = m ? m.slice(1, 5).join('.') : null;
      const port = m ? Number(m[5]) * 256 + Number(m[6]) : 0;
      t.ok(
        address === lab.env.gwLan4 && port >= range.low && port <= range.high,
        `PASV answered with the proxy's ${lab.env.gwLan4} and a port in ${range.low}-${range.high}: ${JSON.stringify(reply)}`,
      );
    }
  };
  const serverAddress = lab.env.server4.split('.').join(',');

  for (const plane of PLANES) {
    await t.test(`pure-ftpd, ${plane}: a reset transfer and ABOR leave the session in step`, async (t) => {
      const range = proxies.get(`pureftpd/${plane}`)!;
      const p = await probe(lab, range.port, 'reset-abor');
      t.equal(p.error, undefined, 'the probe ran to its end');
      t.ok(p.replies.some((r) => r.startsWith('226 ')), `ABOR answered: ${JSON.stringify(p.replies)}`);
      t.equal(p.pasv.length, 2, 'two PASV after the ABOR');
      rewritten(t, p.pasv, range);
      t.ok(p.list?.ok && (p.list.bytes ?? 0) > 0, `LIST through the proxy's 227: ${JSON.stringify(p.list)}`);
      t.equal(p.get?.sha256, small, `RETR 1MiB.bin through the proxy's 227: ${JSON.stringify(p.get)}`);
      t.notOk(p.replies.some((r) => r.includes(serverAddress)), `no reply names the server's ${lab.env.server4}`);
    });
    await t.test(`vsftpd, ${plane}: USER, PASS, PASV before the greeting`, async (t) => {
      const range = proxies.get(`vsftpd/${plane}`)!;
      const p = await probe(lab, range.port, 'pipelined-login', lab.env.user, lab.env.pass, String(LOGIN_TIMEOUT + 1));
      t.equal(p.error, undefined, 'the probe ran to its end');
      t.match(p.replies.slice(0, 4).map((r) => r.slice(0, 3)).join(' '), /^220 331 230 227$/, `replies in order: ${JSON.stringify(p.replies.slice(0, 4))}`);
      rewritten(t, p.pasv, range);
      t.equal(p.get?.sha256, small, `RETR 1MiB.bin through the proxy's 227: ${JSON.stringify(p.get)}`);
      t.match(p.noop, /^200 /, `NOOP after the login timeout: the proxy saw the login (${JSON.stringify(p.noop)})`);
      t.notOk(p.replies.some((r) => r.includes(serverAddress)), `no reply names the server's ${lab.env.server4}`);
    });
  }
});
