import t from 'tap';
import { outboundSuite } from './lib/outbound-suite.js';
import { nftDrained, nftElements } from './lib/nft-state.js';

t.test('outbound transparent mode, nftables data plane, IPv4 and IPv6', (t) =>
  outboundSuite(t, 'nftables', {
    afterEach: async (rig, t) => {
      t.same(await nftDrained(rig.lab, 'ftp_proxy'), {}, 'back to the post-start baseline: no element');
    },
    atEnd: async (rig, t) => {
      t.same(await nftElements(rig.lab, 'ftp_proxy'), {}, 'table present and empty before SIGTERM');
    },
  }),
);
