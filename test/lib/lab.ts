// Test-side handle on the namespace lab (scripts/lab): bring one up per test, run commands and
// real FTP clients inside its namespaces, and tear it down (tap teardown, or at process exit).
import { spawn, spawnSync, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readFile, readdir, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = fileURLToPath(new URL('../../', import.meta.url));
const LAB_SCRIPT = join(ROOT, 'scripts', 'lab');
const FTPCLIENT = join(ROOT, 'test', 'lib', 'ftpclient.py');
/** Debian's python: the one with python3-pyftpdlib, not whatever python3 is first on PATH. */
export const SYSTEM_PYTHON = '/usr/bin/python3';
/** curl 8 from bookworm-backports (scripts/install-deps): Debian 12's curl 7.88 cannot do active FTPS. */
export const CURL8 = join(process.env.FTP_PROXY_LAB_OPT ?? '/opt/ftp-proxy-lab', 'curl8', 'curl');

export const isRoot = process.getuid?.() === 0;

export type NsName = 'client' | 'gw' | 'server';
export type ServerName = 'vsftpd' | 'pyftpd' | 'pureftpd';
export const SERVERS: readonly ServerName[] = ['vsftpd', 'pyftpd', 'pureftpd'];
/** pasv = PASV, epsv = EPSV, port = PORT, eprt = EPRT (what the client is told to use). */
export type FtpMode = 'pasv' | 'epsv' | 'port' | 'eprt';

export interface LabEnv {
  prefix: string;
  stateDir: string;
  ns: Readonly<Record<NsName, string>>;
  client4: string;
  client4Alt: string;
  gwLan4: string;
  gwWan4: string;
  server4: string;
  client6: string;
  client6Alt: string;
  gwLan6: string;
  gwWan6: string;
  server6: string;
  /** The admin's nftables table on the gateway (inet family). */
  fwTable: string;
  /** Anonymous root of every server (= the content cache): small.txt, 1MiB.bin, ... */
  ftpRoot: string;
  cacheDir: string;
  user: string;
  pass: string;
  ports: Readonly<Record<ServerName, number>>;
  /** Where each server puts the upload user's files (its login directory). */
  upload: Readonly<Record<ServerName, string>>;
  /** Scratch space removed with the lab. */
  tmpDir: string;
  logDir: string;
  /** PIDs of the servers' main processes (in the server namespace). */
  pids: Readonly<Record<ServerName, number>>;
  /** The KEY=VALUE lines as printed by `scripts/lab up`. */
  raw: Readonly<Record<string, string>>;
}

export interface ExecOptions {
  timeoutMs?: number;
  input?: string | Buffer;
  env?: NodeJS.ProcessEnv;
}

export interface ExecResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
  timedOut: boolean;
  ms: number;
}

/** Who to reach and how. host/port usually come from `lab.target()`. */
export interface FtpTarget {
  host: string;
  port: number;
  /** Default: anonymous. */
  user?: string;
  pass?: string;
  /** Default: pasv. */
  mode?: FtpMode;
  /** Local address to bind, e.g. env.client4Alt for "another LAN host". */
  source?: string;
  /**
   * Whether the client connects where a 227 reply says rather than to the control connection's
   * address. Unset: each client's own default; curl 7.74 and later do not (true adds
   * --no-ftp-skip-pasv-ip), ftpclient.py does, as classic clients do (false: --skip-pasv-ip,
   * stock Python ftplib's default).
   */
  trustPasvAddress?: boolean;
  /** Namespace the client runs in. Default: client. */
  ns?: NsName;
  /** ftpclient.py: control lines in latin-1, one byte per character (to send raw bytes). */
  latin1?: boolean;
  timeoutMs?: number;
}

export interface TransferResult extends ExecResult {
  ok: boolean;
  /** Last FTP reply code curl saw (0 if none). */
  ftpCode: number;
  file: string;
  bytes?: number;
  sha256?: string;
}

