// The shipped systemd unit (systemd/ftp-proxy.service) as the tests read it: its [Service]
// settings, and its command lines with the installed program and config file swapped for the built ones.

import { fileURLToPath } from 'node:url';
import { CLI } from './proxy.js';

export const UNIT_FILE = fileURLToPath(new URL('../../systemd/ftp-proxy.service', import.meta.url));
/** The unit's program: a bare name, found by systemd where `npm install -g` put it. */
export const UNIT_PROGRAM = 'ftp-proxy';
export const UNIT_CONFIG = '/etc/ftp-proxy/ftp-proxy.conf';

/** The [Service] section: each key's values in order (a key may repeat). */
export function serviceSettings(text: string): Map<string, string[]> {
  const settings = new Map<string, string[]>();
  let section = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    if (line.endsWith('\\')) throw new Error(`continued lines are not read here: ${line}`);
    const header = /^\[(.+)\]$/.exec(line);
    if (header) {
      section = header[1]!;
      continue;
    }
    const eq = line.indexOf('=');
    if (section !== 'Service' || eq < 0) continue;
    const key = line.slice(0, eq).trim();
    settings.set(key, [...(settings.get(key) ?? []), line.slice(eq + 1).trim()]);
  }
  return settings;
}

/** The one value of `key`; throws if it is missing or repeated. */
export function setting(settings: Map<string, string[]>, key: string): string {
  const v = settings.get(key);
  if (v?.length !== 1) throw new Error(`the unit has ${v?.length ?? 0} ${key}= lines, expected 1`);
  return v[0]!;
}

/**
 * A command line of the unit as argv: the program swapped for `node dist/bin.js`, the config
 * file for `config`, nothing else touched. Throws if the line does not have that shape (the
 * unit's program or config path changed, or systemd's quoting or prefixes came into use).
 */
export function unitCommand(line: string, config: string): string[] {
  if (/["'\\$%]/.test(line)) throw new Error(`quoting or specifiers are not read here: ${line}`);
  const [program, ...args] = line.split(/\s+/);
  if (program !== UNIT_PROGRAM) throw new Error(`the unit runs ${program}, not ${UNIT_PROGRAM}`);
  const at = args.indexOf(UNIT_CONFIG);
  if (at < 0 || args[at - 1] !== '--config') throw new Error(`no --config ${UNIT_CONFIG} in: ${line}`);
  args[at] = config;
  return [process.execPath, CLI, ...args];
}

/** A capability list of the unit (CAP_NET_ADMIN CAP_NET_BIND_SERVICE) in setpriv's names. */
export function capNames(value: string): string[] {
  return value.split(/\s+/).map((c) => c.replace(/^CAP_/, '').toLowerCase());
}
