import t from 'tap';
import type { Action, SessionMachine } from '../../src/session/machine.js';
import { machine as base, reply, sent } from '../lib/machine-rig.js';

// --tls terminate: the proxy answers AUTH, PBSZ, PROT and CCC itself; the server stays plain.

const machine = (tlsRequired = false, implicitTls = false) => base({ tls: 'terminate', tlsRequired, implicitTls });
const types = (as: Action[]): string[] => as.filter((a) => a.type !== 'log').map((a) => a.type);
const opens = (as: Action[]) => as.filter((a): a is Extract<Action, { type: 'open' }> => a.type === 'open');

t.test('AUTH TLS and AUTH SSL: 234 from the proxy, then the handshake; nothing to the server', async (t) => {
  for (const mech of ['TLS', 'SSL', 'tls']) {
    const m = machine();
    const a = m.clientLine(`AUTH ${mech}`);
    t.same(types(a), ['toClient', 'startTls'], `AUTH ${mech}: 234, then startTls`);
    t.match(sent(a, 'toClient')[0], /^234 /);
    t.same(sent(a, 'toServer'), []);
    t.match(sent(m.clientLine('AUTH TLS'), 'toClient')[0], /^503 /, 'a second AUTH');
  }
  t.match(sent(machine().clientLine('AUTH KERBEROS_V4'), 'toClient')[0], /^504 /);
});

t.test('AUTH while a reply is owed is refused (the reply would come in plaintext after 234)', async (t) => {
  const m = machine();
  m.clientLine('SYST');
  const a = m.clientLine('AUTH TLS');
  t.notOk(types(a).includes('startTls'));
  t.same(sent(m.serverReply(reply('215 UNIX')), 'toClient'), ['215 UNIX', '503 AUTH while other commands are outstanding']);
});

t.test('lines pipelined behind AUTH are dropped, not run after the handshake', async (t) => {
  const m = machine();
  m.clientLine('PASV');
  const open = opens(m.serverReply(reply('227 Entering Passive Mode (198,51,100,2,19,137).')))[0]!;
  // The data plane is at work: AUTH and the line behind it are held until it answers.
  t.same(m.clientLine('AUTH TLS'), []);
  t.same(m.clientLine('USER injected'), []);
  const b = m.dataOpened(open.token, { id: 'p1', port: 50001 });
  t.same(types(b), ['toClient', 'toClient', 'startTls'], '227, 234, handshake');
  t.same(sent(b, 'toServer'), [], 'the USER sent after AUTH never reaches the server');
  t.equal(m.outstanding, 0);
});

t.test('PBSZ and PROT: answered locally, in order; PROT P makes data paths protected', async (t) => {
  const m = machine();
  t.match(sent(m.clientLine('PBSZ 0'), 'toClient')[0], /^503 /, 'PBSZ before AUTH');
  m.clientLine('AUTH TLS');
  t.match(sent(m.clientLine('PROT P'), 'toClient')[0], /^503 /, 'PROT before PBSZ');
  t.same(sent(m.clientLine('PBSZ 0'), 'toClient'), ['200 PBSZ=0']);
  t.match(sent(m.clientLine('PROT S'), 'toClient')[0], /^536 /);
  t.match(sent(m.clientLine('PROT E'), 'toClient')[0], /^536 /);
  t.match(sent(m.clientLine('PROT X'), 'toClient')[0], /^504 /);
  t.match(sent(m.clientLine('PROT C'), 'toClient')[0], /^200 /);
  m.clientLine('PASV');
  const clear = opens(m.serverReply(reply('227 Entering Passive Mode (198,51,100,2,19,137).')))[0]!;
  t.notOk(clear.protect, 'PROT C: a plain path');
  m.dataOpened(clear.token, { id: 'p1', port: 50001 });
  t.match(sent(m.clientLine('PROT P'), 'toClient')[0], /^200 /);
  m.clientLine('PASV');
  const prot = opens(m.serverReply(reply('227 Entering Passive Mode (198,51,100,2,19,138).')))[0]!;
  t.equal(prot.protect, true, 'PROT P: a protected path');
  m.dataOpened(prot.token, { id: 'p2', port: 50002 });
  const act = opens(m.clientLine('PORT 192,0,2,2,200,1'))[0]!;
  t.equal(act.protect, true, 'active paths too');
});

t.test('CCC is refused; the server never sees AUTH, PBSZ, PROT or CCC', async (t) => {
  const m = machine();
  const all: Action[] = [];
  for (const l of ['AUTH TLS', 'PBSZ 0', 'PROT P', 'CCC']) all.push(...m.clientLine(l));
  t.same(sent(all, 'toServer'), []);
  t.match(sent(all, 'toClient').at(-1), /^534 /);
});