export interface PyFtpResult {
  ok: boolean;
  op: string;
  mode: FtpMode;
  error?: string;
  welcome?: string;
  bytes?: number;
  sha256?: string;
  count?: number;
  lines?: string[];
  /** For 'put': the final reply to STOR/APPE/STOU (STOU's names the file). */
  final?: string;
  bytes_before_abort?: number;
  abort_replies?: string[];
  noop_ok?: boolean;
  /** For the 'raw' op: the first line of each reply, in order. */
  raw_replies?: string[];
  /** For the 'session' op: one result per step, in order. */
  steps?: { step: string; bytes?: number; sha256?: string; count?: number; abort_replies?: string[]; noop_ok?: boolean; reply?: string }[];
  /** Control transcript: "> CMD" sent, "< reply" received (PASS masked). */
  replies: string[];
  /** [address, port] of the far end of each data connection (in active mode: who connected). */
  data_peers: [string, number][];
  elapsed_ms: number;
}

/** What startLab needs from a tap Test. */
export interface Teardownable {
  teardown(fn: () => unknown): void;
}

export interface StartOptions {
  /** Default: a random "fp" + 6 base-36 characters. */
  prefix?: string;
  /**
   * The gateway sits behind a second NAT namespace that masquerades it and drops every
   * connection opened from the WAN (scripts/lab up --upstream-nat): gwWan4/gwWan6 are then the
   * gateway's addresses toward it, and the server sees the second NAT's addresses.
   */
  upstreamNat?: boolean;
  timeoutMs?: number;
}

const DEFAULT_TIMEOUT_MS = 30_000;
const KILL_GRACE_MS = 2_000;

function run(cmd: string, args: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { env: opts.env ?? process.env, stdio: 'pipe' });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    let timedOut = false;
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, opts.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    child.stdout.on('data', (b: Buffer) => out.push(b));
    child.stderr.on('data', (b: Buffer) => err.push(b));
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({
        code,
        signal,
        stdout: Buffer.concat(out).toString(),
        stderr: Buffer.concat(err).toString(),
        timedOut,
        ms: Date.now() - started,
      });
    });
    // A child that exits without reading its input must not crash us with EPIPE.
    child.stdin.on('error', () => undefined);
    child.stdin.end(opts.input ?? '');
  });
}

function describe(cmd: string, args: readonly string[], r: ExecResult): string {
  const how = r.timedOut ? 'timed out' : `exited ${r.code ?? r.signal}`;
  return `${cmd} ${args.join(' ')} ${how}: ${(r.stderr || r.stdout).trim()}`;
}

function parseEnv(text: string): Record<string, string> {
  const env: Record<string, string> = {};
  for (const line of text.split('\n')) {
    const m = /^([A-Z][A-Z0-9_]*)=(.*)$/.exec(line);
    if (m) env[m[1]!] = m[2]!;
  }
  return env;
}

function toLabEnv(raw: Record<string, string>): LabEnv {
  const get = (k: string): string => {
    const v = raw[k];
    if (v === undefined) throw new Error(`scripts/lab up printed no ${k}`);
    return v;
  };
  // PORT_VSFTPD, UPLOAD_PYFTPD, ...: one key per server.
  const perServer = <T>(key: string, conv: (v: string) => T): Record<ServerName, T> => ({
    vsftpd: conv(get(`${key}_VSFTPD`)),
    pyftpd: conv(get(`${key}_PYFTPD`)),
    pureftpd: conv(get(`${key}_PUREFTPD`)),
  });
  return {
    prefix: get('PREFIX'),
    stateDir: get('STATE_DIR'),
    ns: { client: get('NS_CLIENT'), gw: get('NS_GW'), server: get('NS_SERVER') },
    client4: get('CLIENT4'),
    client4Alt: get('CLIENT4_ALT'),
    gwLan4: get('GW_LAN4'),
    gwWan4: get('GW_WAN4'),
    server4: get('SERVER4'),
    client6: get('CLIENT6'),
    client6Alt: get('CLIENT6_ALT'),
    gwLan6: get('GW_LAN6'),
    gwWan6: get('GW_WAN6'),
    server6: get('SERVER6'),
    fwTable: get('FW_TABLE'),
    ftpRoot: get('FTP_ROOT'),
    cacheDir: get('CACHE_DIR'),
    user: get('FTP_USER'),
    pass: get('FTP_PASS'),
    ports: perServer('PORT', Number),
    upload: perServer('UPLOAD', String),
    tmpDir: get('TMP_DIR'),
    logDir: get('LOG_DIR'),
    pids: perServer('PID', Number),
    raw: Object.freeze({ ...raw }),
  };
}

