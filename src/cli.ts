// The command-line contract: commander definitions only. Flags and subcommands in, raw option
// strings out; validation lives in config.ts, the wiring in main.ts, the entry point in bin.ts.

import { Command, CommanderError } from 'commander';
import { DEFAULT_MAX_LINE } from './protocol/lines.js';
import { DEFAULT_CONTROL_SOCKET } from './control/protocol.js';

export interface RawOptions {
  ipv6?: boolean;
  anonymousOnly?: boolean;
  readOnly?: boolean;
  denyCommand: string[];
  proxyAddress?: string;
  bind?: string;
  debugLevel: string;
  foreground?: boolean;
  maxSessions: string;
  maxSessionsPerClient: string;
  serverPort: string;
  port: string;
  reverse?: string;
  rewriteSourcePort?: boolean;
  tag?: string;
  mark?: string;
  timeout: string;
  logRules?: boolean;
  masqueradeAddress?: string;
  masqueradeFor: string[];
  dataPorts: string;
  backend: string;
  connectTimeout: string;
  dataTimeout: string;
  dataIdleTimeout: string;
  maxLineLength: string;
  nftTable: string;
  nflogGroup: string;
  routeTable: string;
  shutdownGrace: string;
  printRuleset?: boolean;
  cleanup?: boolean;
  loginTimeout: string;
  tls: string;
  userAtHost?: boolean;
  tlsCert?: string;
  tlsKey?: string;
  tlsRequired?: boolean;
  tlsNoReuseCheck?: boolean;
  implicitTls?: boolean;
  serverTls: string;
  serverCa?: string;
  serverTlsInsecure?: boolean;
  serverMode: string;
  allowClient: string[];
  denyClient: string[];
  allowServer: string[];
  denyServer: string[];
  metrics?: string;
  controlSocket?: string;
  xferlog?: string;
  config?: string;
  checkConfig?: boolean;
}

/** Options of the subcommands that talk to a running proxy. */
export interface RawClientOptions {
  controlSocket?: string;
  json?: boolean;
}

const collect = (value: string, previous: string[]): string[] => [...previous, ...value.split(',')];

export const VERSION = '0.1.0';

