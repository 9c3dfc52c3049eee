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

/** A bad flag or value: printed as one line, exit status 2. */
export class ConfigError extends FtpProxyError {}

/** The data plane could not admit, or release, a data connection. */
export class DataPlaneError extends FtpProxyError {}

/** Finding where a redirected connection was really going failed. */
export class OrigDstError extends FtpProxyError {}
