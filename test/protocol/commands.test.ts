import t from 'tap';
import { classifyCommand, parseDecimalPort, parseEprt, parsePort, stripTelnet, type Command } from '../../src/protocol/commands.js';
import { ProtocolError } from '../../src/errors.js';

const protocolError = (code: string) => ({ name: 'ProtocolError', code });

t.test('classifyCommand table', async (t) => {
  const cases: Array<[string, Command]> = [
    ['PASV', { kind: 'PASV' }],
    ['pasv', { kind: 'PASV' }],
    ['Pasv ignored-argument', { kind: 'PASV' }],
    ['P@SW', { kind: 'PASV' }],
    ['p@sw', { kind: 'PASV' }],
    ['EPSV', { kind: 'EPSV' }],
    ['EPSV 1', { kind: 'EPSV', family: 1 }],
    ['epsv 2', { kind: 'EPSV', family: 2 }],
    ['EPSV ALL', { kind: 'EPSV_ALL' }],
    ['epsv all', { kind: 'EPSV_ALL' }],
    ['EPSV aLl  ', { kind: 'EPSV_ALL' }],
    ['PORT 192,0,2,1,195,80', { kind: 'PORT', endpoint: { address: '192.0.2.1', port: 50000 } }],
    ['port 10,0,0,1,4,1', { kind: 'PORT', endpoint: { address: '10.0.0.1', port: 1025 } }],
    ['PORT\t10,0,0,1,4,1', { kind: 'PORT', endpoint: { address: '10.0.0.1', port: 1025 } }],
    ['  PORT   10,0,0,1,4,1  ', { kind: 'PORT', endpoint: { address: '10.0.0.1', port: 1025 } }],
    ['EPRT |1|192.0.2.1|50000|', { kind: 'EPRT', family: 1, endpoint: { address: '192.0.2.1', port: 50000 } }],
    ['eprt |2|2001:DB8:0:0:0:0:0:1|50000|', { kind: 'EPRT', family: 2, endpoint: { address: '2001:db8::1', port: 50000 } }],
    ['LPRT 4,4,1,2,3,4,2,4,1', { kind: 'LPRT' }],
    ['LPSV', { kind: 'LPSV' }],
    ['USER anonymous', { kind: 'USER', name: 'anonymous' }],
    ['user  joe@ftp.example.org ', { kind: 'USER', name: 'joe@ftp.example.org' }],
    ['USER', { kind: 'USER', name: '' }],
    ['USER caf\xe9 x', { kind: 'USER', name: 'caf\xe9 x' }],
    ['AUTH TLS', { kind: 'AUTH', mechanism: 'TLS' }],
    ['auth tls', { kind: 'AUTH', mechanism: 'TLS' }],
    ['CCC', { kind: 'CCC' }],
    ['ABOR', { kind: 'ABOR' }],
    ['\xff\xf4\xff\xf2ABOR', { kind: 'ABOR' }],
    ['\xff\xf4\xff\xf2abor', { kind: 'ABOR' }],
    [' \xff\xf4 \xff\xf2 ABOR ', { kind: 'ABOR' }],
    ['\xff\xfb\x01ABOR', { kind: 'ABOR' }],
    ['QUIT', { kind: 'QUIT' }],
    ['quit\r', { kind: 'QUIT' }],
    ['RETR file', { kind: 'TRANSFER', verb: 'RETR', arg: 'file' }],
    ['stor file', { kind: 'TRANSFER', verb: 'STOR', arg: 'file' }],
    ['STOU', { kind: 'TRANSFER', verb: 'STOU', arg: '' }],
    ['APPE f', { kind: 'TRANSFER', verb: 'APPE', arg: 'f' }],
    ['LIST -la', { kind: 'TRANSFER', verb: 'LIST', arg: '-la' }],
    ['NLST', { kind: 'TRANSFER', verb: 'NLST', arg: '' }],
    ['MLSD /', { kind: 'TRANSFER', verb: 'MLSD', arg: '/' }],
    ['', { kind: 'OTHER', verb: '', arg: '' }],
    ['   ', { kind: 'OTHER', verb: '', arg: '' }],
    ['\xff\xf4', { kind: 'OTHER', verb: '', arg: '' }],
    ['noop', { kind: 'OTHER', verb: 'NOOP', arg: '' }],
    ['PASS secret', { kind: 'OTHER', verb: 'PASS', arg: 'secret' }],
    ['SITE CHMOD 644 x', { kind: 'OTHER', verb: 'SITE', arg: 'CHMOD 644 x' }],
    ['PASVX', { kind: 'OTHER', verb: 'PASVX', arg: '' }],
    ['\xff\xffPASV', { kind: 'OTHER', verb: '\xff\xffPASV', arg: '' }],
    ['caf\xe9', { kind: 'OTHER', verb: 'CAF\xe9', arg: '' }],
    ['\xff', { kind: 'OTHER', verb: '\xff', arg: '' }],
  ];
  for (const [line, want] of cases) t.same(classifyCommand(line), want, JSON.stringify(line));
});

