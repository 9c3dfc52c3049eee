// The nftables data plane's public surface: the DataPlane implementation, the runner choice,
// and the nft text renderings used by --print-ruleset and the README.

export { NftablesDataPlane, createRunner, type NftablesDataPlaneOptions } from './dataplane.js';
export { renderRuleset, describeNegotiations } from './render.js';
export type { NftErrorCode, NftRunner, RunnerChoice, RunnerName } from './runner.js';
