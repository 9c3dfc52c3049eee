import t from 'tap';
import { DEFAULT_MAX_LINE, LineFramer } from '../../src/protocol/lines.js';
import { ProtocolError } from '../../src/errors.js';

const bin = (s: string): Buffer => Buffer.from(s, 'latin1');

function feed(framer: LineFramer, chunks: string[]): string[] {
  return chunks.flatMap((c) => framer.push(bin(c)));
}

const protocolError = (code: string) => ({ name: 'ProtocolError', code });

t.test('framing table', async (t) => {
  const cases: Array<[string, string[], string[], number]> = [
    ['one line', ['USER anonymous\r\n'], ['USER anonymous'], 0],
    ['bare LF', ['USER a\nPASS b\n'], ['USER a', 'PASS b'], 0],
    ['empty lines', ['\r\n\n'], ['', ''], 0],
    ['partial carried', ['US', 'ER x', '\r', '\nPA'], ['USER x'], 2],
    ['CR alone is not an end', ['A\rB\r\n'], ['A\rB'], 0],
    ['only one CR is stripped', ['A\r\r\n'], ['A\r'], 0],
    ['CR then LF across chunks', ['NOOP\r', '\n'], ['NOOP'], 0],
    ['trailing CR held', ['NOOP\r'], [], 5],
    ['pipelined', ['USER a\r\nPASS b\r\nSYST\r\nPASV\r\n'], ['USER a', 'PASS b', 'SYST', 'PASV'], 0],
    ['IAC IP IAC DM before ABOR', ['\xff\xf4\xff\xf2ABOR\r\n'], ['\xff\xf4\xff\xf2ABOR'], 0],
    ['IAC sequence split across chunks', ['\xff', '\xf4\xff', '\xf2AB', 'OR\r\n'], ['\xff\xf4\xff\xf2ABOR'], 0],
    ['an LF ends the line even as a Telnet option byte (as servers read it)', ['\xff\xfd\nX\r\n'], ['\xff\xfd', 'X'], 0],
    ['IAC WILL with option CR is not a terminator CR', ['X\xff\xfb\r\n'], ['X\xff\xfb\r'], 0],
    ['IAC WONT then LF in the next chunk ends the line', ['A\xff\xfc', '\nB\n'], ['A\xff\xfc', 'B'], 0],
    ['IAC IAC is a data byte', ['\xff\xff\r\n'], ['\xff\xff'], 0],
    ['IAC IAC then IAC IP', ['\xff\xff\xff\xf4\n'], ['\xff\xff\xff\xf4'], 0],
    ['stray IAC before CR LF is data', ['RETR \xff\r\n'], ['RETR \xff'], 0],
    ['stray IAC before LF', ['X\xff\nY\n'], ['X\xff', 'Y'], 0],
    ['high latin1 bytes round-trip', ['RETR caf\xe9 \x80\xfe\r\n'], ['RETR caf\xe9 \x80\xfe'], 0],
    ['nothing', [''], [], 0],
  ];
  for (const [name, chunks, lines, pending] of cases) {
    const f = new LineFramer();
    t.same(feed(f, chunks), lines, name);
    t.equal(f.pending, pending, `${name}: pending`);
  }
});

t.test('a multi-command buffer split at every byte position gives the same lines', async (t) => {
  const wire = 'USER anonymous\r\nPASS a@b\r\n\xff\xf4\xff\xf2ABOR\r\nPORT 192,0,2,1,4,1\nEPRT |2|::1|5000|\r\nQUIT\r\n';
  const whole = new LineFramer().push(bin(wire));
  t.same(whole, ['USER anonymous', 'PASS a@b', '\xff\xf4\xff\xf2ABOR', 'PORT 192,0,2,1,4,1', 'EPRT |2|::1|5000|', 'QUIT']);
  for (let i = 0; i <= wire.length; i++) {
    const f = new LineFramer();
    t.same(feed(f, [wire.slice(0, i), wire.slice(i)]), whole, `split at ${i}`);
    t.equal(f.pending, 0);
  }
  for (let i = 0; i <= wire.length; i++) {
    for (let j = i; j <= wire.length; j += 7) {
      const f = new LineFramer();
      if (!t.same(feed(f, [wire.slice(0, i), wire.slice(i, j), wire.slice(j)]), whole, `split at ${i} and ${j}`, { diagnostic: false })) break;
    }
  }
  const f = new LineFramer();
  t.same(feed(f, [...wire]), whole, 'one byte at a time');
});

