// --masquerade-for: which address each client is told in 227 (most specific block, then
// --masquerade-address, then the connection's own), and where its data path waits.
import t from 'tap';
import { Masquerade } from '../../src/net/masquerade.js';
import { parseCidr } from '../../src/net/policy.js';
import { parseArgs } from '../../src/cli.js';
import { buildConfig } from '../../src/config.js';
import { Control } from '../lib/scripted.js';
import { config, login, rig } from '../lib/session-rig.js';

t.test('the most specific block wins, then --masquerade-address', async (t) => {
  const m = new Masquerade(
    [
      { block: parseCidr('10.0.0.0/8'), address: '10.0.0.1' },
      { block: parseCidr('10.1.2.0/24'), address: '10.1.2.1' },
      { block: parseCidr('10.1.0.0/16'), address: '10.1.0.1' },
    ],
    '203.0.113.1',
  );
  t.equal(m.advertisedTo('10.1.2.3'), '10.1.2.1');
  t.equal(m.advertisedTo('10.1.9.3'), '10.1.0.1');
  t.equal(m.advertisedTo('10.9.9.9'), '10.0.0.1');
  t.equal(m.advertisedTo('::ffff:10.1.2.3'), '10.1.2.1', 'an IPv4 client of a :: listener');
  t.equal(m.advertisedTo('198.51.100.7'), '203.0.113.1', 'no block: --masquerade-address');
  t.equal(m.advertisedTo('2001:db8::1'), '203.0.113.1');
  t.equal(new Masquerade([{ block: parseCidr('10.0.0.0/8'), address: '10.0.0.1' }]).advertisedTo('192.0.2.1'), undefined, 'nothing: the connection\'s own');
});

t.test('config: CIDR=ADDR, repeatable, reverse mode only, IPv4', async (t) => {
  const c = config(['--masquerade-for', '127.0.0.0/8=192.0.2.9,10.0.0.0/8=10.0.0.1', '--masquerade-for', '127.0.0.1=192.0.2.10']);
  t.equal(c.masquerade.advertisedTo('127.0.0.1'), '192.0.2.10');
  t.equal(c.masquerade.advertisedTo('127.0.0.2'), '192.0.2.9');
  const bad: [string[], RegExp][] = [
    [['--masquerade-for', '10.0.0.0/8'], /--masquerade-for: '10.0.0.0\/8' is not CIDR=ADDR/],
    [['--masquerade-for', 'lan=10.0.0.1'], /--masquerade-for: 'lan' is not an address or CIDR block/],
    [['--masquerade-for', '10.0.0.0/8=gw'], /--masquerade-for: 'gw' is not an IP address/],
    [['--masquerade-for', '2001:db8::/32=10.0.0.1'], /is not IPv4 \(227 replies go to IPv4 clients only\)/],
    [['--masquerade-for', '10.0.0.0/8=2001:db8::1'], /is not an IPv4 address/],
    [['--masquerade-for', '10.0.0.0/8=0.0.0.0'], /unspecified/],
  ];
  for (const [flags, re] of bad) t.throws(() => config(flags), re, flags.join(' '));
  t.throws(() => buildOutbound(['--masquerade-for', '10.0.0.0/8=10.0.0.1']), /--masquerade-for: only has a meaning with -R/);
});

function buildOutbound(argv: string[]): unknown {
  const p = parseArgs(argv, { out: () => undefined, err: () => undefined });
  if (p.kind !== 'run') throw new Error('bad flags');
  return buildConfig(p.options);
}

t.test('a session is told its block\'s address; a path for an address not this host\'s waits on the connection\'s own', async (t) => {
  const r = await rig(t, { flags: ['--masquerade-address', '203.0.113.1', '--masquerade-for', '127.0.0.0/8=198.51.100.77'] });
  const c = new Control(r.proxyPort);
  await login(t, c);
  c.send('PASV');
  const line = await c.line();
  t.match(line, /^227 Entering Passive Mode \(198,51,100,77,\d+,\d+\)\.$/, 'the block\'s address, over --masquerade-address');
  t.equal(r.dp.opened.at(-1)?.listen, '127.0.0.1', '198.51.100.77 is a NAT in front: the path waits where the client reached us');
  c.end();
});
