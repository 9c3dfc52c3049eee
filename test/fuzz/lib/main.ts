// scripts/fuzz's entry: the CI fuzzer for longer runs, with a rate and a summary.
//
//   main.js [--inputs N] [--seed N] [--session K] [--styles orderly,chaos,lines,unruly] [--strict-views] [--known-bug NAME] [--json]

import { ALL_STYLES, FuzzFailure, runFuzz, type KnownBug, type Stats, type Style } from './harness.js';

interface Args {
  inputs: number;
  seed: number;
  session: number | undefined;
  styles: readonly Style[];
  strictViews: boolean;
  knownBugs: Set<KnownBug>;
  json: boolean;
}

function usage(msg: string): never {
  process.stderr.write(`fuzz: ${msg}\nusage: scripts/fuzz [--inputs N] [--seed N] [--session K] [--styles orderly,chaos,lines,unruly] [--strict-views] [--known-bug NAME] [--json]\n`);
  process.exit(2);
}

function parseArgs(argv: readonly string[]): Args {
  const a: Args = {
    inputs: 10_000_000,
    seed: Math.floor(Math.random() * 2 ** 32),
    session: undefined,
    styles: ALL_STYLES,
    strictViews: false,
    knownBugs: new Set(),
    json: false,
  };
  const int = (v: string | undefined, name: string, max: number): number => {
    if (v === undefined || !/^[0-9]+$/.test(v) || Number(v) > max) usage(`bad ${name} '${v ?? ''}'`);
    return Number(v);
  };
  for (let i = 0; i < argv.length; i++) {
    const f = argv[i]!;
    switch (f) {
      case '--inputs':
        a.inputs = int(argv[++i], f, Number.MAX_SAFE_INTEGER);
        break;
      case '--seed':
        a.seed = int(argv[++i], f, 2 ** 32 - 1);
        break;
      case '--session':
        a.session = int(argv[++i], f, Number.MAX_SAFE_INTEGER);
        break;
      case '--styles': {
        const styles = (argv[++i] ?? '').split(',');
        if (!styles.every((s): s is Style => s === 'orderly' || s === 'chaos' || s === 'lines' || s === 'unruly')) usage(`bad --styles '${argv[i] ?? ''}'`);
        a.styles = styles;
        break;
      }
      case '--strict-views':
        a.strictViews = true;
        break;
      case '--known-bug': {
        const bug = argv[++i];
        if (bug !== 'telnet-option-lf') usage(`unknown bug '${bug ?? ''}'`);
        a.knownBugs.add(bug);
        break;
      }
      case '--json':
        a.json = true;
        break;
      default:
        usage(`unknown argument '${f}'`);
    }
  }
  return a;
}

const rate = (n: number, ms: number): string => `${Math.round((n / Math.max(ms, 1)) * 1000).toLocaleString('en-US')}/s`;

function summary(s: Stats, ms: number): string {
  const top = (r: Record<string, number>): string =>
    Object.entries(r)
      .sort((x, y) => y[1] - x[1])
      .map(([k, v]) => `    ${String(v).padStart(10)}  ${k}`)
      .join('\n');
  return [
    `inputs ${s.inputs.toLocaleString('en-US')} in ${(ms / 1000).toFixed(1)} s (${rate(s.inputs, ms)}), ${s.sessions.toLocaleString('en-US')} sessions`,
    `  client: ${s.clientChunks} chunks, ${s.clientBytes} bytes, ${s.clientLines} lines; server: ${s.serverChunks} chunks, ${s.serverBytes} bytes, ${s.replies} replies`,
    `  data plane: ${s.opens.passive} passive and ${s.opens.active} active opens, ${s.opened} opened, ${s.openFailed} failed, ${s.lateResults} late, ${s.staleResults} stale, ${s.releases} releases`,
    `  proxy-made: ${s.portCommands} PORT/EPRT, ${s.generated227} 227, ${s.generated229} 229; orderly sessions reply-counted: ${s.orderlyChecked}`,
    `  max outstanding ${s.maxOutstanding}, max held ${s.maxHeld}`,
    ...(Object.keys(s.knownBugs).length > 0 ? [`  known bugs hit (counted, not failed):\n${top(s.knownBugs)}`] : []),
    ...(Object.keys(s.pairing).length > 0 ? [`  reply pairing put to the test:\n${top(s.pairing)}`] : []),
    `  session ends:\n${top(s.ends)}`,
    `  machine log messages:\n${top(s.logs)}`,
  ].join('\n');
}

const args = parseArgs(process.argv.slice(2));
const started = Date.now();
process.stderr.write(
  `fuzz: seed ${args.seed}, ${args.session !== undefined ? `session ${args.session} only` : `${args.inputs.toLocaleString('en-US')} inputs`}, styles ${args.styles.join(',')}${args.strictViews ? ', strict views' : ''}\n`,
);
try {
  const stats = runFuzz({
    seed: args.seed,
    inputs: args.inputs,
    styles: args.styles,
    strictViews: args.strictViews,
    knownBugs: args.knownBugs,
    ...(args.session !== undefined ? { session: args.session } : {}),
    progress: (s) => process.stderr.write(`fuzz: ${s.inputs.toLocaleString('en-US')} inputs, ${rate(s.inputs, Date.now() - started)}\n`),
  });
  const ms = Date.now() - started;
  if (args.json) process.stdout.write(JSON.stringify({ ok: true, seed: args.seed, ms, ...stats }) + '\n');
  else process.stdout.write(`fuzz: PASS seed ${args.seed}\n${summary(stats, ms)}\n`);
} catch (e) {
  if (!(e instanceof FuzzFailure)) throw e;
  process.stdout.write(`fuzz: FAIL ${e.message}\n  transcript (last 60 events):\n${e.transcript.slice(-60).map((l) => `    ${l}`).join('\n')}\n`);
  process.exit(1);
}
