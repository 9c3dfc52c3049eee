import t from 'tap';
import type { Action } from '../../src/session/machine.js';
import { addressing, machine, reply, sent } from '../lib/machine-rig.js';
import { DataPlaneError } from '../../src/errors.js';

const opens = (as: Action[]) => as.filter((a): a is Extract<Action, { type: 'open' }> => a.type === 'open');
const ended = (as: Action[]) => as.filter((a): a is Extract<Action, { type: 'transferEnded' }> => a.type === 'transferEnded');
const releases = (as: Action[]) => as.filter((a) => a.type === 'release').map((a) => (a as { id: string }).id);

t.test('greeting and plain commands pass through in order', async (t) => {
  const m = machine({}, false);
  t.same(sent(m.serverReply(reply('220-Welcome', '220 ready')), 'toClient'), ['220-Welcome\r\n220 ready']);
  t.same(sent(m.clientLine('USER anonymous'), 'toServer'), ['USER anonymous']);
  t.same(sent(m.clientLine('PASS x@y'), 'toServer'), ['PASS x@y']);
  t.equal(m.outstanding, 2);
  t.same(sent(m.serverReply(reply('331 pw')), 'toClient'), ['331 pw']);
  t.same(sent(m.serverReply(reply('230 ok')), 'toClient'), ['230 ok']);
  t.equal(m.outstanding, 0);
});

t.test('PASV: server address ignored, data path to the control server, 227 with the advertised address', async (t) => {
  const m = machine();
  t.same(sent(m.clientLine('PASV'), 'toServer'), ['PASV']);
  const a = m.serverReply(reply('227 Entering Passive Mode (10,9,9,9,19,137).'));
  t.same(sent(a, 'toClient'), [], 'nothing to the client until the path exists');
  const [open] = opens(a);
  t.ok(open);
  t.same(open!.request, {
    sid: '7',
    kind: 'passive',
    family: 4,
    peer: '192.0.2.2',
    listen: '192.0.2.1',
    target: { address: '198.51.100.2', port: 5001 },
    source: '198.51.100.1',
  });
  const b = m.dataOpened(open!.token, { id: 'p1', port: 50001 });
  t.same(sent(b, 'toClient'), ['227 Entering Passive Mode (203,0,113,9,195,81).']);
});

t.test('P@SW is PASV; EPSV answers 229; EPSV with the wrong family gets 522', async (t) => {
  const m = machine();
  t.same(sent(m.clientLine('P@SW'), 'toServer'), ['PASV']);
  const a = m.serverReply(reply('227 =10,0,0,1,4,1'));
  t.same(sent(m.dataOpened(opens(a)[0]!.token, { id: 'p1', port: 50002 }), 'toClient'), [
    '227 Entering Passive Mode (203,0,113,9,195,82).',
  ]);
  t.same(sent(m.clientLine('EPSV'), 'toServer'), ['PASV'], 'IPv4 servers are asked with PASV');
  const b = m.serverReply(reply('227 Entering Passive Mode (198,51,100,2,4,2)'));
  const c = m.dataOpened(opens(b)[0]!.token, { id: 'p2', port: 50003 });
  t.same(sent(c, 'toClient'), ['229 Entering Extended Passive Mode (|||50003|)']);
  t.same(releases(c), ['p1'], 'a new negotiation releases the previous path');
  t.same(sent(m.clientLine('EPSV 2'), 'toClient'), ['522 Network protocol not supported, use (1)']);
});

t.test('IPv6 server legs get EPSV and EPRT', async (t) => {
  const m = machine({
    server: { address: '2001:db8:2::2', port: 21 },
    addressing: { ...addressing, activeListen: '2001:db8:2::1', passiveSource: '2001:db8:2::1' },
  });
  t.same(sent(m.clientLine('PASV'), 'toServer'), ['EPSV']);
  const a = m.serverReply(reply('229 Extended (!!!6000!)'));
  t.equal(opens(a)[0]!.request.target.port, 6000);
  m.dataOpened(opens(a)[0]!.token, { id: 'p', port: 50000 });
  const b = m.clientLine('PORT 192,0,2,2,200,1');
  t.equal(opens(b)[0]!.request.peer, '2001:db8:2::2');
  t.same(sent(m.dataOpened(opens(b)[0]!.token, { id: 'a', port: 50010 }), 'toServer'), ['EPRT |2|2001:db8:2::1|50010|']);
});

