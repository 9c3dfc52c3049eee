// A finding of scripts/soak, reproduced in a lab: ABOR through the proxy to pure-ftpd 1.0.50.
//
// pure-ftpd answers nothing at all to a line carrying Telnet bytes once no transfer runs (it
// drops such lines silently); without the proxy it answers a plain ABOR with 226 every time.
// The proxy used to send ABOR with Telnet IP and the Synch while it believed a transfer ran:
// it believes so from the 150 until the 226, but when the client resets its data connection,
// pure-ftpd ends the transfer at once, says only "150 <n> seconds (measured here)" (a 1xx), and
// the ABOR that follows, Telnet bytes and all, is dropped: the client waits for ever and the
// proxy's reply accounting fell one behind. Now the proxy adds them only when the client's own
// ABOR carried them.
import t from 'tap';
import { startLab, isRoot, SYSTEM_PYTHON, type Lab } from '../lib/lab.js';
import { startProxy } from '../lib/proxy.js';

// Prints the replies (first lines) the client sees after its ABOR and a NOOP, within 2 s.
// 'idle': ABOR with no transfer. 'reset': RETR 100MiB.bin, read 64 KiB, reset the data
// connection, wait for the server's 150 that ends its transfer, then ABOR.
const PROBE = `
import re, socket, struct, sys, time
host, port, how = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = socket.create_connection((host, port), timeout=5)
buf = b''
def upto(pat, wait=5.0):
    global buf
    end = time.time() + wait
    while not re.search(pat, buf) and time.time() < end:
        c.settimeout(max(0.05, end - time.time()))
        try:
            d = c.recv(65536)
            if not d: break
            buf += d
        except socket.timeout: break
    out, buf = buf, b''
    return out
upto(rb'\\r\\n220 [^\\r]*\\r\\n')
c.sendall(b'USER anonymous\\r\\n'); upto(rb'230 [^\\r]*\\r\\n', 1.0); upto(rb'(?!)', 0.3)
if how == 'reset':
    c.sendall(b'TYPE I\\r\\nPASV\\r\\n')
    r = upto(rb'227 [^\\r]*\\r\\n')
    n = [int(x) for x in re.search(rb'(\\d+),(\\d+),(\\d+),(\\d+),(\\d+),(\\d+)', r.split(b'227 ')[1]).groups()]
    d = socket.create_connection(('.'.join(map(str, n[:4])), n[4] * 256 + n[5]), timeout=5)
    c.sendall(b'RETR 100MiB.bin\\r\\n'); upto(rb'\\r\\n150 [^\\r]*\\r\\n')
    got = 0
    while got < 65536: got += len(d.recv(65536))
    d.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0)); d.close()
    upto(rb'^150 [^\\r]*\\r\\n')
c.sendall(b'ABOR\\r\\nNOOP\\r\\n')
print('\\n'.join(l for l in upto(rb'(?!)', 2.0).decode('latin1').split('\\r\\n') if l))
`;

async function probe(lab: Lab, how: 'idle' | 'reset'): Promise<string[]> {
  const { host, port } = lab.target('pureftpd', 4);
  const r = await lab.exec('client', SYSTEM_PYTHON, ['-c', PROBE, host, String(port), how]);
  return r.stdout.split('\n').filter((l) => l !== '');
}

const ANSWERED = /^22[56] .*\|200 /;

t.test('ABOR to pure-ftpd, directly and through the proxy', async (t) => {
  if (!isRoot) return t.fail('needs root (network namespaces)');
  const lab = await startLab(t);
  // Without the proxy the ABOR passes directly on the lab's plain NAT (passive data works there).
  const direct = { idle: await probe(lab, 'idle'), reset: await probe(lab, 'reset') };
  t.match(direct.idle.join('|'), ANSWERED, `no proxy, idle: ABOR answered, then NOOP ${JSON.stringify(direct.idle)}`);
  t.match(direct.reset.join('|'), ANSWERED, `no proxy, after a data reset: ABOR answered, then NOOP ${JSON.stringify(direct.reset)}`);
  await lab.redirect(true, 8021);
  const proxy = await startProxy(lab, ['-b', '::', '-p', '8021']);
  t.teardown(() => proxy.stop());

  await t.test('no transfer: ABOR is answered', async (t) => {
    const seen = await probe(lab, 'idle');
    t.match(seen.join('|'), ANSWERED, `ABOR answered, then NOOP ${JSON.stringify(seen)}`);
  });
  await t.test(
    'the client reset its data connection: ABOR is answered',
    async (t) => {
      const seen = await probe(lab, 'reset');
      t.match(seen.join('|'), ANSWERED, `ABOR answered, then NOOP ${JSON.stringify(seen)}`);
    },
  );
});
