// TLS toward the server (--server-tls explicit): the client side of the server's control
// connection after the proxy's AUTH TLS, and of each data connection, which resumes the control
// connection's session (vsftpd's require_ssl_reuse refuses a data connection that does not).

import { readFileSync } from 'node:fs';
import type net from 'node:net';
import tls from 'node:tls';
import type { ServerTlsConfig } from '../config.js';
import type { DataTls } from '../dataplane/types.js';
import { ConfigError, DataPlaneError } from '../errors.js';
import { DATA_HANDSHAKE_MS, MIN_TLS_VERSION } from './context.js';

/** How the proxy checks servers' certificates; one per proxy. */
export class ServerTlsClient {
  private constructor(
    private readonly ca: Buffer | undefined,
    readonly insecure: boolean,
  ) {}

  /** Throws ConfigError (one line) when --server-ca cannot be read. */
  static load(cfg: ServerTlsConfig): ServerTlsClient {
    let ca: Buffer | undefined;
    if (cfg.caFile !== undefined) {
      try {
        ca = readFileSync(cfg.caFile);
      } catch (e) {
        throw new ConfigError('TLS_FILE', `--server-ca: cannot read '${cfg.caFile}': ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
      }
      if (!ca.includes('-----BEGIN CERTIFICATE-----')) throw new ConfigError('TLS_CERT', `--server-ca: '${cfg.caFile}' holds no PEM certificate`);
    }
    return new ServerTlsClient(ca, cfg.insecure);
  }

  /** TLS toward one session's server, at `address` (its certificate must name that address). */
  forSession(address: string): ServerSessionTls {
    return new ServerSessionTls({
      // The identity is checked against `host` (an IP address: the certificate's IP SANs); SNI
      // carries host names only.
      host: address,
      ...(this.ca ? { ca: this.ca } : {}),
      rejectUnauthorized: !this.insecure,
      minVersion: MIN_TLS_VERSION,
    });
  }
}

export class ServerSessionTls implements DataTls {
  /** The control connection's latest session (TLS 1.3 hands them out after the handshake). */
  private session: Buffer | undefined;

  constructor(private readonly options: tls.ConnectionOptions) {}

  /** The control connection, after the server's 234. */
  connect(sock: net.Socket): tls.TLSSocket {
    const t = tls.connect({ ...this.options, socket: sock });
    t.on('session', (s: Buffer) => (this.session = s));
    return t;
  }

  /**
   * A data connection: the server is the TLS server whichever end connected (RFC 4217). Resolves
   * once the handshake is over, resuming the control connection's session when it has one.
   */
  secure(sock: net.Socket): Promise<net.Socket> {
    const t = tls.connect({ ...this.options, socket: sock, ...(this.session ? { session: this.session } : {}) });
    return new Promise((resolve, reject) => {
      const fail = (message: string): void => {
        clearTimeout(timer);
        t.destroy();
        sock.destroy();
        reject(new DataPlaneError('TLS_HANDSHAKE', `TLS with the server's data connection: ${message}`));
      };
      const timer = setTimeout(() => fail('timed out'), DATA_HANDSHAKE_MS);
      t.once('error', (err) => fail(err.message));
      t.once('secureConnect', () => {
        clearTimeout(timer);
        t.removeAllListeners('error');
        resolve(t);
      });
    });
  }
}
