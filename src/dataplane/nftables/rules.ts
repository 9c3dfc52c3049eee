// What the nftables data plane installs, as pure functions from options and requests to
// libnftables JSON batches: the base table, and the elements one data connection needs.

import type { Endpoint } from '../types.js';
import {
  add,
  and,
  batch,
  concat,
  counter,
  ct,
  del,
  destroy,
  dnat,
  elem,
  insert,
  jump,
  list,
  log,
  mangle,
  nflog,
  range,
  mapLookup,
  match,
  meta,
  payload,
  setDelete,
  setObject,
  setRef,
  snat,
  type Batch,
  type Command,
  type Expr,
  type NamedSet,
  type NatFamily,
  type NftObject,
  type Rule,
  type SetType,
  type Stmt,
} from './schema.js';
import { LAP_MASK, LAP_WINDOW, SNAPLEN } from './nflog.js';

// How one data connection goes through (all keyed by peer . listen . port, the port being ours):
//  - prerouting (nat, before the admin's own dstnat chains): the first SYN from `peer` to
//    listen:port finds its admission, deletes it (single use, in the kernel) and is DNATed to
//    the target. Nothing else from anyone matches.
//  - postrouting (nat, before the admin's masquerade): a DNATed connection whose post-DNAT tuple
//    (peer . target . target port) has an SNAT entry is SNATed to `source` (and `sourcePort`).
//  - the rest of the flow follows conntrack; entries can go at once (release) or time out.
// No chain of ours admits forwarded traffic (the `count` chain at filter forward only logs data
// packets for byte counting, and accepts nothing): an accept in our table cannot override a drop
// in the admin's table at the same hook, so the admin's forward policy must let these connections
// through, with
// `ct status dnat accept` or, with --mark N, `ct mark N accept` (the mark is set on admission,
// early enough for routing policy too).
// Caveats: two SYNs of different connections arriving in the same instant could both pass the
// lookup before either deletes the element. A SYN dropped inside the gateway after our
// prerouting chain (the admin's filter, or a NAT clash such as source:20 to a client port whose
// previous connection is still in conntrack) has used its admission all the same.

export interface TableOptions {
  /** Table name; the family is always inet (one table for IPv4 and IPv6). */
  readonly table: string;
  /** Per-path log rules (`log prefix "ftp-proxy #<sid> "`) on admission. */
  readonly logRules: boolean;
  /** Packet and conntrack mark given to admitted connections, for the admin's own policy. */
  readonly mark?: number;
  /**
   * Count the bytes of admitted connections: their SYN, FIN and RST segments (and one per GiB
   * of sequence space) go to NFLOG `group` (nflog.ts reads them). `ports`: the data ports.
   */
  readonly count?: { readonly group: number; readonly ports: { readonly low: number; readonly high: number } };
}

/** Hook priorities: ours run just before the admin's own nat chains at the same hook. */
export const PRIORITY = {
  /** NF_IP_PRI_NAT_DST (-100, "dstnat") - 10. */
  prerouting: -110,
  /** NF_IP_PRI_NAT_SRC (100, "srcnat") - 10. */
  postrouting: 90,
  /** NF_IP_PRI_FILTER (0, "filter") - 10: before the admin's own forward filter. */
  forward: -10,
} as const;

export const CHAIN = { prerouting: 'prerouting', postrouting: 'postrouting', log: 'admit_log', count: 'count' } as const;

export type IpFamily = 4 | 6;
export const FAMILIES: readonly IpFamily[] = [4, 6];

/** Set and map names for one address family. */
export function names(f: IpFamily) {
  return {
    /** peer . listen . port: admits one SYN, deleted by the kernel on use. */
    admit: `admit${f}`,
    /** peer . listen . port -> target address / target port. */
    dnat: `dnat${f}`,
    dnatPort: `dnatport${f}`,
    /** peer . target . target port (the post-DNAT tuple) -> source address / source port. */
    snat: `snat${f}`,
    snatPort: `snatport${f}`,
  };
}

const nat = (f: IpFamily): NatFamily => (f === 4 ? 'ip' : 'ip6');
const addrType = (f: IpFamily): SetType => (f === 4 ? 'ipv4_addr' : 'ipv6_addr');

/** `ip saddr . ip daddr . tcp dport` (ip6 for IPv6): the key of every set and map. */
export function tupleKey(f: IpFamily): Expr {
  return concat(payload(nat(f), 'saddr'), payload(nat(f), 'daddr'), payload('tcp', 'dport'));
}

/** `tcp flags & (fin | syn | rst | ack) == syn`: only an opening SYN may use an admission. */
const synOnly: Stmt = match(and(payload('tcp', 'flags'), ['fin', 'syn', 'rst', 'ack']), 'syn');

