// The command policy (--deny-command, --read-only): which client verbs the proxy refuses itself,
// matched on the verb as the session classifies it (Telnet bytes and white space already gone).

/** What a read-only gateway refuses: everything that creates, changes or removes on the server. */
export const READ_ONLY_VERBS: readonly string[] = ['STOR', 'STOU', 'APPE', 'DELE', 'RMD', 'MKD', 'XMKD', 'XRMD', 'RNFR', 'RNTO', 'SITE'];

/**
 * Verbs servers take as another one's synonym (RFC 775's X forms, the P@SW spelling of PASV):
 * denying one denies its synonym too, or the synonym would be a way around the policy.
 */
const SYNONYMS: Readonly<Record<string, string>> = {
  'P@SW': 'PASV',
  XMKD: 'MKD',
  XRMD: 'RMD',
  XCWD: 'CWD',
  XCUP: 'CDUP',
  XPWD: 'PWD',
};

/** What a verb means: upper case, a synonym replaced by its standard form. */
export function canonicalVerb(verb: string): string {
  const v = verb.toUpperCase();
  return SYNONYMS[v] ?? v;
}

/** The form --deny-command accepts: letters, and the @ of P@SW. */
export function isVerb(text: string): boolean {
  return /^[A-Za-z@]{1,16}$/.test(text);
}

export interface PolicyRefusal {
  /** Which option refused it, as the reply and the log name it. */
  readonly policy: 'read-only' | 'deny-command';
  /** The verb refused, in its standard form; 'non-ASCII' for one that is not plain ASCII. */
  readonly verb: string;
  readonly reply: string;
}

/**
 * A verb that is not printable ASCII is refused while a policy is active: servers that decode
 * UTF-8 and upper-case with Unicode rules (pyftpdlib: 'ﬆOR'.upper() is 'STOR') would otherwise
 * read a command the policy never saw. No FTP verb has such a byte.
 */
const PLAIN_VERB = /^[\x21-\x7e]*$/;

export class CommandPolicy {
  private readonly denied: ReadonlySet<string>;
  private readonly readOnly: ReadonlySet<string>;

  /** `deny`: verbs as given (validated by config.ts); `readOnly`: --read-only. */
  constructor(deny: readonly string[], readOnly: boolean) {
    this.denied = new Set(deny.map(canonicalVerb));
    this.readOnly = new Set(readOnly ? READ_ONLY_VERBS.map(canonicalVerb) : []);
  }

  get empty(): boolean {
    return this.denied.size === 0 && this.readOnly.size === 0;
  }

  /** Why the command with `verb` (as classified) is refused, or null when it may go to the server. */
  refusal(verb: string): PolicyRefusal | null {
    if (this.empty) return null;
    if (!PLAIN_VERB.test(verb)) {
      const policy = this.readOnly.size > 0 ? 'read-only' : 'deny-command';
      return { policy, verb: 'non-ASCII', reply: `500 Command verb is not plain ASCII, refused (command policy: ${policy})` };
    }
    const v = canonicalVerb(verb);
    // An explicit --deny-command names itself even where --read-only would refuse the verb too.
    if (this.denied.has(v)) return { policy: 'deny-command', verb: v, reply: `502 ${v} is not allowed through this proxy (command policy: deny-command)` };
    if (this.readOnly.has(v)) return { policy: 'read-only', verb: v, reply: `550 ${v} refused: this proxy is read-only (command policy: read-only)` };
    return null;
  }
}
