// The control socket's line protocol, shared by the proxy (server.ts here) and the subcommands
// (client.ts): one JSON request per line, one JSON reply per line. Pure: no sockets.

/**
 * In a directory of its own, so a proxy run as a dedicated user (the systemd unit's
 * RuntimeDirectory=ftp-proxy) can create it without write access to /run.
 */
export const DEFAULT_CONTROL_SOCKET = '/run/ftp-proxy/ftp-proxy.sock';

/** Longest request line the proxy reads; anything longer ends that control connection. */
export const MAX_REQUEST_LINE = 4096;

/** What `ftp-proxy sessions` shows of one live session. */
export interface SessionView {
  readonly id: string;
  /** "addr:port", IPv6 in brackets. */
  readonly client: string;
  /** "addr:port" once known (outbound mode looks it up first). */
  readonly server: string | null;
  /** The name of the last USER command, once sent. */
  readonly user: string | null;
  readonly state: 'connect' | 'login' | 'idle' | 'transfer' | 'tls';
  readonly ageSeconds: number;
  /** Transfer commands that have ended so far. */
  readonly transfers: number;
  /** Data bytes of those transfers (the one running counts once it has ended). */
  readonly bytes: number;
  /** The data path negotiated last and not yet released. */
  readonly dataPath: { readonly mode: 'passive' | 'active'; readonly port: number } | null;
}

/** What the proxy lets the control socket see and do, without knowing what a session is. */
export interface SessionProvider {
  list(): SessionView[];
  /** Ends session `id` (its client gets 421); false when there is no such session. */
  kill(id: string): boolean;
}

export type Request = { readonly cmd: 'sessions' } | { readonly cmd: 'kill'; readonly id: string };

export type Reply =
  | { readonly ok: true; readonly sessions: SessionView[] }
  | { readonly ok: true }
  | { readonly ok: false; readonly error: string };

/** A request line, or the reason it is not one (sent back as the error). */
export function parseRequest(line: string): Request | { error: string } {
  let v: unknown;
  try {
    v = JSON.parse(line);
  } catch {
    return { error: 'not JSON: send one JSON object per line, e.g. {"cmd":"sessions"}' };
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return { error: 'a request is a JSON object' };
  const o = v as Record<string, unknown>;
  if (o.cmd === 'sessions') return { cmd: 'sessions' };
  if (o.cmd === 'kill') {
    if (typeof o.id !== 'string' || o.id === '') return { error: 'kill needs "id", a session id string' };
    return { cmd: 'kill', id: o.id };
  }
  return { error: `unknown cmd ${JSON.stringify(o.cmd ?? null)}: one of "sessions", "kill"` };
}

/** The reply to one request, given what the proxy holds. */
export function answer(req: Request, provider: SessionProvider): Reply {
  if (req.cmd === 'sessions') return { ok: true, sessions: provider.list() };
  return provider.kill(req.id) ? { ok: true } : { ok: false, error: `no session ${req.id}` };
}

/** "addr:port" with IPv6 addresses in brackets, as in URLs. */
export function hostPort(address: string, port: number): string {
  return address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;
}
