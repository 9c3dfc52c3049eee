// Two gateways (scripts/ha-lab: keepalived, conntrackd FTFW, ftp-proxy on the nftables plane on
// both): running PASV and PORT downloads survive a failover and a failback; new sessions work.
import t, { type Test } from 'tap';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { isRoot } from './lib/lab.js';

const HA_LAB = fileURLToPath(new URL('../scripts/ha-lab', import.meta.url));
const CLIENTS = ['curl_pasv', 'curl_port', 'lftp_pasv'] as const;

/** Run `scripts/ha-lab failover ARGS` (a lab of its own, torn down by the script) and parse its KEY=VALUE lines. */
async function failover(t: Test, args: readonly string[]): Promise<Map<string, string>> {
  const child = spawn('bash', [HA_LAB, 'failover', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  // The script's EXIT trap takes the lab down when it is told to stop.
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
  });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
  t.equal(code, 0, 'ha-lab failover ran to its end', { stderr: err.slice(-3000) });
  const results = new Map<string, string>();
  for (const line of out.split('\n')) {
    const i = line.indexOf('=');
    if (i > 0) results.set(line.slice(0, i), line.slice(i + 1));
  }
  t.comment(out.trim());
  return results;
}

function seconds(r: Map<string, string>, key: string): number {
  const v = Number(r.get(key));
  return Number.isFinite(v) ? v : Infinity;
}

t.test('two gateways', { skip: isRoot ? false : 'needs root (network namespaces, nftables)' }, async (t) => {
  await t.test('100 MiB downloads survive a failover (cables cut) and a failback', async (t) => {
    // 4 MiB/s each: a download lasts about 25 s, the failover comes 8 s in.
    const r = await failover(t, ['--file', '100MiB.bin', '--rate', '4194304', '--after', '8', '--client-wait', '20']);
    const size = r.get('file_bytes');
    t.equal(size, String(100 * 1024 * 1024), 'the 100 MiB file');
    for (const [event, gw] of [
      ['failover', 'b'],
      ['failback', 'a'],
    ] as const) {
      t.equal(r.get(`${event}_master`), gw, `${event}: gateway ${gw} holds both virtual addresses`);
      t.equal(r.get(`${event}_new_sessions_ok`), '20/20', `${event}: 20 new sessions succeed`);
      t.ok(seconds(r, `${event}_new_sessions_done_s`) <= 3, `${event}: all of them within 3 s`, {
        first: r.get(`${event}_first_session_s`),
        last: r.get(`${event}_new_sessions_done_s`),
      });
      t.ok(Number(r.get(`${event}_sessions_on_${gw}`)) >= 20, `${event}: they went through gateway ${gw}'s proxy`);
    }
    // p1 ran through A and finished through B; p2 ran through B and finished through A.
    for (const phase of ['p1', 'p2']) {
      for (const c of CLIENTS) {
        t.equal(r.get(`${phase}_${c}_sha256_ok`), 'yes', `${phase} ${c}: right sha256`);
        t.equal(r.get(`${phase}_${c}_bytes`), size, `${phase} ${c}: every byte`);
      }
      // lftp notices a control connection that no longer answers and ends well.
      t.equal(r.get(`${phase}_lftp_pasv_exit`), '0', `${phase} lftp: exit status 0`);
    }
  });

  await t.test('control case: without conntrackd the data connections die; lftp resumes with REST', async (t) => {
    const r = await failover(t, ['--file', '1MiB.bin', '--rate', '131072', '--after', '3', '--no-sync', '--client-wait', '25']);
    t.equal(r.get('failover_new_sessions_ok'), '20/20', 'new sessions do not need the synchronised state');
    for (const c of ['curl_pasv', 'curl_port']) {
      t.not(r.get(`p1_${c}_sha256_ok`), 'yes', `${c}: its data connection stalls with the old gateway`);
    }
    t.match(r.get('p1_lftp_rest') ?? '', /^[1-9][0-9]*/, 'lftp sent REST with the offset it had');
    t.equal(r.get('p1_lftp_pasv_sha256_ok'), 'yes', "lftp's resumed file has the right sha256");
    t.equal(r.get('p1_lftp_pasv_exit'), '0', 'lftp: exit status 0');
  });
});
