// What the FTPS end-to-end tests ask of Python's FTP_TLS (test/lib/ftpclient.py --tls) on one
// proxy and mode: RETR, REST, ABOR and LIST on one protected session, then 5 MiB up and down.

import type { Test } from 'tap';
import { join } from 'node:path';
import { sha256File, type FtpMode, type FtpTarget, type Lab } from './lab.js';

export interface FtpsFiles {
  /** sha256 of the lab's 1MiB.bin. */
  readonly small: string;
  /** A local 5 MiB file and its sha256. */
  readonly five: string;
  readonly fiveSum: string;
}

export async function ftpsSession(t: Test, lab: Lab, anonymous: FtpTarget, user: FtpTarget, upload: string, f: FtpsFiles): Promise<void> {
  const r = await lab.pyftp(anonymous, ['--tls', 'session', 'get=1MiB.bin', 'rest=1MiB.bin@500000', 'abor=100MiB.bin', 'list=dir1000', 'get=1MiB.bin']);
  t.ok(r.ok, `session: ${r.error}`);
  t.ok(r.replies.includes('< 234 Proceed with TLS negotiation'), 'AUTH TLS answered by the proxy');
  const [get, rest, abor, list, again] = r.steps ?? [];
  t.equal(get?.sha256, f.small, 'RETR');
  t.equal(rest?.bytes, 1024 * 1024 - 500000, 'REST 500000: the rest of the file');
  t.ok(abor?.noop_ok, `ABOR, then NOOP works: ${JSON.stringify(abor?.abort_replies)}`);
  t.match(abor?.abort_replies?.[0], /^(426|226) /, 'the transfer ended by ABOR');
  t.equal(list?.count, 1000, 'LIST');
  t.equal(again?.sha256, f.small, 'a transfer after ABOR');
  const put = await lab.pyftp(user, ['--tls', 'put', f.five, upload]);
  t.ok(put.ok, `put: ${put.error}`);
  t.equal(await sha256File(join(lab.env.upload.vsftpd, upload)), f.fiveSum, 'upload checksum');
  const got = await lab.pyftp(user, ['--tls', 'get', upload]);
  t.equal(got.sha256, f.fiveSum, 'download checksum');
}

/** The proxy at the gateway's LAN address and `port`: anonymous, or the lab's upload user. */
export function viaProxy(lab: Lab, port: number, mode: FtpMode, login = false): FtpTarget {
  return {
    host: lab.env.gwLan4,
    port,
    mode,
    timeoutMs: 60_000,
    ...(login ? { user: lab.env.user, pass: lab.env.pass } : {}),
  };
}