t.test('classifyCommand: bad arguments are INVALID with the parser error', async (t) => {
  const cases: Array<[string, string, string]> = [
    ['PORT', 'PORT', 'BAD_PORT'],
    ['PORT 1,2,3', 'PORT', 'BAD_PORT'],
    ['PORT 1,2,3,4,5,1000', 'PORT', 'BAD_PORT'],
    ['port 256,0,0,1,4,1', 'PORT', 'BAD_PORT'],
    ['EPRT', 'EPRT', 'BAD_EPRT'],
    ['EPRT |3|::1|5000|', 'EPRT', 'BAD_EPRT'],
    ['EPRT |1|::1|5000|', 'EPRT', 'BAD_EPRT'],
    ['EPSV 3', 'EPSV', 'BAD_EPSV'],
    ['EPSV 01', 'EPSV', 'BAD_EPSV'],
    ['EPSV ALLx', 'EPSV', 'BAD_EPSV'],
    ['EPSV ALL 1', 'EPSV', 'BAD_EPSV'],
  ];
  for (const [line, verb, code] of cases) {
    const c = classifyCommand(line);
    if (t.equal(c.kind, 'INVALID', line) && c.kind === 'INVALID') {
      t.equal(c.verb, verb);
      t.ok(c.error instanceof ProtocolError);
      t.equal(c.error.code, code);
    }
  }
});

t.test('stripTelnet', async (t) => {
  const cases: Array<[string, string]> = [
    ['ABOR', 'ABOR'],
    ['\xff\xf4\xff\xf2ABOR', 'ABOR'],
    ['\xff\xfd\x06\xff\xf4ABOR', 'ABOR'],
    ['\xff\xffABOR', '\xff\xffABOR'],
    ['\xff\xf4 ABOR', ' ABOR'],
    ['ABOR\xff\xf4', 'ABOR\xff\xf4'],
    ['\xffABOR', '\xffABOR'],
    ['\xff\xfb', ''],
    ['\xff\xf4', ''],
    ['', ''],
  ];
  for (const [line, want] of cases) t.equal(stripTelnet(line), want, JSON.stringify(line));
});

t.test('parsePort', async (t) => {
  const good: Array<[string, string, number]> = [
    ['192,0,2,1,195,80', '192.0.2.1', 50000],
    ['0,0,0,0,0,1', '0.0.0.0', 1],
    ['255,255,255,255,255,255', '255.255.255.255', 65535],
    ['010,0,0,01,004,1', '10.0.0.1', 1025],
  ];
  for (const [arg, address, port] of good) t.same(parsePort(arg), { address, port }, arg);
  const bad = [
    '',
    '1,2,3,4,5',
    '1,2,3,4,5,6,7',
    '256,0,0,1,4,1',
    '1,2,3,4,5,256',
    '1,2,3,4,5,1000',
    '1000,0,0,1,4,1',
    '1,2,3,4,0,0',
    '1,2,3,4,5,',
    ',1,2,3,4,5',
    '1,2,3,4,5,6 ',
    ' 1,2,3,4,5,6',
    '1, 2,3,4,5,6',
    '+1,2,3,4,5,6',
    '-1,2,3,4,5,6',
    '1.0,2,3,4,5,6',
    '0x1,2,3,4,5,6',
    '1e2,2,3,4,5,6',
    '1,2,3,4,5,6\r',
    '\uff11,2,3,4,5,6',
  ];
  for (const arg of bad) t.throws(() => parsePort(arg), protocolError('BAD_PORT'), JSON.stringify(arg));
});

