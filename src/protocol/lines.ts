// Framing of a control-connection byte stream into lines: the carried partial line, the
// length limit, NUL rejection, and keeping Telnet sequences whole.

import { ProtocolError } from '../errors.js';
import { IAC, hasOption, isCommand } from './telnet.js';

/** Bytes, excluding the terminator. */
export const DEFAULT_MAX_LINE = 1024;

const LF = 0x0a;
const CR = 0x0d;
const NUL = 0x00;

// Where the scanner is inside a Telnet sequence; kept across chunks so a sequence split
// between two reads is still recognised.
const TELNET_NONE = 0;
const TELNET_COMMAND = 1;
const TELNET_OPTION = 2;

/**
 * Splits a byte stream into lines (latin1 strings, so every byte round-trips) at LF, dropping
 * one CR before it. Throws ProtocolError 'LINE_TOO_LONG' or 'NUL_IN_LINE' for the whole
 * connection: lines of the chunk in hand are not returned, and every later push throws again.
 */
export class LineFramer {
  readonly maxLength: number;
  // The partial line as a latin1 string: appending is cheap (V8 ropes) and it is bounded.
  private rest = '';
  private telnet = TELNET_NONE;
  // Whether the last byte held is a CR that may turn out to be the terminator's.
  private crLast = false;
  private failure: ProtocolError | undefined;

  constructor(maxLength: number = DEFAULT_MAX_LINE) {
    if (!Number.isInteger(maxLength) || maxLength < 1) {
      throw new RangeError(`bad maximum line length ${maxLength}`);
    }
    this.maxLength = maxLength;
  }

  /** Bytes held of a line not yet ended. */
  get pending(): number {
    return this.rest.length;
  }

  push(chunk: Buffer): string[] {
    if (this.failure) throw this.failure;
    const lines: string[] = [];
    const max = this.maxLength;
    let start = 0;
    let held = this.rest.length;
    let telnet = this.telnet;
    let crLast = this.crLast;
    for (let i = 0; i < chunk.length; i++) {
      const b = chunk[i]!;
      if (b === NUL) return this.fail('NUL_IN_LINE', `NUL byte in line at offset ${held + i - start}`);
      if (telnet === TELNET_OPTION && b !== LF) {
        // An option byte is opaque, even a CR. Not an LF: every FTP server ends the line
        // there, and a line we read differently from the server could smuggle a command.
        telnet = TELNET_NONE;
        crLast = false;
      } else if (telnet === TELNET_COMMAND && (isCommand(b) || b === IAC)) {
        telnet = hasOption(b) ? TELNET_OPTION : TELNET_NONE;
        crLast = false;
      } else if (b === IAC) {
        telnet = TELNET_COMMAND;
        crLast = false;
      } else if (b === LF) {
        telnet = TELNET_NONE;
        const length = held + i - start - (crLast ? 1 : 0);
        if (length > max) return this.tooLong(length);
        const tail = chunk.toString('latin1', start, i);
        const line = held === 0 ? tail : this.rest + tail;
        lines.push(crLast ? line.slice(0, -1) : line);
        this.rest = '';
        held = 0;
        start = i + 1;
        crLast = false;
        continue;
      } else {
        telnet = TELNET_NONE;
        crLast = b === CR;
      }
      // One byte of slack for a CR that may still be the terminator's; past that the line
      // can no longer fit, so stop scanning a flood at once.
      if (held + i + 1 - start > max + 1) return this.tooLong(held + i + 1 - start);
    }
    const length = held + chunk.length - start;
    if (length - (crLast ? 1 : 0) > max) return this.tooLong(length);
    if (start < chunk.length) this.rest += chunk.toString('latin1', start);
    this.telnet = telnet;
    this.crLast = crLast;
    return lines;
  }

  private tooLong(length: number): never {
    return this.fail('LINE_TOO_LONG', `line longer than ${this.maxLength} bytes (at least ${length})`);
  }

  private fail(code: string, message: string): never {
    this.failure = new ProtocolError(code, message);
    this.rest = '';
    throw this.failure;
  }
}