export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

function urlHost(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

/** curl's flags for `mode`; an active one takes `source` as its --ftp-port (default: the control connection's address). */
export function curlModeArgs(mode: FtpMode, source: string | undefined, trustPasvAddress = false): string[] {
  const active = ['--ftp-port', source ?? '-'];
  const pasv = trustPasvAddress ? ['--ftp-pasv', '--no-ftp-skip-pasv-ip'] : ['--ftp-pasv'];
  switch (mode) {
    case 'pasv':
      return [...pasv, '--disable-epsv'];
    case 'epsv':
      return pasv;
    case 'port':
      return [...active, '--disable-eprt'];
    case 'eprt':
      // curl falls back to PORT if the server refuses EPRT (IPv4 only).
      return active;
  }
}

/** lftp picks PORT or EPRT by address family itself: 'port' and 'eprt' both mean active. */
function lftpModeSettings(mode: FtpMode): Record<string, string> {
  switch (mode) {
    case 'pasv':
      return { 'ftp:passive-mode': 'on', 'ftp:prefer-epsv': 'no' };
    case 'epsv':
      return { 'ftp:passive-mode': 'on', 'ftp:prefer-epsv': 'yes' };
    case 'port':
    case 'eprt':
      return { 'ftp:passive-mode': 'off' };
  }
}

// Labs still up in this process, for the exit and signal safety net.
const live = new Set<Lab>();
let safetyNetInstalled = false;

function installSafetyNet(): void {
  if (safetyNetInstalled) return;
  safetyNetInstalled = true;
  process.on('exit', () => {
    for (const lab of live) lab.downSync();
  });
  // SIGALRM: how tap's runner ends a test process that timed out (SIGKILL follows 500 ms later).
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP', 'SIGALRM'] as const) {
    const onSignal = (): void => {
      for (const lab of live) lab.downSync();
      // Re-raise: the default action (or tap's own handler) then ends the process.
      process.removeListener(sig, onSignal);
      process.kill(process.pid, sig);
    };
    process.on(sig, onSignal);
  }
}

export class Lab {
  readonly env: LabEnv;
  private readonly children = new Set<ChildProcess>();
  private downPromise: Promise<void> | undefined;
  private tmpSeq = 0;

  constructor(env: LabEnv) {
    this.env = env;
  }

  get prefix(): string {
    return this.env.prefix;
  }

  nsName(ns: NsName): string {
    return this.env.ns[ns];
  }

  /** host/port of one lab server, for IPv4 (default) or IPv6. */
  target(server: ServerName, family: 4 | 6 = 4, extra: Partial<FtpTarget> = {}): FtpTarget {
    const host = family === 4 ? this.env.server4 : this.env.server6;
    return { host, port: this.env.ports[server], ...extra };
  }

  /** Run cmd inside a namespace; never rejects on a non-zero exit (check `code`). */
  exec(ns: NsName, cmd: string, args: readonly string[] = [], opts: ExecOptions = {}): Promise<ExecResult> {
    return run('ip', ['netns', 'exec', this.nsName(ns), cmd, ...args], opts);
  }

