#!/usr/bin/env node
// The program (the package's `ftp-proxy` bin): argv to the proxy (main.ts) or to a subcommand
// that talks to a running proxy (control/client.ts), and the exit status.

import { parseArgs } from './cli.js';
import { buildClientConfig } from './config.js';
import { formatConfig, loadConfig } from './configfile.js';
import { ConfigError } from './errors.js';

const io = { out: (s: string) => void process.stdout.write(s), err: (s: string) => void process.stderr.write(s) };

/** A config error is one line and exit 2, whichever command it is for. */
function validated<T>(build: () => T): T | null {
  try {
    return build();
  } catch (e) {
    if (!(e instanceof ConfigError)) throw e;
    io.err(`ftp-proxy: ${e.message}\n`);
    return null;
  }
}

async function run(argv: readonly string[]): Promise<number> {
  const parsed = parseArgs(argv, io);
  if (parsed.kind === 'exit') return parsed.code;
  if (parsed.kind === 'run') {
    const source = { cli: parsed.options, given: parsed.given };
    const loaded = validated(() => loadConfig(source));
    if (!loaded) return 2;
    if (parsed.options.checkConfig) {
      io.out(formatConfig(loaded.raw));
      return 0;
    }
    // Loaded only here: the subcommands need none of the proxy's modules.
    const { main } = await import('./main.js');
    return main(loaded, () => loadConfig(source));
  }
  const client = validated(() => buildClientConfig(parsed.options));
  if (!client) return 2;
  const { sessionsCommand, killCommand } = await import('./control/client.js');
  return parsed.kind === 'sessions'
    ? sessionsCommand(client.controlSocket, client.json, io)
    : killCommand(client.controlSocket, parsed.id, io);
}

process.exitCode = await run(process.argv.slice(2));
