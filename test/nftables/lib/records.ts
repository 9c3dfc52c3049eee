// A pino logger whose records a test can read back.

import { Writable } from 'node:stream';
import { pino } from 'pino';

export interface Record {
  readonly level: number;
  readonly msg: string;
  readonly [k: string]: unknown;
}

export function recording(): { logger: pino.Logger; records: Record[] } {
  const records: Record[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      records.push(JSON.parse(chunk.toString()) as Record);
      cb();
    },
  });
  return { logger: pino({ level: 'debug' }, stream), records };
}
