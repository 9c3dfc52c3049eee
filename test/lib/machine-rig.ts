// The pure session machine for unit tests: one set of options (reverse-mode addresses: the client
// 192.0.2.2 reaches the proxy at 192.0.2.1, which is told as 203.0.113.9; the server is
// 198.51.100.2), replies built from their lines, and the actions picked out by type.
import { SessionMachine, type Action, type Addressing, type MachineOptions } from '../../src/session/machine.js';
import type { Reply } from '../../src/protocol/replies.js';

export const addressing: Addressing = {
  passiveListen: '192.0.2.1',
  passiveAdvertise: '203.0.113.9',
  passiveSource: '198.51.100.1',
  activeListen: '198.51.100.1',
  activeSource: '192.0.2.1',
};

export const BASE: MachineOptions = {
  sid: '7',
  client: { address: '192.0.2.2', port: 40000 },
  server: { address: '198.51.100.2', port: 21 },
  addressing,
  anonymousOnly: false,
  rewriteSourcePort: false,
};

export const reply = (...lines: string[]): Reply => ({ code: Number(lines[0]!.slice(0, 3)), lines });

/** A machine with BASE's options and `over`, whose server has greeted (unless `greet` is false). */
export function machine(over: Partial<MachineOptions> = {}, greet = true): SessionMachine {
  const m = new SessionMachine({ ...BASE, ...over });
  if (greet) m.serverReply(reply('220 ready'));
  return m;
}

/** The lines an action list sends to one side. */
export const sent = (as: Action[], type: 'toClient' | 'toServer'): string[] =>
  as.filter((a): a is Extract<Action, { type: typeof type }> => a.type === type).map((a) => a.text);

export const of = <K extends Action['type']>(as: Action[], type: K) => as.filter((a): a is Extract<Action, { type: K }> => a.type === type);
