/** reload(): every live domain re-applied from the config; one that left the config loses its rules. */

import assert from "node:assert/strict";
import { reload } from "./reload.ts";
import { domainHash } from "../backends/names.ts";
import { captureStdout, fakeCommandDeps, twoLive } from "../test/commands_deps.ts";

const CONFIG = `{"web1": {"private_ip": "192.168.122.10", "port_map": {"tcp": [[2222, 22]]}}}`;

Deno.test("reload() with nothing live says so and runs no batch", async () => {
  const f = await fakeCommandDeps(CONFIG);
  const { value, stdout } = await captureStdout(() => reload(f.deps));
  assert.equal(value, 0);
  assert.deepEqual(stdout, ["No forwards are live; nothing to reload."]);
  assert.deepEqual(f.calls.filter((c) => c.argv[0]!.endsWith("-restore")), []);
});

Deno.test("reload() re-applies each live domain: one left the config loses its rules", async () => {
  const f = await fakeCommandDeps(
    CONFIG,
    (argv) => argv[0] === "iptables-save" ? { stdout: twoLive(domainHash) } : {},
  );
  const { value, stdout } = await captureStdout(() => reload(f.deps));
  assert.equal(value, 0, f.stderr.join("\n"));
  assert.deepEqual(stdout, ['Reloaded "web1"', 'Reloaded "web2"']);
  const batches = f.calls.filter((c) => c.argv[0] === "iptables-restore").map((c) => c.stdin!);
  // web1 is re-applied whole (its SNAT and FWD chains were not live); web2 left the config: its chain and jump go.
  const h1 = domainHash("web1"), h2 = domainHash("web2");
  assert.equal(batches.length, 2);
  assert.ok(
    batches[0]!.includes(
      `-A LVH-${h1}-DNAT -d 203.0.113.1/32 -p tcp -m tcp --dport 2222 -m connlabel --label 127 --set ` +
        "-m comment --comment libvirt-hook-qemu:1:web1 " +
        "-j DNAT --to-destination 192.168.122.10:22\n",
    ),
  );
  assert.equal(
    batches[1],
    [
      "*nat",
      `:LVH-${h2}-DNAT - [0:0]`,
      `-D PREROUTING -m comment --comment "libvirt-hook-qemu:1:web2" -j LVH-${h2}-DNAT`,
      `-X LVH-${h2}-DNAT`,
      "COMMIT",
      "",
    ].join("\n"),
  );
});