t.test('--tls-required: USER and PASS before AUTH get 530; after AUTH they go to the server', async (t) => {
  const m = machine(true);
  t.match(sent(m.clientLine('USER alice'), 'toClient')[0], /^530 /);
  t.match(sent(m.clientLine('PASS secret'), 'toClient')[0], /^530 /);
  t.same(sent(m.clientLine('SYST'), 'toServer'), ['SYST'], 'other commands still pass');
  m.serverReply(reply('215 UNIX'));
  m.clientLine('AUTH TLS');
  t.same(sent(m.clientLine('USER alice'), 'toServer'), ['USER alice']);
  m.serverReply(reply('331 pw'));
  t.same(sent(m.clientLine('PASS secret'), 'toServer'), ['PASS secret']);
  t.same(sent(machine(false).clientLine('USER bob'), 'toServer'), ['USER bob'], 'without the flag, plain logins pass');
});

t.test('FEAT lists the proxy\'s AUTH TLS, PBSZ and PROT in place of the server\'s', async (t) => {
  const m = machine();
  m.clientLine('FEAT');
  const out = sent(m.serverReply(reply('211-Features:', ' EPRT', ' AUTH SSL', ' PASV', '211 End')), 'toClient');
  t.same(out, ['211-Features:\r\n EPRT\r\n PASV\r\n AUTH TLS\r\n PBSZ\r\n PROT\r\n211 End']);
  m.clientLine('FEAT');
  t.same(sent(m.serverReply(reply('500 no FEAT')), 'toClient'), ['500 no FEAT'], 'an error is left alone');
});

t.test('implicit TLS: secured from the start, data PROT P until PROT C; AUTH gets 503', async (t) => {
  const m = machine(true, true);
  t.same(sent(m.clientLine('USER alice'), 'toServer'), ['USER alice'], '--tls-required is met');
  m.serverReply(reply('331 pw'));
  t.match(sent(m.clientLine('AUTH TLS'), 'toClient')[0], /^503 /);
  m.serverReply(reply('230 in'));
  m.clientLine('FEAT');
  t.same(sent(m.serverReply(reply('211-Features:', ' PASV', '211 End')), 'toClient'), ['211-Features:\r\n PASV\r\n PBSZ\r\n PROT\r\n211 End'], 'FEAT: no AUTH');
  m.clientLine('PASV');
  t.equal(opens(m.serverReply(reply('227 Entering Passive Mode (198,51,100,2,19,137).')))[0]!.protect, true);
});

/** A session with PROT P and a passive path p1, RETR sent and its 150 forwarded. */
function retrOnProtectedPath(): SessionMachine {
  const m = machine();
  for (const l of ['AUTH TLS', 'PBSZ 0', 'PROT P', 'PASV']) m.clientLine(l);
  m.dataOpened(opens(m.serverReply(reply('227 Entering Passive Mode (198,51,100,2,19,137).')))[0]!.token, { id: 'p1', port: 50001 });
  m.clientLine('RETR f');
  m.serverReply(reply('150 here it comes'));
  return m;
}

t.test('a transfer whose protected data connections were all refused gets 522, not the server\'s 226', async (t) => {
  const m = retrOnProtectedPath();
  m.protectedHandshake('start');
  t.same(sent(m.serverReply(reply('226 done')), 'toClient'), [], 'the 226 waits for the handshake');
  const a = m.protectedHandshake('refused');
  t.match(sent(a, 'toClient'), [/^522 Data connection refused/]);
  t.match(a.find((x) => x.type === 'transferEnded'), { code: 522 });
  t.same(sent(m.clientLine('NOOP'), 'toServer'), ['NOOP'], 'the session goes on');
  m.serverReply(reply('200 ok'));
  const late = retrOnProtectedPath();
  late.protectedHandshake('start');
  late.protectedHandshake('refused');
  t.match(sent(late.serverReply(reply('426 reset')), 'toClient'), [/^522 /], 'a failure the server reports later says why too');
});

t.test('a refused third party, then the client itself: the server\'s 226 stands', async (t) => {
  const m = retrOnProtectedPath();
  m.protectedHandshake('start');
  m.protectedHandshake('refused');
  m.protectedHandshake('start');
  t.same(sent(m.serverReply(reply('226 done')), 'toClient'), []);
  t.same(sent(m.protectedHandshake('admitted'), 'toClient'), ['226 done']);
});

t.test('with no handshake under way, replies are not held', async (t) => {
  const m = retrOnProtectedPath();
  m.protectedHandshake('start');
  m.protectedHandshake('admitted');
  t.same(sent(m.serverReply(reply('226 done')), 'toClient'), ['226 done']);
});
