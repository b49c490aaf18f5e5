/** The per-packet benchmark's pure parts: the configs it measures and the verdicts it prints. */

import { packetConfig, parseSetups, report } from "./packets.ts";
import { forwardsOf } from "../test/util.ts";
import assert from "node:assert/strict";

Deno.test("packetConfig() gives D domains of `per` forwards, g1's last forward the measured public 2222", () => {
  const config = packetConfig({ domains: 3, per: 4 }, "nftables");
  const all = ["d0", "d1", "g1"].map((d) => forwardsOf(config, d));
  for (const { problems } of all) assert.deepEqual(problems, []);
  assert.deepEqual(all.map(({ forwards }) => forwards.length), [4, 4, 4]);
  assert.deepEqual(all[2]!.forwards.at(-1)!.publicPort, 2222);
  assert.deepEqual(all[0]!.forwards.map((f) => f.publicPort), [20000, 20001, 20002, 20003]);
  assert.match(config, /^\{"\/settings": \{"backend": "nftables"\}/);
});

Deno.test("report() compares each shape with the first run by run, and says whether the targets are met", () => {
  const m = (connections: number[], bulk: number[]) => ({ connections, bulk, failed: 0, rules: 6 });
  const lines = report({ libvirt: "iptables", backend: "nftables" }, [
    { shape: { domains: 1, per: 10 }, m: m([1000, 2000], [100, 200]) },
    { shape: { domains: 1, per: 10000 }, m: m([950, 1900], [99, 190]) },
    { shape: { domains: 500, per: 20 }, m: m([500, 1000], [100, 200]) },
  ]);
  assert.equal(lines.length, 5);
  assert.equal(
    lines[3],
    "iptables/nftables: 1x10000 against 1x10: new connections 95 % (95–95; target 90 %: met), " +
      "unrelated flow 97 % (95–99; target 95 %: met)",
  );
  assert.equal(
    lines[4],
    "iptables/nftables: 500x20 against 1x10: new connections 50 % (50–50; target 90 %: MISSED), " +
      "unrelated flow 100 % (100–100; target 95 %: met)",
  );
});

Deno.test("parseSetups() reads <libvirt>/<backend> pairs and refuses anything else", () => {
  assert.deepEqual(parseSetups("iptables/nftables,nftables/nftables"), [
    { libvirt: "iptables", backend: "nftables" },
    { libvirt: "nftables", backend: "nftables" },
  ]);
  assert.throws(() => parseSetups("iptables/legacy"), /--setups: "iptables\/legacy" is not/);
});
