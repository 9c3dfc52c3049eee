// Typed builders for the part of the libnftables JSON schema (libnftables-json(5), nft 1.0.6)
// that the data plane uses. Pure values in, plain JSON out: no I/O here.

export type TableFamily = 'ip' | 'ip6' | 'inet';
export type NatFamily = 'ip' | 'ip6';

/** Data types of set keys and map values. */
export type SetType = 'ipv4_addr' | 'ipv6_addr' | 'inet_service' | 'mark';

// --- expressions ---------------------------------------------------------------------------

export interface PayloadExpr {
  readonly payload: { readonly protocol: 'ip' | 'ip6' | 'tcp'; readonly field: string };
}
export interface MetaExpr {
  readonly meta: { readonly key: 'mark' | 'l4proto' };
}
export interface CtExpr {
  readonly ct: { readonly key: 'mark' | 'status' | 'state' | 'proto-dst'; readonly dir?: 'original' | 'reply' };
}
/** `low-high`, inclusive. */
export interface RangeExpr {
  readonly range: readonly [number, number];
}
export interface ConcatExpr {
  readonly concat: readonly Expr[];
}
export interface AndExpr {
  readonly '&': readonly [Expr, Expr];
}
export interface MapExpr {
  readonly map: { readonly key: Expr; readonly data: Expr };
}
/** A set element carrying its own timeout (seconds). */
export interface ElemExpr {
  readonly elem: { readonly val: Expr; readonly timeout?: number };
}
/** A literal: address, port, symbolic constant ('syn'), a flag list, or a '@set' reference. */
export type Literal = string | number | readonly string[];
export type Expr = Literal | PayloadExpr | MetaExpr | CtExpr | RangeExpr | ConcatExpr | AndExpr | MapExpr | ElemExpr;

export const payload = (protocol: PayloadExpr['payload']['protocol'], field: string): PayloadExpr => ({
  payload: { protocol, field },
});
export const meta = (key: MetaExpr['meta']['key']): MetaExpr => ({ meta: { key } });
export const ct = (key: CtExpr['ct']['key'], dir?: 'original' | 'reply'): CtExpr => ({ ct: dir ? { key, dir } : { key } });
export const range = (low: number, high: number): RangeExpr => ({ range: [low, high] });
export const concat = (...exprs: Expr[]): ConcatExpr => ({ concat: exprs });
export const and = (left: Expr, right: Expr): AndExpr => ({ '&': [left, right] });
export const mapLookup = (key: Expr, mapName: string): MapExpr => ({ map: { key, data: `@${mapName}` } });
export const setRef = (name: string): string => `@${name}`;
export const elem = (val: Expr, timeout?: number): ElemExpr => ({
  elem: timeout === undefined ? { val } : { val, timeout },
});

// --- statements ----------------------------------------------------------------------------

export type MatchOp = '==' | '!=' | 'in' | '<';
export interface MatchStmt {
  readonly match: { readonly op: MatchOp; readonly left: Expr; readonly right: Expr };
}
/** Dynamic set update from the packet path (`delete @set { key }` etc.). */
export interface SetStmt {
  readonly set: { readonly op: 'add' | 'update' | 'delete'; readonly elem: Expr; readonly set: string };
}
export interface MangleStmt {
  readonly mangle: { readonly key: MetaExpr | CtExpr; readonly value: Expr };
}
export interface NatBody {
  readonly family: NatFamily;
  readonly addr?: Expr;
  readonly port?: Expr;
}
export interface DnatStmt {
  readonly dnat: NatBody;
}
export interface SnatStmt {
  readonly snat: NatBody;
}
export interface LogStmt {
  /** A prefixed kernel log line, or (group) a copy of `snaplen` bytes to an NFLOG group. */
  readonly log: { readonly prefix?: string; readonly group?: number; readonly snaplen?: number };
}
export interface CounterStmt {
  readonly counter: null;
}
export interface JumpStmt {
  readonly jump: { readonly target: string };
}
export type Stmt = MatchStmt | SetStmt | MangleStmt | DnatStmt | SnatStmt | LogStmt | CounterStmt | JumpStmt;

