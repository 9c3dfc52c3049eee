// The proxy's TLS identity toward clients (--tls terminate): the certificate and key read from
// their files (checked at start, re-read by reload()), and one TLS context per control connection.
//
// Why one context per control connection: a PROT P data connection must prove it comes from the
// client of that control connection, or whoever reaches the advertised port first gets the file.
// FTPS clients prove it by resuming the control connection's TLS session on the data connection
// (vsftpd's require_ssl_reuse). Each context gets its own random session-ticket keys, so a
// ticket issued on one control connection opens a resumed handshake on that context alone;
// Node keeps no server-side session-id cache without a tls.Server, so tickets are the only way
// to resume. A data connection whose handshake was not a resumption is refused.

import { X509Certificate, createPrivateKey, randomBytes, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type net from 'node:net';
import tls from 'node:tls';
import type { TlsTerminateConfig } from '../config.js';
import type { DataTls } from '../dataplane/types.js';
import { ConfigError, DataPlaneError } from '../errors.js';

/** TLS 1.0 and 1.1 are deprecated (RFC 8996); ciphers are Node's defaults. */
export const MIN_TLS_VERSION = 'TLSv1.2';
/** A data connection's TLS handshake must be over within this long. */
export const DATA_HANDSHAKE_MS = 10_000;

interface Credentials {
  readonly cert: Buffer;
  readonly key: Buffer;
  /** When the certificate stops being valid, for the log. */
  readonly validTo: string;
}

function readPem(flag: string, file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (e) {
    throw new ConfigError('TLS_FILE', `${flag}: cannot read '${file}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

/**
 * Reads and checks the certificate (chain allowed: the first one is the proxy's) and its key.
 * Every failure is one ConfigError line naming the flag.
 */
function loadCredentials(certFile: string, keyFile: string): Credentials {
  const cert = readPem('--tls-cert', certFile);
  const key = readPem('--tls-key', keyFile);
  let x509: X509Certificate;
  try {
    x509 = new X509Certificate(cert);
  } catch {
    throw new ConfigError('TLS_CERT', `--tls-cert: '${certFile}' holds no PEM certificate`);
  }
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(key);
  } catch (e) {
    const why = /passphrase/i.test((e as Error).message) ? 'an encrypted key (give it without a passphrase)' : 'no PEM private key';
    throw new ConfigError('TLS_KEY', `--tls-key: '${keyFile}' holds ${why}`);
  }
  if (!x509.checkPrivateKey(privateKey)) {
    throw new ConfigError('TLS_KEY', `--tls-key: '${keyFile}' is not the key of the certificate in '${certFile}'`);
  }
  try {
    tls.createSecureContext({ cert, key, minVersion: MIN_TLS_VERSION });
  } catch (e) {
    throw new ConfigError('TLS_CERT', `--tls-cert: '${certFile}' cannot be used: ${(e as Error).message}`);
  }
  return { cert, key, validTo: x509.validTo };
}

/** What the certificate holder needs of --tls terminate's settings. */
type TerminatorConfig = Pick<TlsTerminateConfig, 'certFile' | 'keyFile' | 'reuseCheck'>;

/** The proxy's certificate and key, shared by every session; reload() swaps them. */
export class TlsTerminator {
  private creds: Credentials;

  private constructor(
    private readonly cfg: TerminatorConfig,
    creds: Credentials,
  ) {
    this.creds = creds;
  }

  /** Throws ConfigError (one line) when the files are missing, unreadable or do not match. */
  static load(cfg: TerminatorConfig): TlsTerminator {
    return new TlsTerminator(cfg, loadCredentials(cfg.certFile, cfg.keyFile));
  }

  get validTo(): string {
    return this.creds.validTo;
  }

  get reuseCheck(): boolean {
    return this.cfg.reuseCheck;
  }

  /**
   * Re-reads the certificate and key (SIGHUP): control connections that start TLS from now on
   * present the new ones; those already secured keep theirs. On failure the old pair stays in
   * use and the one-line reason is returned; null on success.
   */
  reload(): string | null {
    try {
      this.creds = loadCredentials(this.cfg.certFile, this.cfg.keyFile);
      return null;
    } catch (e) {
      return (e as Error).message;
    }
  }

  /** The TLS context of one control connection and of the data connections that resume it. */
  forSession(): SessionTls {
    return new SessionTls(this.creds, this.cfg.reuseCheck);
  }
}

export class SessionTls implements DataTls {
  private readonly context: tls.SecureContext;
  /** Told when a data connection's handshake starts and how it ends (the session holds replies meanwhile). */
  onHandshake: ((event: 'start' | 'admitted' | 'refused') => void) | null = null;

  constructor(
    creds: Credentials,
    private readonly reuseCheck: boolean,
  ) {
    this.context = tls.createSecureContext({
      cert: creds.cert,
      key: creds.key,
      minVersion: MIN_TLS_VERSION,
      // Tickets of this context open this context alone (see the top of this module).
      ticketKeys: randomBytes(48),
    });
  }

  /** The server side of a TLS handshake over `sock` (a control connection after 234, or data). */
  wrap(sock: net.Socket): tls.TLSSocket {
    return new tls.TLSSocket(sock, { isServer: true, secureContext: this.context });
  }

  /**
   * A PROT P data connection: the FTP client is the TLS client whichever end connected (RFC 4217
   * section 7), so the proxy is the TLS server here. Resolves once the handshake has resumed this
   * control connection's session (unless --tls-no-reuse-check); otherwise destroys `sock` and
   * rejects with DataPlaneError TLS_NOT_RESUMED or TLS_HANDSHAKE.
   */
  secure(sock: net.Socket): Promise<net.Socket> {
    const t = this.wrap(sock);
    this.onHandshake?.('start');
    return new Promise((resolve, reject) => {
      let settled = false;
      const fail = (code: string, message: string): void => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        t.destroy();
        sock.destroy();
        this.onHandshake?.('refused');
        reject(new DataPlaneError(code, message));
      };
      const timer = setTimeout(() => fail('TLS_HANDSHAKE', 'TLS handshake timed out'), DATA_HANDSHAKE_MS);
      t.once('error', (err) => fail('TLS_HANDSHAKE', err.message));
      t.once('secure', () => {
        if (this.reuseCheck && !t.isSessionReused()) {
          return fail('TLS_NOT_RESUMED', "the data connection's TLS session is not the control connection's");
        }
        settled = true;
        clearTimeout(timer);
        t.removeAllListeners('error');
        this.onHandshake?.('admitted');
        resolve(t);
      });
    });
  }
}