export function buildCommand(): Command {
  return new Command('ftp-proxy')
    .description(
      'Transparent FTP application-layer gateway for Linux NAT gateways (nftables).\n' +
        'Relays FTP control connections and admits each negotiated data connection\n' +
        'with short-lived nftables entries (or a userspace relay).',
    )
    .version(VERSION, '-V, --version')
    .helpOption('-h, --help', 'show this help and exit')
    .option('-6, --ipv6', 'default listen address is ::1 instead of 127.0.0.1')
    .option('-A, --anonymous-only', 'allow only anonymous logins (USER anonymous or ftp)')
    .option('--read-only', 'refuse commands that change the server: STOR STOU APPE DELE RMD MKD XMKD XRMD RNFR RNTO SITE (550 from the proxy)')
    .option('--deny-command <verbs>', 'refuse these commands at the proxy (502), e.g. DELE,SITE (repeat or comma-separate)', collect, [])
    .option('-a, --proxy-address <addr>', 'source address for connections to servers (default: chosen by routing)')
    .option('-b, --bind <addr>', 'listen address (default: 127.0.0.1, or ::1 with -6)')
    .option('-D, --debug-level <0-7>', 'syslog-style log level: 3 errors, 5 notices, 6 sessions, 7 debug', '5')
    .option('-d, --foreground', 'log human-readable lines to stderr (ftp-proxy never forks; run it under systemd)')
    .option('-m, --max-sessions <n>', 'maximum concurrent sessions, 1-100000', '100')
    .option('--max-sessions-per-client <n>', 'maximum concurrent sessions from one client address, 0 = no limit', '0')
    .option('-P, --server-port <port>', 'server port in reverse mode (-R)', '21')
    .option('-p, --port <port>', 'listen port', '8021')
    .option('-R, --reverse <addr>', 'reverse mode: relay every session to this fixed FTP server address')
    .option('-r, --rewrite-source-port', 'active mode data connections come from port 20')
    .option('-T, --tag <mark>', 'packet mark (decimal or 0x hex) set on admitted data connections (same as --mark)')
    .option('--mark <n>', 'packet mark set on admitted data connections, 1-0xffffffff')
    .option('-t, --timeout <seconds>', 'idle timeout of a session, 0-86400, 0 = none', '86400')
    .option('-v, --log-rules', 'log admitted data connections (nftables log statement, per-session prefix)')
    .option('--nflog-group <n>', 'nftables: NFLOG group through which the data connections\' bytes are counted, 1-65535; 0 = do not count', '2121')
    .option('--masquerade-address <addr>', 'address advertised to clients in 227 replies (reverse mode; default: the local address of the control connection)')
    .option('--masquerade-for <cidr=addr>', 'reverse mode: clients in CIDR are told ADDR in 227 replies (most specific block wins, over --masquerade-address); repeatable', collect, [])
    .option('--data-ports <lo-hi>', 'ports used for data connections, 1024-65535', '49152-65535')
    .option('--backend <name>', 'data plane: nftables or relay', 'nftables')
    .option('--connect-timeout <seconds>', 'time to connect to a server, 1-300', '30')
    .option('--login-timeout <seconds>', 'time from connect to a successful login, 1-3600', '120')
    .option('--tls <refuse|pass|terminate>', 'AUTH TLS/SSL: refuse (534, client goes on in plain FTP), pass (then opaque: no data connections are admitted), or terminate (reverse mode: the proxy holds the certificate, FTPS to clients, plain FTP to the server)', 'refuse')
    .option('--tls-cert <file>', '--tls terminate: PEM certificate, then its chain')
    .option('--tls-key <file>', '--tls terminate: PEM private key of --tls-cert')
    .option('--tls-required', '--tls terminate: USER and PASS before AUTH TLS get 530')
    .option('--implicit-tls', '--tls terminate: clients speak TLS from the first byte (implicit FTPS, port 990 style); data is PROT P from the start')
    .option('--server-tls <off|explicit>', '--tls terminate: toward the server, plain FTP (off) or AUTH TLS, PBSZ 0, PROT P, with data connections resuming the control session (explicit)', 'off')
    .option('--server-ca <file>', '--server-tls explicit: PEM CA certificates the server\'s certificate must chain to (default: the system\'s); its name must match the -R address')
    .option('--server-tls-insecure', '--server-tls explicit: do not check the server\'s certificate (logged as a warning)')
    .option('--tls-no-reuse-check', '--tls terminate: admit PROT P data connections that do not resume the control connection\'s TLS session (broken clients; anyone who reaches the data port first gets the data)')
    .option('--user-at-host', 'outbound mode: a client connecting to the proxy itself logs in as USER name@host[:port] (IPv6 in brackets); needs --allow-server')
    .option('--server-mode <client|passive|active>', "data connections toward the server: client (as the client asked); passive (PASV/EPSV always: an active client's PORT/EPRT is answered by the proxy, which joins the server's passive connection to one it makes to the client; for a gateway that cannot take inbound connections); active (PORT/EPRT always, reverse mode: a passive client's data meets the server's at the proxy; for a server that takes no inbound data connections)", 'client')
    .option('--allow-client <cidr>', 'only these client addresses (repeat or comma-separate)', collect, [])
    .option('--deny-client <cidr>', 'refuse these client addresses (repeatable)', collect, [])
    .option('--allow-server <cidr>', 'only these server addresses (repeatable)', collect, [])
    .option('--deny-server <cidr>', 'refuse these server addresses (repeatable)', collect, [])
    .option('--data-timeout <seconds>', 'time an admitted data connection may take to arrive, 1-3600', '30')
    .option('--data-idle-timeout <seconds>', 'relay: a data connection that carries nothing this long is cut, 1-86400', '300')
    .option('--max-line-length <bytes>', 'longest accepted control line, 512-65536', String(DEFAULT_MAX_LINE))
    .option('--nft-table <name>', 'name of the inet table ftp-proxy owns', 'ftp_proxy')
    .option('--route-table <n>', "relay, outbound mode: routing table and rule priority ftp-proxy owns, so data paths use the server's address (passive data is caught there, active data comes from it); 1-32765 (not 253-255), 0 = off", '2121')
    .option('--shutdown-grace <seconds>', 'on SIGTERM, time given to sessions before they get 421, 0-3600', '10')
    .option('--print-ruleset', 'print the nftables table ftp-proxy would create, and exit')
    .option('--cleanup', "remove the nftables table and the relay's policy routing (--nft-table, --route-table) a proxy with these options left, and exit (systemd's ExecStopPost=)")
    .option('--metrics <addr:port>', 'serve Prometheus metrics over HTTP at GET /metrics on this address ([v6addr]:port for IPv6); off by default')
    .option('--control-socket <path>', `unix socket for 'ftp-proxy sessions' and 'ftp-proxy kill' (default: ${DEFAULT_CONTROL_SOCKET})`)
    .option('--xferlog <file>', 'append one wu-ftpd/ProFTPD xferlog line per file transfer to this file')
    .option('--config <file>', "read options from this file: one long option per line without the dashes ('max-sessions 500', a bare 'anonymous-only'), # comments; flags given here win (a repeatable one replaces the file's lines); SIGHUP re-reads it")
    .option('--check-config', 'validate the options (with --config, the file too), print the effective configuration in config-file form, and exit')
    .showHelpAfterError(false)
    .allowExcessArguments(false)
    // Options after a subcommand's name are that subcommand's own.
    .enablePositionalOptions()
    .helpCommand(false);
}

