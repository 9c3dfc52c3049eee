// Gateway rulesets for the lab: the examples (examples/nftables/, with their define lines set
// to the lab's interfaces and addresses) and test fixtures, loaded with nft -f on the gateway.

import { readFile, writeFile } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import type { Lab } from './lab.js';

export const EXAMPLES = fileURLToPath(new URL('../../examples/nftables/', import.meta.url));
export const FIXTURES = fileURLToPath(new URL('../fixtures/nftables/', import.meta.url));

/** `text` with each `define NAME = ...` line of `values` set; a name the text lacks is an error. */
export function withDefines(text: string, values: Readonly<Record<string, string>>): string {
  let out = text;
  for (const [name, value] of Object.entries(values)) {
    const line = new RegExp(`^define ${name} = .*$`, 'm');
    if (!line.test(out)) throw new Error(`no 'define ${name}' line`);
    out = out.replace(line, `define ${name} = ${value}`);
  }
  return out;
}

/** Load a ruleset text on the lab's gateway (nft -f of a scratch file). */
export async function loadRuleset(lab: Lab, text: string, name: string): Promise<void> {
  const file = lab.tmpPath(name);
  await writeFile(file, text);
  await lab.nft(['-f', file]);
}

/** An example with the lab's values for its defines. */
export async function example(name: 'outbound-gateway.nft' | 'reverse-server.nft', values: Readonly<Record<string, string>>): Promise<string> {
  return withDefines(await readFile(EXAMPLES + name, 'utf8'), values);
}

/** The lab's values for examples/nftables/reverse-server.nft: clients on lan0, the server on wan0. */
export function reverseDefines(lab: Lab, proxyPort: number): Record<string, string> {
  return { PUBLIC_IF: '"lan0"', INTERNAL_IF: '"wan0"', PUBLIC_ADDR: lab.env.gwLan4, PROXY_PORT: String(proxyPort) };
}