// --- the base table --------------------------------------------------------------------------

/** The sets, maps, chains and rules of the table, without the table itself. */
export function baseObjects(o: TableOptions): Command[] {
  const family = 'inet' as const;
  const table = o.table;
  const out: Command[] = [];

  for (const f of FAMILIES) {
    const n = names(f);
    const key: SetType[] = [addrType(f), addrType(f), 'inet_service'];
    const flags = ['timeout'] as const;
    const sets: NamedSet[] = [
      // set admit4 { type ipv4_addr . ipv4_addr . inet_service; flags dynamic,timeout; }
      // (nft 1.0.6 JSON has no "dynamic" flag; nft adds it because a rule deletes from the set)
      { family, table, name: n.admit, type: key, flags },
      // map dnat4 { type ipv4_addr . ipv4_addr . inet_service : ipv4_addr; flags timeout; }
      { family, table, name: n.dnat, type: key, map: addrType(f), flags },
      // map dnatport4 { type ipv4_addr . ipv4_addr . inet_service : inet_service; flags timeout; }
      { family, table, name: n.dnatPort, type: key, map: 'inet_service', flags },
      // map snat4 { type ipv4_addr . ipv4_addr . inet_service : ipv4_addr; flags timeout; }
      { family, table, name: n.snat, type: key, map: addrType(f), flags },
      // map snatport4 { type ipv4_addr . ipv4_addr . inet_service : inet_service; flags timeout; }
      { family, table, name: n.snatPort, type: key, map: 'inet_service', flags },
    ];
    for (const s of sets) out.push(add(setObject(s)));
  }

  // chain prerouting { type nat hook prerouting priority dstnat - 10; policy accept; }
  out.push(
    add({ chain: { family, table, name: CHAIN.prerouting, type: 'nat', hook: 'prerouting', prio: PRIORITY.prerouting, policy: 'accept' } }),
  );
  // chain postrouting { type nat hook postrouting priority srcnat - 10; policy accept; }
  out.push(
    add({ chain: { family, table, name: CHAIN.postrouting, type: 'nat', hook: 'postrouting', prio: PRIORITY.postrouting, policy: 'accept' } }),
  );
  // chain admit_log { }   (a regular chain holding one log rule per live data path)
  if (o.logRules) out.push(add({ chain: { family, table, name: CHAIN.log } }));
  if (o.count) {
    // chain count { type filter hook forward priority filter - 10; policy accept; }
    // Logging only: it accepts nothing the admin's forward policy would drop.
    out.push(add({ chain: { family, table, name: CHAIN.count, type: 'filter', hook: 'forward', prio: PRIORITY.forward, policy: 'accept' } }));
  }

  const rule = (chain: string, expr: Stmt[]): Command => add({ rule: { family, table, chain, expr } });
  for (const f of FAMILIES) {
    const n = names(f);
    const k = tupleKey(f);
    const admitted = [synOnly, match(k, setRef(n.admit))];
    if (o.logRules) {
      // tcp flags syn / fin,syn,rst,ack ip saddr . ip daddr . tcp dport @admit4 jump admit_log
      out.push(rule(CHAIN.prerouting, [...admitted, jump(CHAIN.log)]));
    }
    // tcp flags syn / fin,syn,rst,ack ip saddr . ip daddr . tcp dport @admit4
    //   delete @admit4 { ip saddr . ip daddr . tcp dport } [meta mark set M ct mark set M] counter
    //   dnat ip to ip saddr . ip daddr . tcp dport map @dnat4 : ip saddr . ip daddr . tcp dport map @dnatport4
    // The first SYN deletes its own admission in the kernel: a second connection finds nothing.
    // Only new connections reach a nat chain, so the rest of the flow follows conntrack.
    const marks = o.mark === undefined ? [] : [mangle(meta('mark'), o.mark), mangle(ct('mark'), o.mark)];
    out.push(
      rule(CHAIN.prerouting, [
        ...admitted,
        setDelete(n.admit, k),
        ...marks,
        counter(),
        dnat({ family: nat(f), addr: mapLookup(k, n.dnat), port: mapLookup(k, n.dnatPort) }),
      ]),
    );
  }
  for (const f of FAMILIES) {
    const n = names(f);
    const k = tupleKey(f);
    const dnatted = match(ct('status'), 'dnat', 'in');
    // Keyed on the post-DNAT tuple (peer . target . target port); a failed lookup ends the rule.
    // ct status dnat snat ip to ip saddr . ip daddr . tcp dport map @snat4 : ip saddr . ip daddr . tcp dport map @snatport4
    out.push(rule(CHAIN.postrouting, [dnatted, snat({ family: nat(f), addr: mapLookup(k, n.snat), port: mapLookup(k, n.snatPort) })]));
    // ct status dnat snat ip to ip saddr . ip daddr . tcp dport map @snat4
    out.push(rule(CHAIN.postrouting, [dnatted, snat({ family: nat(f), addr: mapLookup(k, n.snat) })]));
  }
  if (o.count) {
    // Connections we translated to a data port (the forward hook sees them after DNAT, both ways):
    // meta l4proto tcp ct status dnat ct original proto-dst LOW-HIGH tcp flags & (fin | syn | rst) != 0 log group G snaplen S
    // meta l4proto tcp ct status dnat ct original proto-dst LOW-HIGH tcp sequence & 1073741823 < 65536 log group G snaplen S
    const ours = [
      match(meta('l4proto'), 'tcp'),
      match(ct('status'), 'dnat', 'in'),
      match(ct('proto-dst', 'original'), range(o.count.ports.low, o.count.ports.high)),
    ];
    const copy = nflog(o.count.group, SNAPLEN);
    out.push(rule(CHAIN.count, [...ours, match(and(payload('tcp', 'flags'), ['fin', 'syn', 'rst']), 0, '!='), copy]));
    out.push(rule(CHAIN.count, [...ours, match(and(payload('tcp', 'sequence'), LAP_MASK), LAP_WINDOW, '<'), copy]));
  }
  return out;
}

