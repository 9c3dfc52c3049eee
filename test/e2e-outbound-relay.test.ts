import t from 'tap';
import { outboundSuite } from './lib/outbound-suite.js';

t.test('outbound transparent mode, relay data plane, IPv4 and IPv6', (t) => outboundSuite(t, 'relay'));
