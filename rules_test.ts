/** Unit tests of the rule model: the forwards a config plans, and a sync that fails put back as it was. */

import { iptablesTools, renderRollback } from "./backends/iptables.ts";
import { domainHash } from "./backends/names.ts";
import { loadParser } from "./config/validate.ts";
import { syncDomain } from "./rules.ts";
import assert from "node:assert/strict";
import { FACTS, forwardsOf, recordingRunner, SAVED } from "./test/util.ts";

await loadParser();

Deno.test("planForwards() resolves defaults and hairpin sources from the host", async (t) => {
  await t.step("a missing public_ip takes the host's default address", () => {
    const { forwards } = forwardsOf(`{"a": {"private_ip": "192.168.122.5", "port_map": {"tcp": [80]}}}`, "a");
    assert.equal(forwards[0]?.publicIp, "203.0.113.1");
  });
  await t.step("no default address is a problem that names the field to set", () => {
    const facts = { ...FACTS, defaultPublicIp: { 4: { problem: "the host has no IPv4 default route" } } };
    const { forwards, problems } = forwardsOf(
      `{"a": {"private_ip": "192.168.122.5", "port_map": {"tcp": [80]}}}`,
      "a",
      facts,
    );
    assert.deepEqual(forwards, []);
    assert.deepEqual(problems, [
      'a: Cannot find the default public IPv4 address: the host has no IPv4 default route; set "public_ip"',
    ]);
  });
  await t.step("a guest outside every connected network is masqueraded only when it reaches itself", () => {
    const { forwards } = forwardsOf(`{"a": {"private_ip": "10.9.9.9", "port_map": {"tcp": [80]}}}`, "a");
    assert.equal(forwards[0]?.hairpinFrom, "10.9.9.9/32");
  });
});

Deno.test("syncDomain() puts every family back as it was when a batch fails", async () => {
  const h = domainHash("web1");
  const dual =
    `{"web1": {"private_ip": "192.168.122.10", "private_ipv6": "fd00:122::10", "port_map": {"tcp": [80]}}}`;
  const { forwards } = forwardsOf(dual, "web1");
  let saves = 0;
  const runner = recordingRunner((argv) => {
    if (argv[0] === "iptables-save") return { stdout: saves++ === 0 ? SAVED(h) : "*nat\nCOMMIT\n" };
    if (argv[0] === "ip6tables-restore") return { code: 2, stderr: "ip6tables-restore: line 5 failed\n" };
    return {};
  });
  await assert.rejects(
    syncDomain("web1", forwards, { runner, tools: iptablesTools() }),
    /ip6tables-restore failed: ip6tables-restore: line 5 failed/,
  );
  const commands = runner.calls.map((c) => c.argv[0]);
  assert.deepEqual(commands, [
    "iptables-save",
    "ip6tables-save",
    "iptables-restore",
    "ip6tables-restore",
    "iptables-save",
    "iptables-restore",
    "ip6tables-save",
  ]);
  // The IPv4 rollback re-creates the rules that were live before, from their saved text.
  const rollback = runner.calls[5]!.stdin!;
  assert.match(
    rollback,
    new RegExp(`-I FORWARD -m comment --comment "libvirt-hook-qemu:1:web1" -j LVH-${h}-FWD`),
  );
  assert.match(rollback, new RegExp(`-A LVH-${h}-FWD -d 192.168.122.10/32 -p tcp`));
  assert.equal(renderRollback("web1", { chains: [], rules: [] }, { chains: [], rules: [] }), undefined);
});
