// The login phase of a client that connected to the proxy itself (--user-at-host): the proxy's
// own greeting and what each line before USER name@host gets. Pure: the shell resolves and connects.

import { classifyCommand, removeTelnet } from '../protocol/commands.js';
import { ProtocolError } from '../errors.js';
import { parseUserAtHost, type UserAtHost } from '../net/user-at-host.js';

export const DIRECT_GREETING = '220 ftp-proxy ready: log in as USER name@host or USER name@host:port';

export type DirectStep =
  /** Answer and wait for the next line; `refusal` names a bad login for the log. */
  | { readonly kind: 'reply'; readonly text: string; readonly refusal?: { readonly code: string; readonly err: string } }
  | { readonly kind: 'quit'; readonly text: string }
  /** Resolve and connect to `target`, then log in there as `target.user`. */
  | { readonly kind: 'login'; readonly target: UserAtHost };

/** What one client line before the login means. */
export function directLine(raw: string): DirectStep {
  const line = removeTelnet(raw);
  if (line.includes('\r')) return { kind: 'reply', text: '500 Bare CR in command line' };
  const cmd = classifyCommand(line);
  switch (cmd.kind) {
    case 'USER':
      try {
        return { kind: 'login', target: parseUserAtHost(cmd.name) };
      } catch (e) {
        const err = e as ProtocolError;
        if (err.code === 'NO_HOST') {
          return { kind: 'reply', text: '530 This is a proxy: log in as USER name@host or USER name@host:port', refusal: { code: err.code, err: err.message } };
        }
        return { kind: 'reply', text: `501 Bad USER name@host: ${err.message}`, refusal: { code: err.code, err: err.message } };
      }
    case 'QUIT':
      return { kind: 'quit', text: '221 Goodbye' };
    case 'AUTH':
      // No server yet to speak TLS with: the client goes on in plain FTP, as with --tls refuse.
      return { kind: 'reply', text: '534 AUTH not available before USER name@host, continue without TLS' };
    default:
      return { kind: 'reply', text: '530 Log in with USER name@host first' };
  }
}
