/**
 * Opens TCP connections to `host:port` as fast as `workers` loops can for `seconds`, each read to the end and
 * closed, and prints how many completed per second (bench/packets.ts runs it inside the client's namespace).
 * Usage: deno run --allow-net bench/connect_rate.ts <host> <port> <seconds> <workers>
 */

const [host = "", port = "0", seconds = "2", workers = "8"] = Deno.args;
const until = performance.now() + Number(seconds) * 1000;
let done = 0, failed = 0;
const buf = new Uint8Array(256);

async function worker() {
  while (performance.now() < until) {
    try {
      const conn = await Deno.connect({ hostname: host, port: Number(port) });
      while ((await conn.read(buf)) !== null) { /* the server's line, then its end */ }
      conn.close();
      done++;
    } catch {
      failed++;
    }
  }
}

const started = performance.now();
await Promise.all(Array.from({ length: Number(workers) }, worker));
const elapsed = (performance.now() - started) / 1000;
console.log(JSON.stringify({ perSecond: done / elapsed, done, failed, seconds: elapsed }));