/**
 * start(): replace whatever table of that name exists (a crashed run's leftovers) in one
 * transaction:  add table inet T; delete table inet T; add table inet T; ...
 */
export function startBatch(o: TableOptions): Batch {
  const t = { table: { family: 'inet' as const, name: o.table } };
  return batch(add(t), del(t), add(t), ...baseObjects(o));
}

/** The check that the table is whole: `list table inet T`, printed as JSON (missingParts). */
export function listBatch(table: string): Batch {
  return batch(list({ table: { family: 'inet', name: table } }));
}

/**
 * What a `list table` listing lacks of the base table: each chain, set or map by name, and
 * each chain with fewer rules than the base table puts in it ('chain prerouting: 1 of 4
 * rules'). Empty when it is whole. More is no fault: admit_log holds a rule per path, and an
 * admin may have added some.
 */
export function missingParts(o: TableOptions, listing: readonly unknown[]): string[] {
  const names = new Set<string>();
  const rules = new Map<string, number>();
  for (const x of listing) {
    const v = x as { chain?: { name: string }; set?: { name: string }; map?: { name: string }; rule?: { chain: string } };
    const named = v.chain ?? v.set ?? v.map;
    if (named) names.add(named.name);
    if (v.rule) rules.set(v.rule.chain, (rules.get(v.rule.chain) ?? 0) + 1);
  }
  const missing: string[] = [];
  const wanted = new Map<string, number>();
  for (const c of baseObjects(o)) {
    const v = (c as { add: NftObject }).add;
    if ('rule' in v) wanted.set(v.rule.chain, (wanted.get(v.rule.chain) ?? 0) + 1);
    else if ('chain' in v && !names.has(v.chain.name)) missing.push(`chain ${v.chain.name}`);
    else if ('set' in v && !names.has(v.set.name)) missing.push(`set ${v.set.name}`);
    else if ('map' in v && !names.has(v.map.name)) missing.push(`map ${v.map.name}`);
  }
  for (const [chain, n] of wanted) {
    const have = rules.get(chain) ?? 0;
    if (have < n && names.has(chain)) missing.push(`chain ${chain}: ${have} of ${n} rules`);
  }
  return missing;
}

/** close(): `add table inet T; delete table inet T` - succeeds whether or not T exists. */
export function closeBatch(table: string): Batch {
  const t = { table: { family: 'inet' as const, name: table } };
  return batch(add(t), del(t));
}

// --- one data path ---------------------------------------------------------------------------

/** A data path as the table sees it: the request plus the port the data plane chose. */
export interface PathSpec {
  readonly sid: string;
  readonly family: IpFamily;
  readonly peer: string;
  readonly listen: string;
  readonly port: number;
  readonly target: Endpoint;
  readonly source: string;
  readonly sourcePort?: number;
}

interface ElementSpec {
  readonly set: string;
  readonly key: readonly [string, string, number];
  /** Map value; absent for a set element. */
  readonly value?: string | number;
}

