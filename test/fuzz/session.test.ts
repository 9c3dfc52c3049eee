// The session fuzzer in CI: over a million seeded random inputs (client bytes, server bytes,
// data-plane results) through LineFramer, ReplyAssembler and SessionMachine, with every safety
// property checked after every input (test/fuzz/lib/harness.ts says which), among them that no
// 227/229 reaches the client unless the proxy wrote it for the client's own PASV/EPSV. A failure
// prints the seed and the session to replay with scripts/fuzz. FTP_PROXY_FUZZ_SEED fixes the seed.
import t from 'tap';
import { FuzzFailure, mergeStats, newStats, runFuzz, type KnownBug, type Stats, type Style } from './lib/harness.js';

const MIN_INPUTS = 1_000_000;
const envSeed = process.env.FTP_PROXY_FUZZ_SEED;
const seed = envSeed !== undefined && /^[0-9]+$/.test(envSeed) ? Number(envSeed) % 2 ** 32 : Math.floor(Math.random() * 2 ** 32);
// Counted, not failed, until src fixes it: see test/fuzz/regressions.test.ts.
const knownBugs = new Set<KnownBug>();

const parts: { styles: Style[]; inputs: number; what: string }[] = [
  { styles: ['orderly'], inputs: 300_000, what: 'a well-behaved client and server: every client line gets exactly one final reply' },
  { styles: ['chaos'], inputs: 450_000, what: 'hostile bytes on both sides, data-plane failures, late and stale results, resets' },
  { styles: ['lines'], inputs: 300_000, what: 'structured junk lines straight into the machine' },
  {
    styles: ['unruly'],
    inputs: 300_000,
    what: 'a well-behaved client, a server out of step (skipped, extra and unsolicited replies, multi-line 227/229)',
  },
];

/** What unruly servers must have done for the pairing to have been put to the test. */
const UNRULY = [
  'skipped a reply',
  'answered twice',
  'ended a transfer with a 150 alone',
  'answered ABOR with 426 and 226',
  'multi-line 227',
  'multi-line 229',
  'a passive reply after a 2xx',
  'an unsolicited passive reply',
];

t.comment(`fuzz seed ${seed} (FTP_PROXY_FUZZ_SEED=${seed} to repeat)`);
const total = newStats();

for (const [i, part] of parts.entries()) {
  t.test(`${part.styles.join(',')}: ${part.what}`, async (t) => {
    const partSeed = (seed + i) % 2 ** 32;
    let stats: Stats;
    try {
      stats = runFuzz({ seed: partSeed, inputs: part.inputs, styles: part.styles, knownBugs });
    } catch (e) {
      if (!(e instanceof FuzzFailure)) throw e;
      t.fail(`${e.message}\n  transcript (last 40 events):\n${e.transcript.slice(-40).map((l) => `    ${l}`).join('\n')}`);
      return;
    }
    mergeStats(total, stats);
    t.ok(stats.inputs >= part.inputs, `${stats.inputs} inputs in ${stats.sessions} sessions (seed ${partSeed})`);
    if (Object.keys(stats.knownBugs).length > 0) t.comment(`known bugs hit: ${JSON.stringify(stats.knownBugs)}`);
    // The inputs must keep reaching the interesting states, or the properties hold vacuously.
    t.ok(stats.opens.passive > 0 && stats.opens.active > 0 && stats.opened > 0 && stats.openFailed > 0, 'passive and active opens, some failed');
    t.ok(stats.releases > 0 && stats.generated229 > 0 && stats.portCommands > 0, 'paths released, 229 and PORT/EPRT written by the proxy');
    if (part.styles.includes('orderly')) {
      t.ok(stats.orderlyChecked > stats.sessions / 2, `${stats.orderlyChecked} of ${stats.sessions} sessions had their replies counted`);
    } else if (part.styles.includes('unruly')) {
      for (const kind of UNRULY) t.ok(stats.pairing[kind]! > 0, `unruly servers: ${kind} (${stats.pairing[kind] ?? 0} times)`);
      t.ok(stats.pairing['client line before the greeting']! > 0, 'client lines before the greeting');
      t.ok(stats.generated227 > 0, '227 written by the proxy');
    } else {
      t.ok(stats.lateResults > 0 && stats.staleResults > 0, 'data-plane results after the end, and for tokens nobody waits for');
      t.ok(stats.logs['bounce attempt refused']! > 0 && stats.logs['privileged data port refused']! > 0, 'bounces and privileged ports tried');
      t.ok(stats.logs['bad passive reply from server']! > 0, 'broken 227/229 replies');
      t.ok(stats.ends['machine: too many pipelined lines']! > 0, 'the held-line bound reached');
    }
    if (part.styles.includes('chaos')) {
      for (const end of ['client NUL_IN_LINE', 'client LINE_TOO_LONG', 'server BAD_REPLY', 'server LINE_TOO_LONG']) {
        t.ok(stats.ends[end]! > 0, `sessions ended by ${end}`);
      }
    }
  });
}

t.test(`at least ${MIN_INPUTS} inputs in all`, async (t) => {
  t.ok(total.inputs >= MIN_INPUTS, `${total.inputs} inputs, ${total.sessions} sessions, ${total.clientBytes + total.serverBytes} bytes`);
});