t.test('parseEprt', async (t) => {
  const good: Array<[string, 1 | 2, string, number]> = [
    ['|1|192.0.2.1|50000|', 1, '192.0.2.1', 50000],
    ['!1!10.0.0.1!1!', 1, '10.0.0.1', 1],
    [':1:10.0.0.1:65535:', 1, '10.0.0.1', 65535],
    ['|1|10.0.0.1|00021|', 1, '10.0.0.1', 21],
    ['|2|2001:db8::1|50000|', 2, '2001:db8::1', 50000],
    ['|2|2001:DB8:0:0:0:0:0:1|21|', 2, '2001:db8::1', 21],
    ['|2|::1|21|', 2, '::1', 21],
    ['!2!fe80::1!21!', 2, 'fe80::1', 21],
    ['|2|2001:db8:0:0:1:0:0:1|21|', 2, '2001:db8::1:0:0:1', 21],
    ['|2|64:ff9b::192.0.2.1|21|', 2, '64:ff9b::c000:201', 21],
  ];
  for (const [arg, family, address, port] of good) t.same(parseEprt(arg), { family, endpoint: { address, port } }, arg);
  const bad = [
    '',
    '|',
    '|1|192.0.2.1|50000',
    '1|192.0.2.1|50000|',
    '|1|192.0.2.1|50000||',
    '|1|192.0.2.1|50000|x',
    '|3|192.0.2.1|50000|',
    '|0|192.0.2.1|50000|',
    '|01|192.0.2.1|50000|',
    '|1|192.0.2.1|0|',
    '|1|192.0.2.1|65536|',
    '|1|192.0.2.1|+21|',
    '|1|192.0.2.1| 21|',
    '|1|192.0.2.1||',
    '|1|192.0.2|21|',
    '|1|192.0.2.256|21|',
    '|1|192.000.2.1|21|',
    '|1|0x7f.0.0.1|21|',
    '|1|::1|21|',
    '|2|192.0.2.1|21|',
    '|2|1::2::3|21|',
    '|2|fe80::1%eth0|21|',
    '|2|::ffff:192.0.2.1|21|',
    '|2|::192.0.2.1|21|',
    '|2| ::1|21|',
    ':2:::1:21:',
    ' 1 192.0.2.1 21 ',
    '\x7f1\x7f192.0.2.1\x7f21\x7f',
    '\xa71\xa7192.0.2.1\xa721\xa7',
    '1111.2.3.41211',
  ];
  for (const arg of bad) t.throws(() => parseEprt(arg), protocolError('BAD_EPRT'), JSON.stringify(arg));
});

t.test('parseDecimalPort', async (t) => {
  t.equal(parseDecimalPort('1'), 1);
  t.equal(parseDecimalPort('65535'), 65535);
  t.equal(parseDecimalPort('021'), 21);
  for (const bad of ['', '0', '65536', '+1', ' 1', '1 ', '1.0', '0x10', '1e3', '-1', '99999999999999999999']) {
    t.equal(parseDecimalPort(bad), undefined, JSON.stringify(bad));
  }
});

t.test('removeTelnet drops every Telnet command, keeps IAC IAC', async (t) => {
  const { removeTelnet } = await import('../../src/protocol/commands.js');
  t.equal(removeTelnet('\xff\xf4\xff\xf2ABOR'), 'ABOR');
  t.equal(removeTelnet('P\xff\xf1ORT 1,2,3,4,5,6'), 'PORT 1,2,3,4,5,6', 'a NOP inside the verb');
  t.equal(removeTelnet('NOOP\xff\xfd\x01X'), 'NOOPX', 'DO with its option byte');
  t.equal(removeTelnet('RETR a\xff\xffb'), 'RETR a\xff\xffb', 'escaped 0xFF stays escaped');
  t.equal(removeTelnet('RETR \xff'), 'RETR \xff', 'a stray IAC at the end is data');
  t.equal(removeTelnet('plain'), 'plain');
});
