// The pino logger factory: syslog-style -D levels mapped onto pino levels, JSON lines on
// stdout for journald, or short text lines on stderr with -d. Sessions log through child loggers.

import { pino, type Logger, type DestinationStream } from 'pino';

export type { Logger };

/** pino has no 'notice'; syslog's LOG_NOTICE is the default level, so we add it. */
const CUSTOM_LEVELS = { notice: 35 } as const;

/** -D 0..7 (syslog) to pino level names. */
export function pinoLevel(debugLevel: number): string {
  if (debugLevel <= 2) return 'fatal';
  return (['error', 'warn', 'notice', 'info', 'debug'] as const)[debugLevel - 3]!;
}

const LEVEL_NAMES: Record<number, string> = {
  10: 'trace',
  20: 'debug',
  30: 'info',
  35: 'notice',
  40: 'warn',
  50: 'error',
  60: 'fatal',
};

/** One line per event: `time level [#sid] msg key=value ...`, for a terminal. */
export function formatText(json: string): string {
  let o: Record<string, unknown>;
  try {
    o = JSON.parse(json) as Record<string, unknown>;
  } catch {
    return json;
  }
  const { time, level, msg, sid, pid: _pid, hostname: _host, ...rest } = o;
  const when = typeof time === 'number' ? new Date(time).toISOString() : '';
  const parts = [when, LEVEL_NAMES[level as number] ?? String(level)];
  if (sid !== undefined) parts.push(`#${String(sid)}`);
  parts.push(String(msg ?? ''));
  for (const [k, v] of Object.entries(rest)) {
    parts.push(`${k}=${typeof v === 'string' ? v : JSON.stringify(v)}`);
  }
  return parts.join(' ') + '\n';
}

export type AppLogger = Logger<'notice'>;

export function createLogger(opts: { debugLevel: number; foreground: boolean; destination?: DestinationStream }): AppLogger {
  const destination: DestinationStream =
    opts.destination ??
    (opts.foreground
      ? { write: (line: string) => void process.stderr.write(formatText(line)) }
      : pino.destination({ fd: 1, sync: false }));
  return pino<'notice'>(
    {
      level: pinoLevel(opts.debugLevel),
      customLevels: CUSTOM_LEVELS,
      base: undefined,
      timestamp: pino.stdTimeFunctions.epochTime,
    },
    destination,
  );
}