  /** Start a long-running process inside a namespace; it is ended by PID on down(). */
  spawn(ns: NsName, cmd: string, args: readonly string[] = [], opts: SpawnOptions = {}): ChildProcess {
    // `ip netns exec` execs cmd, so child.pid is cmd's own PID.
    const child = spawn('ip', ['netns', 'exec', this.nsName(ns), cmd, ...args], {
      stdio: 'pipe',
      ...opts,
    });
    this.children.add(child);
    child.on('exit', () => this.children.delete(child));
    return child;
  }

  /** nft in the gateway namespace; rejects with nft's message on failure, else its stdout. */
  async nft(args: readonly string[], opts: ExecOptions = {}): Promise<string> {
    const r = await this.exec('gw', 'nft', args, opts);
    if (r.code !== 0) throw new Error(describe('nft', args, r));
    return r.stdout;
  }

  /** Reference only: the kernel FTP conntrack helper on LAN tcp dport `ports`. */
  async helper(on: boolean, ports: readonly number[] = [21]): Promise<void> {
    await this.labCmd(['helper', this.prefix, on ? 'on' : 'off', ports.join(',')]);
  }

  /**
   * The gateway's policy routing that is ftp-proxy's (--route-table `table`): the rules that
   * look up its table and the table's routes, as `ip rule` and `ip route` print them.
   */
  async proxyRouting(table: number): Promise<string[]> {
    const found: string[] = [];
    for (const family of ['-4', '-6']) {
      const rules = await this.exec('gw', 'ip', [family, 'rule', 'show']);
      found.push(...rules.stdout.split('\n').filter((l) => l.endsWith(`lookup ${table}`)));
      // A table that was never made, or is empty again, prints nothing (and, for IPv4, an error).
      const routes = await this.exec('gw', 'ip', [family, 'route', 'show', 'table', String(table)]);
      found.push(...routes.stdout.split('\n').filter((l) => l.trim() !== ''));
    }
    return found;
  }

  /** The admin's outbound rule: LAN tcp/21,2121,2122 redirected to the gateway's `port`. */
  async redirect(on: boolean, port = 8021): Promise<void> {
    await this.labCmd(['redirect', this.prefix, on ? 'on' : 'off', String(port)]);
  }

  /**
   * Reverse mode as deployed: the LAN cannot reach the server's own addresses, only the proxy
   * in front of it, so a 227 that names the server leads nowhere (the lab's plain NAT would
   * otherwise carry it). Filtered before the gateway's DNAT: the nftables data plane's
   * translated connections still pass.
   */
  async isolateServer(): Promise<void> {
    const { server4, server6 } = this.env;
    await this.nft([
      'add table inet lab_isolate; ' +
        'add chain inet lab_isolate pre { type filter hook prerouting priority -150; policy accept; }; ' +
        `add rule inet lab_isolate pre ip daddr ${server4} drop; ` +
        `add rule inet lab_isolate pre ip6 daddr ${server6} drop`,
    ]);
  }

  /** A fresh path in the lab's scratch dir (removed with the lab). */
  tmpPath(name: string): string {
    this.tmpSeq += 1;
    return join(this.env.tmpDir, `${this.tmpSeq}-${name}`);
  }

  /** sha256 of a file in the FTP root, from its SHA256SUMS (small.txt, 1MiB.bin, 100MiB.bin). */
  async expectedSha256(name: string): Promise<string> {
    const sums = await readFile(join(this.env.cacheDir, 'SHA256SUMS'), 'utf8');
    for (const line of sums.split('\n')) {
      const [hash, file] = line.split(/\s+\*?/);
      if (file === name && hash) return hash;
    }
    throw new Error(`${name} is not in SHA256SUMS`);
  }

  /** Download `path` with curl into `out` (default: a scratch file); hashes it on success. */
  async curlGet(t: FtpTarget & { path: string; out?: string }): Promise<TransferResult> {
    const file = t.out ?? this.tmpPath(t.path.replaceAll('/', '_'));
    const r = await this.curl(t, ['-o', file], t.path);
    if (r.code !== 0) return { ...r, ok: false, ftpCode: Number(r.stdout) || 0, file };
    const [{ size: bytes }, sha256] = await Promise.all([stat(file), sha256File(file)]);
    return { ...r, ok: true, ftpCode: Number(r.stdout) || 0, file, bytes, sha256 };
  }

