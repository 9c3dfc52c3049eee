// The command policy (--deny-command, --read-only) through the session machine: refused at the
// proxy, in turn with pipelined commands, and no spelling of a denied verb reaches the server.
import t from 'tap';
import fc from 'fast-check';
import type { Action } from '../../src/session/machine.js';
import { machine as base, reply, sent } from '../lib/machine-rig.js';
import { CommandPolicy, READ_ONLY_VERBS, canonicalVerb } from '../../src/session/policy.js';

const machine = (policy: CommandPolicy) => base({ sid: '9', policy });
const logs = (as: Action[]) => as.filter((a): a is Extract<Action, { type: 'log' }> => a.type === 'log');

const readOnly = new CommandPolicy([], true);

t.test('--read-only: each write verb is answered 550 by the proxy and never reaches the server', async (t) => {
  for (const verb of READ_ONLY_VERBS) {
    const m = machine(readOnly);
    const a = m.clientLine(`${verb} some/file`);
    t.same(sent(a, 'toServer'), [], `${verb}: nothing to the server`);
    t.match(sent(a, 'toClient'), [new RegExp(`^550 ${canonicalVerb(verb)} refused: this proxy is read-only \\(command policy: read-only\\)$`)], verb);
    t.match(logs(a), [{ level: 'notice', msg: 'command denied by policy', fields: { verb: canonicalVerb(verb), policy: 'read-only' } }]);
  }
  const m = machine(readOnly);
  for (const allowed of ['RETR a', 'LIST', 'CWD pub', 'SIZE a', 'NLST', 'MLSD', 'TYPE I']) {
    t.same(sent(m.clientLine(allowed), 'toServer'), [allowed], `${allowed} passes`);
  }
});

t.test('--deny-command: named verbs and their synonyms get 502; the refusal is logged once per verb', async (t) => {
  const m = machine(new CommandPolicy(['dele', 'MKD', 'PASV'], false));
  const first = m.clientLine('DELE a');
  t.same(sent(first, 'toClient'), ['502 DELE is not allowed through this proxy (command policy: deny-command)']);
  t.equal(logs(first).length, 1);
  t.same(logs(m.clientLine('DELE b')), [], 'the second DELE is only counted');
  t.same(sent(m.clientLine('XMKD d'), 'toClient'), ['502 MKD is not allowed through this proxy (command policy: deny-command)'], 'XMKD is MKD');
  t.same(sent(m.clientLine('P@SW'), 'toServer'), [], 'P@SW is PASV');
  t.same(sent(m.clientLine('STOR x'), 'toServer'), ['STOR x'], 'not denied, not read-only');
  t.same(m.repeated, { 'policy DELE': 2 });
});

t.test('an explicit --deny-command names itself over --read-only', async (t) => {
  const m = machine(new CommandPolicy(['STOR'], true));
  t.match(sent(m.clientLine('STOR a'), 'toClient')[0], /^502 STOR .*deny-command/);
  t.match(sent(m.clientLine('DELE a'), 'toClient')[0], /^550 DELE .*read-only/);
});

t.test('pipelined commands behind a denied one keep their order', async (t) => {
  const m = machine(readOnly);
  const out: Action[] = [];
  for (const line of ['CWD pub', 'STOR x', 'NOOP', 'DELE y', 'PWD']) out.push(...m.clientLine(line));
  t.same(sent(out, 'toServer'), ['CWD pub', 'NOOP', 'PWD']);
  t.same(sent(out, 'toClient'), [], 'the refusals wait for the replies before them');
  const replies = [
    ...m.serverReply(reply('250 ok')),
    ...m.serverReply(reply('200 noop')),
    ...m.serverReply(reply('257 "/pub"')),
  ];
  t.same(sent(replies, 'toClient'), [
    '250 ok',
    '550 STOR refused: this proxy is read-only (command policy: read-only)',
    '200 noop',
    '550 DELE refused: this proxy is read-only (command policy: read-only)',
    '257 "/pub"',
  ]);
});

