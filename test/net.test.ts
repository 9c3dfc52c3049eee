import t from 'tap';
import { canonical, familyOf } from '../src/net/address.js';
import { decodeSockaddr, findInConntrack } from '../src/net/origdst.js';
import { PortAllocator } from '../src/net/ports.js';
import { fdOf, KEEPALIVE, loadLibc, tuneListener } from '../src/net/libc.js';
import net from 'node:net';
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';

t.test('canonical addresses', async (t) => {
  t.equal(canonical('192.0.2.1'), '192.0.2.1');
  t.equal(canonical('::ffff:192.0.2.1'), '192.0.2.1');
  t.equal(canonical('2001:DB8:0:0:0:0:0:1'), '2001:db8::1');
  t.equal(canonical('::ffff:c000:201'), '192.0.2.1');
  t.equal(canonical('2001:0db8:0001:0000:0000:0000:0000:0002'), '2001:db8:1::2');
  t.equal(familyOf('192.0.2.1'), 4);
  t.equal(familyOf('2001:db8::1'), 6);
});

t.test('sockaddr decoding', async (t) => {
  const v4 = Buffer.alloc(16);
  v4.writeUInt16LE(2, 0);
  v4.writeUInt16BE(21, 2);
  Buffer.from([198, 51, 100, 2]).copy(v4, 4);
  t.same(decodeSockaddr(v4, 16), { address: '198.51.100.2', port: 21 });
  const v6 = Buffer.alloc(28);
  v6.writeUInt16LE(10, 0);
  v6.writeUInt16BE(2121, 2);
  Buffer.from('20010db8000200000000000000000002', 'hex').copy(v6, 8);
  t.same(decodeSockaddr(v6, 28), { address: '2001:db8:2::2', port: 2121 });
  t.throws(() => decodeSockaddr(Buffer.alloc(16), 16), { code: 'BAD_SOCKADDR' });
});

t.test('conntrack fallback finds the original destination by the reply tuple', async (t) => {
  const text = [
    'ipv4     2 tcp      6 431999 ESTABLISHED src=192.0.2.2 dst=198.51.100.2 sport=40000 dport=21 src=192.0.2.1 dst=192.0.2.2 sport=8021 dport=40000 [ASSURED] mark=0 zone=0 use=2',
    'ipv6     10 tcp      6 431999 ESTABLISHED src=2001:0db8:0001:0000:0000:0000:0000:0002 dst=2001:0db8:0002:0000:0000:0000:0000:0002 sport=40001 dport=2121 src=2001:0db8:0001:0000:0000:0000:0000:0001 dst=2001:0db8:0001:0000:0000:0000:0000:0002 sport=8021 dport=40001 [ASSURED] mark=0 zone=0 use=2',
    'ipv4     2 udp      17 30 src=192.0.2.2 dst=192.0.2.1 sport=5353 dport=53 src=192.0.2.1 dst=192.0.2.2 sport=53 dport=5353 mark=0 zone=0 use=2',
  ].join('\n');
  t.same(findInConntrack(text, { address: '192.0.2.2', port: 40000 }, { address: '192.0.2.1', port: 8021 }), { address: '198.51.100.2', port: 21 });
  t.same(findInConntrack(text, { address: '2001:db8:1::2', port: 40001 }, { address: '2001:db8:1::1', port: 8021 }), { address: '2001:db8:2::2', port: 2121 });
  t.equal(findInConntrack(text, { address: '192.0.2.9', port: 1 }, { address: '192.0.2.1', port: 8021 }), null);
});

t.test('port allocator: every port once, then exhausted; put makes it free again', async (t) => {
  const p = new PortAllocator(50000, 50002, () => 0);
  const got = [await p.take(), await p.take(), await p.take()].sort();
  t.same(got, [50000, 50001, 50002]);
  await t.rejects(p.take(), { code: 'PORTS_EXHAUSTED' });
  t.ok(p.put(50001));
  t.notOk(p.put(50001), 'a port is given back once');
  t.equal(await p.take(), 50001);
  const q = new PortAllocator(50000, 50003, () => 0);
  t.equal(await q.take((port) => port !== 50000), 50001, 'an unusable port is skipped');
  t.throws(() => new PortAllocator(10, 5), RangeError);
});

t.test('a tuned listener hands its socket options to every accepted connection', async (t) => {
  const libc = loadLibc();
  if (!libc) return t.fail('libc through koffi is needed on Linux');
  const get = (sock: net.Socket, level: number, name: number): number => {
    const b = Buffer.alloc(4);
    t.equal(libc.getsockopt(fdOf(sock)!, level, name, b, [4]), 0);
    return b.readInt32LE(0);
  };
  const accepted: net.Socket[] = [];
  const srv = net.createServer((s) => accepted.push(s));
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  t.teardown(() => new Promise((r) => srv.close(r)));
  const port = (srv.address() as net.AddressInfo).port;
  // A connection the kernel creates before the options are set, while this thread is blocked
  // (not accepting): another process connects, and a child of it holds the connection.
  const hold = [
    'import os, socket, time',
    `s = socket.create_connection(('127.0.0.1', ${port}))`,
    'pid = os.fork()',
    'if pid == 0:',
    '    fd = os.open(os.devnull, os.O_RDWR)',
    '    os.dup2(fd, 1)',
    '    os.dup2(fd, 2)',
    '    time.sleep(30)',
    '    os._exit(0)',
    'print(pid)',
  ].join('\n');
  const holder = Number(spawnSync('python3', ['-c', hold], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'] }).stdout.trim());
  t.teardown(() => process.kill(holder));
  t.equal(tuneListener(srv), 1, 'all options set; one connection was already waiting');
  const tuned = net.connect(port, '127.0.0.1');
  await once(tuned, 'connect');
  while (accepted.length < 2) await new Promise((r) => setImmediate(r));
  const [before, after] = accepted as [net.Socket, net.Socket];
  // SOL_SOCKET 1: SO_KEEPALIVE 9, SO_OOBINLINE 10; IPPROTO_TCP 6: NODELAY 1, KEEPIDLE 4, KEEPINTVL 5, KEEPCNT 6
  t.same([get(before, 6, 1), get(before, 1, 9), get(before, 1, 10)], [0, 0, 0], 'the one created before has none');
  t.same(
    [get(after, 6, 1), get(after, 1, 9), get(after, 6, 4), get(after, 6, 5), get(after, 6, 6), get(after, 1, 10)],
    [1, 1, KEEPALIVE.idle, KEEPALIVE.interval, KEEPALIVE.count, 1],
    'nodelay, keepalive timing and out-of-band inline, inherited',
  );
  t.equal(tuneListener(srv), 0, 'none waiting once both are accepted');
  for (const s of [...accepted, tuned]) s.destroy();
});
