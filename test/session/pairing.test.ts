// Server replies the client did not ask for, and passive replies in more than one line (issue
// 11, defects 3c and 10), through the session shell against a scripted server on loopback.
//
// 3c: a server that follows a 200 with `227 Entering Passive Mode (192,168,1,10,0,22).` must not
//     steer the client to an address of its choosing: no 227/229 reaches the client except as
//     the proxy's answer to the client's own PASV/EPSV, and the next command gets its own reply.
// 10: `227-Entering Passive Mode` / `227 Entering Passive Mode (h,h,h,h,p,p)` carries its address
//     in a later line; the proxy must find it there, open the data path and rewrite the reply.
import t, { type Test } from 'tap';
import { Control, basicResponder, type Responder } from '../lib/scripted.js';
import { isOwn227, isOwn229, login, rig } from '../lib/session-rig.js';

const FOREIGN_227 = '227 Entering Passive Mode (192,168,1,10,0,22).';
const FOREIGN_229 = '229 Entering Extended Passive Mode (|||22|)';
/** The scripted server's own passive port (basicResponder: 19,137 and |||5001|). */
const SERVER_DATA_PORT = 5001;

/** After every 200 it sends, the server says `extra` unasked. */
function addAfter200(extra: string): Responder {
  return (line, sock) => {
    if (line === 'SYST') return '215 UNIX Type: L8';
    const r = basicResponder(line, sock);
    return typeof r === 'string' && r.startsWith('200 ') ? [r, extra] : r;
  };
}

/** Every line the client reads, so that none can slip past unchecked. */
class Seen {
  readonly lines: string[] = [];
  constructor(private readonly c: Control) {}
  async next(ms = 3000): Promise<string | null> {
    const l = await this.c.line(ms).catch(() => null);
    if (l !== null) this.lines.push(l);
    return l;
  }
}

async function unsolicited(t: Test, extra: string, verb: 'PASV' | 'EPSV'): Promise<void> {
  const r = await rig(t, { respond: addAfter200(extra) });
  const c = new Control(r.proxyPort);
  const seen = new Seen(c);
  await login(t, c);
  c.send('NOOP');
  t.equal(await seen.next(), '200 NOOP ok');
  // Give the server's extra line time to arrive before the next command.
  await new Promise((res) => setTimeout(res, 200));
  c.send('SYST');
  t.equal(await seen.next(), '215 UNIX Type: L8', 'the next command gets its own reply');
  c.send(verb);
  const own = await seen.next();
  t.ok(verb === 'PASV' ? isOwn227(r, own) : isOwn229(r, own), `${verb} gets the proxy's own reply: ${JSON.stringify(own)}`);
  t.equal(r.dp.opened.at(-1)?.target.port, SERVER_DATA_PORT, `the data path goes to the port of the server's answer to ${verb}`);
  c.send('NOOP');
  t.equal(await seen.next(), '200 NOOP ok', 'a second NOOP gets its own 200');
  await new Promise((res) => setTimeout(res, 200));
  c.send('QUIT');
  t.equal(await seen.next(), '221 bye', 'QUIT gets its own reply');
  const rest = await c.closedWithin();
  const all = [...seen.lines, ...rest.split('\r\n').filter((l) => l !== '')];
  t.same(all.filter((l) => l.includes('192,168,1,10') || l.includes('|||22|')), [], 'the foreign address never reaches the client');
  t.same(all.filter((l) => /^22[79]/.test(l) && l !== own), [], `no 227/229 but the answer to ${verb}: ${JSON.stringify(all)}`);
}

t.test('an unsolicited 227 after a 200 never reaches the client, and the session stays in step', (t) =>
  unsolicited(t, FOREIGN_227, 'PASV'),
);

t.test('an unsolicited 229 after a 200 never reaches the client, and the session stays in step', (t) =>
  unsolicited(t, FOREIGN_229, 'EPSV'),
);

/** A server whose PASV and EPSV replies are the given lines. */
function passiveIn(pasv: string[], epsv: string[] = ['229 Entering Extended Passive Mode (|||5001|)']): Responder {
  return (line, sock) => (line === 'PASV' ? pasv : line === 'EPSV' ? epsv : basicResponder(line, sock));
}

/** With `epsv`, the server is on ::1, where the proxy asks it EPSV. */
const MULTI_LINE: { what: string; pasv: string[]; epsv?: string[] }[] = [
  { what: 'the address in the last line', pasv: ['227-Entering Passive Mode', '227 Entering Passive Mode (127,0,0,1,19,137)'] },
  { what: 'the address in the first line', pasv: ['227-Entering Passive Mode (127,0,0,1,19,137)', '227 OK'] },
  { what: 'the address in an inner line', pasv: ['227-Entering Passive Mode', ' =127,0,0,1,19,137', '227 OK'] },
  {
    what: 'the port in the last line',
    pasv: [],
    epsv: ['229-Entering Extended Passive Mode', '229 Entering Extended Passive Mode (|||5001|)'],
  },
];

for (const m of MULTI_LINE) {
  const verb = m.pasv.length > 0 ? 'PASV' : 'EPSV';
  t.test(`a multi-line ${verb} reply with ${m.what}: data path opened and the reply rewritten`, async (t) => {
    const r = await rig(t, { respond: passiveIn(m.pasv, m.epsv), ...(m.epsv ? { serverHost: '::1' } : {}) });
    const c = new Control(r.proxyPort);
    await login(t, c);
    c.send(verb);
    const reply = await c.line();
    t.ok(verb === 'PASV' ? isOwn227(r, reply) : isOwn229(r, reply), `the proxy's own one-line reply: ${JSON.stringify(reply)}`);
    t.same(r.dp.opened.map((p) => p.target), [{ address: m.epsv ? '::1' : '127.0.0.1', port: SERVER_DATA_PORT }], 'one data path, to the announced port');
    c.send('NOOP');
    t.equal(await c.line(), '200 NOOP ok', 'the session goes on in step');
    c.end();
  });
}