  /** Upload the local `file` with curl to `path` (relative to the login directory). */
  async curlPut(t: FtpTarget & { path: string; file: string }): Promise<TransferResult> {
    const r = await this.curl(t, ['-T', t.file], t.path);
    return { ...r, ok: r.code === 0, ftpCode: Number(r.stdout) || 0, file: t.file };
  }

  /**
   * Run lftp commands (e.g. ['get -O /dir 1MiB.bin', 'cls -1 dir1000']) after logging in.
   * Retries are off and timeouts short, so failures are quick; extra `settings` win.
   */
  lftp(t: FtpTarget, commands: readonly string[], settings: Record<string, string> = {}): Promise<ExecResult> {
    const timeoutMs = t.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const all: Record<string, string> = {
      'cmd:fail-exit': 'yes',
      'net:max-retries': '1',
      'net:reconnect-interval-base': '1',
      'net:timeout': String(Math.max(1, Math.floor(timeoutMs / 2000))),
      'ftp:ssl-allow': 'no',
      'xfer:clobber': 'on',
      ...lftpModeSettings(t.mode ?? 'pasv'),
      ...(t.source
        ? { [t.source.includes(':') ? 'net:socket-bind-ipv6' : 'net:socket-bind-ipv4']: t.source }
        : {}),
      ...settings,
    };
    const user = t.user ?? 'anonymous';
    const pass = t.pass ?? 'lab@example.org';
    const script = [
      ...Object.entries(all).map(([k, v]) => `set ${k} "${v}"`),
      `open -u "${user}","${pass}" -p ${t.port} ${urlHost(t.host)}`,
      ...commands,
    ].join('\n');
    return this.exec(t.ns ?? 'client', 'lftp', ['-c', script], { timeoutMs });
  }

  /**
   * Download `path` with ncftpget (-C) into `out` (default: a scratch file), active (-E) for
   * mode port or eprt, else passive; hashes it on success. ncftp refuses an active data
   * connection that does not come from the server's address. Its state goes to a scratch HOME.
   */
  async ncftpGet(t: FtpTarget & { path: string; out?: string }): Promise<TransferResult> {
    const file = t.out ?? this.tmpPath(t.path.replaceAll('/', '_'));
    const home = this.tmpPath('ncftp-home');
    await mkdir(home);
    const timeoutMs = t.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const args = [
      '-C',
      t.mode === 'port' || t.mode === 'eprt' ? '-E' : '-F',
      '-V',
      '-r',
      '0',
      '-t',
      String(Math.max(1, Math.floor(timeoutMs / 2000))),
      '-P',
      String(t.port),
      ...(t.user !== undefined ? ['-u', t.user, '-p', t.pass ?? ''] : []),
      ...(t.source ? ['-I', t.source] : []),
      t.host,
      t.path,
      file,
    ];
    const r = await this.exec(t.ns ?? 'client', 'ncftpget', args, { timeoutMs, env: { ...process.env, HOME: home } });
    if (r.code !== 0) return { ...r, ok: false, ftpCode: 0, file };
    const [{ size: bytes }, sha256] = await Promise.all([stat(file), sha256File(file)]);
    return { ...r, ok: true, ftpCode: 0, file, bytes, sha256 };
  }