const admissionKey = (p: PathSpec): ElementSpec['key'] => [p.peer, p.listen, p.port];
/** The SNAT key: the tuple the first packet carries after DNAT. Paths can share it. */
export const snatKey = (p: PathSpec): ElementSpec['key'] => [p.peer, p.target.address, p.target.port];
export const snatKeyString = (p: PathSpec): string => snatKey(p).join(' ');

/** The admission elements: unique to the path (the port is held by one path at a time). */
function admissionElements(p: PathSpec): ElementSpec[] {
  const n = names(p.family);
  const key = admissionKey(p);
  return [
    { set: n.admit, key },
    { set: n.dnat, key, value: p.target.address },
    { set: n.dnatPort, key, value: p.target.port },
  ];
}

/** The SNAT elements, possibly shared with other live paths of the same post-DNAT tuple. */
function snatElements(p: PathSpec): ElementSpec[] {
  const n = names(p.family);
  const key = snatKey(p);
  const out: ElementSpec[] = [{ set: n.snat, key, value: p.source }];
  if (p.sourcePort !== undefined) out.push({ set: n.snatPort, key, value: p.sourcePort });
  return out;
}

function elementCommand(verb: 'add' | 'delete' | 'destroy', table: string, e: ElementSpec, timeout?: number): Command {
  const key = concat(...e.key);
  const k = timeout === undefined ? key : elem(key, timeout);
  const item = e.value === undefined ? k : ([k, e.value] as const);
  const o = { element: { family: 'inet' as const, table, name: e.set, elem: [item] } };
  return verb === 'add' ? add(o) : verb === 'delete' ? del(o) : destroy(o);
}

/**
 * add + delete + add: the SNAT entry may already be there for another live path with the same
 * post-DNAT tuple (same value, or the kernel refuses the first add); the re-add gives it a fresh
 * timeout on every kernel (only recent ones refresh the timeout on a plain add).
 */
function replaceElement(table: string, e: ElementSpec, timeout: number): Command[] {
  return [elementCommand('add', table, e), elementCommand('delete', table, e), elementCommand('add', table, e, timeout)];
}

/**
 * add + delete: removes the element whether or not it still exists (nft 1.0.6 has no destroy),
 * or, where the runner and kernel have it, destroy (which removes it whatever its value, where
 * the add would refuse a different one).
 */
function removeElement(table: string, e: ElementSpec, useDestroy: boolean): Command[] {
  if (useDestroy) return [elementCommand('destroy', table, e)];
  return [elementCommand('add', table, e), elementCommand('delete', table, e)];
}

/**
 * The netlink runner's start-up check (dataplane.ts): in one transaction, add and remove an
 * all-zero element, with a timeout and a value, in every set and map; nothing is left.
 *   add element inet T admit4 { 0.0.0.0 . 0.0.0.0 . 0 timeout 1s }
 *   delete element inet T admit4 { 0.0.0.0 . 0.0.0.0 . 0 }    (or destroy)
 *   add element inet T dnat4 { 0.0.0.0 . 0.0.0.0 . 0 timeout 1s : 0.0.0.0 }
 *   ... the same for dnatport4 (: 0), snat4, snatport4 and the IPv6 ones (:: . :: . 0)
 */
export function probeBatch(table: string, useDestroy: boolean): Batch {
  const cmds: Command[] = [];
  for (const f of FAMILIES) {
    const n = names(f);
    const zero = f === 4 ? '0.0.0.0' : '::';
    const key: ElementSpec['key'] = [zero, zero, 0];
    const specs: ElementSpec[] = [
      { set: n.admit, key },
      { set: n.dnat, key, value: zero },
      { set: n.dnatPort, key, value: 0 },
      { set: n.snat, key, value: zero },
      { set: n.snatPort, key, value: 0 },
    ];
    for (const e of specs) cmds.push(elementCommand('add', table, e, 1), elementCommand(useDestroy ? 'destroy' : 'delete', table, e));
  }
  return batch(...cmds);
}

/** The log rule of one path (inserted at the head of admit_log). */
export function logRule(o: TableOptions, p: PathSpec): Rule {
  const ipf = nat(p.family);
  // ip saddr 192.0.2.2 ip daddr 192.0.2.1 tcp dport 50000 log prefix "ftp-proxy #7 "
  return {
    family: 'inet',
    table: o.table,
    chain: CHAIN.log,
    expr: [
      match(payload(ipf, 'saddr'), p.peer),
      match(payload(ipf, 'daddr'), p.listen),
      match(payload('tcp', 'dport'), p.port),
      log(logPrefix(p.sid)),
    ],
  };
}

/** `ftp-proxy #<sid> `, with the sid reduced to safe characters (the kernel keeps 127 bytes). */
export function logPrefix(sid: string): string {
  return `ftp-proxy #${sid.replace(/[^A-Za-z0-9._:-]/g, '_').slice(0, 64)} `;
}

