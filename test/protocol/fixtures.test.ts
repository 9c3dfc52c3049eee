// Real server replies captured by scripts/capture-replies (plus the labelled hand-written
// set) fed through LineFramer and ReplyAssembler, then through parse227 and parse229.
import t from 'tap';
import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { join } from 'node:path';
import { LineFramer } from '../../src/protocol/lines.js';
import { ReplyAssembler, parse227, parse229, type Reply } from '../../src/protocol/replies.js';
import { ProtocolError } from '../../src/errors.js';

interface Exchange {
  file: string;
  sent: string | null;
  /** code null: a line that is no reply at all (a server bug captured as it is). */
  replies: Array<{ code: number | null; lines: number }>;
  dataPort?: number;
  endpoint?: { address: string; port: number };
}
interface Manifest {
  server: string;
  note: string;
  exchanges: Exchange[];
}

const root = fileURLToPath(new URL('../fixtures/replies/', import.meta.url));
const servers = readdirSync(root, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name).sort();

/** Replies in the bytes, and the error that stopped the assembler if one did. */
function replies(chunks: Buffer[]): { replies: Reply[]; error?: string } {
  const framer = new LineFramer();
  const assembler = new ReplyAssembler();
  const out: Reply[] = [];
  try {
    for (const chunk of chunks) {
      for (const line of framer.push(chunk)) {
        const reply = assembler.push(line);
        if (reply) out.push(reply);
      }
    }
  } catch (err) {
    if (!(err instanceof ProtocolError)) throw err;
    return { replies: out, error: err.code };
  }
  return { replies: out };
}

function bytewise(data: Buffer): Buffer[] {
  return [...data].map((b) => Buffer.from([b]));
}

t.ok(servers.includes('hand-written'), 'hand-written fixtures are present');
for (const server of ['vsftpd', 'proftpd', 'pure-ftpd', 'pyftpdlib']) t.ok(servers.includes(server), `${server} captured`);

for (const server of servers) {
  t.test(server, async (t) => {
    const manifest = JSON.parse(readFileSync(join(root, server, 'manifest.json'), 'utf8')) as Manifest;
    t.equal(manifest.server, server);
    t.ok(manifest.exchanges.length > 0);
    for (const ex of manifest.exchanges) {
      const data = readFileSync(join(root, server, ex.file));
      const whole = replies([data]);
      t.same(replies(bytewise(data)), whole, `${ex.file}: the same one byte at a time`);
      const good = ex.replies.filter((r) => r.code !== null);
      t.same(
        whole.replies.map((r) => ({ code: r.code, lines: r.lines.length })),
        good,
        `${ex.file}: codes and line counts`,
      );
      // A line that is no reply stops the assembler: a session ends there.
      t.equal(whole.error, ex.replies.some((r) => r.code === null) ? 'BAD_REPLY' : undefined, `${ex.file}: error`);
      for (const reply of whole.replies) {
        t.ok(reply.lines[0]!.startsWith(String(reply.code)), `${ex.file}: first line starts with the code`);
        if (reply.code === 227) {
          const ep = parse227(reply.lines[0]!);
          t.same(ep, ex.endpoint ?? { address: '127.0.0.1', port: ex.dataPort ?? ep.port }, `${ex.file}: 227`);
        }
        // pure-ftpd answers 'EPSV 3' with a 229 as well; every 229 seen must parse.
        if (reply.code === 229) {
          const port = parse229(reply.lines[0]!);
          t.equal(port, ex.dataPort ?? port, `${ex.file}: 229`);
          t.ok(port >= 1 && port <= 65535);
        }
      }
    }
  });
}

t.test('a whole captured session in one buffer', async (t) => {
  const dir = join(root, 'proftpd');
  const manifest = JSON.parse(readFileSync(join(dir, 'manifest.json'), 'utf8')) as Manifest;
  const data = Buffer.concat(manifest.exchanges.map((ex) => readFileSync(join(dir, ex.file))));
  const want = manifest.exchanges.flatMap((ex) => ex.replies);
  const got = replies([data]).replies.map((r) => ({ code: r.code, lines: r.lines.length }));
  t.same(got, want);
  for (let size = 1; size < 64; size += 5) {
    const chunks: Buffer[] = [];
    for (let i = 0; i < data.length; i += size) chunks.push(data.subarray(i, i + size));
    t.same(replies(chunks).replies.map((r) => ({ code: r.code, lines: r.lines.length })), want, `chunks of ${size}`);
  }
});
