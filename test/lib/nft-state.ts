// Reading the proxy's nftables table in a lab gateway, for end-to-end checks that nothing
// is left behind: how many set/map elements it holds, and whether it exists at all.

import type { Lab } from './lab.js';

interface NftJson {
  nftables: { set?: { name: string; elem?: unknown[] }; map?: { name: string; elem?: unknown[] } }[];
}

/** Elements per set/map of `inet <table>` (only those holding any); null when the table is absent. */
export async function nftElements(lab: Lab, table: string): Promise<Record<string, number> | null> {
  const r = await lab.exec('gw', 'nft', ['-j', 'list', 'table', 'inet', table]);
  if (r.code !== 0) return null;
  const doc = JSON.parse(r.stdout) as NftJson;
  const counts: Record<string, number> = {};
  for (const o of doc.nftables) {
    const s = o.set ?? o.map;
    if (s?.elem?.length) counts[s.name] = s.elem.length;
  }
  return counts;
}

/** Poll until the table holds no element (releases run asynchronously after the last reply). */
export async function nftDrained(lab: Lab, table: string, ms = 3000): Promise<Record<string, number> | null> {
  const end = Date.now() + ms;
  for (;;) {
    const counts = await nftElements(lab, table);
    if (counts === null || Object.keys(counts).length === 0 || Date.now() > end) return counts;
    await new Promise((r) => setTimeout(r, 50));
  }
}
