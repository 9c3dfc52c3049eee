// Run by heal.test.ts in a pid namespace of its own (unshare --pid): the built data plane
// (dist/) with the table watched; its JSON log goes to stdout, 'ready' once a path is open;
// it closes when stdin ends.

import { pino } from 'pino';
import { NftablesDataPlane } from '../../../dist/dataplane/nftables/index.js';
import { PortAllocator } from '../../../dist/net/ports.js';

const dp = new NftablesDataPlane({ table: process.argv[2], ports: new PortAllocator(50000, 50099), logger: pino() });
await dp.start();
await dp.open({ sid: '1', kind: 'passive', family: 4, peer: '192.0.2.2', listen: '192.0.2.1', target: { address: '198.51.100.2', port: 40000 }, source: '198.51.100.1' });
process.stdout.write(JSON.stringify({ msg: 'ready', pid: process.pid }) + '\n');
process.stdin.resume();
process.stdin.on('end', () => void dp.close().then(() => process.exit(0)));
