/** The per-packet benchmark's pure parts: the configs it measures and the verdicts it prints. */

import { packetConfig, parseSetups, report } from "./packets.ts";
import { forwardsOf } from "../test/util.ts";
import assert from "node:assert/strict";

Deno.test("packetConfig() gives D domains of `per` forwards, g1's last two the forwarded flow's and the measured 2222", () => {
  const config = packetConfig({ domains: 3, per: 4 }, "nftables");
  const all = ["d0", "d1", "g1"].map((d) => forwardsOf(config, d));
  for (const { problems } of all) assert.deepEqual(problems, []);
  assert.deepEqual(all.map(({ forwards }) => forwards.length), [4, 4, 4]);
  assert.deepEqual(all[2]!.forwards.map((f) => [f.publicPort, f.privatePort]), [
    [20008, 22],
    [20009, 22],
    [5001, 5001],
    [2222, 22],
  ]);
  assert.deepEqual(all[0]!.forwards.map((f) => f.publicPort), [20000, 20001, 20002, 20003]);
  assert.match(config, /^\{"\/settings": \{"backend": "nftables"\}/);
  assert.ok(all.every(({ forwards }) => forwards.every((f) => !f.countTraffic && !f.log)));
  // A counted shape: every forward counts its packets and logs its connections.
  const counted = forwardsOf(packetConfig({ domains: 1, per: 10, counted: true }, "iptables"), "g1").forwards;
  assert.equal(counted.length, 10);
  assert.ok(counted.every((f) => f.countTraffic && f.log));
});

Deno.test("report() compares each shape with the first run by run, and says whether the targets are met", () => {
  const m = (connections: number[], bulk: number[], forwarded = bulk) => ({
    connections,
    bulk,
    forwarded,
    failed: 0,
    rules: 6,
  });
  const lines = report({ libvirt: "iptables", backend: "nftables" }, [
    { shape: { domains: 1, per: 10 }, m: m([1000, 2000], [100, 200]) },
    { shape: { domains: 1, per: 10000 }, m: m([950, 1900], [99, 190]) },
    { shape: { domains: 500, per: 20 }, m: m([500, 1000], [100, 200]) },
    { shape: { domains: 1, per: 10000, counted: true }, m: m([500, 1000], [100, 200], [80, 150]) },
  ]);
  assert.equal(lines.length, 7);
  assert.match(
    lines[3]!,
    /^iptables\/nftables +1x10000 counted +6 +750 +500–1000 +150 +100–200 +115 +80–150 +0$/,
  );
  assert.equal(
    lines[4],
    "iptables/nftables: 1x10000 against 1x10: new connections 95 % (95–95; target 90 %: met), " +
      "unrelated flow 97 % (95–99; target 95 %: met), forwarded flow 97 % (95–99)",
  );
  assert.equal(
    lines[5],
    "iptables/nftables: 500x20 against 1x10: new connections 50 % (50–50; target 90 %: MISSED), " +
      "unrelated flow 100 % (100–100; target 95 %: met), forwarded flow 100 % (100–100)",
  );
  // What counting costs is reported, not judged against the targets of forwards as they are by default.
  assert.equal(
    lines[6],
    "iptables/nftables: 1x10000 counted against 1x10: new connections 50 % (50–50), unrelated flow " +
      "100 % (100–100), forwarded flow 78 % (75–80)",
  );
});

Deno.test("parseSetups() reads <libvirt>/<backend> pairs and refuses anything else", () => {
  assert.deepEqual(parseSetups("iptables/nftables,nftables/nftables"), [
    { libvirt: "iptables", backend: "nftables" },
    { libvirt: "nftables", backend: "nftables" },
  ]);
  assert.throws(() => parseSetups("iptables/legacy"), /--setups: "iptables\/legacy" is not/);
});