const SOCKET_HELP = `control socket of the running proxy (default: ${DEFAULT_CONTROL_SOCKET})`;

function addSubcommands(program: Command, found: (r: CliResult) => void): void {
  program
    .command('sessions')
    .description('list the live sessions of the running proxy')
    .option('--json', 'print a JSON array instead of a table')
    .option('--control-socket <path>', SOCKET_HELP)
    .action((o: RawClientOptions) => found({ kind: 'sessions', options: o }));
  program
    .command('kill')
    .description('end one live session: its client gets 421 and its data paths are removed')
    .argument('<id>', "session id, as 'ftp-proxy sessions' shows it")
    .option('--control-socket <path>', SOCKET_HELP)
    .action((id: string, o: RawClientOptions) => found({ kind: 'kill', id, options: o }));
}

/** Options that ask for something to be done rather than set: command line only, never in a --config file. */
export const ACTIONS: ReadonlySet<string> = new Set(['printRuleset', 'cleanup', 'checkConfig', 'config', 'help', 'version']);

export type CliResult =
  /** `given`: the options set on the command line itself (the rest are defaults). */
  | { kind: 'run'; options: RawOptions; given: ReadonlySet<keyof RawOptions> }
  | { kind: 'sessions'; options: RawClientOptions }
  | { kind: 'kill'; id: string; options: RawClientOptions }
  | { kind: 'exit'; code: number };

function givenOptions(cmd: Command): Set<keyof RawOptions> {
  const keys = cmd.options.map((o) => o.attributeName() as keyof RawOptions);
  return new Set(keys.filter((k) => cmd.getOptionValueSource(k) === 'cli'));
}

/**
 * Parse argv: the proxy's flags, or a subcommand with its own. Help and --version print and
 * return exit 0; any usage error prints one line naming the flag and returns exit 2. Never
 * calls process.exit itself.
 */
export function parseArgs(argv: readonly string[], write: { out: (s: string) => void; err: (s: string) => void }): CliResult {
  const cmd = buildCommand();
  let result: CliResult | null = null;
  const found = (r: CliResult): void => {
    result = r;
  };
  cmd.exitOverride();
  cmd.configureOutput({
    writeOut: write.out,
    // commander's own error text is printed by us below, as one line.
    writeErr: () => undefined,
    outputError: () => undefined,
  });
  // Subcommands inherit the exit and output settings above.
  addSubcommands(cmd, found);
  cmd.action(() => found({ kind: 'run', options: cmd.opts<RawOptions>(), given: givenOptions(cmd) }));
  const usage = (message: string): CliResult => {
    write.err(`ftp-proxy: ${message}\n`);
    return { kind: 'exit', code: 2 };
  };
  try {
    cmd.parse([...argv], { from: 'user' });
  } catch (e) {
    if (e instanceof CommanderError) {
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version' || e.code === 'commander.help') {
        return { kind: 'exit', code: 0 };
      }
      return usage(e.message.replace(/^error: /, '').split('\n')[0]!);
    }
    throw e;
  }
  // A parse that did not throw ran exactly one action.
  const r = result as unknown as CliResult;
  if (r.kind === 'run' || r.kind === 'exit') return r;
  // Flags before the subcommand's name were parsed as the proxy's: only the socket means anything there.
  for (const key of givenOptions(cmd)) {
    const opt = cmd.options.find((o) => o.attributeName() === key)!;
    if (key !== 'controlSocket') return usage(`${[opt.short, opt.long].filter(Boolean).join('/')}: not an option of '${r.kind}'`);
  }
  const controlSocket = r.options.controlSocket ?? cmd.opts<RawOptions>().controlSocket;
  return { ...r, options: { ...r.options, ...(controlSocket !== undefined ? { controlSocket } : {}) } };
}