  /** Python ftplib client (test/lib/ftpclient.py); `op` is e.g. ['get', '1MiB.bin', '--rest', '10']. */
  async pyftp(t: FtpTarget, op: readonly string[]): Promise<PyFtpResult> {
    const timeoutMs = t.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const args = [FTPCLIENT, '--host', t.host, '--port', String(t.port), '--mode', t.mode ?? 'pasv'];
    args.push('--timeout', String(Math.max(1, timeoutMs / 1000 - 1)));
    if (t.user !== undefined) args.push('--user', t.user);
    if (t.pass !== undefined) args.push('--password', t.pass);
    if (t.source) args.push('--source', t.source);
    if (t.trustPasvAddress === false) args.push('--skip-pasv-ip');
    if (t.latin1) args.push('--latin1');
    const r = await this.exec(t.ns ?? 'client', SYSTEM_PYTHON, [...args, ...op], { timeoutMs });
    try {
      return JSON.parse(r.stdout) as PyFtpResult;
    } catch {
      throw new Error(describe('ftpclient.py', op, r));
    }
  }

  /** The lab's log files (servers' own logs), by file name: for failure diagnostics. */
  async readLogs(): Promise<Record<string, string>> {
    const logs: Record<string, string> = {};
    for (const name of await readdir(this.env.logDir)) {
      logs[name] = await readFile(join(this.env.logDir, name), 'utf8');
    }
    return logs;
  }

  /** End spawned processes, then `scripts/lab down`. Idempotent. */
  down(): Promise<void> {
    this.downPromise ??= (async () => {
      await Promise.all([...this.children].map((c) => stopChild(c)));
      await this.labCmd(['down', this.prefix]);
      live.delete(this);
    })();
    return this.downPromise;
  }

  /** Synchronous last resort for process exit and signals. */
  downSync(): void {
    for (const c of this.children) if (c.pid !== undefined) tryKill(c.pid, 'SIGKILL');
    spawnSync(LAB_SCRIPT, ['down', this.prefix], { stdio: 'ignore', timeout: 20_000 });
    live.delete(this);
  }

  private async curl(t: FtpTarget, io: string[], path: string): Promise<ExecResult> {
    const timeoutMs = t.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const args = [
      '-sS',
      '-g',
      '--max-time',
      String(Math.max(1, Math.floor(timeoutMs / 1000) - 1)),
      '-w',
      '%{response_code}',
      ...curlModeArgs(t.mode ?? 'pasv', t.source, t.trustPasvAddress),
      ...(t.source ? ['--interface', t.source] : []),
      ...(t.user !== undefined ? ['--user', `${t.user}:${t.pass ?? ''}`] : []),
      ...io,
      `ftp://${urlHost(t.host)}:${t.port}/${path}`,
    ];
    return this.exec(t.ns ?? 'client', 'curl', args, { timeoutMs });
  }

  private async labCmd(args: readonly string[]): Promise<ExecResult> {
    const r = await run(LAB_SCRIPT, args, { timeoutMs: 60_000 });
    if (r.code !== 0) throw new Error(describe('scripts/lab', args, r));
    return r;
  }
}

function tryKill(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch {
    // Already gone.
  }
}

function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) {
    return Promise.resolve();
  }
  const pid = child.pid;
  return new Promise((resolve) => {
    const timer = setTimeout(() => tryKill(pid, 'SIGKILL'), KILL_GRACE_MS);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    tryKill(pid, 'SIGTERM');
  });
}

/** Bring a lab up; with a tap Test, it comes down in that test's teardown. */
export async function startLab(t?: Teardownable, opts: StartOptions = {}): Promise<Lab> {
  const prefix = opts.prefix ?? `fp${BigInt('0x' + randomBytes(4).toString('hex')).toString(36).slice(0, 6)}`;
  installSafetyNet();
  const r = await run(LAB_SCRIPT, ['up', prefix, ...(opts.upstreamNat ? ['--upstream-nat'] : [])], { timeoutMs: opts.timeoutMs ?? 120_000 });
  if (r.code !== 0) {
    // `up` cleans up after itself; a timeout may have cut that short.
    spawnSync(LAB_SCRIPT, ['down', prefix], { stdio: 'ignore', timeout: 20_000 });
    throw new Error(describe('scripts/lab', ['up', prefix], r));
  }
  const lab = new Lab(toLabEnv(parseEnv(r.stdout)));
  live.add(lab);
  t?.teardown(() => lab.down());
  return lab;
}