t.test('the spellings that must not get around the policy', async (t) => {
  const denied = [
    'stor x',
    'StOr x',
    'S\xff\xf4TOR x',
    '\xff\xf4\xff\xf2STOR x',
    ' STOR x',
    '\tSTOR x',
    'STOR\tx',
    'STOR\x0bx',
    'STOR',
    'xmkd d',
    'site chmod 777 x',
    // UTF-8 forms that Unicode upper-casing turns into STOR and SITE (pyftpdlib does that).
    '\xef\xac\x86OR x',
    'S\xc4\xb1TE x',
    '\xc5\xbfTOR x',
  ];
  for (const line of denied) {
    const m = machine(readOnly);
    const a = m.clientLine(line);
    t.same(sent(a, 'toServer'), [], JSON.stringify(line));
    t.match(sent(a, 'toClient')[0], /^5\d\d .*command policy: read-only/, JSON.stringify(line));
  }
});

/**
 * How real servers read the verb of a line: vsftpd (split at the first space, ASCII upper case),
 * pure-ftpd (skips leading white space, splits at isspace), pyftpdlib (UTF-8 decoded, split at
 * a space, Unicode upper case). Telnet bytes are ones the proxy has already removed.
 */
const SERVER_VERBS: ((line: string) => string)[] = [
  (l) => l.split(' ')[0]!.replace(/[a-z]/g, (c) => c.toUpperCase()),
  (l) => (l.replace(/^[\t-\r ]+/, '').split(/[\t-\r ]/)[0] ?? '').replace(/[a-z]/g, (c) => c.toUpperCase()),
  (l) => Buffer.from(l, 'latin1').toString('utf8').split(' ')[0]!.toUpperCase(),
];

/** Characters that upper-case (Unicode rules) to the given ASCII letters, as UTF-8 in a latin1 string. */
const LOOKALIKES: Record<string, string[]> = {
  S: ['\xc5\xbf'],
  I: ['\xc4\xb1'],
  ST: ['\xef\xac\x86', '\xef\xac\x85'],
};

const spelling = (verb: string): fc.Arbitrary<string> => {
  const pieces: fc.Arbitrary<string>[] = [];
  for (let i = 0; i < verb.length; i++) {
    const two = verb.slice(i, i + 2);
    const c = verb[i]!;
    pieces.push(
      fc.oneof(
        fc.constantFrom(c, c.toLowerCase(), ...(LOOKALIKES[c] ?? [])),
        ...(LOOKALIKES[two] && i % 2 === 0 ? [fc.constantFrom(...LOOKALIKES[two]!).map((s) => `${s}\u0000`)] : []),
      ),
    );
  }
  // A two-letter look-alike stands for this letter and the next: \0 marks the next one as taken.
  return fc.tuple(...pieces).map((ps) => ps.join('').replace(/\u0000./g, ''));
};

const telnet = fc.constantFrom('\xff\xf4', '\xff\xf2', '\xff\xfb\x01', '\xff\xfd\x03', '\xff\xf1');
const sprinkle = (s: string): fc.Arbitrary<string> =>
  fc.array(fc.tuple(fc.nat(s.length), telnet), { maxLength: 4 }).map((ins) => {
    let out = s;
    for (const [at, seq] of [...ins].sort((a, b) => b[0] - a[0])) out = out.slice(0, at) + seq + out.slice(at);
    return out;
  });

t.test('property: no spelling of a denied verb reaches a server as that verb', async (t) => {
  const deniedAtServer = new Set(READ_ONLY_VERBS);
  const line = fc
    .tuple(
      fc.constantFrom(...READ_ONLY_VERBS),
      fc.constantFrom('', ' ', '\t', '\xff\xf4'),
      fc.constantFrom(' ', '\t', '\x0b', '\x0c', ''),
      fc.string({ maxLength: 12 }),
    )
    .chain(([verb, lead, sep, arg]) => spelling(verb).map((v) => `${lead}${v}${sep}${arg.replace(/[\r\n\0]/g, '')}`))
    .chain(sprinkle);
  fc.assert(
    fc.property(line, (l) => {
      const m = machine(readOnly);
      for (const text of sent(m.clientLine(l), 'toServer')) {
        for (const verbAt of SERVER_VERBS) {
          const v = verbAt(text);
          if (deniedAtServer.has(v)) throw new Error(`${JSON.stringify(l)} reached the server as ${v}`);
        }
      }
    }),
    { numRuns: 3000 },
  );
  t.pass('3000 spellings');
});

t.test('an empty policy changes nothing', async (t) => {
  const m = machine(new CommandPolicy([], false));
  t.same(sent(m.clientLine('STOR x'), 'toServer'), ['STOR x']);
  t.same(sent(m.clientLine('\xef\xac\x86OR x'), 'toServer'), ['\xef\xac\x86OR x']);
});
