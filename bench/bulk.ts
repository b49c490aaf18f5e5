/**
 * One bulk TCP flow, for bench/packets.ts: `sink <port>` accepts connections and reads them to the end, forever;
 * `send <host> <port> <seconds>` writes 64 KiB blocks to the sink for `seconds` and prints the rate in MB/s.
 * Usage: deno run --allow-net bench/bulk.ts sink <port> | send <host> <port> <seconds>
 */

const [mode = "", ...args] = Deno.args;

if (mode === "sink") {
  const listener = Deno.listen({ port: Number(args[0]) });
  const buf = new Uint8Array(1 << 20);
  for await (const conn of listener) {
    (async () => {
      try {
        while ((await conn.read(buf)) !== null) { /* discarded */ }
      } finally {
        conn.close();
      }
    })();
  }
} else if (mode === "send") {
  const [host = "", port = "0", seconds = "2"] = args;
  const block = new Uint8Array(1 << 16);
  const conn = await Deno.connect({ hostname: host, port: Number(port) });
  const started = performance.now(), until = started + Number(seconds) * 1000;
  let bytes = 0;
  while (performance.now() < until) bytes += await conn.write(block);
  const elapsed = (performance.now() - started) / 1000;
  conn.close();
  console.log(JSON.stringify({ mbPerSecond: bytes / elapsed / 1e6, bytes, seconds: elapsed }));
} else {
  console.error("Usage: bulk.ts sink <port> | send <host> <port> <seconds>");
  Deno.exit(2);
}
