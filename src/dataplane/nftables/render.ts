// nft text syntax for the JSON this data plane sends: the base table for --print-ruleset and
// what one passive and one active negotiation add, for the README. Printed from the same
// batches that are installed, so the text cannot drift from what the kernel gets.

import {
  baseObjects,
  openBatch,
  releaseBatch,
  type OpenOptions,
  type PathSpec,
  type TableOptions,
} from './rules.js';
import type { Chain, Command, Element, Expr, NamedSet, NftObject, Rule, RuleHandle, Stmt } from './schema.js';

/** Standard priority names (nft(8) "PRIORITY") that we print chain priorities relative to. */
function priorityText(c: Chain): string {
  const base =
    c.type === 'nat' && c.hook === 'prerouting'
      ? { name: 'dstnat', value: -100 }
      : c.type === 'nat' && c.hook === 'postrouting'
        ? { name: 'srcnat', value: 100 }
        : { name: 'filter', value: 0 };
  const delta = (c.prio ?? 0) - base.value;
  return delta === 0 ? base.name : `${base.name} ${delta < 0 ? '-' : '+'} ${Math.abs(delta)}`;
}

const isList = (e: Expr): e is readonly string[] => Array.isArray(e);

export function exprText(e: Expr): string {
  if (typeof e === 'string') return e;
  if (typeof e === 'number') return String(e);
  if (isList(e)) return e.join(',');
  if ('payload' in e) return `${e.payload.protocol} ${e.payload.field}`;
  if ('meta' in e) return `meta ${e.meta.key}`;
  if ('ct' in e) return e.ct.dir ? `ct ${e.ct.dir} ${e.ct.key}` : `ct ${e.ct.key}`;
  if ('range' in e) return `${e.range[0]}-${e.range[1]}`;
  if ('concat' in e) return e.concat.map(exprText).join(' . ');
  if ('&' in e) {
    const mask = e['&'][1];
    return `${exprText(e['&'][0])} & ${isList(mask) ? `(${mask.join(' | ')})` : exprText(mask)}`;
  }
  if ('map' in e) return `${exprText(e.map.key)} map ${exprText(e.map.data)}`;
  if ('elem' in e) return e.elem.timeout === undefined ? exprText(e.elem.val) : `${exprText(e.elem.val)} timeout ${e.elem.timeout}s`;
  throw new TypeError(`no text form for ${JSON.stringify(e)}`);
}

export function stmtText(s: Stmt): string {
  if ('match' in s) {
    const { op, left, right } = s.match;
    // `tcp flags & (fin|syn|rst|ack) == syn` reads as nft lists it: `tcp flags syn / fin,syn,rst,ack`
    if (typeof left === 'object' && !isList(left) && '&' in left && op === '==') {
      return `${exprText(left['&'][0])} ${exprText(right)} / ${exprText(left['&'][1])}`;
    }
    if (op === '!=' || op === '<') return `${exprText(left)} ${op} ${exprText(right)}`;
    return `${exprText(left)} ${exprText(right)}`;
  }
  if ('set' in s) return `${s.set.op} ${s.set.set} { ${exprText(s.set.elem)} }`;
  if ('mangle' in s) {
    const v = s.mangle.value;
    return `${exprText(s.mangle.key)} set ${typeof v === 'number' ? `0x${v.toString(16).padStart(8, '0')}` : exprText(v)}`;
  }
  if ('dnat' in s || 'snat' in s) {
    const [kind, b] = 'dnat' in s ? (['dnat', s.dnat] as const) : (['snat', s.snat] as const);
    const addr = b.addr === undefined ? '' : exprText(b.addr);
    const port = b.port === undefined ? '' : ` : ${exprText(b.port)}`;
    return `${kind} ${b.family} to ${addr}${port}`;
  }
  if ('log' in s) {
    if (s.log.group !== undefined) return `log group ${s.log.group} snaplen ${s.log.snaplen ?? 0}`;
    return s.log.prefix === undefined ? 'log' : `log prefix ${JSON.stringify(s.log.prefix)}`;
  }
  if ('counter' in s) return 'counter';
  if ('jump' in s) return `jump ${s.jump.target}`;
  throw new TypeError(`no text form for ${JSON.stringify(s)}`);
}

const ruleText = (r: Rule): string => r.expr.map(stmtText).join(' ');

function setTypeText(s: NamedSet): string {
  const key = typeof s.type === 'string' ? s.type : s.type.join(' . ');
  return s.map === undefined ? key : `${key} : ${s.map}`;
}

