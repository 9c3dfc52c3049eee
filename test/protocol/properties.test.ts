// Property tests: formatting and parsing are inverses on valid values, and no input makes
// the protocol code throw anything but a ProtocolError.
import t from 'tap';
import assert from 'node:assert/strict';
import fc from 'fast-check';
import ipaddr from 'ipaddr.js';
import { LineFramer } from '../../src/protocol/lines.js';
import { ReplyAssembler, parse227, parse229 } from '../../src/protocol/replies.js';
import { classifyCommand, parseEprt, parsePort, stripTelnet } from '../../src/protocol/commands.js';
import { format227, format229, formatEprt, formatPort } from '../../src/protocol/format.js';
import { ProtocolError } from '../../src/errors.js';

const runs = { numRuns: 1000 };

const latin1Char = fc.integer({ min: 0, max: 255 }).map((c) => String.fromCharCode(c));
const latin1 = fc.string({ unit: latin1Char, maxLength: 200 });
const port = fc.integer({ min: 1, max: 65535 });
const ipv4 = fc.ipV4();
const ipv6 = fc.ipV6().filter((a) => !ipaddr.IPv6.parse(a).isIPv4MappedAddress());
const delimiter = (excluded: RegExp): fc.Arbitrary<string> =>
  fc.integer({ min: 33, max: 126 }).map((c) => String.fromCharCode(c)).filter((d) => !excluded.test(d));
const telnetCommand = fc.oneof(
  fc.constantFrom('\xff\xf4', '\xff\xf2', '\xff\xf1'),
  fc.tuple(fc.constantFrom('\xfb', '\xfc', '\xfd', '\xfe'), latin1Char.filter((c) => c !== '\0')).map(([cmd, opt]) => `\xff${cmd}${opt}`),
);
const telnetOnly = fc.array(telnetCommand, { maxLength: 5 }).map((parts) => parts.join(''));
const telnetAndSpaces = fc.array(fc.oneof(telnetCommand, fc.constantFrom(' ', '\t')), { maxLength: 6 }).map((parts) => parts.join(''));

/** Runs fn; a ProtocolError is an answer, anything else thrown fails the property. */
function onlyProtocolErrors(fn: () => unknown): boolean {
  try {
    fn();
  } catch (err) {
    if (err instanceof ProtocolError) return true;
    throw err;
  }
  return true;
}

t.test('PORT: parse inverts format, and format inverts parse on canonical text', async (t) => {
  fc.assert(
    fc.property(ipv4, port, (address, p) => {
      const ep = { address, port: p };
      const text = formatPort(ep);
      assert.deepEqual(parsePort(text.slice('PORT '.length)), ep);
      assert.deepEqual(classifyCommand(text), { kind: 'PORT', endpoint: ep });
      const arg = `${address.replaceAll('.', ',')},${p >> 8},${p & 255}`;
      assert.equal(formatPort(parsePort(arg)), `PORT ${arg}`);
    }),
    runs,
  );
  t.pass();
});

t.test('227: parse inverts format', async (t) => {
  fc.assert(
    fc.property(ipv4, port, (address, p) => {
      const ep = { address, port: p };
      assert.deepEqual(parse227(format227(ep)), ep);
      assert.equal(format227(parse227(format227(ep))), format227(ep));
    }),
    runs,
  );
  t.pass();
});

t.test('229: parse inverts format, with any delimiter and text', async (t) => {
  fc.assert(
    fc.property(port, delimiter(/[0-9]/), fc.stringMatching(/^[A-Za-z .]{0,40}$/), (p, d, text) => {
      assert.equal(parse229(format229(p)), p);
      assert.equal(parse229(`229 ${text}(${d}${d}${d}${p}${d})`), p);
    }),
    runs,
  );
  t.pass();
});

t.test('EPRT IPv4: parse inverts format, with any delimiter', async (t) => {
  fc.assert(
    fc.property(ipv4, port, delimiter(/[0-9.]/), (address, p, d) => {
      const ep = { address, port: p };
      assert.deepEqual(parseEprt(formatEprt(ep).slice('EPRT '.length)), { family: 1, endpoint: ep });
      assert.deepEqual(parseEprt(`${d}1${d}${address}${d}${p}${d}`), { family: 1, endpoint: ep });
    }),
    runs,
  );
  t.pass();
});

t.test('EPRT IPv6: canonical text, the same address, and parse inverts format', async (t) => {
  fc.assert(
    fc.property(ipv6, port, delimiter(/[0-9a-fA-F:.]/), (address, p, d) => {
      const got = parseEprt(`${d}2${d}${address}${d}${p}${d}`);
      assert.equal(got.family, 2);
      assert.equal(got.endpoint.port, p);
      assert.deepEqual(ipaddr.IPv6.parse(got.endpoint.address).toByteArray(), ipaddr.IPv6.parse(address).toByteArray());
      // RFC 5952: lower case, no leading zeros in a group.
      assert.doesNotMatch(got.endpoint.address, /[A-F]|(^|:)0[0-9a-f]/);
      const text = formatEprt(got.endpoint);
      assert.equal(text, `EPRT |2|${got.endpoint.address}|${p}|`);
      assert.deepEqual(parseEprt(text.slice('EPRT '.length)), got);
    }),
    runs,
  );
  t.pass();
});

