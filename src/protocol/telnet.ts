// Telnet command bytes as they appear on an FTP control connection (RFC 854, RFC 959 4.1.3),
// and the one rule both the line framer and the command classifier need: what a sequence is.

export const IAC = 0xff;

/**
 * Whether IAC followed by `b` is a Telnet command. Commands are 240-254; IAC IAC is an
 * escaped data byte, and IAC before anything else is taken as a stray data byte so that a
 * raw 0xFF from a latin1 client cannot swallow the CR or LF after it.
 */
export function isCommand(b: number): boolean {
  return b >= 0xf0 && b < IAC;
}

/** WILL, WONT, DO and DONT (251-254) carry an option byte; the other commands do not. */
export function hasOption(command: number): boolean {
  return command >= 0xfb && command < IAC;
}

/**
 * Index just past the Telnet command sequence that starts at `i` in a latin1 string, or `i`
 * when none starts there. A sequence cut off by the end of the string ends there.
 */
export function skipTelnetCommand(s: string, i: number): number {
  const command = s.charCodeAt(i + 1);
  if (s.charCodeAt(i) !== IAC || !isCommand(command)) return i;
  return Math.min(i + (hasOption(command) ? 3 : 2), s.length);
}