t.test('length limit', async (t) => {
  const max = 10;
  const exact = 'x'.repeat(max);
  const over = 'x'.repeat(max + 1);
  t.same(new LineFramer(max).push(bin(`${exact}\r\n`)), [exact], 'exactly max with CR LF');
  t.same(new LineFramer(max).push(bin(`${exact}\n`)), [exact], 'exactly max with bare LF');
  t.same(feed(new LineFramer(max), [exact, '\r', '\n']), [exact], 'exactly max, terminator in pieces');
  t.throws(() => new LineFramer(max).push(bin(`${over}\r\n`)), protocolError('LINE_TOO_LONG'), 'one past max with CR LF');
  t.throws(() => new LineFramer(max).push(bin(`${over}\n`)), protocolError('LINE_TOO_LONG'), 'one past max with LF');
  t.throws(() => new LineFramer(max).push(bin(`${exact}\r\r\n`)), protocolError('LINE_TOO_LONG'), 'max plus a bare CR');

  const held = new LineFramer(max);
  t.same(held.push(bin(exact)), []);
  t.equal(held.pending, max, 'a remainder of exactly max is held');
  t.same(held.push(bin('\r')), []);
  t.equal(held.pending, max + 1, 'and a CR that may be the terminator');
  t.throws(() => held.push(bin('\r')), protocolError('LINE_TOO_LONG'), 'a second CR cannot be');

  t.throws(() => new LineFramer(max).push(bin(over)), protocolError('LINE_TOO_LONG'), 'remainder one past max');
  t.throws(() => feed(new LineFramer(max), [exact, 'y']), protocolError('LINE_TOO_LONG'), 'remainder grows past max');
  t.throws(() => new LineFramer(max).push(bin(`ok\r\n${over}`)), protocolError('LINE_TOO_LONG'), 'after a good line in the same chunk');
  t.equal(new LineFramer().maxLength, DEFAULT_MAX_LINE);
  t.same(new LineFramer().push(bin(`${'a'.repeat(DEFAULT_MAX_LINE)}\r\n`)).length, 1, 'default limit');
  t.throws(() => new LineFramer().push(bin(`${'a'.repeat(DEFAULT_MAX_LINE + 1)}\r\n`)), protocolError('LINE_TOO_LONG'), 'default limit + 1');
});

t.test('CR floods', async (t) => {
  t.throws(() => new LineFramer().push(Buffer.alloc(100000, 0x0d)), protocolError('LINE_TOO_LONG'), 'one chunk');
  const f = new LineFramer(64);
  t.throws(() => {
    for (let i = 0; i < 1000; i++) f.push(Buffer.from([0x0d]));
  }, protocolError('LINE_TOO_LONG'), 'one byte at a time');
  const g = new LineFramer(64);
  t.throws(() => {
    for (let i = 0; i < 1000; i++) g.push(bin('\r'.repeat(30)));
  }, protocolError('LINE_TOO_LONG'), 'in pieces');
  t.throws(() => new LineFramer(8).push(bin('\xff\xf4'.repeat(10))), protocolError('LINE_TOO_LONG'), 'Telnet sequences count too');
});

t.test('NUL', async (t) => {
  t.throws(() => new LineFramer().push(bin('US\0ER x\r\n')), protocolError('NUL_IN_LINE'), 'inside a line');
  t.throws(() => new LineFramer().push(bin('USER x\r\n\0')), protocolError('NUL_IN_LINE'), 'after a complete line');
  t.throws(() => feed(new LineFramer(), ['USER', '\0']), protocolError('NUL_IN_LINE'), 'in a later chunk');
  t.throws(() => new LineFramer().push(bin('\xff\xfd\0\r\n')), protocolError('NUL_IN_LINE'), 'even as a Telnet option byte');
});

t.test('a failed framer stays failed', async (t) => {
  const f = new LineFramer();
  let first: unknown;
  try {
    f.push(bin('a\0'));
  } catch (err) {
    first = err;
  }
  t.ok(first instanceof ProtocolError);
  t.equal(f.pending, 0, 'nothing held after a failure');
  try {
    f.push(bin('NOOP\r\n'));
    t.fail('a failed framer must throw again');
  } catch (err) {
    t.equal(err, first, 'the same error again');
  }
});

t.test('bad limits', async (t) => {
  for (const bad of [0, -1, 1.5, NaN]) t.throws(() => new LineFramer(bad), RangeError, String(bad));
});

t.test('linear in the bytes held, fed one byte at a time', async (t) => {
  const max = 200000;
  const f = new LineFramer(max);
  const one = Buffer.from('a');
  const started = process.hrtime.bigint();
  for (let i = 0; i < max; i++) f.push(one);
  const lines = f.push(bin('\r\n'));
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  t.equal(lines[0]!.length, max);
  // A framer that re-scans or re-copies what it holds on every chunk needs ~2e10 steps here.
  t.ok(ms < 5000, `took ${ms.toFixed(0)} ms`);
});
