// Bugs the session fuzzer found, each reduced to its smallest input: once through the pure
// byte path, once through the real session shell against a server that splits lines at LF
// as vsftpd and pure-ftpd do. Both bugs are fixed in src; these keep them fixed.
import t from 'tap';
import { LineFramer } from '../../src/protocol/lines.js';
import { SessionMachine } from '../../src/session/machine.js';
import { parseArgs } from '../../src/cli.js';
import { buildConfig } from '../../src/config.js';
import { FakeDataPlane } from '../../src/dataplane/fake.js';
import { createLogger } from '../../src/log.js';
import { ProxyServer } from '../../src/server.js';
import { Control, ScriptedServer, basicResponder } from '../lib/scripted.js';

// IAC DONT (0xFF 0xFE) with LF as its option byte: the framer keeps the option byte in the
// line (a deliberate, tested choice), the machine classifies the line as NOOP and forwards it
// whole, and a server that ends lines at LF runs the rest as a command of its own. Checked by
// hand in the lab: vsftpd and pure-ftpd both answer "200 PORT command successful" to
// "NOOP \xff\xfe\nPORT <their control peer>,4,1"; pyftpdlib reads it as one line.
const SMUGGLE = 'NOOP \xff\xfe\nPORT 10,1,2,3,200,1\r\n';

t.test('no line forwarded to the server holds an LF (Telnet option byte)', async (t) => {
  const m = new SessionMachine({
    sid: 'r1',
    client: { address: '192.0.2.2', port: 40000 },
    server: { address: '198.51.100.2', port: 21 },
    addressing: {
      passiveListen: '192.0.2.1',
      passiveAdvertise: '192.0.2.1',
      passiveSource: '198.51.100.1',
      activeListen: '198.51.100.1',
      activeSource: '192.0.2.1',
    },
    anonymousOnly: false,
    rewriteSourcePort: false,
  });
  const toServer: string[] = [];
  for (const line of new LineFramer().push(Buffer.from(SMUGGLE, 'latin1'))) {
    for (const a of m.clientLine(line)) if (a.type === 'toServer') toServer.push(a.text);
  }
  t.same(toServer.filter((l) => l.includes('\n')), [], 'no LF inside a forwarded line');
  const asServerReads = toServer.flatMap((l) => l.split('\n'));
  t.same(asServerReads.filter((l) => /^\s*PORT/i.test(l)), [], 'a server splitting at LF sees no PORT the proxy did not write');
});

t.test('through the session shell: the server never receives the client PORT', async (t) => {
  const server = new ScriptedServer(basicResponder);
  const serverPort = await server.listen();
  const parsed = parseArgs(['-R', '127.0.0.1'], { out: () => undefined, err: (s) => { throw new Error(s); } });
  if (parsed.kind !== 'run') throw new Error('bad test flags');
  const dp = new FakeDataPlane();
  const proxy = new ProxyServer({
    config: { ...buildConfig(parsed.options), port: 0 },
    dataPlane: dp,
    logger: createLogger({ debugLevel: 0, foreground: false, destination: { write: () => undefined } }),
    resolveServer: async () => ({ address: '127.0.0.1', port: serverPort }),
  });
  const { port } = await proxy.listen();
  t.teardown(async () => {
    await proxy.close(0);
    await server.close();
  });
  const c = new Control(port);
  t.match(await c.line(), /^220 /);
  c.sock.write(SMUGGLE, 'latin1');
  const replies = [await c.line(), await c.line()];
  c.send('NOOP');
  replies.push(await c.line());
  c.end();
  // ScriptedServer ends lines at LF, as vsftpd and pure-ftpd do.
  t.same(server.received.filter((l) => /PORT/i.test(l)), [], `the server got no PORT (client saw ${JSON.stringify(replies)})`);
  t.equal(dp.opened.length, 0, 'nothing admitted');
});