t.test('PORT: data goes to the client control address; PORT sent to the server carries the proxy', async (t) => {
  const m = machine({ rewriteSourcePort: true });
  const a = m.clientLine('PORT 192,0,2,2,156,64');
  t.same(sent(a, 'toServer'), []);
  const [open] = opens(a);
  t.same(open!.request, {
    sid: '7',
    kind: 'active',
    family: 4,
    peer: '198.51.100.2',
    listen: '198.51.100.1',
    target: { address: '192.0.2.2', port: 40000 },
    source: '192.0.2.1',
    sourcePort: 20,
  });
  t.same(sent(m.dataOpened(open!.token, { id: 'a1', port: 50020 }), 'toServer'), ['PORT 198,51,100,1,195,100']);
  t.same(sent(m.serverReply(reply('200 PORT ok')), 'toClient'), ['200 PORT ok']);
  t.same(sent(m.clientLine('RETR f'), 'toServer'), ['RETR f']);
  const x = m.serverReply(reply('150 Opening'));
  t.same(x.filter((a) => a.type === 'transfer'), [{ type: 'transfer', active: true }]);
  t.ok(m.transferActive);
  const y = m.serverReply(reply('226 done'));
  t.same(releases(y), ['a1'], 'the end of the transfer releases its path');
  t.same(
    y.map((a) => a.type),
    ['transfer', 'toClient', 'transferEnded', 'release'],
    'the client has its 226 before the path is released; the transfer ends before it, so its bytes can be asked for',
  );
  t.match(ended(y)[0], { verb: 'RETR', arg: 'f', code: 226, abortSent: false, path: { id: 'a1', kind: 'active' }, counted: true, mode: 'active' });
  t.notOk(m.transferActive);
  t.equal(m.currentPath, null);
});

t.test('bounce attempts and privileged ports are refused with 501 and open nothing', async (t) => {
  const cases = [
    'PORT 203,0,113,5,156,64', // third party
    'PORT 198,51,100,2,0,21', // the server itself, port 21
    'PORT 192,0,2,1,156,64', // the gateway
    'PORT 255,255,255,255,156,64', // broadcast
    'PORT 127,0,0,1,156,64', // loopback
    'PORT 192,0,2,2,0,22', // own address, low port
    'PORT 192,0,2,2,3,255', // 1023
    'EPRT |1|203.0.113.5|40000|',
    'EPRT |1|192.0.2.2|80|',
  ];
  for (const line of cases) {
    const m = machine();
    const a = m.clientLine(line);
    t.equal(opens(a).length, 0, line);
    t.match(sent(a, 'toClient')[0], /^501 /, line);
    t.same(sent(a, 'toServer'), [], line);
  }
  const m = machine();
  t.match(sent(m.clientLine('PORT 192,0,2,2,4,0'), 'toClient'), [], '1024 is fine');
  t.match(sent(machine().clientLine('PORT 1,2,3,4,5'), 'toClient')[0], /^501 /, 'malformed PORT');
  t.match(sent(machine().clientLine('PORT 192,0,2,2,256,1'), 'toClient')[0], /^501 /, 'byte over 255, no truncation');
  t.match(sent(machine().clientLine('EPRT |2|2001:db8::1|40000|'), 'toClient')[0], /^522 /, 'wrong family');
});

t.test('local replies keep command order behind outstanding server replies', async (t) => {
  const m = machine();
  t.same(sent(m.clientLine('NOOP'), 'toServer'), ['NOOP']);
  const a = m.clientLine('LPRT 4,4,1,2,3,4,2,0,20');
  t.same(sent(a, 'toClient'), [], 'held until the NOOP reply');
  t.same(sent(m.serverReply(reply('200 NOOP ok')), 'toClient'), ['200 NOOP ok', '502 LPRT is not supported, use EPRT']);
  t.match(sent(m.clientLine('LPSV'), 'toClient')[0], /^502 /);
});

