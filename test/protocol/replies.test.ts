import t from 'tap';
import { ReplyAssembler, parse227, parse229, type Reply } from '../../src/protocol/replies.js';
import { ProtocolError } from '../../src/errors.js';

const protocolError = (code: string) => ({ name: 'ProtocolError', code });

function assemble(lines: string[], a = new ReplyAssembler()): Array<Reply | null> {
  return lines.map((l) => a.push(l));
}

t.test('grouping table', async (t) => {
  const cases: Array<[string, string[], Array<Reply | null>]> = [
    ['single line', ['220 ready'], [{ code: 220, lines: ['220 ready'] }]],
    ['code alone', ['200'], [{ code: 200, lines: ['200'] }]],
    ['lowest and highest code', ['100 a', '599 b'], [{ code: 100, lines: ['100 a'] }, { code: 599, lines: ['599 b'] }]],
    ['multi-line', ['211-Features:', ' EPSV', '211 End'], [null, null, { code: 211, lines: ['211-Features:', ' EPSV', '211 End'] }]],
    ['ends at the bare code', ['211-Status', 'x', '211'], [null, null, { code: 211, lines: ['211-Status', 'x', '211'] }]],
    ['code and hyphen inside', ['230-a', '230-b', '230 c'], [null, null, { code: 230, lines: ['230-a', '230-b', '230 c'] }]],
    [
      'other codes and digits inside',
      ['123-First line', 'Second line', '  234 A line beginning with numbers', '200 not ours', '1234 no', '123 The last line'],
      [null, null, null, null, null, { code: 123, lines: ['123-First line', 'Second line', '  234 A line beginning with numbers', '200 not ours', '1234 no', '123 The last line'] }],
    ],
    ['code followed by other text is not the end', ['220-a', '220x', '220\tb', '220 c'], [null, null, null, { code: 220, lines: ['220-a', '220x', '220\tb', '220 c'] }]],
    ['empty text lines inside', ['214-', '', '214 '], [null, null, { code: 214, lines: ['214-', '', '214 '] }]],
    ['one reply after another', ['230-a', '230 b', '200 ok'], [null, { code: 230, lines: ['230-a', '230 b'] }, { code: 200, lines: ['200 ok'] }]],
  ];
  for (const [name, lines, want] of cases) t.same(assemble(lines), want, name);
});

t.test('bad first lines', async (t) => {
  for (const line of ['', '20', '20 x', '099 x', '600 x', '000 x', '2000 x', '200x', '200\tx', 'abc', ' 200 x', '-200 x', '2a0 x', '\xff\xf4200 x']) {
    t.throws(() => new ReplyAssembler().push(line), protocolError('BAD_REPLY'), JSON.stringify(line));
  }
  const a = new ReplyAssembler();
  t.throws(() => a.push('hello'), protocolError('BAD_REPLY'));
  t.throws(() => a.push('200 ok'), protocolError('BAD_REPLY'), 'a failed assembler stays failed');
});

t.test('reply size bound: long replies are handed on in pieces, a long 227/229 is cut short', async (t) => {
  const a = new ReplyAssembler(10);
  t.same(assemble(['211-abcd', 'ef', '211 c'], a), [null, null, { code: 211, lines: ['211-abcd', 'ef', '211 c'] }], 'within the bound: whole');
  const b = new ReplyAssembler(10);
  t.same(
    assemble(['211-abcd', 'efghij', 'k', 'lmnopqrstu', '211 end', '200 ok'], b),
    [
      null,
      { code: 211, lines: ['211-abcd', 'efghij'], partial: true },
      null,
      { code: 211, lines: ['k', 'lmnopqrstu'], partial: true },
      { code: 211, lines: ['211 end'], partial: false },
      { code: 200, lines: ['200 ok'] },
    ],
    'pieces in order, every line once, then the next reply as usual',
  );
  const c = new ReplyAssembler(20);
  t.same(
    assemble(['227-Entering Passive', 'x'.repeat(30), 'y', '227 (10,0,0,1,4,1)', '227 next'], c),
    [null, null, null, { code: 227, lines: ['227-Entering Passive'], truncated: true }, { code: 227, lines: ['227 next'] }],
    'a 227 is never handed on in pieces: what is past the bound is dropped and said',
  );
  t.same(new ReplyAssembler(1).push('200 single'), { code: 200, lines: ['200 single'] }, 'single lines always fit');
  t.equal(new ReplyAssembler().maxBytes, 16384);
  for (const bad of [0, -1, 2.5]) t.throws(() => new ReplyAssembler(bad), RangeError);
});

t.test('pending(): what a reply in pieces gathered goes on when asked; a whole reply stays whole', async (t) => {
  const a = new ReplyAssembler(10);
  t.equal(a.pending(), null, 'nothing gathered');
  a.push('211-ab');
  t.equal(a.pending(), null, 'a reply not yet in pieces is not split (a short one may arrive in two reads)');
  t.same(a.push('cdefghij'), { code: 211, lines: ['211-ab', 'cdefghij'], partial: true });
  t.equal(a.push('k'), null);
  t.same(a.pending(), { code: 211, lines: ['k'], partial: true }, 'the tail since the last piece');
  t.equal(a.pending(), null, 'once');
  t.same(a.push('211 end'), { code: 211, lines: ['211 end'], partial: false }, 'the end, as usual');
  t.equal(a.pending(), null, 'between replies there is nothing');
  t.same(a.push('200 ok'), { code: 200, lines: ['200 ok'] });
  const c = new ReplyAssembler(10);
  for (const l of ['227-Entering', 'x'.repeat(20)]) c.push(l);
  t.equal(c.pending(), null, 'a 227 being cut short is never handed on in pieces');
});

