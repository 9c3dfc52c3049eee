// Error classes with stable codes. Every error the proxy raises on purpose is one of
// these, so callers branch on `code` and logs carry it; the cause chain is kept.

export class FtpProxyError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.code = code;
    this.name = new.target.name;
  }
}

/**
 * Bad bytes or lines from a client or server: becomes an FTP reply or ends one session. It is
 * input, not a bug, so it carries no stack trace: capturing one cost 7 µs per bad command,
 * thirty times the rest of the work, which a client flooding bad commands could spend at will.
 */
export class ProtocolError extends FtpProxyError {
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    try {
      super(code, message, options);
    } finally {
      Error.stackTraceLimit = limit;
    }
  }
}

/**
 * A bad flag or value: printed as one line, exit status 2. `flag` names the option as the
 * message does (-m/--max-sessions), `detail` is the message after it, and `item` the index of
 * the bad value of a repeatable option: what a --config file needs to name its line instead.
 */
export class ConfigError extends FtpProxyError {
  readonly flag: string | undefined;
  readonly detail: string;
  readonly item: number | undefined;
  constructor(code: string, message: string, options?: { cause?: unknown; flag?: string; detail?: string; item?: number }) {
    super(code, message, options);
    this.flag = options?.flag;
    this.detail = options?.detail ?? message;
    this.item = options?.item;
  }
}

/** The data plane could not admit, or release, a data connection. */
export class DataPlaneError extends FtpProxyError {}

/** Finding where a redirected connection was really going failed. */
export class OrigDstError extends FtpProxyError {}
