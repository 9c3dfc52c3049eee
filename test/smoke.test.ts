import t from 'tap';
import { ProtocolError } from '../src/errors.js';
t.test('errors carry codes', async (t) => {
  const e = new ProtocolError('X', 'y');
  t.equal(e.code, 'X');
  t.equal(e.name, 'ProtocolError');
});
