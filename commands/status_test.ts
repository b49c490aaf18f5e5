/** status(): the live forwards by domain, as text and as JSON, read through a recording runner. */

import assert from "node:assert/strict";
import { status } from "./status.ts";
import { domainHash } from "../backends/names.ts";
import { captureStdout, fakeCommandDeps, twoLive } from "../test/commands_deps.ts";

const CONFIG = `{"web1": {"private_ip": "192.168.122.10", "port_map": {"tcp": [[2222, 22]]}}}`;
const live = (argv: string[]) => argv[0] === "iptables-save" ? { stdout: twoLive(domainHash) } : {};

Deno.test("status() shows each live forward, and flags what the config does not explain", async (t) => {
  await t.step("as text", async () => {
    const f = await fakeCommandDeps(CONFIG, live);
    const { value, stdout } = await captureStdout(() => status(f.deps));
    assert.equal(value, 0);
    assert.deepEqual(stdout, [
      'Firewall backend: iptables (setting "auto"; no libvirt network firewall seen)',
      "web1 (not running)",
      "  tcp 203.0.113.1:2222 -> 192.168.122.10:22",
      "web2 (not running, not in the config)",
      "  tcp 203.0.113.1:2222 -> 192.168.122.11:22   <- not explained by the config",
    ]);
  });
  await t.step("as JSON, of one domain, in one piece", async () => {
    const f = await fakeCommandDeps(CONFIG, live);
    const { value, stdout } = await captureStdout(() => status(f.deps, { only: "web2", json: true }));
    assert.equal(value, 0);
    assert.equal(stdout.length, 1);
    assert.deepEqual(JSON.parse(stdout[0]!).domains, [{
      domain: "web2",
      running: false,
      inConfig: false,
      forwards: [{ forward: "tcp 203.0.113.1:2222 -> 192.168.122.11:22", explained: false }],
    }]);
  });
});

Deno.test("status() shows what is live with its description, as the rules carry it, after the config changed", async (t) => {
  const h = domainHash("web1");
  const tag = '-m comment --comment "libvirt-hook-qemu:1:web1"';
  // Applied as "*" from eth1, named "old shop"; the config now calls it "shop": what is live says the old name.
  const saved = [
    "*nat",
    `:LVH-${h}-DNAT - [0:0]`,
    `-A PREROUTING ${tag} -j LVH-${h}-DNAT`,
    `-A LVH-${h}-DNAT ! -d 127.0.0.0/8 -i eth1 -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 2222 ${tag} ` +
    '-m comment --comment "old shop" -j DNAT --to-destination 192.168.122.10:22',
    "COMMIT",
    "",
  ].join("\n");
  const config = (description: string) =>
    `{"web1": {"private_ip": "192.168.122.10", "public_ip": "*", "dev": "eth1", "description": "${description}",
      "port_map": {"tcp": [[2222, 22]]}}}`;
  const read = (argv: string[]) => argv[0] === "iptables-save" ? { stdout: saved } : {};
  await t.step("as text: the live description, and that the config no longer says it", async () => {
    const f = await fakeCommandDeps(config("shop"), read);
    const { stdout } = await captureStdout(() => status(f.deps));
    assert.deepEqual(stdout.slice(1), [
      "web1 (not running)",
      '  tcp *:2222 -> 192.168.122.10:22 on eth1 "old shop"   <- not explained by the config',
    ]);
  });
  await t.step(
    "as JSON, with the description a field of its own, explained where the config says it",
    async () => {
      const f = await fakeCommandDeps(config("old shop"), read);
      const { stdout } = await captureStdout(() => status(f.deps, { json: true }));
      assert.deepEqual(JSON.parse(stdout[0]!).domains, [{
        domain: "web1",
        running: false,
        inConfig: true,
        forwards: [{
          forward: 'tcp *:2222 -> 192.168.122.10:22 on eth1 "old shop"',
          description: "old shop",
          explained: true,
        }],
      }]);
    },
  );
});

Deno.test("status() shows each forward's counters, as text and in JSON, where iptables-save -c has them", async () => {
  const h = domainHash("web1");
  const tag = '-m comment --comment "libvirt-hook-qemu:1:web1"';
  const saved = [
    "*nat",
    `:LVH-${h}-DNAT - [0:0]`,
    `[5:300] -A PREROUTING ${tag} -j LVH-${h}-DNAT`,
    `[3:180] -A LVH-${h}-DNAT -d 203.0.113.1/32 -p tcp -m tcp --dport 2222 ${tag} -j DNAT --to-destination 192.168.122.10:22`,
    "COMMIT",
    "*filter",
    `:LVH-${h}-FWD - [0:0]`,
    `[40:2400] -A LVH-${h}-FWD -m connlabel --label 127 ${tag} -j ACCEPT`,
    "COMMIT",
    "",
  ].join("\n");
  const f = await fakeCommandDeps(CONFIG, (argv) => argv[0] === "iptables-save" ? { stdout: saved } : {});
  const text = await captureStdout(() => status(f.deps));
  assert.ok(f.calls.some((c) => c.argv.join(" ") === "iptables-save -c"), "read with counters");
  assert.deepEqual(text.stdout.slice(-2), [
    "  tcp 203.0.113.1:2222 -> 192.168.122.10:22",
    "    3 connections",
  ]);
  const json = await captureStdout(() => status(f.deps, { json: true }));
  // The domain's one accept counts every forward's packets together: no per-forward packets or bytes.
  assert.deepEqual(JSON.parse(json.stdout[0]!).domains[0].forwards[0].counters, { connections: 3 });
});