t.test('pipelined commands while the data plane works are held and run in order', async (t) => {
  const m = machine();
  m.clientLine('PASV');
  const a = m.serverReply(reply('227 (198,51,100,2,4,1)'));
  const token = opens(a)[0]!.token;
  t.same(m.clientLine('TYPE I'), [], 'held');
  t.same(m.clientLine('RETR x'), [], 'held');
  const b = m.dataOpened(token, { id: 'p', port: 50000 });
  t.same(sent(b, 'toClient'), ['227 Entering Passive Mode (203,0,113,9,195,80).']);
  t.same(sent(b, 'toServer'), ['TYPE I', 'RETR x']);
});

t.test('data plane failures become 425 replies and the session goes on', async (t) => {
  const m = machine();
  m.clientLine('PASV');
  const a = m.serverReply(reply('227 (198,51,100,2,4,1)'));
  const b = m.dataFailed(opens(a)[0]!.token, new DataPlaneError('PORTS_EXHAUSTED', 'none'));
  t.match(sent(b, 'toClient')[0], /^425 .*no free data port/);
  t.ok(b.some((x) => x.type === 'log' && x.level === 'warn'), 'logged');
  const c = m.clientLine('PORT 192,0,2,2,200,1');
  const d = m.dataFailed(opens(c)[0]!.token, new DataPlaneError('BACKEND_FAILED', 'nft said no'));
  t.match(sent(d, 'toClient')[0], /^425 /);
  t.same(sent(m.clientLine('NOOP'), 'toServer'), ['NOOP'], 'still relaying');
});

t.test('a bad 227 from the server gives the client 425, not a crash', async (t) => {
  const m = machine();
  m.clientLine('PASV');
  const a = m.serverReply(reply('227 Entering Passive Mode (300,1,1,1,1,1)'));
  t.equal(opens(a).length, 0);
  t.match(sent(a, 'toClient')[0], /^425 /);
  m.clientLine('EPSV');
  t.match(sent(m.serverReply(reply('229 (|||0|)')), 'toClient')[0], /^425 /);
  m.clientLine('PASV');
  t.same(sent(m.serverReply(reply('500 no')), 'toClient'), ['500 no'], 'refusals pass through');
});

t.test('a late data path after close is handed back', async (t) => {
  const m = machine();
  m.clientLine('PASV');
  const a = m.serverReply(reply('227 (198,51,100,2,4,1)'));
  m.close();
  t.same(releases(m.dataOpened(opens(a)[0]!.token, { id: 'late', port: 50000 })), ['late']);
  t.same(m.clientLine('NOOP'), []);
});

t.test('-A admits only anonymous logins', async (t) => {
  const m = machine({ anonymousOnly: true });
  t.match(sent(m.clientLine('USER alice'), 'toClient')[0], /^530 /);
  t.same(sent(m.clientLine('user Anonymous'), 'toServer'), ['user Anonymous']);
  m.serverReply(reply('331 ok'));
  t.same(sent(m.clientLine('USER ftp'), 'toServer'), ['USER ftp']);
});

t.test('AUTH is refused so clients fall back to plain FTP; EPSV ALL is honoured', async (t) => {
  const m = machine();
  t.match(sent(m.clientLine('AUTH TLS'), 'toClient')[0], /^534 /);
  t.same(sent(m.clientLine('EPSV ALL'), 'toClient'), ['200 EPSV ALL ok']);
  t.match(sent(m.clientLine('PASV'), 'toClient')[0], /^503 /);
  t.match(sent(m.clientLine('PORT 192,0,2,2,200,1'), 'toClient')[0], /^503 /);
  t.same(sent(m.clientLine('EPSV'), 'toServer'), ['PASV']);
});

t.test('IPv6 clients: PASV refused, EPSV works', async (t) => {
  const m = machine({ client: { address: '2001:db8:1::2', port: 4000 } });
  t.match(sent(m.clientLine('PASV'), 'toClient')[0], /^500 /);
  t.same(sent(m.clientLine('EPSV 2'), 'toServer'), ['PASV']);
  const a = m.clientLine('EPRT |2|2001:db8:1::2|40000|');
  t.same(opens(a)[0]?.request.target, { address: '2001:db8:1::2', port: 40000 }, 'data goes to the IPv6 client');
});