function elementText(e: Element): string {
  const items = e.elem.map((i) => (Array.isArray(i) ? `${exprText(i[0] as Expr)} : ${exprText(i[1] as Expr)}` : exprText(i as Expr)));
  return `{ ${items.join(', ')} }`;
}

function objectText(o: NftObject): string {
  if ('table' in o) return `table ${o.table.family} ${o.table.name}`;
  if ('chain' in o) return `chain ${o.chain.family} ${o.chain.table} ${o.chain.name}`;
  if ('set' in o) return `set ${o.set.family} ${o.set.table} ${o.set.name} { type ${setTypeText(o.set)}; }`;
  if ('map' in o) return `map ${o.map.family} ${o.map.table} ${o.map.name} { type ${setTypeText(o.map)}; }`;
  if ('element' in o) return `element ${o.element.family} ${o.element.table} ${o.element.name} ${elementText(o.element)}`;
  const r = o.rule;
  const head = `rule ${r.family} ${r.table} ${r.chain}`;
  return 'handle' in r ? `${head} handle ${(r as RuleHandle).handle}` : `${head} ${ruleText(r as Rule)}`;
}

/** One command as an nft command line (`add element inet ftp_proxy admit4 { ... }`). */
export function commandText(c: Command): string {
  const [verb, o] = Object.entries(c)[0] as [string, NftObject];
  return `${verb} ${objectText(o)}`;
}

/** The table block of `nft list table` form, from the objects that make it. */
function tableText(family: string, name: string, cmds: readonly Command[]): string {
  const objects = cmds.map((c) => Object.values(c)[0] as NftObject);
  const lines: string[] = [`table ${family} ${name} {`];
  for (const o of objects) {
    const s = 'set' in o ? o.set : 'map' in o ? o.map : undefined;
    if (!s) continue;
    lines.push(`\t${'map' in o ? 'map' : 'set'} ${s.name} {`, `\t\ttype ${setTypeText(s)}`);
    if (s.flags?.length) lines.push(`\t\tflags ${s.flags.join(',')}`);
    lines.push('\t}', '');
  }
  const chains = objects.flatMap((o) => ('chain' in o ? [o.chain] : []));
  chains.forEach((c, i) => {
    lines.push(`\tchain ${c.name} {`);
    if (c.hook !== undefined) {
      lines.push(`\t\ttype ${c.type} hook ${c.hook} priority ${priorityText(c)}; policy ${c.policy ?? 'accept'};`);
    }
    for (const o of objects) {
      if ('rule' in o && o.rule.chain === c.name && 'expr' in o.rule) lines.push(`\t\t${ruleText(o.rule)}`);
    }
    lines.push('\t}');
    if (i < chains.length - 1) lines.push('');
  });
  lines.push('}');
  return lines.join('\n') + '\n';
}

/** The base table start() installs, in nft text (what `--print-ruleset` shows). */
export function renderRuleset(o: TableOptions): string {
  return tableText('inet', o.table, baseObjects(o));
}

/** Example paths, with the lab's documentation addresses. */
export const EXAMPLE_PATHS: { readonly passive: PathSpec; readonly active: PathSpec } = {
  passive: {
    sid: '1',
    family: 4,
    peer: '192.0.2.2',
    listen: '192.0.2.1',
    port: 50000,
    target: { address: '198.51.100.2', port: 40000 },
    source: '198.51.100.1',
  },
  active: {
    sid: '2',
    family: 4,
    peer: '198.51.100.2',
    listen: '198.51.100.1',
    port: 50001,
    target: { address: '192.0.2.2', port: 45678 },
    source: '198.51.100.2',
    sourcePort: 20,
  },
};

/**
 * What one passive and one active negotiation add and later remove, as nft commands with
 * comments (for the README). The log rule's handle is shown as 42.
 */
export function describeNegotiations(o: TableOptions & OpenOptions, paths = EXAMPLE_PATHS): string {
  const part = (title: string, p: PathSpec): string[] => [
    `# ${title}: ${p.peer} may connect once to ${p.listen}:${p.port}, carried to ` +
      `${p.target.address}:${p.target.port} from ${p.source}${p.sourcePort === undefined ? '' : `:${p.sourcePort}`}`,
    '# open:',
    ...openBatch(o, p).nftables.map(commandText),
    '# release:',
    ...releaseBatch(o, p, { snat: true, ...(o.logRules ? { logHandle: 42 } : {}) }).nftables.map(commandText),
  ];
  return [
    ...part(`passive (PASV/EPSV), session #${paths.passive.sid}`, paths.passive),
    '',
    ...part(`active (PORT/EPRT) with -r, session #${paths.active.sid}`, paths.active),
  ].join('\n') + '\n';
}
