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

/** Bad bytes or lines from a client or server: becomes an FTP reply or ends one session. */
export class ProtocolError extends FtpProxyError {}

/** A bad flag or value: printed as one line, exit status 2. */
export class ConfigError extends FtpProxyError {}

/** The data plane could not admit, or release, a data connection. */
export class DataPlaneError extends FtpProxyError {}

/** Finding where a redirected connection was really going failed. */
export class OrigDstError extends FtpProxyError {}