t.test('a flood of pipelined lines while waiting ends the session', async (t) => {
  const m = machine({ maxQueued: 4 });
  m.clientLine('PASV');
  m.serverReply(reply('227 (198,51,100,2,4,1)'));
  for (let i = 0; i < 4; i++) t.same(m.clientLine('NOOP'), []);
  const a = m.clientLine('NOOP');
  t.equal(a[0]?.type, 'close');
});

t.test('a transfer refused without a preliminary reply releases the path', async (t) => {
  const m = machine();
  m.clientLine('PASV');
  const a = m.serverReply(reply('227 (198,51,100,2,4,1)'));
  m.dataOpened(opens(a)[0]!.token, { id: 'p', port: 50000 });
  m.clientLine('SIZE nofile');
  t.same(releases(m.serverReply(reply('550 no such file'))), [], 'an unrelated 550 keeps the path');
  m.clientLine('RETR nofile');
  t.same(releases(m.serverReply(reply('550 no such file'))), ['p']);
});

t.test('PORT refused by the server: the path is released at once, before the reply goes out', async (t) => {
  const m = machine();
  const a = m.clientLine('PORT 192,0,2,2,156,64');
  m.dataOpened(opens(a)[0]!.token, { id: 'a1', port: 50020 });
  const b = m.serverReply(reply('500 PORT refused'));
  t.same(
    b.map((x) => (x.type === 'release' ? `release ${x.id}${x.urgent ? ' urgent' : ''}` : x.type === 'toClient' ? x.text : x.type)),
    ['release a1 urgent', '500 PORT refused'],
  );
  t.equal(m.currentPath, null);
});

t.test('passiveDirect: the client is sent to the server address and port, no data path', async (t) => {
  const m = machine({ addressing: { ...addressing, passiveDirect: true } });
  m.clientLine('PASV');
  const a = m.serverReply(reply('227 Entering Passive Mode (10,0,0,5,19,137)'));
  t.same(opens(a), []);
  t.same(sent(a, 'toClient'), ['227 Entering Passive Mode (198,51,100,2,19,137).'], 'private address replaced');
  m.clientLine('EPSV');
  t.same(sent(m.serverReply(reply('229 ok (|||6000|)')), 'toClient'), ['229 Entering Extended Passive Mode (|||6000|)']);
});

t.test('epsvRefused: EPSV and EPSV ALL get 502 from the proxy, in turn; PASV still works', async (t) => {
  const m = machine({ addressing: { ...addressing, epsvRefused: true } });
  const refused = '502 EPSV not available through this gateway, use PASV';
  t.same(sent(m.clientLine('EPSV'), 'toClient'), [refused]);
  t.same(sent(m.clientLine('NOOP'), 'toServer'), ['NOOP']);
  const a = m.clientLine('EPSV ALL');
  t.same([sent(a, 'toServer'), sent(a, 'toClient')], [[], []], 'nothing to the server; the 502 waits for the NOOP reply');
  t.same(sent(m.serverReply(reply('200 NOOP ok')), 'toClient'), ['200 NOOP ok', refused]);
  m.clientLine('PASV');
  const [open] = opens(m.serverReply(reply('227 Entering Passive Mode (10,0,0,5,19,137)')));
  t.ok(open, 'PASV still opens a path: EPSV ALL was not taken');
  t.same(sent(m.dataOpened(open!.token, { id: 'p1', port: 50001 }), 'toClient'), ['227 Entering Passive Mode (203,0,113,9,195,81).']);
});

t.test('a server that skips the reply to ABOR does not make a later path go away', async (t) => {
  const m = machine();
  const port = (n: number) => {
    const a = m.clientLine(`PORT 192,0,2,2,200,${n}`);
    const [o] = opens(a);
    return m.dataOpened(o!.token, { id: `a${n}`, port: 50000 + n });
  };
  port(1);
  m.serverReply(reply('200 PORT ok'));
  m.clientLine('RETR big');
  m.serverReply(reply('150-Connecting', '150 0.003 seconds (measured here)'));
  m.clientLine('ABOR'); // pure-ftpd answers neither RETR nor ABOR here
  m.clientLine('NOOP');
  t.same(releases(m.serverReply(reply('200 Zzz'))), ['a1'], "taken as RETR's final reply: its own path goes");
  const b = port(2);
  t.same(releases(b), []);
  t.same(releases(m.serverReply(reply('200 PORT ok'))), [], 'a reply that pairs with the stale ABOR releases nothing');
  m.clientLine('RETR small');
  t.same(releases(m.serverReply(reply('200 PORT ok'))), [], 'nor one that pairs with NOOP');
  t.equal(m.currentPath?.id, 'a2', 'the new path stays admitted');
});

