// Reading Prometheus exposition text in tests: one sample's value, and differences between
// two scrapes.

/** The value of one sample line, e.g. sample(text, 'ftpproxy_transfers_total{command="RETR",result="ok"}'). */
export function sample(text: string, series: string): number {
  const line = text.split('\n').find((l) => l.startsWith(series + ' '));
  if (line === undefined) throw new Error(`no sample ${series}`);
  return Number(line.slice(series.length + 1));
}

/** How much each of `series` moved from scrape `before` to scrape `after`. */
export function moved(before: string, after: string, series: readonly string[]): Record<string, number> {
  return Object.fromEntries(series.map((s) => [s, sample(after, s) - sample(before, s)]));
}
