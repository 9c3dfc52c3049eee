// `ftp-proxy --cleanup`: removes what a proxy with this configuration owns in the kernel (its
// nftables table, the relay's policy routing table and rules), for ExecStopPost= after a crash.

import { readFile } from 'node:fs/promises';
import type { Config } from './config.js';
import type { AppLogger } from './log.js';
import { createRunner } from './dataplane/nftables/index.js';
import { closeBatch } from './dataplane/nftables/rules.js';
import { hasNetAdmin } from './dataplane/nftables/runner.js';
import { TransparentSources } from './net/transparent.js';

/**
 * Both parts whatever --backend says: the table name and the route table are the proxy's own
 * (their options say so), and a backend changed since the crashed run must not leave the old
 * one's behind. Each part succeeds when there is nothing to remove. Resolves with the exit
 * status: 0, or 1 when something could not be removed (one line on stderr for each).
 */
export async function cleanup(cfg: Config, logger: AppLogger, err: (s: string) => void): Promise<number> {
  let status = 0;
  try {
    // libnftables would print its own "must be root" line first.
    if (!hasNetAdmin(await readFile('/proc/self/status', 'utf8').catch(() => null))) throw new Error('needs root or CAP_NET_ADMIN');
    const runner = createRunner('auto');
    try {
      // add table inet T; delete table inet T
      await runner.run(closeBatch(cfg.nftTable));
    } finally {
      await runner.close();
    }
    logger.notice({ table: `inet ${cfg.nftTable}` }, 'cleanup: no nftables table left');
  } catch (e) {
    err(`ftp-proxy: cleanup: cannot remove the nftables table inet ${cfg.nftTable}: ${(e as Error).message}\n`);
    status = 1;
  }
  if (cfg.routeTable !== 0) {
    const removed = TransparentSources.removeLeftovers(cfg.routeTable);
    if (typeof removed === 'string') {
      err(`ftp-proxy: cleanup: cannot remove the policy routing of table ${cfg.routeTable}: ${removed}\n`);
      status = 1;
    } else {
      logger.notice({ routeTable: cfg.routeTable, rules: removed }, 'cleanup: no policy routing rules or routes left');
    }
  }
  return status;
}
