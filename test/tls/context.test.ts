import t from 'tap';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import tls from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { once } from 'node:events';
import { TlsTerminator, type SessionTls } from '../../src/tls/context.js';
import { ConfigError, DataPlaneError } from '../../src/errors.js';
import { CLI } from '../lib/proxy.js';

const dir = mkdtempSync(join(tmpdir(), 'fp-tls-'));
t.teardown(() => rmSync(dir, { recursive: true, force: true }));

/** A self-signed certificate and its key (and, with `ca`, a leaf signed by that CA, then the CA: a chain). */
function certificate(name: string, ca?: { cert: string; key: string }): { cert: string; key: string } {
  const cert = join(dir, `${name}.crt`);
  const key = join(dir, `${name}.key`);
  const base = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', key, '-subj', `/CN=${name}`, '-days', '2'];
  const r = ca
    ? spawnSync('openssl', ['req', '-x509', ...base, '-CA', ca.cert, '-CAkey', ca.key, '-out', cert])
    : spawnSync('openssl', ['req', '-x509', ...base, '-out', cert]);
  if (r.status !== 0) throw new Error(`openssl: ${r.stderr}`);
  if (ca) writeFileSync(cert, readFileSync(cert, 'utf8') + readFileSync(ca.cert, 'utf8'));
  return { cert, key };
}

const a = certificate('a');
const b = certificate('b');
const ca = certificate('ca');
const leaf = certificate('leaf', ca);
const cfg = (cert: string, key: string, reuseCheck = true) => ({ certFile: cert, keyFile: key, required: false, reuseCheck });

t.test('missing, unreadable, not PEM or mismatched files: one ConfigError line naming the flag', async (t) => {
  const junk = join(dir, 'junk.pem');
  writeFileSync(junk, 'not a certificate\n');
  const cases: [string, string, RegExp][] = [
    [join(dir, 'nope.crt'), a.key, /^--tls-cert: cannot read '.*nope\.crt': ENOENT$/],
    [a.cert, join(dir, 'nope.key'), /^--tls-key: cannot read '.*nope\.key': ENOENT$/],
    [dir, a.key, /^--tls-cert: cannot read '.*': EISDIR$/],
    [junk, a.key, /^--tls-cert: '.*junk\.pem' holds no PEM certificate$/],
    [a.cert, junk, /^--tls-key: '.*junk\.pem' holds no PEM private key$/],
    [a.cert, b.key, /^--tls-key: '.*b\.key' is not the key of the certificate in '.*a\.crt'$/],
  ];
  for (const [cert, key, re] of cases) {
    t.throws(() => TlsTerminator.load(cfg(cert, key)), ConfigError);
    try {
      TlsTerminator.load(cfg(cert, key));
    } catch (e) {
      t.match((e as Error).message, re);
      t.notOk((e as Error).message.includes('\n'), 'one line');
    }
  }
  t.ok(TlsTerminator.load(cfg(leaf.cert, leaf.key)), 'a leaf followed by its chain is accepted');
});

t.test('the proxy checks the files before it starts: exit 2 and one line on stderr', async (t) => {
  const r = spawnSync(process.execPath, [CLI, '-R', '127.0.0.1', '-p', '1', '--backend', 'relay', '--tls', 'terminate', '--tls-cert', a.cert, '--tls-key', b.key], {
    encoding: 'utf8',
    timeout: 10_000,
  });
  t.equal(r.status, 2);
  t.match(r.stderr, /^ftp-proxy: --tls-key: '.*b\.key' is not the key of the certificate in '.*a\.crt'\n$/);
  const missing = spawnSync(process.execPath, [CLI, '-R', '127.0.0.1', '-p', '1', '--tls', 'terminate', '--tls-cert', a.cert, '--tls-key', join(dir, 'gone.key')], { encoding: 'utf8', timeout: 10_000 });
  t.equal(missing.status, 2);
  t.match(missing.stderr, /^ftp-proxy: --tls-key: cannot read .*ENOENT\n$/);
});

/**
 * A loopback TLS server for `session`: its data connections (through secure()), or with
 * `control` its control connection (wrap(): no check, it hands out the session's tickets).
 */
