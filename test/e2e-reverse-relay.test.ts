import t from 'tap';
import { reverseSuite } from './lib/reverse-suite.js';

t.test('reverse mode, relay data plane, real clients and servers', (t) => reverseSuite(t, 'relay'));