export const match = (left: Expr, right: Expr, op: MatchOp = '=='): MatchStmt => ({ match: { op, left, right } });
export const setDelete = (setName: string, key: Expr): SetStmt => ({
  set: { op: 'delete', elem: key, set: `@${setName}` },
});
export const mangle = (key: MetaExpr | CtExpr, value: Expr): MangleStmt => ({ mangle: { key, value } });
export const dnat = (body: NatBody): DnatStmt => ({ dnat: body });
export const snat = (body: NatBody): SnatStmt => ({ snat: body });
export const log = (prefix: string): LogStmt => ({ log: { prefix } });
export const nflog = (group: number, snaplen: number): LogStmt => ({ log: { group, snaplen } });
export const counter = (): CounterStmt => ({ counter: null });
export const jump = (target: string): JumpStmt => ({ jump: { target } });

// --- objects -------------------------------------------------------------------------------

export interface Table {
  readonly family: TableFamily;
  readonly name: string;
}
export type ChainType = 'filter' | 'nat';
export type Hook = 'prerouting' | 'input' | 'forward' | 'output' | 'postrouting';
export interface Chain {
  readonly family: TableFamily;
  readonly table: string;
  readonly name: string;
  /** Base chains only. */
  readonly type?: ChainType;
  readonly hook?: Hook;
  readonly prio?: number;
  readonly policy?: 'accept' | 'drop';
}
export type SetFlag = 'timeout' | 'constant' | 'interval';
/** A named set (`map` absent) or map (`map` = value type). */
export interface NamedSet {
  readonly family: TableFamily;
  readonly table: string;
  readonly name: string;
  /** One type, or several for a concatenated key (`ipv4_addr . ipv4_addr . inet_service`). */
  readonly type: SetType | readonly SetType[];
  /**
   * Value type of a map. nft 1.0.6 JSON cannot declare a concatenated value type (a string
   * 'a . b' is rejected and an array silently yields a plain set), so values are single types.
   */
  readonly map?: SetType;
  readonly flags?: readonly SetFlag[];
  readonly size?: number;
}
export interface Rule {
  readonly family: TableFamily;
  readonly table: string;
  readonly chain: string;
  readonly expr: readonly Stmt[];
}
/** A rule by its kernel handle (from `--echo --handle` output), for deletion. */
export interface RuleHandle {
  readonly family: TableFamily;
  readonly table: string;
  readonly chain: string;
  readonly handle: number;
}
/** Elements to add to or delete from a named set or map. Map elements are [key, value]. */
export interface Element {
  readonly family: TableFamily;
  readonly table: string;
  readonly name: string;
  readonly elem: readonly (Expr | readonly [Expr, Expr])[];
}

export type NftObject =
  | { readonly table: Table }
  | { readonly chain: Chain }
  | { readonly set: NamedSet }
  | { readonly map: NamedSet }
  | { readonly rule: Rule | RuleHandle }
  | { readonly element: Element };

export type Command =
  | { readonly add: NftObject }
  | { readonly insert: NftObject }
  | { readonly delete: NftObject }
  | { readonly destroy: NftObject }
  | { readonly list: NftObject };

/** One JSON document: libnftables applies it as one kernel transaction. */
export interface Batch {
  readonly nftables: readonly Command[];
}

export const batch = (...commands: Command[]): Batch => ({ nftables: commands });
export const add = (o: NftObject): Command => ({ add: o });
export const insert = (o: NftObject): Command => ({ insert: o });
export const del = (o: NftObject): Command => ({ delete: o });
/**
 * Delete if present (nft 1.0.7+ `destroy`, Linux 6.3+). nft 1.0.6 cannot parse it: only the
 * netlink runner is given it, as NFT_MSG_DESTROYSETELEM.
 */
export const destroy = (o: NftObject): Command => ({ destroy: o });
/** Print the object (with a runner's `output` option). */
export const list = (o: NftObject): Command => ({ list: o });

/** A named set or map as the right object kind. */
export const setObject = (s: NamedSet): NftObject => (s.map === undefined ? { set: s } : { map: s });
