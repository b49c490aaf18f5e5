/** plan(): the batch start would apply, printed, and nothing run but reads. */

import assert from "node:assert/strict";
import { plan } from "./plan.ts";
import { domainHash } from "../backends/names.ts";
import { captureStdout, fakeCommandDeps } from "../test/commands_deps.ts";

const CONFIG = `{"web1": {"private_ip": "192.168.122.10", "port_map": {"tcp": [[2222, 22]]}}}`;

Deno.test("plan() prints the iptables batch of a configured domain and runs no restore", async () => {
  const f = await fakeCommandDeps(CONFIG);
  const { value, stdout } = await captureStdout(() => plan("web1", f.deps));
  assert.equal(value, 0);
  const h = domainHash("web1");
  // Three rules, four jumps into our chains, the jump to LVH-USER, and our gate's rule in FORWARD (the first
  // domain's start creates it).
  assert.match(stdout[0]!, /^# \S*iptables-restore --noflush --wait: 9 rule\(s\) for "web1"$/);
  assert.match(
    stdout[1]!,
    new RegExp(
      `-A LVH-${h}-DNAT -d 203\\.0\\.113\\.1/32 -p tcp -m tcp --dport 2222 .*--to-destination 192\\.168\\.122\\.10:22`,
    ),
  );
  assert.deepEqual(f.calls.filter((c) => c.argv[0]!.endsWith("-restore")), []);
});

Deno.test("plan() of a domain not configured says start installs nothing for it", async () => {
  const f = await fakeCommandDeps(CONFIG);
  const { value, stdout } = await captureStdout(() => plan("db", f.deps));
  assert.equal(value, 0);
  assert.deepEqual(stdout, []);
  assert.equal(f.stderr.length, 1);
  assert.match(
    f.stderr[0]!,
    /^"db" is not in .* no guest of that name is defined here: start installs nothing for it$/,
  );
});

Deno.test("plan() of an entry switched off says so and prints the batch that removes what is live of it", async () => {
  const h = domainHash("web1");
  const tag = '-m comment --comment "libvirt-hook-qemu:1:web1"';
  const saved = [
    "*nat",
    `:LVH-${h}-DNAT - [0:0]`,
    `-A PREROUTING ${tag} -j LVH-${h}-DNAT`,
    `-A LVH-${h}-DNAT -d 203.0.113.1/32 -p tcp -m tcp --dport 2222 ${tag} -j DNAT --to-destination 192.168.122.10:22`,
    "COMMIT",
    "",
  ].join("\n");
  const f = await fakeCommandDeps(
    `{"web1": {"private_ip": "192.168.122.10", "description": "old site", "enabled": false,
      "port_map": {"tcp": [[2222, 22]]}}}`,
    (argv) => argv[0] === "iptables-save" ? { stdout: saved } : {},
  );
  const { value, stdout } = await captureStdout(() => plan("web1", f.deps));
  assert.equal(value, 0);
  assert.equal(
    stdout[0],
    '# web1 "old site" is switched off ("enabled": false): nothing is installed for it',
  );
  // A start removes what is live of it: its jump and its chain go, and nothing is added.
  const batch = stdout.slice(1).join("\n");
  assert.match(
    batch,
    new RegExp(`-D PREROUTING -m comment --comment "?libvirt-hook-qemu:1:web1"? -j LVH-${h}-DNAT`),
  );
  assert.match(batch, new RegExp(`-X LVH-${h}-DNAT`));
  assert.doesNotMatch(batch, /^-[AI] /m);
  assert.deepEqual(f.calls.filter((c) => c.argv[0]!.endsWith("-restore")), []);
});
