import t from 'tap';
import { createLogger, formatText, pinoLevel } from '../src/log.js';

t.test('-D levels map onto pino levels, notice included', async (t) => {
  t.same([0, 2, 3, 4, 5, 6, 7].map(pinoLevel), ['fatal', 'fatal', 'error', 'warn', 'notice', 'info', 'debug']);
  const lines: string[] = [];
  const log = createLogger({ debugLevel: 5, foreground: false, destination: { write: (s: string) => void lines.push(s) } });
  log.info({}, 'hidden at -D 5');
  log.notice({ sid: '3' }, 'shown');
  t.equal(lines.length, 1);
  t.match(JSON.parse(lines[0]!), { level: 35, msg: 'shown', sid: '3' });
});

t.test('-d text lines: time, level, session, message, fields', async (t) => {
  const line = formatText(JSON.stringify({ level: 35, time: 0, sid: '7', msg: 'session ended', reason: 'client closed', n: 2 }));
  t.equal(line, '1970-01-01T00:00:00.000Z notice #7 session ended reason=client closed n=2\n');
  t.equal(formatText('not json'), 'not json', 'passes anything else through');
});
