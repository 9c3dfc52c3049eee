// The --xferlog file: one wu-ftpd/ProFTPD xferlog(5) line per file transfer, so existing
// analyzers read it; the formatter is pure, the writer appends in order and follows rotation.

import fs from 'node:fs/promises';
import type { AppLogger } from './log.js';
import { isAnonymous } from './protocol/commands.js';
import { recordPath, transferDirection, type TransferRecord } from './transfer.js';

const DAYS = ['Sun', 'Mon', 'Tue', 'Wed', 'Thu', 'Fri', 'Sat'];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/** ctime(3)'s "DDD MMM dd hh:mm:ss YYYY" in local time, the day padded with a space. */
function ctime(d: Date): string {
  const two = (n: number): string => String(n).padStart(2, '0');
  return (
    `${DAYS[d.getDay()]} ${MONTHS[d.getMonth()]} ${String(d.getDate()).padStart(2, ' ')} ` +
    `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())} ${d.getFullYear()}`
  );
}

/**
 * A field made safe as ProFTPD does it: every space and control character becomes '_', so a
 * name can neither split a field nor start a line. (Unicode spaces and C1 controls too.)
 */
export function safeField(s: string): string {
  return s === '' ? '-' : s.replace(/[\s\p{Cc}]/gu, '_');
}

/**
 * The xferlog line (with its newline) of a file transfer, fields separated by one space:
 * current-time transfer-time remote-host file-size filename transfer-type special-action-flag
 * direction access-mode username service-name authentication-method authenticated-user-id
 * completion-status. Current-time is when the transfer ended; transfer-time is whole seconds,
 * at least 1 (as vsftpd writes it); username is the USER name, also for anonymous logins (wu-ftpd
 * put the anonymous password there; a proxy records no password).
 */
export function xferlogLine(r: TransferRecord): string {
  const fields = [
    ctime(new Date(r.startedAt + r.durationMs)),
    String(Math.max(1, Math.round(r.durationMs / 1000))),
    r.client.address,
    // Unknown (nftables) is '-', not a number that would be wrong; analyzers read it as 0.
    r.bytes === null ? '-' : String(r.bytes),
    safeField(recordPath(r)),
    r.type === 'binary' ? 'b' : 'a',
    '_',
    transferDirection(r.command) === 'upload' ? 'i' : 'o',
    r.user !== null && isAnonymous(r.user) ? 'a' : 'r',
    r.user === null ? '*' : safeField(r.user),
    'ftp',
    '0',
    '*',
    r.result === 'ok' ? 'c' : 'i',
  ];
  return fields.join(' ') + '\n';
}

/** Lines waiting for the disk past which new ones are dropped (and counted): memory stays bounded. */
const MAX_QUEUED_BYTES = 4 * 1024 * 1024;
/**
 * How long a line waits for others before a write carries them all: each write costs two trips
 * through libuv's thread pool (the rotation check, the write), whose thread wake-ups cost more
 * CPU than the line (about 0.1 ms a session at 200 sessions/s, one line each).
 */
export const GATHER_MS = 50;

/**
 * Appends lines to the xferlog file in order, never on the event loop's time: lines queue for
 * GATHER_MS and one write at a time carries all that queued. Before each write the path is
 * checked, so after logrotate moves the file a new one is opened (copytruncate works through
 * O_APPEND as well).
 */
export class XferlogWriter {
  private queue: string[] = [];
  private queued = 0;
  private flushing: Promise<void> | null = null;
  /** The wait of the first queued line for the others (GATHER_MS). */
  private gathering: NodeJS.Timeout | null = null;
  private dropped = 0;
  private failing = false;
  private closed = false;
  /** Open the path again before the next write, whatever its inode (reopen()). */
  private reopening = false;

  private constructor(
    readonly file: string,
    private fh: fs.FileHandle,
    private ino: number,
    private readonly logger: AppLogger,
  ) {}