t.test('ABOR goes to the server clean, urgent only when the client sent Telnet IP', async (t) => {
  const m = machine();
  const rfc959 = m.clientLine('\xff\xf4\xff\xf2ABOR');
  t.same(rfc959.filter((x) => x.type === 'toServer'), [{ type: 'toServer', text: 'ABOR', urgent: true }]);
  const plain = m.clientLine('ABOR');
  t.same(plain.filter((x) => x.type === 'toServer'), [{ type: 'toServer', text: 'ABOR', urgent: false }]);
});

t.test('what is forwarded is what was vetted: Telnet bytes removed, bare CR refused', async (t) => {
  const m = machine();
  const a = m.clientLine('P\xff\xf1ORT 203,0,113,5,156,64');
  t.match(sent(a, 'toClient')[0], /^501 /, 'a PORT hidden behind a Telnet NOP is still vetted');
  t.same(sent(a, 'toServer'), []);
  t.same(sent(m.clientLine('NO\xff\xf1OP'), 'toServer'), ['NOOP']);
  m.serverReply(reply('200 ok'));
  const b = m.clientLine('NOOP\rPORT 203,0,113,5,156,64');
  t.same(sent(b, 'toServer'), []);
  t.match(sent(b, 'toClient')[0], /^500 Bare CR/);
});

const logs = (as: Action[]) => as.filter((a) => a.type === 'log').map((a) => (a as { msg: string }).msg);

t.test('nothing goes to the server before its greeting; commands sent early run in order after it', async (t) => {
  const m = machine({}, false);
  t.same(m.clientLine('USER anonymous'), [], 'held');
  t.same(m.clientLine('PASS x'), []);
  t.same(m.clientLine('PASV'), []);
  t.equal(m.outstanding, 3, 'held lines count: the shell stops reading past a bound');
  t.same(sent(m.serverReply(reply('120 ready in 1 minute')), 'toServer'), [], 'a 120 is not the greeting yet');
  const a = m.serverReply(reply('220 ready'));
  t.same(sent(a, 'toClient'), ['220 ready']);
  t.same(sent(a, 'toServer'), ['USER anonymous', 'PASS x', 'PASV']);
  t.same(sent(m.serverReply(reply('331 pw')), 'toClient'), ['331 pw']);
  const b = m.serverReply(reply('230 in'));
  t.same(sent(b, 'toClient'), ['230 in'], 'the 230 answers PASS, not PASV');
  t.ok(b.some((x) => x.type === 'loggedIn'));
  const c = m.serverReply(reply('227 Entering Passive Mode (10,0,0,5,4,1)'));
  t.equal(opens(c).length, 1, 'the 227 answers PASV: a path is opened');
  t.same(sent(m.dataOpened(opens(c)[0]!.token, { id: 'p', port: 50000 }), 'toClient'), ['227 Entering Passive Mode (203,0,113,9,195,80).']);
});

t.test('pure-ftpd after a reset RETR: only 150, then 226 for ABOR; the next PASV is still rewritten', async (t) => {
  const m = machine();
  m.clientLine('PASV');
  m.dataOpened(opens(m.serverReply(reply('227 (10,0,0,5,4,1)')))[0]!.token, { id: 'p1', port: 50001 });
  m.clientLine('RETR big');
  m.serverReply(reply('150 Accepted data connection'));
  m.clientLine('ABOR');
  const a = m.serverReply(reply('226 ABOR ok'));
  t.same(sent(a, 'toClient'), ['226 ABOR ok'], "taken as RETR's final reply (the same text the client would see)");
  t.same(releases(a), ['p1']);
  m.clientLine('PASV');
  const b = m.serverReply(reply('227 Entering Passive Mode (10,0,0,5,4,2)'));
  t.same(sent(b, 'toClient'), [], 'the skipped ABOR ends silently: the client saw what the server sent and pairs it alike');
  t.ok(logs(b).includes('the server skipped a reply'));
  t.equal(opens(b).length, 1, 'the 227 went to its PASV: a path is opened');
  t.same(sent(m.dataOpened(opens(b)[0]!.token, { id: 'p2', port: 50002 }), 'toClient'), ['227 Entering Passive Mode (203,0,113,9,195,82).']);
  m.clientLine('NOOP');
  t.same(sent(m.serverReply(reply('200 ok')), 'toClient'), ['200 ok'], 'in step from here on');
  t.equal(m.outstanding, 0);
});