t.test('a 20,000-line reply never holds more than the bound', async (t) => {
  const a = new ReplyAssembler();
  const line = '211-' + 'x'.repeat(1020);
  let held = 0;
  let most = 0;
  let lines = 0;
  for (let i = 0; i < 20000; i++) {
    const r = a.push(i === 0 ? line : ' ' + line);
    held += line.length;
    if (r) {
      lines += r.lines.length;
      held = 0;
    }
    most = Math.max(most, held);
  }
  const end = a.push('211 end');
  lines += end!.lines.length;
  t.equal(lines, 20001, 'every line handed on');
  t.ok(most <= a.maxBytes + line.length + 1, `at most ${most} bytes held`);
});

t.test('parse227', async (t) => {
  const good: Array<[string, string, number]> = [
    ['227 Entering Passive Mode (192,0,2,1,195,80).', '192.0.2.1', 50000],
    ['227 Entering Passive Mode (10,0,0,1,4,1)', '10.0.0.1', 1025],
    ['227 Entering Passive Mode 10,0,0,1,4,1', '10.0.0.1', 1025],
    ['227 =192,168,1,1,4,1', '192.168.1.1', 1025],
    ['227 Entering passive mode (127,0,0,1,156,161).', '127.0.0.1', 40097],
    ['227 (0,0,0,0,0,1)', '0.0.0.0', 1],
    ['227 (255,255,255,255,255,255)', '255.255.255.255', 65535],
    ['227 (1,2,3,4,0,21) and more text, 5,6', '1.2.3.4', 21],
    ['227 (001,002,003,004,000,021)', '1.2.3.4', 21],
    ['227-multi-line first line (1,2,3,4,5,6)', '1.2.3.4', 1286],
    ['227 1,2,3,4,5,6', '1.2.3.4', 1286],
    ['227 (-1,2,3,4,5,6)', '1.2.3.4', 1286],
    ['227 Entering Passive Mode (1,2,3,4,5,6)\r', '1.2.3.4', 1286],
  ];
  for (const [line, address, port] of good) t.same(parse227(line), { address, port }, line);
  const bad = [
    '227 Entering Passive Mode',
    '227 Entering Passive Mode ()',
    '227 (1,2,3,4,5)',
    '227 (1,2,3,4,5,6,7)',
    '227 (256,2,3,4,5,6)',
    '227 (1,2,3,4,256,6)',
    '227 (1,2,3,4,5,1000)',
    '227 (1,2,3,4,0,0)',
    '227 (1, 2, 3, 4, 5, 6)',
    '227 (1,2,3,4,5,)',
    '227 Mode v2 (1,2,3,4,5,6)',
    '200 (1,2,3,4,5,6)',
    '2270 (1,2,3,4,5,6)',
    '',
  ];
  for (const line of bad) t.throws(() => parse227(line), protocolError('BAD_227'), JSON.stringify(line));
  try {
    parse227('227 (1,2,3,999,5,6)');
  } catch (err) {
    t.equal((err as ProtocolError).cause instanceof ProtocolError, true, 'keeps the parse error as cause');
  }
});

t.test('parse229', async (t) => {
  const good: Array<[string, number]> = [
    ['229 Entering Extended Passive Mode (|||50000|)', 50000],
    ['229 Entering extended passive mode (|||40058|).', 40058],
    ['229 Extended Passive mode OK (|||40074|)', 40074],
    ['229 (!!!6446!)', 6446],
    ['229 (~~~1~)', 1],
    ['229 (|||65535|)', 65535],
    ['229 (|||00021|)', 21],
    ['229 text (a) then (|||2121|)', 2121],
    ['229 ((((21()', 21],
    ['229 ()))21))', 21],
    ['229 (11121211)', 2121],
    ['229 (0002120)', 212],
    ['229-(|||21|)', 21],
    ['229 (|||21|) trailing', 21],
  ];
  for (const [line, port] of good) t.equal(parse229(line), port, line);
  const bad = [
    '229 Entering Extended Passive Mode',
    '229 (|||0|)',
    '229 (|||65536|)',
    '229 (|||+21|)',
    '229 (||| 21|)',
    '229 (|||21 |)',
    '229 (|||21!)',
    '229 (!||21|)',
    '229 (|||21|',
    '229 (||||)',
    '229 (   21 )',
    '229 (\x7f\x7f\x7f21\x7f)',
    '229 (|||0x15|)',
    '229 (|||2e3|)',
    '229 (|1|::1|21|)',
    '200 (|||21|)',
    '2290 (|||21|)',
    '',
  ];
  for (const line of bad) t.throws(() => parse229(line), protocolError('BAD_229'), JSON.stringify(line));
});
