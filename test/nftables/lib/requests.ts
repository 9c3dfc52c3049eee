// Data path requests the nftables tests share: a passive IPv4 path and an active IPv6 one with
// source port 20, in the documentation address ranges.

import type { DataPathRequest } from '../../../src/dataplane/types.js';

export const passive4: DataPathRequest = {
  sid: '7',
  kind: 'passive',
  family: 4,
  peer: '192.0.2.2',
  listen: '192.0.2.1',
  target: { address: '198.51.100.2', port: 40000 },
  source: '198.51.100.1',
};

export const active6: DataPathRequest = {
  sid: '8',
  kind: 'active',
  family: 6,
  peer: '2001:db8:2::2',
  listen: '2001:db8:2::1',
  target: { address: '2001:db8:1::2', port: 45678 },
  source: '2001:db8:1::1',
  sourcePort: 20,
};
