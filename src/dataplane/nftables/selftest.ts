// The start-up self-test: when the kernel refuses the table, the same objects go in piece by
// piece (each in a scratch table, created and deleted in one transaction) to name what it lacks.

import type { Batch, Command, Expr, NftObject, Stmt } from './schema.js';
import { add, batch, del } from './schema.js';
import { stmtText } from './render.js';
import { baseObjects, type TableOptions } from './rules.js';

/** A kernel feature the table uses, and the kernel options that provide it. */
export interface Feature {
  readonly what: string;
  readonly config: string;
}

const isRef = (e: Expr): boolean => typeof e === 'string' && e.startsWith('@');
const uses = (e: Expr, key: string): boolean => typeof e === 'object' && !Array.isArray(e) && key in e;

/** The feature one statement of ours needs. */
export function statementFeature(s: Stmt): Feature {
  if ('match' in s) {
    const { left, right } = s.match;
    if (isRef(right)) return { what: 'set lookups with concatenated keys', config: 'CONFIG_NF_TABLES_SET' };
    if (uses(left, 'ct')) return { what: `conntrack matches (${stmtText(s)})`, config: 'CONFIG_NFT_CT, CONFIG_NF_CONNTRACK' };
    if (uses(left, 'meta')) return { what: `meta matches (${stmtText(s)})`, config: 'CONFIG_NF_TABLES' };
    return { what: `packet header matches (${stmtText(s)})`, config: 'CONFIG_NF_TABLES' };
  }
  if ('set' in s) return { what: 'deleting set elements from a rule (nft_dynset delete)', config: 'CONFIG_NF_TABLES, a kernel whose dynset has the delete operation' };
  if ('mangle' in s) {
    return uses(s.mangle.key, 'ct')
      ? { what: 'setting the conntrack mark (ct mark set)', config: 'CONFIG_NFT_CT, CONFIG_NF_CONNTRACK_MARK' }
      : { what: 'setting the packet mark (meta mark set)', config: 'CONFIG_NF_TABLES' };
  }
  if ('dnat' in s) return { what: 'DNAT to addresses and ports from maps', config: 'CONFIG_NFT_NAT, CONFIG_NF_NAT' };
  if ('snat' in s) return { what: 'SNAT to addresses and ports from maps', config: 'CONFIG_NFT_NAT, CONFIG_NF_NAT' };
  if ('log' in s) {
    return s.log.group !== undefined
      ? { what: 'logging to an NFLOG group (log group)', config: 'CONFIG_NFT_LOG, CONFIG_NETFILTER_NETLINK_LOG' }
      : { what: 'kernel log rules (log prefix)', config: 'CONFIG_NFT_LOG, CONFIG_NF_LOG_SYSLOG' };
  }
  if ('counter' in s) return { what: 'counters', config: 'CONFIG_NF_TABLES' };
  return { what: 'jumps to a regular chain', config: 'CONFIG_NF_TABLES' };
}

/** The feature an object of the base table needs (rules: see statementFeature). */
export function objectFeature(o: NftObject): Feature {
  if ('chain' in o) {
    const c = o.chain;
    if (c.type === 'nat') return { what: `nat chains in the inet family (hook ${c.hook})`, config: 'CONFIG_NFT_NAT, CONFIG_NF_NAT' };
    if (c.hook !== undefined) return { what: `filter chains at the ${c.hook} hook`, config: 'CONFIG_NF_TABLES_INET' };
    return { what: 'regular chains', config: 'CONFIG_NF_TABLES' };
  }
  if ('set' in o || 'map' in o) {
    return { what: 'sets and maps with concatenated keys and timeouts', config: 'CONFIG_NF_TABLES_SET (nft_set_hash)' };
  }
  return { what: 'rules', config: 'CONFIG_NF_TABLES' };
}

/** The feature every element of every set and map needs, at open (rules.ts probeBatch). */
export const ELEMENTS: Feature = { what: 'set and map elements with timeouts', config: 'CONFIG_NF_TABLES_SET (nft_set_hash)' };

export type Run = (b: Batch) => Promise<unknown>;

/**
 * The first feature the kernel refuses, or null when every piece goes in (then the table's
 * failure is something else). `run` applies a batch as one transaction; nothing is left behind:
 * each try creates and deletes the scratch table `<table>_selftest` in the same transaction.
 */
export async function missingFeature(run: Run, o: TableOptions): Promise<Feature | null> {
  const scratch = `${o.table}_selftest`;
  const works = (family: 'ip' | 'inet', cmds: Command[]): Promise<boolean> => {
    const t = { table: { family, name: scratch } };
    return run(batch(add(t), ...cmds, del(t))).then(
      () => true,
      () => false,
    );
  };
  if (!(await works('ip', []))) return { what: 'nf_tables', config: 'CONFIG_NF_TABLES' };
  if (!(await works('inet', []))) return { what: 'the inet family (one table for IPv4 and IPv6)', config: 'CONFIG_NF_TABLES_INET' };
  const objects = baseObjects({ ...o, table: scratch });
  for (let i = 0; i < objects.length; i++) {
    const before = objects.slice(0, i);
    if (await works('inet', objects.slice(0, i + 1))) continue;
    const obj = Object.values(objects[i]!)[0] as NftObject;
    if (!('rule' in obj && 'expr' in obj.rule)) return objectFeature(obj);
    // The rule's statements one more at a time: the first that makes it fail is the feature.
    const { expr } = obj.rule;
    for (let k = 1; k <= expr.length; k++) {
      if (!(await works('inet', [...before, add({ rule: { ...obj.rule, expr: expr.slice(0, k) } })]))) return statementFeature(expr[k - 1]!);
    }
    return objectFeature(obj);
  }
  return null;
}

/** The start-up error text for a missing feature. */
export function featureMessage(f: Feature, cause: string): string {
  return `the kernel lacks ${f.what}, which the nftables table needs (${f.config}); it said: ${cause}`;
}