export interface OpenOptions {
  /** Seconds an unused admission lives. */
  readonly timeoutSec: number;
}

/**
 * open(): one transaction adding the path's admission, DNAT and SNAT entries (and, with
 * logRules, its log rule, whose handle the echo returns). For a passive path:
 *   add element inet T admit4    { 192.0.2.2 . 192.0.2.1 . 50000 timeout 30s }
 *   add element inet T dnat4     { 192.0.2.2 . 192.0.2.1 . 50000 timeout 30s : 198.51.100.2 }
 *   add element inet T dnatport4 { 192.0.2.2 . 192.0.2.1 . 50000 timeout 30s : 40000 }
 *   add element inet T snat4     { 192.0.2.2 . 198.51.100.2 . 40000 : 198.51.100.1 }
 *   delete element inet T snat4  { 192.0.2.2 . 198.51.100.2 . 40000 : 198.51.100.1 }
 *   add element inet T snat4     { 192.0.2.2 . 198.51.100.2 . 40000 timeout 30s : 198.51.100.1 }
 *   [the same three for snatport4 { ... : 20 } when a source port is set]
 *   [insert rule inet T admit_log ip saddr 192.0.2.2 ip daddr 192.0.2.1 tcp dport 50000 log prefix "ftp-proxy #7 "]
 */
export function openBatch(o: TableOptions & OpenOptions, p: PathSpec): Batch {
  // A plain add: the port is held by this path alone, so the key is new (an add of an existing
  // key with another value fails, and with it the whole batch).
  const cmds: Command[] = admissionElements(p).map((e) => elementCommand('add', o.table, e, o.timeoutSec));
  for (const e of snatElements(p)) cmds.push(...replaceElement(o.table, e, o.timeoutSec));
  if (o.logRules) cmds.push(insert({ rule: logRule(o, p) }));
  return batch(...cmds);
}

export interface ReleaseOptions {
  /** False while another live path still uses the same SNAT entries. */
  readonly snat: boolean;
  /** Handle of the path's log rule, when there is one. */
  readonly logHandle?: number;
  /** Remove elements with destroy (the netlink runner on Linux 6.3+), not add + delete. */
  readonly destroy?: boolean;
}

/**
 * release(): one transaction removing what open() added, whether used, expired or still there:
 *   add element inet T admit4 { 192.0.2.2 . 192.0.2.1 . 50000 }
 *   delete element inet T admit4 { 192.0.2.2 . 192.0.2.1 . 50000 }
 *   ... the same for dnat4, dnatport4 and (unless shared) snat4 / snatport4 ...
 *   [delete rule inet T admit_log handle 42]
 * or, with `destroy`: destroy element inet T admit4 { 192.0.2.2 . 192.0.2.1 . 50000 } ...
 * Established connections keep their NAT binding in conntrack.
 */
export function releaseBatch(o: TableOptions, p: PathSpec, r: ReleaseOptions): Batch {
  const cmds: Command[] = [];
  const elements = r.snat ? [...admissionElements(p), ...snatElements(p)] : admissionElements(p);
  for (const e of elements) cmds.push(...removeElement(o.table, e, r.destroy === true));
  if (r.logHandle !== undefined) {
    cmds.push(del({ rule: { family: 'inet', table: o.table, chain: CHAIN.log, handle: r.logHandle } }));
  }
  return batch(...cmds);
}

/** A path to put back after the table was recreated, with the time its admission has left. */
export interface Readd {
  readonly spec: PathSpec;
  readonly timeoutSec: number;
}

/** Paths per heal batch: `nft -j` takes a batch as one argument, at most 128 KiB. */
export const READD_CHUNK = 16;

/**
 * Healing: the start() transaction again (it replaces whatever is left of the table) with the
 * first READD_CHUNK waiting paths' entries (as openBatch adds them, without log rules), then a
 * transaction per further chunk. The first batch is the one that must succeed.
 */
export function healBatches(o: TableOptions, paths: readonly Readd[]): Batch[] {
  const adds = (chunk: readonly Readd[]): Command[] =>
    chunk.flatMap((r) => openBatch({ ...o, logRules: false, timeoutSec: r.timeoutSec }, r.spec).nftables);
  const out = [batch(...startBatch(o).nftables, ...adds(paths.slice(0, READD_CHUNK)))];
  for (let i = READD_CHUNK; i < paths.length; i += READD_CHUNK) out.push(batch(...adds(paths.slice(i, i + READD_CHUNK))));
  return out;
}
