/** removeOne() and removeAll(): what is live goes, in one batch per domain, and what they did is said. */

import assert from "node:assert/strict";
import { removeAll, removeOne } from "./remove.ts";
import { domainHash } from "../backends/names.ts";
import { captureStdout, fakeCommandDeps, twoLive } from "../test/commands_deps.ts";

const CONFIG = `{}`;
const live = (argv: string[]) => argv[0] === "iptables-save" ? { stdout: twoLive(domainHash) } : {};

Deno.test("removeOne() removes a live domain's chain and jump in one batch, and says so", async () => {
  const f = await fakeCommandDeps(CONFIG, live);
  const { value, stdout } = await captureStdout(() => removeOne("web1", f.deps));
  assert.equal(value, 0);
  assert.deepEqual(stdout, ['Removed the forwards of "web1"']);
  const restores = f.calls.filter((c) => c.argv[0] === "iptables-restore");
  const h = domainHash("web1");
  assert.deepEqual(restores.map((c) => c.stdin), [
    [
      "*nat",
      `:LVH-${h}-DNAT - [0:0]`,
      `-D PREROUTING -m comment --comment "libvirt-hook-qemu:1:web1" -j LVH-${h}-DNAT`,
      `-X LVH-${h}-DNAT`,
      "COMMIT",
      "",
    ].join("\n"),
  ]);
  assert.deepEqual(f.stderr, []);
});

Deno.test("removeOne() of a domain with nothing live says so, changes nothing, and succeeds", async () => {
  const f = await fakeCommandDeps(CONFIG, live);
  const { value, stdout } = await captureStdout(() => removeOne("web3", f.deps));
  assert.equal(value, 0);
  assert.deepEqual(stdout, ['No forwards of "web3" are live: nothing to remove']);
  assert.deepEqual(f.calls.filter((c) => c.argv[0] === "iptables-restore"), []);
});

Deno.test("removeAll() removes every live domain, one batch each", async () => {
  const f = await fakeCommandDeps(CONFIG, live);
  const { value, stdout } = await captureStdout(() => removeAll(f.deps));
  assert.equal(value, 0);
  assert.deepEqual(stdout.sort(), ['Removed the forwards of "web1"', 'Removed the forwards of "web2"']);
  assert.equal(f.calls.filter((c) => c.argv[0] === "iptables-restore").length, 2);
});

Deno.test("removeOne() whose firewall cannot be read fails in one line, exit 1", async () => {
  const f = await fakeCommandDeps(
    CONFIG,
    (argv) => argv[0]!.endsWith("-save") ? { code: 4, stderr: "Permission denied (you must be root)" } : {},
  );
  const { value, stdout } = await captureStdout(() => removeOne("web1", f.deps));
  assert.equal(value, 1);
  assert.deepEqual(stdout, []);
  assert.equal(f.stderr.length, 1);
  assert.match(f.stderr[0]!, /^Cannot remove forwards for "web1": .*Permission denied/);
});
