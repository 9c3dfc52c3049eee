// The rtnetlink messages of the relay's transparent sources, byte by byte (the kernel's view of
// them, `ip rule` output, is checked by the lab test e2e-relay-active-source).

import t from 'tap';
import { endianness } from 'node:os';
import { localRouteMessage, parseMessages, ruleMessage, ruleTable, type Rule } from '../src/net/rtnetlink.js';

const LE = endianness() === 'LE';

/** Attributes after a 12-byte fixed header: type -> payload. */
function attrs(payload: Buffer): Map<number, Buffer> {
  const v = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  const out = new Map<number, Buffer>();
  for (let at = 12; at + 4 <= payload.length; ) {
    const len = v.getUint16(at, LE);
    out.set(v.getUint16(at + 2, LE), payload.subarray(at + 4, at + len));
    at += (len + 3) & ~3;
  }
  return out;
}

const u16 = (b: Buffer | undefined, at = 0): number => new DataView(b!.buffer, b!.byteOffset, b!.byteLength).getUint16(at, LE);
const u32 = (b: Buffer | undefined): number => new DataView(b!.buffer, b!.byteOffset, b!.byteLength).getUint32(0, LE);

const v4: Rule = { family: 4, from: '192.0.2.2', to: '198.51.100.2', sport: 40001, dport: 20, table: 2121 };

t.test('a rule for one IPv4 connection', async (t) => {
  const msg = ruleMessage('add', v4, 7);
  const [m, ...more] = parseMessages(msg);
  t.same(more, [], 'one message');
  t.equal(msg.readUInt32LE(0), msg.length, 'nlmsg_len covers it all');
  t.equal(m!.type, 32, 'RTM_NEWRULE');
  t.equal(u16(msg, 6), 0x1 | 0x4 | 0x400 | 0x200, 'REQUEST | ACK | CREATE | EXCL');
  t.equal(m!.seq, 7);
  // struct fib_rule_hdr: AF_INET, /32 both ways, table in the attribute (above 255), FR_ACT_TO_TBL.
  t.same([...m!.payload.subarray(0, 8)], [2, 32, 32, 0, 0, 0, 0, 1]);
  const a = attrs(m!.payload);
  t.equal(u32(a.get(6)), 2121, 'FRA_PRIORITY = the table number');
  t.equal(u32(a.get(15)), 2121, 'FRA_TABLE');
  t.same([...a.get(2)!], [192, 0, 2, 2], 'FRA_SRC: the client');
  t.same([...a.get(1)!], [198, 51, 100, 2], 'FRA_DST: the server');
  t.same([...a.get(22)!], [6], 'FRA_IP_PROTO tcp');
  t.same([u16(a.get(23), 0), u16(a.get(23), 2)], [40001, 40001], 'FRA_SPORT_RANGE: the client data port alone');
  t.same([u16(a.get(24), 0), u16(a.get(24), 2)], [20, 20], 'FRA_DPORT_RANGE: the bound port alone');
  t.equal(ruleTable(m!.payload), 2121, 'a dump reader finds the table');
});

t.test("a listener's rule: any source port", async (t) => {
  const listener: Rule = { family: 4, from: '192.0.2.2', to: '198.51.100.2', dport: 50000, table: 2121 };
  const a = attrs(parseMessages(ruleMessage('add', listener, 8))[0]!.payload);
  t.notOk(a.has(23), 'no FRA_SPORT_RANGE');
  t.same([u16(a.get(24), 0), u16(a.get(24), 2)], [50000, 50000], 'FRA_DPORT_RANGE: the listening port alone');
  t.same([...a.get(2)!], [192, 0, 2, 2], 'FRA_SRC: the client alone');
});

t.test('delete, IPv6, and a table below 256', async (t) => {
  const [m] = parseMessages(
    ruleMessage('delete', { family: 6, from: '2001:db8:1::2', to: '2001:db8:2::2', sport: 50000, dport: 60000, table: 100 }, 1),
  );
  t.equal(m!.type, 33, 'RTM_DELRULE');
  t.same([...m!.payload.subarray(0, 8)], [10, 128, 128, 0, 100, 0, 0, 1], 'AF_INET6, /128, table byte 100');
  t.equal(attrs(m!.payload).get(2)!.toString('hex'), '20010db8000100000000000000000002');
  t.equal(ruleTable(Buffer.from([10, 128, 128, 0, 100, 0, 0, 1, 0, 0, 0, 0])), 100, 'without FRA_TABLE: the header byte');
});

t.test('the local default route of the table', async (t) => {
  for (const family of [4, 6] as const) {
    const add = parseMessages(localRouteMessage('add', family, 2121, 3))[0]!;
    t.equal(add.type, 24, 'RTM_NEWROUTE');
    // struct rtmsg: /0, table in the attribute, RTPROT_STATIC, RT_SCOPE_HOST, RTN_LOCAL.
    t.same([...add.payload.subarray(0, 8)], [family === 4 ? 2 : 10, 0, 0, 0, 0, 4, 254, 2]);
    const a = attrs(add.payload);
    t.equal(u32(a.get(15)), 2121, 'RTA_TABLE');
    t.equal(u32(a.get(4)), 1, 'RTA_OIF: lo');
    const msg = localRouteMessage('delete', family, 2121, 4);
    t.equal(parseMessages(msg)[0]!.type, 25, 'RTM_DELROUTE');
    t.equal(u16(msg, 6), 0x1 | 0x4, 'REQUEST | ACK');
  }
});

t.test('several messages in one datagram', async (t) => {
  const both = Buffer.concat([ruleMessage('add', v4, 1), localRouteMessage('add', 4, 2121, 2)]);
  t.same(
    parseMessages(both).map((m) => [m.type, m.seq]),
    [
      [32, 1],
      [24, 2],
    ],
  );
  t.same(parseMessages(both.subarray(0, 20)).length, 0, 'a cut message is not read');
});