t.test('a 227 or 229 that answers no PASV/EPSV of the proxy never reaches the client', async (t) => {
  const m = machine();
  m.clientLine('TYPE I');
  t.same(sent(m.serverReply(reply('200 Type set')), 'toClient'), ['200 Type set']);
  const a = m.serverReply(reply('227 Entering Passive Mode (192,168,1,10,0,22).'));
  t.same(sent(a, 'toClient'), [], 'unsolicited 227 dropped');
  t.same(opens(a), []);
  t.ok(logs(a).includes('reply from the server that answers no command dropped'));
  m.clientLine('NOOP');
  t.same(sent(m.serverReply(reply('229 (|||22|)')), 'toClient'), [], 'a 229 while NOOP waits is not its reply');
  t.same(sent(m.serverReply(reply('200 NOOP ok')), 'toClient'), ['200 NOOP ok'], "NOOP gets its own reply");
  m.clientLine('SYST');
  t.same(sent(m.serverReply(reply('227-Entering Passive Mode', '227 (192,168,1,10,0,22)')), 'toClient'), []);
  t.same(sent(m.serverReply(reply('215 UNIX')), 'toClient'), ['215 UNIX']);
  t.same(m.repeated, { 'extra 227': 2 }, 'logged once, counted after');
});

t.test('a server that adds a reply after 200 cannot feed a PASV the wrong answer', async (t) => {
  const m = machine();
  m.clientLine('PASV');
  const a = m.serverReply(reply('200 extra'));
  t.same(sent(a, 'toClient'), [], 'a 200 cannot answer PASV and nothing else waits: dropped');
  const b = m.serverReply(reply('227 (10,0,0,5,4,1)'));
  t.equal(opens(b).length, 1);
});

t.test('multi-line 227: the address is looked for in every line', async (t) => {
  for (const lines of [
    ['227-Entering Passive Mode', '227 Entering Passive Mode (10,0,0,5,4,1)'],
    ['227-Entering Passive Mode (10,0,0,5,4,1)', '227 OK'],
    ['227-Entering Passive Mode', ' =10,0,0,5,4,1', '227 End'],
  ]) {
    const m = machine();
    m.clientLine('PASV');
    const a = m.serverReply(reply(...lines));
    t.equal(opens(a)[0]?.request.target.port, 1025, lines.join(' / '));
  }
  const m = machine();
  m.clientLine('EPSV');
  const b = m.serverReply({ code: 229, lines: ['229-Extended Passive', '229 Entering Extended Passive Mode (|||6000|)'] });
  t.equal(opens(b)[0]?.request.target.port, 6000, 'and in a 229');
  m.close();
  const c = machine();
  c.clientLine('PASV');
  const d = c.serverReply({ code: 227, lines: ['227-Entering Passive Mode'], truncated: true });
  t.match(sent(d, 'toClient')[0], /^425 /, 'a 227 cut short at the size bound: 425, nothing opened');
  t.same(opens(d), []);
});

t.test('pipelined PASV + RETR: the transfer is tied to the path negotiated for it', async (t) => {
  const m = machine();
  m.clientLine('PASV');
  m.dataOpened(opens(m.serverReply(reply('227 (10,0,0,5,4,1)')))[0]!.token, { id: 'old', port: 50001 });
  m.clientLine('LIST');
  m.serverReply(reply('150 here'));
  m.serverReply(reply('226 done'));
  t.equal(m.currentPath, null);
  m.clientLine('PASV');
  m.clientLine('RETR missing');
  const a = m.serverReply(reply('227 (10,0,0,5,4,2)'));
  const b = m.dataOpened(opens(a)[0]!.token, { id: 'new', port: 50002 });
  t.same(sent(b, 'toClient'), ['227 Entering Passive Mode (203,0,113,9,195,82).']);
  const c = m.serverReply(reply('550 No such file'));
  t.same(releases(c), ['new'], 'the RETR forwarded before the path existed still releases it');
  t.same(
    c.flatMap((x) => (x.type === 'release' ? [`release ${x.id}${x.urgent ? ' urgent' : ''}`] : x.type === 'toClient' ? [x.text] : [])),
    ['release new urgent', '550 No such file'],
    'at once, before the client can read the 550 and race to the port',
  );
  t.equal(m.currentPath, null);
});

