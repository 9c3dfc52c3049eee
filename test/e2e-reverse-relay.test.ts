import t from 'tap';
import { reverseRig, reverseSuite } from './lib/reverse-suite.js';
import { sha256File } from './lib/lab.js';

t.test('reverse mode, relay data plane, real clients and servers', (t) => reverseSuite(t, 'relay'));

t.test('clients that prefer TLS go on in plain FTP after the 534', async (t) => {
  const rig = await reverseRig(t, 'relay');
  const { lab } = rig;
  const port = String(rig.proxies.get('vsftpd')!.port);
  const want = await lab.expectedSha256('small.txt');
  const out = lab.tmpPath('tls-try');
  const curl = await lab.exec('client', 'curl', ['-sS', '--ssl', '-o', out, `ftp://${lab.env.gwLan4}:${port}/small.txt`]);
  t.equal(curl.code, 0, `curl --ssl: ${curl.stderr}`);
  t.equal(await sha256File(out), want);
  const lout = lab.tmpPath('tls-lftp');
  const lftp = await lab.lftp({ host: lab.env.gwLan4, port: Number(port) }, [`get /small.txt -o ${lout}`], { 'ftp:ssl-allow': 'yes' });
  t.equal(lftp.code, 0, `lftp with ssl-allow: ${lftp.stderr}`);
  t.equal(await sha256File(lout), want);
  const required = await lab.exec('client', 'curl', ['-sS', '--ssl-reqd', '-o', '/dev/null', `ftp://${lab.env.gwLan4}:${port}/small.txt`]);
  t.not(required.code, 0, 'a client that requires TLS stops, visibly');
});
