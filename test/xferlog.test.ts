import t, { type Test } from 'tap';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { GATHER_MS, safeField, xferlogLine, XferlogWriter } from '../src/xferlog.js';
import {
  isFileTransfer,
  nextDirectory,
  parse257,
  recordPath,
  transferDirection,
  transferBytes,
  transferResult,
  typeAfter,
  type TransferRecord,
} from '../src/transfer.js';
import { createLogger } from '../src/log.js';

// xferlog's time is local time: fix the zone so the expected lines are exact.
process.env.TZ = 'UTC';

const BASE: TransferRecord = {
  sid: '7',
  client: { address: '192.0.2.5', port: 40112 },
  server: { address: '198.51.100.2', port: 21 },
  user: 'anonymous',
  command: 'RETR',
  path: 'file 1.bin',
  directory: '/pub',
  type: 'binary',
  mode: 'passive',
  bytes: 1048576,
  startedAt: Date.UTC(2026, 10, 3, 14, 1, 0, 250),
  durationMs: 2400,
  replyCode: 226,
  result: 'ok',
};

t.test('one xferlog line: the fourteen fields of xferlog(5), in order', async (t) => {
  t.equal(xferlogLine(BASE), 'Tue Nov  3 14:01:02 2026 2 192.0.2.5 1048576 /pub/file_1.bin b _ o a anonymous ftp 0 * c\n');
  t.equal(
    xferlogLine({ ...BASE, user: 'alice', command: 'STOR', path: '/in/up.txt', type: 'ascii', bytes: 17, durationMs: 40, result: 'failed', replyCode: 552 }),
    'Tue Nov  3 14:01:00 2026 1 192.0.2.5 17 /in/up.txt a _ i r alice ftp 0 * i\n',
    'upload, real user, ASCII, incomplete; under a second counts as 1',
  );
  t.equal(
    xferlogLine({ ...BASE, command: 'APPE', directory: null, path: 'log.txt', result: 'aborted', replyCode: 426, client: { address: '2001:db8::5', port: 1 }, user: 'FTP' }),
    'Tue Nov  3 14:01:02 2026 2 2001:db8::5 1048576 log.txt b _ i a FTP ftp 0 * i\n',
    'no known directory: the name as sent; FTP is anonymous too',
  );
  t.equal(xferlogLine({ ...BASE, startedAt: Date.UTC(2026, 0, 15, 9, 5, 7), durationMs: 0 }).slice(0, 27), 'Thu Jan 15 09:05:07 2026 1 ', 'a two-digit day');
  t.equal(xferlogLine({ ...BASE, user: null, command: 'STOU', path: '' }).split(/ +/).slice(8, 14).join(' '), '- b _ i r *', 'STOU without a name; no USER');
  process.env.TZ = 'Asia/Kolkata';
  t.match(xferlogLine(BASE), /^Tue Nov  3 19:31:02 2026 /, 'local time');
  process.env.TZ = 'UTC';
});

t.test('names cannot split fields or inject lines', async (t) => {
  const evil = xferlogLine({ ...BASE, path: 'a b\tc\r\nTue Nov  3 14:01:02 2026 1 6.6.6.6 1 /etc/passwd b _ o r root ftp 0 * c\x00\x7f\u0085\u2028z' });
  t.equal(evil.split('\n').length, 2, 'exactly one line');
  t.equal(evil.trimEnd().split(/ +/).length, 18, 'still 14 fields (the date has 5)');
  t.match(evil, / \/pub\/a_b_c__Tue_Nov__3_14:01:02_2026_1_6\.6\.6\.6_1_\/etc\/passwd_b___o_r_root_ftp_0_\*_c____z b _ o /);
  const user = xferlogLine({ ...BASE, user: 'bob smith\n' });
  t.match(user, / r bob_smith_ ftp 0 \* c\n$/, 'the user name too');
  t.equal(safeField(''), '-');
  t.equal(safeField('naïve-名前.txt'), 'naïve-名前.txt', 'other characters are kept');
});