t.test('a long reply goes out in pieces, and a local answer behind it waits for its end', async (t) => {
  const m = machine();
  m.clientLine('STAT');
  t.same(sent(m.serverReply({ code: 211, lines: ['211-Status', 'a'], partial: true }), 'toClient'), ['211-Status\r\na']);
  t.same(sent(m.clientLine('LPSV'), 'toClient'), [], 'queued behind the reply in progress');
  t.same(sent(m.serverReply({ code: 211, lines: ['b', 'c'], partial: true }), 'toClient'), ['b\r\nc']);
  t.same(sent(m.serverReply({ code: 211, lines: ['211 End'], partial: false }), 'toClient'), ['211 End', '502 LPSV is not supported, use EPSV']);
  t.equal(m.outstanding, 0);
  const a = m.serverReply({ code: 211, lines: ['211-unsolicited', 'x'], partial: true });
  t.same(sent(a, 'toClient'), ['211-unsolicited\r\nx'], 'with nothing outstanding, passed on');
  t.same(sent(m.clientLine('LPSV'), 'toClient'), [], 'a local answer waits for the end of that too');
  t.same(sent(m.serverReply({ code: 211, lines: ['211 end'], partial: false }), 'toClient'), ['211 end', '502 LPSV is not supported, use EPSV']);
});

t.test('a refusal repeated 10,000 times is logged once, then counted', async (t) => {
  const m = machine();
  let logged = 0;
  for (let i = 0; i < 10000; i++) {
    for (const line of ['LPRT 4,4,1,2,3,4,2,0,20', 'AUTH TLS', 'PORT 1,2,3']) logged += logs(m.clientLine(line)).length;
  }
  t.equal(logged, 3, 'one line per kind');
  t.same(m.repeated, { LPRT: 10000, AUTH: 10000, 'invalid PORT': 10000 });
});

t.test('a transfer whose final reply the server skipped ends, and its path goes', async (t) => {
  const m = machine();
  m.clientLine('PASV');
  m.dataOpened(opens(m.serverReply(reply('227 (10,0,0,5,4,1)')))[0]!.token, { id: 'p', port: 50001 });
  m.clientLine('RETR f');
  m.serverReply(reply('150 go'));
  t.ok(m.transferActive);
  m.clientLine('PASV');
  const a = m.serverReply(reply('227 (10,0,0,5,4,2)'));
  t.same(sent(a, 'toClient'), [], 'nothing invented for the client');
  t.same(releases(a), ['p']);
  t.notOk(m.transferActive);
  t.equal(opens(a).length, 1);
});

t.test('transfer records: user, directory and type from what the server accepted', async (t) => {
  const m = machine();
  t.equal(m.user, null);
  t.equal(m.state, 'login');
  m.clientLine('USER alice');
  m.serverReply(reply('331 password'));
  m.clientLine('PASS x');
  m.serverReply(reply('230 in'));
  t.equal(m.user, 'alice');
  t.equal(m.state, 'idle');
  m.clientLine('PWD');
  m.serverReply(reply('257 "/home/alice" is current'));
  t.equal(m.directory, '/home/alice', "PWD's 257 names it");
  m.clientLine('CWD pub');
  m.serverReply(reply('250 ok'));
  t.equal(m.directory, '/home/alice/pub');
  m.clientLine('CWD nope');
  m.serverReply(reply('550 no such directory'));
  t.equal(m.directory, '/home/alice/pub', 'a refused CWD does not move it');
  m.clientLine('MKD new');
  m.serverReply(reply('257 "/home/alice/pub/new" created'));
  t.equal(m.directory, '/home/alice/pub', "MKD's 257 does not move it");
  m.clientLine('CDUP');
  m.serverReply(reply('250 ok'));
  t.equal(m.directory, '/home/alice');
  t.equal(m.type, 'ascii', 'FTP starts in ASCII');
  m.clientLine('TYPE I');
  m.serverReply(reply('200 binary'));
  t.equal(m.type, 'binary');
  m.clientLine('USER bob');
  t.equal(m.user, 'bob');
  t.equal(m.directory, null, 'a new login forgets the directory');
});

