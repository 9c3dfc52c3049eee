// Server replies: grouping lines into (multi-line) replies, and reading the data address
// out of 227 and 229 replies.

import { ProtocolError } from '../errors.js';
import type { Endpoint } from '../dataplane/types.js';
import { parseDecimalPort, parsePort } from './commands.js';

/** lines[0] starts with the code; no line carries its CR LF. */
export interface Reply {
  readonly code: number;
  readonly lines: readonly string[];
  /**
   * More lines of this same reply follow: a long reply is handed on in pieces as it comes,
   * so that what a server sends is never held whole. Only the first piece's lines[0] is the
   * reply's first line.
   */
  readonly partial?: boolean;
  /** A 227/229 reply longer than the bound: the lines past it were dropped. */
  readonly truncated?: boolean;
}

/** Bytes of a multi-line reply held before they are handed on (or, for 227/229, dropped). */
export const DEFAULT_MAX_REPLY_BYTES = 16384;

const FIRST_LINE = /^[1-5][0-9][0-9](?:[ -]|$)/;

/**
 * Groups server lines into replies. Throws ProtocolError 'BAD_REPLY' for a first line that
 * is not 3 digits (100-599) then ' ', '-' or nothing; after a throw every later push throws
 * again. Holds at most about maxBytes of a reply: past that, a reply is handed on in pieces
 * (`partial`), except a 227/229, which the proxy must read whole and which is cut short
 * (`truncated`) instead.
 */
export class ReplyAssembler {
  readonly maxBytes: number;
  private code = '';
  private lines: string[] = [];
  private bytes = 0;
  /** The reply has been handed on in part (more pieces follow) or cut short. */
  private piecewise = false;
  private truncated = false;
  private failure: ProtocolError | undefined;

  constructor(maxBytes: number = DEFAULT_MAX_REPLY_BYTES) {
    if (!Number.isInteger(maxBytes) || maxBytes < 1) {
      throw new RangeError(`bad maximum reply size ${maxBytes}`);
    }
    this.maxBytes = maxBytes;
  }

  push(line: string): Reply | null {
    if (this.failure) throw this.failure;
    if (this.code === '') {
      if (!FIRST_LINE.test(line)) {
        return this.fail('BAD_REPLY', `not an FTP reply: ${JSON.stringify(line.slice(0, 80))}`);
      }
      const code = line.slice(0, 3);
      if (line.charAt(3) !== '-') return { code: Number(code), lines: [line] };
      this.code = code;
      this.lines = [line];
      this.bytes = line.length;
      return null;
    }
    // RFC 959 4.2: only the code followed by a space (or alone) closes the reply; text lines
    // inside may begin with anything, including the same code and a hyphen.
    const last = line.startsWith(this.code) && (line.length === 3 || line.charAt(3) === ' ');
    if (this.truncated) {
      if (!last) return null;
      return this.end({ code: Number(this.code), lines: this.lines, truncated: true });
    }
    this.lines.push(line);
    this.bytes += line.length;
    if (last) return this.end({ code: Number(this.code), lines: this.lines, ...(this.piecewise ? { partial: false } : {}) });
    if (this.bytes <= this.maxBytes) return null;
    if (this.code === '227' || this.code === '229') {
      this.truncated = true;
      this.lines.pop();
      return null;
    }
    const piece: Reply = { code: Number(this.code), lines: this.lines, partial: true };
    this.piecewise = true;
    this.lines = [];
    this.bytes = 0;
    return piece;
  }

  /**
   * What a reply already handed on in pieces has gathered since its last piece, as one more
   * piece (null when there is none, or the reply is still whole): called once the lines that
   * have arrived are all pushed, so that a server pausing inside a long reply does not hold
   * its last lines back until it goes on. A reply not yet in pieces stays whole.
   */
  pending(): Reply | null {
    if (!this.piecewise || this.lines.length === 0) return null;
    const piece: Reply = { code: Number(this.code), lines: this.lines, partial: true };
    this.lines = [];
    this.bytes = 0;
    return piece;
  }

  private end(reply: Reply): Reply {
    this.code = '';
    this.lines = [];
    this.bytes = 0;
    this.piecewise = false;
    this.truncated = false;
    return reply;
  }

  private fail(code: string, message: string): never {
    this.failure = new ProtocolError(code, message);
    this.lines = [];
    throw this.failure;
  }
}

function replyCode(line: string, expected: string, errorCode: string): void {
  if (!line.startsWith(expected) || /^[0-9]/.test(line.charAt(3))) {
    throw new ProtocolError(errorCode, `not a ${expected} reply: ${JSON.stringify(line.slice(0, 80))}`);
  }
}

/** The endpoint of a 227 reply line; ProtocolError 'BAD_227' if there is none. */
export function parse227(line: string): Endpoint {
  replyCode(line, '227', 'BAD_227');
  // RFC 1123 4.1.2.6: the numbers may be anywhere after the code, with or without
  // parentheses; they are PORT's argument syntax, so they go through the same parser.
  const first = line.slice(3).search(/[0-9]/);
  if (first === -1) throw new ProtocolError('BAD_227', `no address in 227 reply: ${JSON.stringify(line.slice(0, 80))}`);
  const numbers = /^[0-9,]*/.exec(line.slice(3 + first))![0];
  try {
    return parsePort(numbers);
  } catch (err) {
    throw new ProtocolError('BAD_227', `bad address in 227 reply: ${JSON.stringify(line.slice(0, 80))}`, { cause: err });
  }
}

/** The port of a 229 reply line, '(<d><d><d>port<d>)' with d in ASCII 33-126; ProtocolError 'BAD_229'. */
export function parse229(line: string): number {
  replyCode(line, '229', 'BAD_229');
  // Any '(' may open the RFC 2428 form; the first one that has its shape is taken. The
  // delimiter may be a digit, so the closing one can sit at the end of the digit run.
  for (let open = line.indexOf('(', 3); open !== -1; open = line.indexOf('(', open + 1)) {
    const d = line.charCodeAt(open + 1);
    if (!(d >= 33 && d <= 126) || line.charCodeAt(open + 2) !== d || line.charCodeAt(open + 3) !== d) continue;
    const from = open + 4;
    let end = from;
    while (isDigit(line.charCodeAt(end))) end++;
    let to: number;
    if (line.charCodeAt(end) === d && line.charCodeAt(end + 1) === 0x29) to = end;
    else if (isDigit(d) && line.charCodeAt(end) === 0x29 && line.charCodeAt(end - 1) === d) to = end - 1;
    else continue;
    const port = parseDecimalPort(line.slice(from, to));
    if (port === undefined) break;
    return port;
  }
  throw new ProtocolError('BAD_229', `no port in 229 reply: ${JSON.stringify(line.slice(0, 80))}`);
}

function isDigit(c: number): boolean {
  return c >= 0x30 && c <= 0x39;
}
