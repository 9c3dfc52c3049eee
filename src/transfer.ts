// What a transfer record is: the commands that move data, their direction, the result from the
// final reply, and the working directory a session tracks to name files. Pure: no I/O.

import path from 'node:path';
import type { Endpoint } from './dataplane/types.js';
import type { TransferVerb } from './protocol/commands.js';

/** A transfer command (protocol/commands.ts classifies client lines into these). */
export type TransferCommand = TransferVerb;

export const TRANSFER_RESULTS = ['ok', 'failed', 'aborted'] as const;
export type TransferResult = (typeof TRANSFER_RESULTS)[number];

/** Server to client (download) or client to server (upload). */
export function transferDirection(command: TransferCommand): 'download' | 'upload' {
  return command === 'STOR' || command === 'STOU' || command === 'APPE' ? 'upload' : 'download';
}

/** What one data connection carried each way, as a data plane sees it (its peer connected to it). */
export interface Moved {
  /** From the peer (the client for passive, the server for active) to the target. */
  readonly fromPeer: number;
  readonly toPeer: number;
}

/**
 * The transfer's bytes: the data going the transfer's way. Passive: the peer is the client, so a
 * download is what went to the peer; active: the peer is the server, so a download came from it.
 */
export function transferBytes(mode: 'passive' | 'active', command: TransferCommand, moved: Moved): number {
  const toClient = transferDirection(command) === 'download';
  return (mode === 'passive') === toClient ? moved.toPeer : moved.fromPeer;
}

/** Whether a transfer moves a file (and so has an xferlog line), not a directory listing. */
export function isFileTransfer(command: TransferCommand): boolean {
  return command === 'RETR' || transferDirection(command) === 'upload';
}

/**
 * The result from the final reply: 2xx ok; 426 (connection closed, transfer aborted), or any
 * other refusal after the client sent ABOR, aborted; other 4xx/5xx failed. No final reply at
 * all (the session ended first) is aborted.
 */
export function transferResult(finalCode: number | null, abortSent: boolean): TransferResult {
  if (finalCode === null) return 'aborted';
  if (finalCode >= 200 && finalCode < 300) return 'ok';
  if (finalCode === 426 || abortSent) return 'aborted';
  return 'failed';
}

/** One ended transfer command: the `transfer` log record, and the xferlog line of a file transfer. */
export interface TransferRecord {
  readonly sid: string;
  readonly client: Endpoint;
  readonly server: Endpoint;
  /** The name of the last USER command (never a password). */
  readonly user: string | null;
  readonly command: TransferCommand;
  /** The argument as the client sent it ('' when none). */
  readonly path: string;
  /** The server's working directory when known (see nextDirectory). */
  readonly directory: string | null;
  /** From the last TYPE the server accepted; FTP starts in ASCII. */
  readonly type: 'ascii' | 'binary';
  readonly mode: 'passive' | 'active';
  /**
   * Bytes carried by the transfer's data connection the transfer's way; null when the data plane
   * cannot count them (nftables: the kernel carries them) or they could go around the proxy.
   */
  readonly bytes: number | null;
  /** Epoch milliseconds of the transfer command. */
  readonly startedAt: number;
  readonly durationMs: number;
  /** The final reply's code; null when the session ended first. */
  readonly replyCode: number | null;
  readonly result: TransferResult;
}

/** The file a record names: absolute when the directory is known, else as the client sent it ('' for none). */
export function recordPath(r: Pick<TransferRecord, 'path' | 'directory'>): string {
  if (r.path === '' || r.path.startsWith('/') || r.directory === null) return r.path;
  return path.posix.join(r.directory, r.path);
}

/** The directory in a 257 reply's text: `"/a ""b"" c" is current` gives `/a "b" c` (RFC 959). */
export function parse257(text: string): string | null {
  const m = /"((?:[^"]|"")*)"/.exec(text);
  return m ? m[1]!.replace(/""/g, '"') : null;
}

/**
 * The working directory after a command the server accepted: PWD/XPWD's 257 names it; CWD and
 * CDUP move from a known one (CWD to an absolute path needs none). 257 to MKD names the new
 * directory, not the working one. Anything else leaves it as it was.
 */
export function nextDirectory(current: string | null, verb: string, arg: string, replyText: string): string | null {
  switch (verb.toUpperCase()) {
    case 'PWD':
    case 'XPWD':
      return parse257(replyText) ?? current;
    case 'CWD':
    case 'XCWD':
      if (arg.startsWith('/')) return path.posix.normalize(arg);
      return current === null ? null : path.posix.join(current, arg);
    case 'CDUP':
    case 'XCUP':
      return current === null ? null : path.posix.dirname(current);
    default:
      return current;
  }
}

/** The representation type after TYPE `arg` was accepted: A and E are text, I and L binary. */
export function typeAfter(arg: string): 'ascii' | 'binary' {
  return /^\s*[IL]/i.test(arg) ? 'binary' : 'ascii';
}
