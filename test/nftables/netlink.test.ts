// Pure tests of the netlink runner's encoding and ack reading (no socket): the bytes match what
// nft 1.0.6 sends for the same element, and acks become coded errors naming the message.

import t from 'tap';
import { endianness } from 'node:os';
import { batchOutcome, encodeBatch, readAcks } from '../../src/dataplane/nftables/netlink.js';
import { EXAMPLE_PATHS } from '../../src/dataplane/nftables/render.js';
import { openBatch, releaseBatch } from '../../src/dataplane/nftables/rules.js';
import { add, batch, concat, del, destroy, elem, insert } from '../../src/dataplane/nftables/schema.js';

const LE = endianness() === 'LE';
const u16 = (n: number): Buffer => {
  const b = Buffer.alloc(2);
  if (LE) b.writeUInt16LE(n);
  else b.writeUInt16BE(n);
  return b;
};
const u32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  if (LE) b.writeUInt32LE(n);
  else b.writeUInt32BE(n);
  return b;
};
const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const pad = (b: Buffer): Buffer => Buffer.concat([b, Buffer.alloc((4 - (b.length % 4)) % 4)]);
/** A netlink attribute, built independently of the code under test. */
const nla = (type: number, ...payload: Buffer[]): Buffer => {
  const body = Buffer.concat(payload);
  return pad(Buffer.concat([u16(4 + body.length), u16(type), body]));
};
const NESTED = 0x8000;
/** nlmsghdr + nfgenmsg + attributes. */
const msg = (type: number, flags: number, seq: number, nfgen: string, ...attrs: Buffer[]): Buffer => {
  const body = Buffer.concat([hex(nfgen), ...attrs]);
  return Buffer.concat([u32(16 + body.length), u16(type), u16(flags), u32(seq), u32(0), body]);
};
const begin = (seq: number) => msg(0x10, 0x1, seq, '00 00 00 0a');
const end = (seq: number) => msg(0x11, 0x1, seq, '00 00 00 0a');

t.test('an element add is the message nft 1.0.6 sends', async (t) => {
  // nft --debug=mnl add element inet t dnatport4 '{ 192.0.2.2 . 192.0.2.1 . 50000 timeout 30s : 40000 }'
  // less NFTA_SET_ELEM_LIST_SET_ID (nft's way of naming a set created in the same batch).
  const expected = Buffer.concat([
    begin(7),
    msg(
      0x0a0c, // NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWSETELEM
      0x0405, // NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE
      8,
      '01 00 00 00', // NFPROTO_INET, NFNETLINK_V0, res_id 0
      nla(1, Buffer.from('t\0')),
      nla(2, Buffer.from('dnatport4\0')),
      nla(
        3 | NESTED,
        nla(
          1 | NESTED,
          nla(4, hex('00 00 00 00 00 00 75 30')), // timeout 30000 ms, be64
          nla(1 | NESTED, nla(1, hex('c0 00 02 02  c0 00 02 01  c3 50 00 00'))), // key: port padded to 4
          nla(2 | NESTED, nla(1, hex('9c 40'))), // value: inet_service, 2 bytes
        ),
      ),
    ),
    end(9),
  ]);
  const b = batch(add({ element: { family: 'inet', table: 't', name: 'dnatport4', elem: [[elem(concat('192.0.2.2', '192.0.2.1', 50000), 30), 40000]] } }));
  const e = encodeBatch(b, 7);
  t.equal(e.bytes.toString('hex'), expected.toString('hex'));
  t.same(e.messages, [{ seq: 8, what: 'add element inet t dnatport4', acked: true }]);
  t.equal(e.beginSeq, 7);
});

t.test('a delete carries the key alone, as nft sends it; destroy is message type 30', async (t) => {
  // nft --debug=mnl delete element inet t dnatport4 '{ 192.0.2.2 . 192.0.2.1 . 50000 : 40000 }'
  const body = (type: number) =>
    msg(
      type,
      0x0005, // NLM_F_REQUEST | NLM_F_ACK
      1,
      '01 00 00 00',
      nla(1, Buffer.from('t\0')),
      nla(2, Buffer.from('dnatport4\0')),
      nla(3 | NESTED, nla(1 | NESTED, nla(1 | NESTED, nla(1, hex('c0 00 02 02  c0 00 02 01  c3 50 00 00'))))),
    );
  const o = { element: { family: 'inet' as const, table: 't', name: 'dnatport4', elem: [[concat('192.0.2.2', '192.0.2.1', 50000), 40000] as const] } };
  t.equal(encodeBatch(batch(del(o)), 0).bytes.toString('hex'), Buffer.concat([begin(0), body(0x0a0e), end(2)]).toString('hex'));
  t.equal(encodeBatch(batch(destroy(o)), 0).bytes.toString('hex'), Buffer.concat([begin(0), body(0x0a1e), end(2)]).toString('hex'));
});

t.test('IPv6 keys and values', async (t) => {
  const b = batch(
    add({ element: { family: 'inet', table: 't', name: 'dnat6', elem: [[concat('2001:db8::1', '::ffff:192.0.2.1', 21), '2001:db8:1::2']] } }),
  );
  const bytes = encodeBatch(b, 0).bytes;
  const key = hex('20010db8 00000000 00000000 00000001  00000000 00000000 0000ffff c0000201  00150000');
  const value = hex('20010db8 00010000 00000000 00000002');
  t.ok(bytes.includes(Buffer.concat([nla(1, key)])), 'key: two 16-byte addresses and a padded port');
  t.ok(bytes.includes(Buffer.concat([u16(4 + 4 + 16), u16(2 | NESTED), nla(1, value)])), 'value: 16 bytes');
});

