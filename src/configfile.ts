// The --config file: one long option per line, read through commander's own option definitions
// (cli.ts), merged under the command-line flags and validated by buildConfig, errors naming file:line.

import { readFileSync } from 'node:fs';
import type { Option } from 'commander';
import { ACTIONS, buildCommand, type RawOptions } from './cli.js';
import { buildConfig, type Config } from './config.js';
import { ConfigError } from './errors.js';

type Key = keyof RawOptions;

export interface ConfigFile {
  readonly file: string;
  readonly options: Partial<RawOptions>;
  /** The line of each option the file sets; for a repeatable option, the line of each of its values. */
  readonly lines: ReadonlyMap<Key, readonly number[]>;
}

/** The command-line half of a configuration: the parsed flags and which of them were given. */
export interface ConfigSource {
  readonly cli: RawOptions;
  readonly given: ReadonlySet<Key>;
}

/** A validated configuration and the raw options it was built from (for reloads and --check-config). */
export interface Loaded {
  readonly raw: RawOptions;
  readonly config: Config;
}

/** Every option commander knows, --help and --version included (so the file can be told they are actions). */
function allOptions(): readonly Option[] {
  const cmd = buildCommand();
  return cmd.createHelp().visibleOptions(cmd);
}

/** A repeatable option (--allow-client ...) collects into a list. */
function repeatable(opt: Option): boolean {
  return Array.isArray(opt.defaultValue);
}

/** The long name without dashes, as the file writes it. */
function fileName(opt: Option): string {
  return opt.long!.slice(2);
}

/** The option's name in the config file and in reload log lines (maxSessions -> max-sessions). */
export function optionName(key: Key): string {
  const opt = allOptions().find((o) => o.attributeName() === key);
  return opt ? fileName(opt) : key;
}

/** Why `name` is not an option's name in a file: written with dashes, a short name, or unknown. */
function notAnOption(opts: readonly Option[], name: string): string {
  const dashed = opts.find((o) => o.long === name);
  if (dashed) return `write the name without the leading dashes: ${fileName(dashed)}`;
  const short = opts.find((o) => o.short !== undefined && (o.short === name || o.short === `-${name}`));
  if (short) return `a short name: write ${fileName(short)}`;
  return 'unknown option';
}

/**
 * Parses the text of a config file: `name value`, or a boolean option's bare `name`, per line;
 * blank lines and lines starting with # are skipped. Any line that is not an option of the
 * command line with the right number of values makes the whole file invalid (a ConfigError
 * naming file, line and option). Values are checked later, by buildConfig.
 */
export function parseConfigFile(file: string, text: string): ConfigFile {
  const opts = allOptions();
  const options: Record<string, unknown> = {};
  const lines = new Map<Key, number[]>();
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const [, name, value] = /^(\S+)(?:\s+(.*))?$/.exec(line)!;
    const bad = (message: string): never => {
      throw new ConfigError('BAD_CONFIG_FILE', `${file}:${i + 1}: ${name}: ${message}`);
    };
    const opt = opts.find((o) => o.long === `--${name}`) ?? bad(notAnOption(opts, name!));
    const key = opt.attributeName() as Key;
    if (ACTIONS.has(key)) bad('not allowed in a config file (an action: give it on the command line)');
    if (!opt.required && value !== undefined) bad(`takes no value (a bare '${name}' turns it on)`);
    if (opt.required && value === undefined) bad('needs a value');
    const seen = lines.get(key);
    if (seen && !repeatable(opt)) bad(`given again (first on line ${seen[0]})`);
    const before = key in options ? options[key] : opt.defaultValue;
    const parsed: unknown = !opt.required ? !opt.negate : opt.parseArg ? opt.parseArg(value!, before) : value;
    options[key] = parsed;
    // A repeatable line may carry several comma-separated values: each is this line's.
    const added = repeatable(opt) ? (parsed as unknown[]).length - (before as unknown[]).length : 1;
    lines.set(key, [...(seen ?? []), ...Array<number>(added).fill(i + 1)]);
  });
  return { file, options: options as Partial<RawOptions>, lines };
}

function readConfigFile(file: string): ConfigFile {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new ConfigError('BAD_FLAG', `--config: cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
  return parseConfigFile(file, text);
}

/**
 * The file's options under the command line's: an option given on the command line wins, a
 * repeatable one replacing all of the file's values. Validated by buildConfig; an error in a
 * value that came from the file names the file, line and option instead of the flag.
 */
export function mergeConfig(src: ConfigSource, file?: ConfigFile): Loaded {
  const raw: Record<string, unknown> = { ...src.cli };
  const fromFile = new Set<Key>();
  for (const [key, value] of Object.entries(file?.options ?? {}) as [Key, unknown][]) {
    if (src.given.has(key)) continue;
    raw[key] = value;
    fromFile.add(key);
  }
  try {
    return { raw: raw as unknown as RawOptions, config: buildConfig(raw as unknown as RawOptions) };
  } catch (e) {
    if (!(e instanceof ConfigError) || !file || e.flag === undefined) throw e;
    // The flag label ends with the long name (-m/--max-sessions).
    const long = /--([a-z0-9-]+)$/.exec(e.flag)?.[1];
    const opt = allOptions().find((o) => o.long === `--${long}`);
    const key = opt?.attributeName() as Key | undefined;
    if (!opt || key === undefined || !fromFile.has(key)) throw e;
    const line = file.lines.get(key)![e.item ?? 0];
    throw new ConfigError('BAD_CONFIG_FILE', `${file.file}:${line}: ${fileName(opt)}: ${e.detail}`, { cause: e });
  }
}

/** Reads --config's file (when given) and merges it under the flags: what the start and every SIGHUP use. */
export function loadConfig(src: ConfigSource): Loaded {
  return mergeConfig(src, src.cli.config !== undefined ? readConfigFile(src.cli.config) : undefined);
}

/**
 * The effective configuration as a config file (--check-config): every setting with its value,
 * defaults included, in --help's order; a file that --config reads back to the same settings.
 */
export function formatConfig(raw: RawOptions): string {
  const out = ['# ftp-proxy: effective configuration (command line, --config file and defaults)'];
  for (const opt of buildCommand().options) {
    const key = opt.attributeName() as Key;
    const value: unknown = raw[key];
    if (ACTIONS.has(key) || value === undefined || value === false) continue;
    const name = fileName(opt);
    if (value === true) out.push(name);
    else if (Array.isArray(value)) out.push(...value.map((v: string) => v.trim()).filter((v) => v !== '').map((v) => `${name} ${v}`));
    else out.push(`${name} ${String(value).trim()}`);
  }
  return out.join('\n') + '\n';
}
