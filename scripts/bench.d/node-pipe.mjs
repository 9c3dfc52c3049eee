// The "node-pipe" reference setup of scripts/bench: a bare Node.js TCP forwarder with no FTP logic.
// Owns nothing but the floor: run in the lab's gateway behind the same redirect as ftp-proxy, it
// shows what one userspace Node hop on the control connection costs on its own, so the proxy's
// ratios can be read against it. Passive sessions only: PORT would need rewriting.
// usage: node node-pipe.mjs LISTEN_PORT SERVER_HOST SERVER_PORT
import net from 'node:net';

const [listenPort, host, port] = process.argv.slice(2);

net
  .createServer((client) => {
    const server = net.connect({ host, port: Number(port) });
    // As in the proxy: without it each command/reply exchange waits on Nagle + delayed ACK.
    client.setNoDelay(true);
    server.setNoDelay(true);
    // pipe() carries backpressure and a FIN each way; a reset or failed connect ends both.
    client.pipe(server).pipe(client);
    client.on('error', () => server.destroy());
    server.on('error', () => client.destroy());
  })
  .listen(Number(listenPort), '::', () => console.log(`node-pipe: :${listenPort} -> ${host}:${port}`));

process.on('SIGTERM', () => process.exit(0));