t.test('LineFramer: random bytes, random chunking, random limits', async (t) => {
  fc.assert(
    fc.property(fc.array(fc.uint8Array({ maxLength: 300 }), { maxLength: 10 }), fc.integer({ min: 1, max: 400 }), (chunks, max) => {
      const f = new LineFramer(max);
      return onlyProtocolErrors(() => {
        for (const c of chunks) {
          for (const line of f.push(Buffer.from(c))) if (line.length > max) throw new Error(`line of ${line.length} > ${max}`);
          if (f.pending > max + 1) throw new Error(`holding ${f.pending} > ${max + 1}`);
        }
      });
    }),
    runs,
  );
  t.pass();
});

t.test('LineFramer: lines survive any split', async (t) => {
  const lineText = fc.string({ unit: latin1Char.filter((c) => c !== '\n' && c !== '\0' && c !== '\xff'), maxLength: 40 }).filter((l) => !l.endsWith('\r'));
  fc.assert(
    fc.property(fc.array(fc.tuple(lineText, fc.constantFrom('\r\n', '\n')), { minLength: 1, maxLength: 8 }), fc.array(fc.nat(), { maxLength: 6 }), (lines, cuts) => {
      const wire = Buffer.from(lines.map(([l, end]) => l + end).join(''), 'latin1');
      const points = [...new Set(cuts.map((c) => c % (wire.length + 1)))].sort((a, b) => a - b);
      const f = new LineFramer();
      const got: string[] = [];
      let from = 0;
      for (const p of [...points, wire.length]) {
        got.push(...f.push(wire.subarray(from, p)));
        from = p;
      }
      assert.deepEqual(got, lines.map(([l]) => l));
      assert.equal(f.pending, 0);
    }),
    runs,
  );
  t.pass();
});

t.test('ReplyAssembler: random lines only ever raise ProtocolError', async (t) => {
  const replyish = fc.oneof(latin1, fc.tuple(fc.integer({ min: 0, max: 999 }), fc.constantFrom(' ', '-', '', 'x'), latin1).map(([c, s, r]) => `${c}${s}${r}`));
  fc.assert(
    fc.property(fc.array(replyish, { maxLength: 30 }), fc.integer({ min: 1, max: 10 }), (lines, max) => {
      const a = new ReplyAssembler(max * 10);
      let inPieces = false;
      return onlyProtocolErrors(() => {
        for (const l of lines) {
          const r = a.push(l);
          if (!r) continue;
          if (r.lines[0] === undefined || (!inPieces && !r.lines[0].startsWith(String(r.code)))) throw new Error('bad reply');
          inPieces = r.partial === true;
        }
      });
    }),
    runs,
  );
  t.pass();
});

t.test('ReplyAssembler: well-formed multi-line replies come back whole', async (t) => {
  const code = fc.integer({ min: 100, max: 599 }).map(String);
  const inner = (c: string): fc.Arbitrary<string> =>
    fc.oneof(latin1, fc.constant(`${c}-more`), latin1.map((s) => `${c}${s}`)).filter((l) => !(l === c || l.startsWith(`${c} `)));
  fc.assert(
    fc.property(code.chain((c) => fc.tuple(fc.constant(c), fc.array(inner(c), { maxLength: 10 }), latin1)), ([c, middle, last]) => {
      const lines = [`${c}-first`, ...middle, `${c} ${last}`];
      const a = new ReplyAssembler();
      const out = lines.map((l) => a.push(l));
      assert.deepEqual(out.slice(0, -1), lines.slice(0, -1).map(() => null));
      assert.deepEqual(out.at(-1), { code: Number(c), lines });
    }),
    runs,
  );
  t.pass();
});

t.test('parsers only ever raise ProtocolError', async (t) => {
  const anything = fc.oneof(latin1, fc.string({ maxLength: 100 }), latin1.map((s) => `227 ${s}`), latin1.map((s) => `229 (${s}`), fc.stringMatching(/^[0-9,]{0,30}$/));
  fc.assert(
    fc.property(anything, (s) => {
      onlyProtocolErrors(() => parse227(s));
      onlyProtocolErrors(() => parse229(s));
      onlyProtocolErrors(() => parsePort(s));
      onlyProtocolErrors(() => parseEprt(s));
      onlyProtocolErrors(() => parseEprt(`|2|${s}|21|`));
    }),
    runs,
  );
  t.pass();
});

t.test('classifyCommand never throws, and leading Telnet and spaces do not change it', async (t) => {
  const kinds = new Set(['PASV', 'EPSV', 'EPSV_ALL', 'PORT', 'EPRT', 'LPRT', 'LPSV', 'USER', 'AUTH', 'CCC', 'ABOR', 'QUIT', 'TRANSFER', 'OTHER', 'INVALID']);
  const verb = fc.constantFrom('PASV', 'p@sw', 'EPSV', 'PORT', 'eprt', 'USER', 'AUTH', 'ABOR', 'QUIT', 'RETR', 'NOOP', 'LPRT');
  const line = fc.oneof(latin1, fc.string({ maxLength: 100 }), fc.tuple(verb, fc.constantFrom(' ', '\t', ''), latin1).map(([v, s, a]) => v + s + a));
  fc.assert(
    fc.property(telnetAndSpaces, telnetOnly, line, (prefix, telnet, l) => {
      const c = classifyCommand(l);
      assert.ok(kinds.has(c.kind));
      const stripped = l.replace(/^[ \t\r\v\f]+/, '');
      if (stripTelnet(stripped) === stripped) assert.deepEqual(classifyCommand(prefix + stripped), c);
      assert.equal(stripTelnet(telnet + stripped), stripTelnet(stripped));
    }),
    runs,
  );
  t.pass();
});
