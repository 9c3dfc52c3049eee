// --read-only end to end, both data planes: real clients' uploads, deletes and directory
// changes get the policy's reply, downloads work, and the server's directory stays as it was.
import t from 'tap';
import { readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { isRoot, startLab, type ServerName } from './lib/lab.js';
import { startProxy } from './lib/proxy.js';

/** Every name under `dir`, with sizes: what "the server's directory is unchanged" compares. */
async function snapshot(dir: string): Promise<string[]> {
  const entries = await readdir(dir, { recursive: true, withFileTypes: true });
  return entries.map((e) => `${join(e.parentPath, e.name).slice(dir.length)}${e.isDirectory() ? '/' : ''}`).sort();
}

/**
 * Spellings of write commands sent as raw bytes (latin-1): case, Telnet bytes inside the verb,
 * white space around it, X synonyms, and UTF-8 characters that pyftpdlib upper-cases to STOR
 * and SITE. MKD changes the server without any data connection.
 */
const BYPASSES = [
  'stor by-case.txt',
  'StOr by-mixed.txt',
  'S\xff\xf4TOR by-telnet.txt',
  '\xff\xf4\xff\xf2STOR by-synch.txt',
  '\tSTOR by-tab.txt',
  'STOR\tby-tab-after.txt',
  'mkd d1',
  'M\xff\xf4KD d2',
  ' MKD d3',
  'XMKD d4',
  'xmkd d5',
  'dele keep.txt',
  'rnfr keep.txt',
  'site chmod 777 keep.txt',
  '\xef\xac\x86OR by-ligature.txt',
  '\xc5\xbfTOR by-long-s.txt',
  'S\xc4\xb1TE chmod 777 keep.txt',
];

t.test('--read-only on both data planes', async (t) => {
  if (!isRoot) return t.fail('end-to-end tests need root (network namespaces)');
  const lab = await startLab(t);
  const { env } = lab;

  await t.test('control: straight to pyftpdlib, the ligature spelling is a STOR', async (t) => {
    const r = await lab.pyftp(
      { host: env.server4, port: env.ports.pyftpd, user: env.user, pass: env.pass, latin1: true, timeoutMs: 15_000 },
      ['raw', '\xef\xac\x86OR control.txt'],
    );
    t.ok(r.ok, r.error ?? '');
    t.match(r.raw_replies?.[0], /^150 /, 'pyftpdlib starts a STOR: the spelling is a real way around a verb filter');
  });

  const planes: { backend: 'nftables' | 'relay'; server: ServerName; port: number }[] = [
    { backend: 'nftables', server: 'vsftpd', port: 8021 },
    { backend: 'relay', server: 'pyftpd', port: 8022 },
  ];
  for (const { backend, server, port } of planes) {
    await t.test(`${backend} plane, ${server}`, async (t) => {
      const proxy = await startProxy(lab, [
        '-R', env.server4, '-P', String(env.ports[server]), '-b', env.gwLan4, '-p', String(port),
        '--backend', backend, '--nft-table', `ftp_proxy_${backend}`, '--read-only',
      ]);
      const dir = env.upload[server];
      await writeFile(join(dir, 'keep.txt'), 'keep\n');
      const before = await snapshot(dir);
      const via = (user: boolean, mode: 'pasv' | 'port' = 'pasv') => ({
        host: env.gwLan4,
        port,
        mode,
        timeoutMs: 20_000,
        ...(user ? { user: env.user, pass: env.pass } : {}),
      });
      const upload = join(env.cacheDir, '1MiB.bin');
      const small = await lab.expectedSha256('1MiB.bin');

      for (const mode of ['pasv', 'port'] as const) {
        const put = await lab.curlPut({ ...via(true, mode), path: `curl-${mode}.bin`, file: upload });
        t.notOk(put.ok, `curl ${mode} upload fails`);
        t.equal(put.ftpCode, 550, `curl ${mode}: the policy's 550`);
        const get = await lab.curlGet({ ...via(false, mode), path: '1MiB.bin' });
        t.equal(get.sha256, small, `curl ${mode} download works ${get.stderr}`);
      }
      const lput = await lab.lftp(via(true), [`put ${upload} -o lftp.bin`]);
      t.not(lput.code, 0, 'lftp put fails');
      t.match(lput.stderr, /550 STOR refused: this proxy is read-only \(command policy: read-only\)/, 'lftp shows the policy reply');
      for (const cmd of ['mkdir newdir', 'rm keep.txt', 'mv keep.txt moved.txt']) {
        const r = await lab.lftp(via(true), [cmd]);
        t.not(r.code, 0, `lftp ${cmd} fails`);
        t.match(r.stderr, /command policy: read-only/, `lftp ${cmd}: the policy reply`);
      }
      const out = lab.tmpPath(`lftp-${backend}`);
      const lget = await lab.lftp(via(false, 'port'), [`get /1MiB.bin -o ${out}`]);
      t.equal(lget.code, 0, `lftp active download works ${lget.stderr}`);

      const raw = await lab.pyftp({ ...via(true), latin1: true }, ['raw', ...BYPASSES, 'NOOP']);
      t.ok(raw.ok, raw.error ?? '');
      const replies = raw.raw_replies ?? [];
      t.equal(replies.length, BYPASSES.length + 1, 'a reply to each');
      BYPASSES.forEach((line, i) => t.match(replies[i], /^5\d\d .*\(command policy: read-only\)$/, `${JSON.stringify(line)}: refused by the proxy`));
      t.match(replies.at(-1), /^200 /, 'the session goes on: NOOP after them');

      t.same(await snapshot(dir), before, "the server's directory is unchanged");
      const denied = proxy.find('command denied by policy');
      t.ok(denied.length >= 5, 'refusals logged');
      t.ok(denied.every((l) => l.level === 35 && typeof l.sid === 'string' && l.policy === 'read-only'), 'at notice, with the session id and the policy');
      t.ok(denied.some((l) => l.verb === 'non-ASCII'), 'the UTF-8 spellings are refused as non-ASCII verbs');
      t.same(proxy.logs.filter((l) => l.level >= 50), [], 'no error-level log lines');
      t.equal((await proxy.stop()).code, 0, 'SIGTERM exits 0');
    });
  }
});