async function dataServer(session: SessionTls, control = false): Promise<{ port: number; results: Promise<string>[]; close: () => void }> {
  const results: Promise<string>[] = [];
  const srv = net.createServer((sock) => {
    const secured = control
      ? new Promise<net.Socket>((resolve) => {
          const w = session.wrap(sock);
          w.once('secure', () => resolve(w));
        })
      : session.secure(sock);
    results.push(
      secured.then(
        (s) => {
          s.end('data');
          return 'admitted';
        },
        (e: DataPlaneError) => e.code,
      ),
    );
  });
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  return { port: (srv.address() as net.AddressInfo).port, results, close: () => srv.close() };
}

/** A TLS client connection, resuming `session` when given; resolves with its session ticket and what it read. */
function client(port: number, session?: Buffer, maxVersion: tls.SecureVersion = 'TLSv1.3'): Promise<{ session?: Buffer; got: string }> {
  return new Promise((resolve, reject) => {
    const c = tls.connect({ port, host: '127.0.0.1', rejectUnauthorized: false, maxVersion, ...(session ? { session } : {}) });
    let got = '';
    let ticket: Buffer | undefined;
    c.on('session', (s: Buffer) => (ticket = s));
    c.on('data', (d: Buffer) => (got += d.toString()));
    c.on('error', () => resolve({ got }));
    c.on('close', () => resolve({ ...(ticket ? { session: ticket } : {}), got }));
    c.on('secureConnect', () => undefined);
    setTimeout(() => reject(new Error('client timeout')), 5000).unref();
  });
}

for (const version of ['TLSv1.2', 'TLSv1.3'] as const) {
  t.test(`${version}: a data connection is admitted only when it resumes its own control connection's session`, async (t) => {
    const term = TlsTerminator.load(cfg(a.cert, a.key));
    const mine = term.forSession();
    const other = term.forSession();
    const control = await dataServer(mine, true);
    const data = await dataServer(mine);
    const elsewhere = await dataServer(other);
    t.teardown(() => (control.close(), data.close(), elsewhere.close()));
    const first = await client(control.port, undefined, version);
    t.ok(first.session, 'the control connection got a ticket');
    const fresh = await client(data.port, undefined, version);
    t.equal(await data.results[0], 'TLS_NOT_RESUMED', 'a full handshake is not a data connection of this session');
    t.equal(fresh.got, '');
    const resumed = await client(data.port, first.session, version);
    t.equal(await data.results[1], 'admitted');
    t.equal(resumed.got, 'data');
    const stolen = await client(elsewhere.port, first.session, version);
    t.equal(await elsewhere.results[0], 'TLS_NOT_RESUMED', "another session's ticket opens nothing here");
    t.equal(stolen.got, '');
    const relaxed = await dataServer(TlsTerminator.load(cfg(a.cert, a.key, false)).forSession());
    t.teardown(() => relaxed.close());
    await client(relaxed.port, undefined, version);
    t.equal(await relaxed.results[0], 'admitted', '--tls-no-reuse-check admits a full handshake');
  });
}

t.test('reload(): new sessions present the new certificate; a bad pair keeps the old one', async (t) => {
  const live = { cert: join(dir, 'live.crt'), key: join(dir, 'live.key') };
  writeFileSync(live.cert, readFileSync(a.cert));
  writeFileSync(live.key, readFileSync(a.key));
  const term = TlsTerminator.load(cfg(live.cert, live.key));
  const subject = async (): Promise<string> => {
    const srv = await dataServer(term.forSession());
    t.teardown(() => srv.close());
    return new Promise((resolve) => {
      const c = tls.connect({ port: srv.port, host: '127.0.0.1', rejectUnauthorized: false }, () => {
        resolve(c.getPeerCertificate().subject.CN as string);
        c.destroy();
      });
    });
  };
  t.equal(await subject(), 'a');
  writeFileSync(live.cert, readFileSync(b.cert));
  t.match(term.reload(), /--tls-key: .* is not the key of the certificate/, 'half-replaced files: refused');
  t.equal(await subject(), 'a', 'the old pair is still used');
  writeFileSync(live.key, readFileSync(b.key));
  t.equal(term.reload(), null);
  t.equal(await subject(), 'b');
});
