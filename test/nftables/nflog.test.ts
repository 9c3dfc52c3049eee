// The byte count of the nftables plane from logged segments (nflog.ts): packet parsing, and
// each direction's payload from SYN, FIN, RST and lap segments, past 4 GiB and with resets.

import t from 'tap';
import { FlowTable, packets, parseSegment, type Segment } from '../../src/dataplane/nftables/nflog.js';

const C = '192.0.2.2';
const S = '198.51.100.2';
const FIN = 0x01;
const SYN = 0x02;
const RST = 0x04;
const ACK = 0x10;

/** A segment from the client (port 40000) to the server's data port 5000, or back. */
function seg(fromClient: boolean, flags: number, seq: number, ack = 0, len = 0): Segment {
  return fromClient
    ? { src: C, dst: S, sport: 40000, dport: 5000, seq: seq >>> 0, ack: ack >>> 0, flags, len }
    : { src: S, dst: C, sport: 5000, dport: 40000, seq: seq >>> 0, ack: ack >>> 0, flags, len };
}

t.test('parseSegment: IPv4 and IPv6 TCP headers, payload length from the IP length', async (t) => {
  const v4 = Buffer.alloc(60);
  v4[0] = 0x45;
  v4.writeUInt16BE(20 + 32 + 100, 2);
  v4[9] = 6;
  Buffer.from([192, 0, 2, 2, 198, 51, 100, 2]).copy(v4, 12);
  v4.writeUInt16BE(40000, 20);
  v4.writeUInt16BE(5000, 22);
  v4.writeUInt32BE(0xfffffff0, 24);
  v4.writeUInt32BE(7, 28);
  v4[32] = 8 << 4; // 32-byte TCP header
  v4[33] = FIN | ACK;
  t.same(parseSegment(v4), { src: C, dst: S, sport: 40000, dport: 5000, seq: 0xfffffff0, ack: 7, flags: FIN | ACK, len: 100 });
  const v6 = Buffer.alloc(60);
  v6[0] = 0x60;
  v6.writeUInt16BE(20, 4);
  v6[6] = 6;
  Buffer.from('20010db8000000000000000000000002', 'hex').copy(v6, 8);
  Buffer.from('20010db8000200000000000000000001', 'hex').copy(v6, 24);
  v6[52] = 5 << 4;
  v6[53] = SYN;
  t.match(parseSegment(v6), { src: '2001:db8::2', dst: '2001:db8:2::1', flags: SYN, len: 0 });
  v4[9] = 17;
  t.equal(parseSegment(v4), null, 'not TCP');
  t.equal(parseSegment(Buffer.alloc(10)), null, 'too short');
});

t.test('packets: the payload attribute of each NFLOG message in a datagram', async (t) => {
  const msg = (payload: Buffer): Buffer => {
    const attr = Buffer.alloc((4 + payload.length + 3) & ~3);
    attr.writeUInt16LE(4 + payload.length, 0);
    attr.writeUInt16LE(9, 2);
    payload.copy(attr, 4);
    const other = Buffer.from([8, 0, 1, 0, 0, 0, 0, 0]); // NFULA_PACKET_HDR, skipped
    const head = Buffer.alloc(20);
    head.writeUInt32LE(20 + other.length + attr.length, 0);
    head.writeUInt16LE(4 << 8, 4);
    return Buffer.concat([head, other, attr]);
  };
  const got = [...packets(Buffer.concat([msg(Buffer.from('abc')), msg(Buffer.from('defgh'))]))].map((p) => Buffer.from(p).toString());
  t.same(got, ['abc', 'defgh']);
});

t.test('a download: exact from the ISNs and the FINs, whatever the sequence numbers wrap', async (t) => {
  const f = new FlowTable();
  f.expect('p1', C, { address: S, port: 5000 });
  t.same(f.result('p1'), { state: 'none' });
  f.packet(seg(true, SYN, 100));
  f.packet(seg(false, SYN | ACK, 0xffffff00, 101));
  t.same(f.result('p1'), { state: 'open' });
  // 1,000,000 bytes from the server, the last 500 on the FIN; the client acknowledges and ends.
  f.packet(seg(false, FIN | ACK, 0xffffff01 + 999500, 101, 500));
  t.same(f.result('p1'), { state: 'half', moved: { fromPeer: 0, toPeer: 1000000 } });
  f.packet(seg(true, FIN | ACK, 101, 0xffffff01 + 1000001));
  t.same(f.result('p1'), { state: 'done', moved: { fromPeer: 0, toPeer: 1000000 } });
  f.forget('p1');
  t.same(f.result('p1'), { state: 'none' });
});

t.test('past 4 GiB: the lap segments (one per GiB) unwrap the sequence numbers', async (t) => {
  const f = new FlowTable();
  f.expect('p', C, { address: S, port: 5000 });
  const isn = 12345;
  f.packet(seg(true, SYN, isn));
  f.packet(seg(false, SYN | ACK, 9, isn + 1));
  const total = 5 * 2 ** 30 + 777;
  for (let lap = 1; lap <= 5; lap++) f.packet(seg(true, ACK, isn + 1 + lap * 2 ** 30 - 100, 10, 50));
  f.packet(seg(true, FIN | ACK, isn + 1 + total, 10));
  f.packet(seg(false, FIN | ACK, 10, isn + 2 + total));
  t.same(f.result('p'), { state: 'done', moved: { fromPeer: total, toPeer: 0 } });
});

t.test('a reset: its own side from its sequence number, the other from its acknowledgement', async (t) => {
  const f = new FlowTable();
  f.expect('p', C, { address: S, port: 5000 });
  f.packet(seg(true, SYN, 1000));
  f.packet(seg(false, SYN | ACK, 5000, 1001));
  f.packet(seg(true, RST | ACK, 1001, 5001 + 65536));
  t.same(f.result('p'), { state: 'done', moved: { fromPeer: 0, toPeer: 65536 } });
});

t.test('other connections, a second SYN of the tuple, and lost messages', async (t) => {
  const f = new FlowTable();
  f.expect('p', C, { address: S, port: 5000 });
  f.packet({ ...seg(true, SYN, 1), src: '192.0.2.9' });
  f.packet(seg(false, SYN | ACK, 1, 2));
  t.same(f.result('p'), { state: 'none' }, 'another peer, or a reply with no SYN: not this path');
  f.packet(seg(true, SYN, 1000));
  f.packet({ ...seg(true, SYN, 7), sport: 40001 });
  f.packet({ ...seg(true, FIN | ACK, 9999), sport: 40001 });
  t.same(f.result('p'), { state: 'open' }, "another source port does not touch the first connection's count");
  f.taintAll();
  t.same(f.result('p'), { state: 'unknown' });
});
