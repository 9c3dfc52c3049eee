import t from 'tap';
import { format227, format229, formatEprt, formatPort } from '../../src/protocol/format.js';

t.test('formatting table', async (t) => {
  t.equal(formatPort({ address: '192.0.2.1', port: 50000 }), 'PORT 192,0,2,1,195,80');
  t.equal(formatPort({ address: '0.0.0.0', port: 1 }), 'PORT 0,0,0,0,0,1');
  t.equal(formatPort({ address: '255.255.255.255', port: 65535 }), 'PORT 255,255,255,255,255,255');
  t.equal(format227({ address: '192.0.2.1', port: 50000 }), '227 Entering Passive Mode (192,0,2,1,195,80).');
  t.equal(format227({ address: '10.0.0.1', port: 256 }), '227 Entering Passive Mode (10,0,0,1,1,0).');
  t.equal(formatEprt({ address: '192.0.2.1', port: 50000 }), 'EPRT |1|192.0.2.1|50000|');
  t.equal(formatEprt({ address: '2001:db8::1', port: 50000 }), 'EPRT |2|2001:db8::1|50000|');
  t.equal(formatEprt({ address: '2001:DB8:0:0:0:0:0:1', port: 21 }), 'EPRT |2|2001:db8::1|21|', 'IPv6 is written canonically');
  t.equal(formatEprt({ address: '::', port: 21 }), 'EPRT |2|::|21|');
  t.equal(format229(50000), '229 Entering Extended Passive Mode (|||50000|)');
  t.equal(format229(1), '229 Entering Extended Passive Mode (|||1|)');
});

t.test('no CR or LF in anything returned', async (t) => {
  for (const s of [
    formatPort({ address: '1.2.3.4', port: 5 }),
    format227({ address: '1.2.3.4', port: 5 }),
    formatEprt({ address: '::1', port: 5 }),
    format229(5),
  ]) {
    t.notMatch(s, /[\r\n]/);
  }
});

t.test('bad addresses', async (t) => {
  for (const address of ['2001:db8::1', '::ffff:1.2.3.4', '1.2.3', '1.2.3.256', '01.2.3.4', 'example.org', '']) {
    t.throws(() => formatPort({ address, port: 21 }), TypeError, `PORT ${address}`);
    t.throws(() => format227({ address, port: 21 }), TypeError, `227 ${address}`);
  }
  for (const address of ['::ffff:1.2.3.4', 'fe80::1%eth0', '1.2.3', '1::2::3', 'example.org', '']) {
    t.throws(() => formatEprt({ address, port: 21 }), TypeError, `EPRT ${address}`);
  }
});

t.test('bad ports', async (t) => {
  for (const port of [0, -1, 65536, 1.5, NaN]) {
    t.throws(() => formatPort({ address: '1.2.3.4', port }), RangeError, `PORT ${port}`);
    t.throws(() => format227({ address: '1.2.3.4', port }), RangeError, `227 ${port}`);
    t.throws(() => formatEprt({ address: '::1', port }), RangeError, `EPRT ${port}`);
    t.throws(() => format229(port), RangeError, `229 ${port}`);
  }
});