t.test('transfer helpers: direction, result, directory, type', async (t) => {
  t.same(['RETR', 'LIST', 'NLST', 'MLSD', 'STOR', 'STOU', 'APPE'].map((c) => transferDirection(c as never)), [
    'download', 'download', 'download', 'download', 'upload', 'upload', 'upload',
  ]);
  t.same(['RETR', 'STOR', 'STOU', 'APPE', 'LIST', 'NLST', 'MLSD'].map((c) => isFileTransfer(c as never)), [true, true, true, true, false, false, false]);
  const moved = { fromPeer: 7, toPeer: 1000 };
  t.equal(transferBytes('passive', 'RETR', moved), 1000, 'passive download: server to client, the peer');
  t.equal(transferBytes('passive', 'STOR', moved), 7, 'passive upload: from the client');
  t.equal(transferBytes('active', 'LIST', moved), 7, 'active download: from the server, the peer');
  t.equal(transferBytes('active', 'APPE', moved), 1000, 'active upload: to the server');
  t.equal(transferResult(226, false), 'ok');
  t.equal(transferResult(250, false), 'ok');
  t.equal(transferResult(226, true), 'ok', 'ABOR after the transfer had finished');
  t.equal(transferResult(426, false), 'aborted');
  t.equal(transferResult(426, true), 'aborted');
  t.equal(transferResult(451, true), 'aborted', 'a refusal after ABOR');
  t.equal(transferResult(550, false), 'failed');
  t.equal(transferResult(425, false), 'failed');
  t.equal(transferResult(null, false), 'aborted', 'the session ended first');

  t.equal(parse257('"/home/a ""quoted"" dir" is the current directory'), '/home/a "quoted" dir');
  t.equal(parse257('PWD: no quotes'), null);
  t.equal(nextDirectory(null, 'PWD', '', '"/pub" is current'), '/pub');
  t.equal(nextDirectory('/pub', 'CWD', 'sub/dir', ''), '/pub/sub/dir');
  t.equal(nextDirectory('/pub/sub', 'cwd', '../other', ''), '/pub/other');
  t.equal(nextDirectory(null, 'CWD', 'sub', ''), null, 'relative from an unknown directory: unknown');
  t.equal(nextDirectory(null, 'CWD', '/abs//x/', ''), '/abs/x/');
  t.equal(nextDirectory('/pub/sub', 'CDUP', '', ''), '/pub');
  t.equal(nextDirectory('/', 'XCUP', '', ''), '/');
  t.equal(nextDirectory('/pub', 'MKD', 'new', '"/pub/new" created'), '/pub', "MKD's 257 names the new directory, not the working one");
  t.equal(nextDirectory('/pub', 'PWD', '', 'garbled'), '/pub');
  t.equal(recordPath({ path: '/abs', directory: '/pub' }), '/abs');
  t.equal(recordPath({ path: 'x', directory: '/pub/' }), '/pub/x');
  t.equal(recordPath({ path: '', directory: '/pub' }), '', 'no name is not the directory');
  t.equal(typeAfter('I'), 'binary');
  t.equal(typeAfter('L 8'), 'binary');
  t.equal(typeAfter('A N'), 'ascii');
  t.equal(typeAfter('e'), 'ascii');
});

function logCollector() {
  const lines: Record<string, unknown>[] = [];
  const logger = createLogger({ debugLevel: 7, foreground: false, destination: { write: (s: string) => void lines.push(JSON.parse(s)) } });
  return { logger, lines };
}

function tmpdir(t: Test): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fp-xferlog-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  return dir;
}

// A line waits up to GATHER_MS for others before its write.
const settle = () => new Promise((r) => setTimeout(r, GATHER_MS + 50));

t.test('writer: appends in order, mode 0640, follows logrotate (move and create), copytruncate', async (t) => {
  const dir = tmpdir(t);
  const file = path.join(dir, 'xferlog');
  fs.writeFileSync(file, 'earlier line\n', { mode: 0o640 });
  const { logger } = logCollector();
  const w = await XferlogWriter.open(file, logger);
  for (let i = 0; i < 100; i++) w.write({ ...BASE, bytes: i });
  await settle();
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  t.equal(lines[0], 'earlier line', 'appends');
  t.same(lines.slice(1, 101).map((l) => Number(l.split(/ +/)[7])), [...Array(100).keys()], 'every line, in order');
  fs.renameSync(file, file + '.1');
  w.write({ ...BASE, bytes: 1000 });
  await settle();
  t.equal(fs.readFileSync(file, 'utf8').split(/ +/)[7], '1000', 'a new file at the path after the move');
  t.equal(fs.statSync(file).mode & 0o777, 0o640);
  t.equal(fs.readFileSync(file + '.1', 'utf8').split('\n').length, 102, 'nothing more in the moved file');
  fs.truncateSync(file, 0);
  w.write({ ...BASE, bytes: 2000 });
  await w.close();
  const after = fs.readFileSync(file, 'utf8');
  t.equal(after.split(/ +/)[7], '2000', 'after copytruncate the next line is at the start (O_APPEND)');
  t.equal(after.split('\n').length, 2);
  w.write({ ...BASE });
  await settle();
  t.equal(fs.readFileSync(file, 'utf8'), after, 'nothing is written after close');
});

t.test('writer: a file that cannot be opened is an error at open; write errors are logged once and it recovers', async (t) => {
  const dir = tmpdir(t);
  const { logger, lines } = logCollector();
  await t.rejects(XferlogWriter.open(path.join(dir, 'missing', 'xferlog'), logger), { code: 'ENOENT' });
  const file = path.join(dir, 'xferlog');
  const w = await XferlogWriter.open(file, logger);
  // The path becomes a directory: reopening after the "rotation" fails until it is a file again.
  fs.renameSync(file, file + '.1');
  fs.mkdirSync(file);
  w.write(BASE);
  await settle();
  w.write(BASE);
  await settle();
  t.equal(lines.filter((l) => l.msg === 'xferlog write failed').length, 1, 'logged once while failing');
  fs.rmdirSync(file);
  w.write({ ...BASE, bytes: 5 });
  await w.close();
  t.equal(fs.readFileSync(file, 'utf8').split(/ +/)[7], '5');
  t.ok(lines.some((l) => l.msg === 'xferlog writing again'));
});