  /** Opens (creates, mode 0640) `file` for appending; rejects with the errno error when it cannot. */
  static async open(file: string, logger: AppLogger): Promise<XferlogWriter> {
    const fh = await fs.open(file, 'a', 0o640);
    const { ino } = await fh.stat();
    return new XferlogWriter(file, fh, ino, logger);
  }

  /** Queues the line of one file transfer. */
  write(r: TransferRecord): void {
    if (this.closed) return;
    const line = xferlogLine(r);
    if (this.queued + line.length > MAX_QUEUED_BYTES) {
      if (this.dropped++ === 0) this.logger.error({ xferlog: this.file }, 'xferlog is not keeping up: dropping lines');
      return;
    }
    this.queue.push(line);
    this.queued += line.length;
    // A write under way takes this line along when it ends.
    if (!this.flushing) this.gathering ??= setTimeout(() => void this.flushNow(), GATHER_MS);
  }

  /** Writes what is queued now, without waiting for more. */
  private flushNow(): Promise<void> {
    if (this.gathering) clearTimeout(this.gathering);
    this.gathering = null;
    return (this.flushing ??= this.flush());
  }

  /**
   * Opens the path again (logrotate's SIGHUP), after the lines already queued: in the same
   * chain as the writes, so a write and a reopen never swap the file handle at once.
   */
  reopen(): Promise<void> {
    if (this.closed) return Promise.resolve();
    this.reopening = true;
    return this.flushNow();
  }

  private async flush(): Promise<void> {
    while (this.queue.length > 0 || this.reopening) {
      const batch = this.queue.join('');
      this.queue = [];
      this.queued = 0;
      try {
        await this.followRotation();
        if (batch !== '') await this.fh.write(batch);
        if (this.failing || this.dropped > 0) {
          this.logger.notice({ xferlog: this.file, dropped: this.dropped }, 'xferlog writing again');
          this.failing = false;
          this.dropped = 0;
        }
      } catch (e) {
        // Logged once per failing stretch (a full disk must not flood the journal too).
        if (!this.failing) this.logger.error({ xferlog: this.file, err: (e as Error).message }, 'xferlog write failed');
        this.failing = true;
      }
    }
    this.flushing = null;
  }

  /** A file moved or removed from under us is replaced by a new one at the path. */
  private async followRotation(): Promise<void> {
    const now = await fs.stat(this.file).catch(() => null);
    if (now && now.ino === this.ino && !this.reopening) return;
    this.reopening = false;
    const fh = await fs.open(this.file, 'a', 0o640);
    const old = this.fh;
    this.fh = fh;
    this.ino = (await fh.stat()).ino;
    await old.close();
  }

  /** Writes what is queued, then closes the file. */
  async close(): Promise<void> {
    this.closed = true;
    await this.flushNow();
    await this.fh.close();
  }
}

/**
 * The --xferlog file of the moment, or none: sessions write through it, so a reload can open
 * another file (or stop writing one) under sessions that are running.
 */
export class XferlogTarget {
  private constructor(
    private writer: XferlogWriter | null,
    private readonly logger: AppLogger,
  ) {}

  /** Rejects with the errno error when `file` cannot be opened. */
  static async open(file: string | undefined, logger: AppLogger): Promise<XferlogTarget> {
    return new XferlogTarget(file !== undefined ? await XferlogWriter.open(file, logger) : null, logger);
  }

  get file(): string | undefined {
    return this.writer?.file;
  }

  write(r: TransferRecord): void {
    this.writer?.write(r);
  }

  /** Opens the same path again (logrotate). */
  async reopen(): Promise<void> {
    await this.writer?.reopen();
  }

  /** Writes to `file` from now on (none: no xferlog); rejects, changing nothing, when it cannot be opened. */
  async switchTo(file: string | undefined): Promise<void> {
    const next = file !== undefined ? await XferlogWriter.open(file, this.logger) : null;
    const old = this.writer;
    this.writer = next;
    await old?.close();
  }

  async close(): Promise<void> {
    await this.switchTo(undefined);
  }
}
