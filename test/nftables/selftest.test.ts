// The start-up self-test, over a fake kernel that lacks one feature at a time: start() fails
// with NFT_UNAVAILABLE naming that feature, and every try leaves nothing behind.

import t from 'tap';
import { pino } from 'pino';
import { DataPlaneError } from '../../src/errors.js';
import { PortAllocator } from '../../src/net/ports.js';
import { NftablesDataPlane } from '../../src/dataplane/nftables/dataplane.js';
import type { NftRunner } from '../../src/dataplane/nftables/runner.js';
import type { Batch } from '../../src/dataplane/nftables/schema.js';

/** Refuses, as the kernel would, every batch whose JSON `lacks` matches. */
class LackingKernel implements NftRunner {
  readonly name = 'libnftables' as const;
  readonly batches: Batch[] = [];
  constructor(private readonly lacks: RegExp) {}

  async run(b: Batch): Promise<unknown[]> {
    this.batches.push(b);
    if (this.lacks.test(JSON.stringify(b))) throw new DataPlaneError('BACKEND_FAILED', 'nft: Error: Could not process rule: No such file or directory');
    return [];
  }

  async close(): Promise<void> {}
}

const cases: [string, RegExp, RegExp][] = [
  ['nf_tables', /./, /lacks nf_tables, .*CONFIG_NF_TABLES\)/],
  ['the inet family', /"family":"inet"/, /lacks the inet family .*CONFIG_NF_TABLES_INET/],
  ['nat chains', /"type":"nat"/, /lacks nat chains in the inet family \(hook prerouting\).*CONFIG_NFT_NAT/],
  ['timeout sets', /"flags":\["timeout"\]/, /lacks sets and maps with concatenated keys and timeouts/],
  ['the forward filter chain', /"hook":"forward"/, /lacks filter chains at the forward hook/],
  ['set lookups', /"right":"@admit4"/, /lacks set lookups with concatenated keys/],
  ['dynset delete', /"op":"delete"/, /lacks deleting set elements from a rule \(nft_dynset delete\)/],
  ['meta mark', /"mangle":\{"key":\{"meta"/, /lacks setting the packet mark/],
  ['ct mark', /"mangle":\{"key":\{"ct"/, /lacks setting the conntrack mark .*CONFIG_NF_CONNTRACK_MARK/],
  ['conntrack matches', /"ct":\{"key":"status"\}/, /lacks conntrack matches \(ct status dnat\)/],
  ['dnat', /"dnat"/, /lacks DNAT to addresses and ports from maps/],
  ['snat', /"snat"/, /lacks SNAT to addresses and ports from maps/],
  ['NFLOG', /"group":/, /lacks logging to an NFLOG group .*CONFIG_NETFILTER_NETLINK_LOG/],
  ['elements with timeouts', /"element":.*"timeout":1\b/, /lacks set and map elements with timeouts/],
];

for (const [name, lacks, message] of cases) {
  t.test(`a kernel without ${name}`, async (t) => {
    const kernel = new LackingKernel(lacks);
    const dp = new NftablesDataPlane({
      ports: new PortAllocator(50000, 50009),
      runner: kernel,
      logger: pino({ level: 'silent' }),
      mark: 0x42,
      count: { group: 7, ports: { low: 50000, high: 50009 } },
    });
    await t.rejects(dp.start(), { code: 'NFT_UNAVAILABLE', message });
    await t.rejects(dp.start(), { message: /it said: .*No such file or directory; use --backend relay/ }, 'the kernel’s own words and the way out');
    for (const b of kernel.batches) {
      const made = b.nftables.filter((c) => 'add' in c && 'table' in c.add).map((c) => JSON.stringify(c));
      const gone = b.nftables.filter((c) => 'delete' in c && 'table' in c.delete).map((c) => JSON.stringify(c).replace('delete', 'add'));
      if (made.some((m) => m.includes('_selftest'))) t.same(gone, made, 'every scratch table is deleted in the batch that makes it');
    }
  });
}

t.test('a kernel that takes every piece but not the whole: the plain error', async (t) => {
  // Only the real table's batch fails: nothing to name.
  const kernel = new LackingKernel(/"name":"ftp_proxy"\}/);
  const dp = new NftablesDataPlane({ ports: new PortAllocator(50000, 50009), runner: kernel, logger: pino({ level: 'silent' }) });
  await t.rejects(dp.start(), { code: 'BACKEND_FAILED', message: /^cannot install the nftables table: nft: Error/ });
});