t.test('transfer records: failed (no 150), aborted (ABOR), skipped, and cut by the session end', async (t) => {
  const m = machine();
  const started = m.clientLine('RETR missing');
  t.equal(started.filter((a) => a.type === 'transferStarted').length, 1);
  const f = ended(m.serverReply(reply('550 no such file')));
  t.match(f, [{ verb: 'RETR', arg: 'missing', code: 550, abortSent: false, path: null, counted: true }]);
  t.equal(m.transfers, 1);

  m.clientLine('PASV');
  const o = opens(m.serverReply(reply('227 (198,51,100,2,4,1)')));
  m.dataOpened(o[0]!.token, { id: 'p1', port: 50001 });
  m.clientLine('STOR up.bin');
  m.serverReply(reply('150 go'));
  t.equal(m.state, 'transfer');
  m.clientLine('\xff\xf4ABOR');
  const ab = ended(m.serverReply(reply('426 aborted')));
  t.match(ab, [{ verb: 'STOR', code: 426, abortSent: true, path: { id: 'p1', kind: 'passive' } }]);
  t.same(ended(m.serverReply(reply('226 abort ok'))), [], "the ABOR's own reply ends no transfer");

  m.clientLine('PASV');
  const o2 = opens(m.serverReply(reply('227 (198,51,100,2,4,2)')));
  m.dataOpened(o2[0]!.token, { id: 'p2', port: 50002 });
  m.clientLine('RETR big');
  m.serverReply(reply('150 go'));
  const c = ended(m.close());
  t.match(c, [{ verb: 'RETR', arg: 'big', code: null, path: { id: 'p2', kind: 'passive' } }], 'the session end cuts it');
  t.same(m.close(), [], 'once');
  t.equal(m.transfers, 3);
});

t.test('transfer records: passive-direct data is not counted', async (t) => {
  const m = machine({ addressing: { ...addressing, passiveDirect: true } });
  m.clientLine('PASV');
  m.serverReply(reply('227 (198,51,100,2,4,1)'));
  m.clientLine('LIST');
  m.serverReply(reply('150 here'));
  t.match(ended(m.serverReply(reply('226 done'))), [{ verb: 'LIST', path: null, counted: false }]);
});

t.test('transfer records: the mode of a negotiation whose path never came', async (t) => {
  const m = machine();
  const [open] = opens(m.clientLine('PORT 192,0,2,2,156,64'));
  m.dataFailed(open!.token, new DataPlaneError('PORTS_EXHAUSTED', 'none free'));
  m.clientLine('RETR f');
  t.match(ended(m.serverReply(reply('425 no data connection'))), [{ verb: 'RETR', code: 425, path: null, mode: 'active' }]);
});

t.test('a path the data plane lost: its transfer gets 425 from the proxy, a new PASV works', async (t) => {
  const m = machine();
  const a = (m.clientLine('PASV'), m.serverReply(reply('227 Entering Passive Mode (198,51,100,2,19,137).')));
  m.dataOpened(opens(a)[0]!.token, { id: 'p1', port: 50001 });
  t.same(m.dataLost('other'), [], 'another id changes nothing');
  m.dataLost('p1');
  const r = m.clientLine('RETR f');
  t.same(sent(r, 'toServer'), [], 'not sent to the server');
  t.same(sent(r, 'toClient'), ["425 Can't open data connection: the proxy lost it (firewall reloaded), negotiate again"]);
  t.same(releases(r), ['p1']);
  const b = (m.clientLine('PASV'), m.serverReply(reply('227 Entering Passive Mode (198,51,100,2,19,138).')));
  m.dataOpened(opens(b)[0]!.token, { id: 'p2', port: 50002 });
  t.same(sent(m.clientLine('RETR f'), 'toServer'), ['RETR f'], 'the next negotiation carries the transfer');
});