t.test('whole open and release batches encode; one message per command', async (t) => {
  const o = { table: 'ftp_proxy', logRules: false, timeoutSec: 30 };
  const open = encodeBatch(openBatch(o, EXAMPLE_PATHS.active), 100);
  t.same(
    open.messages.map((m) => m.what.replace(' inet ftp_proxy', '')),
    [
      'add element admit4',
      'add element dnat4',
      'add element dnatport4',
      'add element snat4',
      'delete element snat4',
      'add element snat4',
      'add element snatport4',
      'delete element snatport4',
      'add element snatport4',
    ],
  );
  t.same(open.messages.map((m) => m.seq), [101, 102, 103, 104, 105, 106, 107, 108, 109]);
  const release = encodeBatch(releaseBatch(o, EXAMPLE_PATHS.active, { snat: true, destroy: true }), 0xffffffff);
  t.same(release.messages.map((m) => m.seq), [0, 1, 2, 3, 4], 'sequence numbers wrap');
  t.ok(release.messages.every((m) => m.what.startsWith('destroy element')));
});

t.test('only element commands are encoded', async (t) => {
  const rule = insert({ rule: { family: 'inet', table: 't', chain: 'admit_log', expr: [] } });
  t.throws(() => encodeBatch(batch(rule), 0), { code: 'BACKEND_FAILED', message: /'insert rule inet t admit_log '.*not supported/ });
  t.throws(() => encodeBatch(batch(add({ table: { family: 'inet', name: 't' } })), 0), { code: 'BACKEND_FAILED' });
  const element = (v: string | number) => add({ element: { family: 'inet', table: 't', name: 's', elem: [concat('192.0.2.1', v)] } });
  t.throws(() => encodeBatch(batch(element('not-an-address')), 0), { message: /"not-an-address"/ });
  t.throws(() => encodeBatch(batch(element(70000)), 0), { message: /70000/ });
  t.throws(() => encodeBatch(batch(add({ element: { family: 'inet', table: 'tä', name: 's', elem: ['192.0.2.1'] } })), 0), {
    message: /name "tä"/,
  });
});

/** A netlink ack (NLMSG_ERROR, capped) for `seq` with errno (0 = success). */
const ack = (seq: number, errno: number): Buffer => {
  const e = Buffer.alloc(4);
  if (LE) e.writeInt32LE(-errno);
  else e.writeInt32BE(-errno);
  return Buffer.concat([u32(36), u16(2), u16(0x100), u32(seq), u32(0), e, u32(20), u16(0), u16(0), u32(seq), u32(0)]);
};

t.test('acks become an outcome naming each failed message', async (t) => {
  const b = batch(
    add({ element: { family: 'inet', table: 't', name: 'admit4', elem: [concat('192.0.2.2', '192.0.2.1', 1)] } }),
    del({ element: { family: 'inet', table: 't', name: 'dnat4', elem: [concat('192.0.2.2', '192.0.2.1', 1)] } }),
  );
  const e = encodeBatch(b, 10);
  const acks = new Map<number, number>();
  readAcks(Buffer.concat([ack(11, 0), ack(12, 0)]), acks);
  t.equal(batchOutcome(e, acks), undefined, 'all acked with 0');

  acks.clear();
  readAcks(ack(11, 0), acks);
  readAcks(ack(12, 2), acks);
  t.match(batchOutcome(e, acks), { code: 'BACKEND_FAILED', message: /delete element inet t dnat4: no such file or directory \(ENOENT\)/ });
  t.notMatch(batchOutcome(e, acks)?.message, /admit4/);

  acks.clear();
  readAcks(ack(10, 1), acks);
  t.match(batchOutcome(e, acks), { code: 'NFT_NOT_PERMITTED', message: /batch: operation not permitted \(EPERM\)/ }, 'the batch as a whole');

  acks.clear();
  readAcks(ack(11, 0), acks);
  t.match(batchOutcome(e, acks), { code: 'BACKEND_FAILED', message: /dnat4: no ack/ });

  // Only the last message asks for an ack: the kernel answers the others only when they fail.
  const flags = (at: number): number => e.bytes.readUInt16LE(at + 6);
  const first = 20; // after BATCH_BEGIN (nlmsghdr + nfgenmsg)
  t.equal(flags(first) & 0x0004, 0, 'the first command asks for no ack');
  t.equal(flags(first + e.bytes.readUInt32LE(first)) & 0x0004, 0x0004, 'the last one does');
  t.same(e.messages.map((m) => m.acked), [false, true]);
  acks.clear();
  readAcks(ack(12, 0), acks);
  t.equal(batchOutcome(e, acks), undefined, 'the last ack alone: done');
  readAcks(ack(11, 17), acks);
  t.match(batchOutcome(e, acks), { message: /add element inet t admit4: .*EEXIST/ }, 'an unasked failure still counts');
  acks.clear();
  t.match(batchOutcome(e, acks), { message: /dnat4: no ack/ }, 'nothing at all: not done');
  t.notMatch(batchOutcome(e, acks)?.message, /admit4/);

  acks.clear();
  readAcks(Buffer.concat([ack(11, 0), hex('ff')]), acks);
  readAcks(hex('00000000'), acks);
  t.same([...acks], [[11, 0]], 'trailing junk and short datagrams are ignored');
});
