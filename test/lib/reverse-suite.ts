// The reverse-mode end-to-end suite, run once per data plane: real clients (curl, lftp)
// in the client namespace, the proxy on the gateway fronting real servers in the server namespace.

import type { Test } from 'tap';
import type { Lab, FtpMode, ServerName } from './lab.js';
import { startLab, isRoot, sha256File } from './lab.js';
import { startProxy, type ProxyProcess } from './proxy.js';
import { join } from 'node:path';

export const PROXY_PORT = 8021;
const MODES: readonly FtpMode[] = ['pasv', 'epsv', 'port', 'eprt'];
const SERVERS: readonly ServerName[] = ['vsftpd', 'pyftpd'];

export interface ReverseRig {
  lab: Lab;
  /** One proxy per server, on PROXY_PORT + index. */
  proxies: Map<ServerName, { proc: ProxyProcess; port: number }>;
}

export async function reverseRig(t: Test, backend: 'relay' | 'nftables', extra: string[] = []): Promise<ReverseRig> {
  const lab = await startLab(t);
  const proxies = new Map<ServerName, { proc: ProxyProcess; port: number }>();
  let i = 0;
  for (const server of SERVERS) {
    const port = PROXY_PORT + i;
    const table = `ftp_proxy_${i}`;
    i++;
    const proc = await startProxy(lab, [
      '-R', lab.env.server4, '-P', String(lab.env.ports[server]),
      '-b', lab.env.gwLan4, '-p', String(port),
      '--backend', backend, '--nft-table', table,
      '--data-ports', `${50000 + i * 1000}-${50000 + i * 1000 + 999}`,
      ...extra,
    ]);
    proxies.set(server, { proc, port });
  }
  return { lab, proxies };
}

/** Every transfer the issue asks for, through the proxy in reverse mode. */
export interface SuiteHooks {
  /** Runs at the end of every subtest (e.g. "the nftables table holds no element"). */
  afterEach?: (rig: ReverseRig, t: Test) => Promise<void>;
  /** Runs after the proxies stopped. */
  atEnd?: (rig: ReverseRig, t: Test) => Promise<void>;
}

export async function reverseSuite(t: Test, backend: 'relay' | 'nftables', hooks: SuiteHooks = {}): Promise<void> {
  if (!isRoot) {
    t.fail('end-to-end tests need root (network namespaces)');
    return;
  }
  const rig = await reverseRig(t, backend);
  const { lab } = rig;
  const sums = {
    small: await lab.expectedSha256('1MiB.bin'),
    big: await lab.expectedSha256('100MiB.bin'),
  };
  const via = (server: ServerName, mode: FtpMode, user = false) => ({
    host: lab.env.gwLan4,
    port: rig.proxies.get(server)!.port,
    mode,
    timeoutMs: 60_000,
    ...(user ? { user: lab.env.user, pass: lab.env.pass } : {}),
  });
  const uploadSrc = join(lab.env.cacheDir, '1MiB.bin');
  const check = async (t: Test): Promise<void> => {
    if (hooks.afterEach) await hooks.afterEach(rig, t);
  };

  for (const server of SERVERS) {
    for (const mode of MODES) {
      await t.test(`curl ${server} ${mode}: 1 MiB down and up`, async (t) => {
        const get = await lab.curlGet({ ...via(server, mode), path: '1MiB.bin' });
        t.ok(get.ok, `download: ${get.stderr}`);
        t.equal(get.sha256, sums.small, 'download checksum');
        const name = `curl-${backend}-${mode}.bin`;
        const put = await lab.curlPut({ ...via(server, mode, true), path: name, file: uploadSrc });
        t.ok(put.ok, `upload: ${put.stderr}`);
        t.equal(await sha256File(join(lab.env.upload[server], name)), sums.small, 'upload checksum');
        await check(t);
      });
      await t.test(`lftp ${server} ${mode}: 1 MiB down and up, LIST of 1000`, async (t) => {
        const out = lab.tmpPath(`lftp-${mode}`);
        const name = `lftp-${backend}-${mode}.bin`;
        const r = await lab.lftp(via(server, mode), [`get /1MiB.bin -o ${out}`, 'cls -1 /dir1000']);
        t.equal(r.code, 0, `lftp anonymous: ${r.stderr}`);
        t.equal(await sha256File(out), sums.small, 'download checksum');
        const up = await lab.lftp(via(server, mode, true), [`put ${uploadSrc} -o ${name}`]);
        t.equal(up.code, 0, `lftp upload: ${up.stderr}`);
        t.equal(await sha256File(join(lab.env.upload[server], name)), sums.small, 'upload checksum');
        t.equal(r.stdout.trim().split('\n').filter((l) => l.length > 0).length, 1000, 'LIST of 1000 entries');
        await check(t);
      });
    }
    for (const mode of ['pasv', 'port'] as const) {
      await t.test(`curl ${server} ${mode}: 100 MiB down and up`, async (t) => {
        const get = await lab.curlGet({ ...via(server, mode), path: '100MiB.bin', timeoutMs: 120_000 });
        t.ok(get.ok, `download: ${get.stderr}`);
        t.equal(get.sha256, sums.big, 'download checksum');
        const name = `big-${backend}-${mode}.bin`;
        const put = await lab.curlPut({
          ...via(server, mode, true),
          path: name,
          file: join(lab.env.cacheDir, '100MiB.bin'),
          timeoutMs: 120_000,
        });
        t.ok(put.ok, `upload: ${put.stderr}`);
        t.equal(await sha256File(join(lab.env.upload[server], name)), sums.big, 'upload checksum');
        await check(t);
      });
    }
  }

  // vsftpd only: pyftpdlib 1.5.7 itself sometimes stops answering a session when active and
  // passive sessions run at once (seen with clients talking to it directly through the
  // kernel FTP helper, no proxy involved: 4 of 100 sessions stalled).
  await t.test('20 concurrent sessions', async (t) => {
    const runs = Array.from({ length: 20 }, (_, i) =>
      lab.curlGet({ ...via('vsftpd', (['pasv', 'epsv', 'port', 'eprt'] as const)[i % 4]), path: '1MiB.bin' }),
    );
    const results = await Promise.all(runs);
    t.equal(results.filter((r) => r.ok && r.sha256 === sums.small).length, 20, 'all 20 transfers intact');
    await check(t);
  });

  await t.test('the proxies logged no errors and stop cleanly', async (t) => {
    for (const [server, { proc }] of rig.proxies) {
      const errors = proc.logs.filter((l) => l.level >= 50);
      t.same(errors, [], `${server}: no error-level log lines`);
      const { code } = await proc.stop();
      t.equal(code, 0, `${server}: exit 0 after SIGTERM`);
    }
    if (hooks.atEnd) await hooks.atEnd(rig, t);
  });
}
