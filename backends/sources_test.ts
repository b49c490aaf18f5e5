/** Who may use a forward, in both backends' text: several sources per family, ranges, and sets of ours. */

import assert from "node:assert/strict";
import { ruleLines } from "./iptables.ts";
import { nftDomainObjects } from "./nftables.ts";
import { liveForwards, parseSave } from "./iptables_live.ts";
import { asLiveForward, describeForward } from "./forward.ts";
import { domainHash } from "./names.ts";
import { iptablesSourceMatches, nftSetCommands, nftSourceMatch, setSource } from "./sources.ts";
import { dedent, forwardsOf } from "../test/util.ts";

const CONFIG = `{"web1": {"private_ip": "192.168.122.10", "private_ipv6": "fd00:122::10",
  "public_ip": "203.0.113.7", "public_ipv6": "2001:db8:1::7", "port_map": {"tcp": [[2222, 22]]},
  "source_ip": ["198.51.100.0/24", "2001:db8:99::/48", "203.0.113.50-203.0.113.60", "192.0.2.9"]}}`;

Deno.test("ruleLines() writes a DNAT rule per source item of the forward's family, a range with -m iprange", () => {
  const { forwards } = forwardsOf(CONFIG, "web1");
  const h = domainHash("web1");
  const c = "-m comment --comment libvirt-hook-qemu:1:web1";
  const four = ruleLines("web1", forwards.filter((f) => f.family === 4));
  assert.equal(
    four.text.nat.split("\n").filter((l) => l.includes("-DNAT ")).join("\n"),
    dedent(`
      -A LVH-${h}-DNAT -d 203.0.113.7/32 -s 192.0.2.9 -p tcp -m tcp --dport 2222 -m connlabel --label 127 --set ${c} -j DNAT --to-destination 192.168.122.10:22
      -A LVH-${h}-DNAT -d 203.0.113.7/32 -s 198.51.100.0/24 -p tcp -m tcp --dport 2222 -m connlabel --label 127 --set ${c} -j DNAT --to-destination 192.168.122.10:22
      -A LVH-${h}-DNAT -d 203.0.113.7/32 -m iprange --src-range 203.0.113.50-203.0.113.60 -p tcp -m tcp --dport 2222 -m connlabel --label 127 --set ${c} -j DNAT --to-destination 192.168.122.10:22
    `).trimEnd(),
  );
  // The hairpin masquerade does not depend on who the client is (one), nor do the domain's one accept and its
  // jump to LVH-USER.
  assert.equal(four.count, 3 + 1 + 2);
  const six = ruleLines("web1", forwards.filter((f) => f.family === 6));
  assert.equal(
    six.text.nat.split("\n").filter((l) => l.includes("-DNAT ")).join("\n"),
    `-A LVH-${h}-DNAT -d 2001:db8:1::7/128 -s 2001:db8:99::/48 -p tcp -m tcp --dport 2222 -m connlabel --label 127 --set ${c} -j DNAT --to-destination [fd00:122::10]:22`,
  );
});

Deno.test("nftDomainObjects() matches several sources with one anonymous set per rule, each family its own", () => {
  const { forwards } = forwardsOf(CONFIG, "web1");
  const p = `d${domainHash("web1")}`;
  const c = 'comment "libvirt-hook-qemu:1:web1"';
  const dnat = nftDomainObjects("web1", forwards).filter((l) =>
    l.startsWith(`add rule inet libvirt_hook_qemu ${p}-dnat`)
  );
  assert.deepEqual(dnat, [
    // A guest's own connection (the hairpin's label) must come from an allowed source too.
    `add rule inet libvirt_hook_qemu ${p}-dnat ip saddr 192.168.122.0/24 ip saddr { 192.0.2.9, 198.51.100.0/24, 203.0.113.50-203.0.113.60 } ip daddr 203.0.113.7 tcp dport 2222 ct label set 126 ${c}`,
    `add rule inet libvirt_hook_qemu ${p}-dnat ip saddr { 192.0.2.9, 198.51.100.0/24, 203.0.113.50-203.0.113.60 } ip daddr 203.0.113.7 tcp dport 2222 ct label set 127 counter dnat ip to 192.168.122.10:22 ${c}`,
    `add rule inet libvirt_hook_qemu ${p}-dnat ip6 saddr fd00:122::/64 ip6 saddr 2001:db8:99::/48 ip6 daddr 2001:db8:1::7 tcp dport 2222 ct label set 126 ${c}`,
    `add rule inet libvirt_hook_qemu ${p}-dnat ip6 saddr 2001:db8:99::/48 ip6 daddr 2001:db8:1::7 tcp dport 2222 ct label set 127 counter dnat ip6 to [fd00:122::10]:22 ${c}`,
  ]);
});

Deno.test("iptablesSourceMatches() and nftSourceMatch() match a set of ours by its family's name", () => {
  const f = { family: 6 as const, sourceSet: "office" };
  assert.deepEqual(iptablesSourceMatches(f), [" -m set --match-set lvh-office-v6 src"]);
  assert.equal(nftSourceMatch(f), "ip6 saddr @src-office-v6 ");
  assert.deepEqual(iptablesSourceMatches({ family: 4 }), [""]);
  assert.equal(nftSourceMatch({ family: 4 }), "");
  assert.equal(setSource("@src-office-v4"), "@office");
  assert.equal(setSource("lvh-office-v6"), "@office");
  assert.equal(setSource("somebody-elses"), undefined);
});

Deno.test("liveForwards() reads a forward's DNAT rules per source back as one forward with its sources", () => {
  const h = domainHash("web1");
  const c = '-m comment --comment "libvirt-hook-qemu:1:web1"';
  const saved = dedent(`
    *nat
    :LVH-${h}-DNAT - [0:0]
    -A LVH-${h}-DNAT -s 192.0.2.9/32 -d 203.0.113.7/32 -p tcp -m tcp --dport 2222 ${c} -j DNAT --to-destination 192.168.122.10:22
    -A LVH-${h}-DNAT -s 198.51.100.0/24 -d 203.0.113.7/32 -p tcp -m tcp --dport 2222 ${c} -j DNAT --to-destination 192.168.122.10:22
    -A LVH-${h}-DNAT -d 203.0.113.7/32 -p tcp -m iprange --src-range 203.0.113.50-203.0.113.60 -m tcp --dport 2222 ${c} -j DNAT --to-destination 192.168.122.10:22
    -A LVH-${h}-DNAT -d 203.0.113.7/32 -p tcp -m set --match-set lvh-office-v4 src -m tcp --dport 80 ${c} -j DNAT --to-destination 192.168.122.10:80
    COMMIT
  `);
  const planned = forwardsOf(CONFIG, "web1").forwards.filter((f) => f.family === 4);
  assert.deepEqual(liveForwards(parseSave(saved), 4).map(describeForward), [
    "tcp 203.0.113.7:2222 -> 192.168.122.10:22 from 192.0.2.9, 198.51.100.0/24, 203.0.113.50-203.0.113.60",
    "tcp 203.0.113.7:80 -> 192.168.122.10:80 from @office",
  ]);
  // What status compares: the planned forward reads as the live one.
  assert.equal(
    describeForward(asLiveForward("web1", planned[0]!)),
    describeForward(liveForwards(parseSave(saved), 4)[0]!),
  );
});

Deno.test("nftSetCommands() declares a set's two families in our table and fills them as stored, in one go", () => {
  const members = (
    name: string,
  ) => (name === "office" ? ["198.51.100.0/24", "2001:db8::1-2001:db8::3", "198.51.100.7"] : []);
  assert.deepEqual(nftSetCommands(["office", "lab"], members), [
    "add set inet libvirt_hook_qemu src-office-v4 { type ipv4_addr; flags interval; }",
    "flush set inet libvirt_hook_qemu src-office-v4",
    "add element inet libvirt_hook_qemu src-office-v4 { 198.51.100.0/24 }",
    "add set inet libvirt_hook_qemu src-office-v6 { type ipv6_addr; flags interval; }",
    "flush set inet libvirt_hook_qemu src-office-v6",
    "add element inet libvirt_hook_qemu src-office-v6 { 2001:db8::1-2001:db8::3 }",
    // A set with no members yet: declared empty, so the forwards that use it admit no one until it is filled.
    "add set inet libvirt_hook_qemu src-lab-v4 { type ipv4_addr; flags interval; }",
    "flush set inet libvirt_hook_qemu src-lab-v4",
    "add set inet libvirt_hook_qemu src-lab-v6 { type ipv6_addr; flags interval; }",
    "flush set inet libvirt_hook_qemu src-lab-v6",
  ]);
});

Deno.test("nftDomainObjects() matches a source set by its family's set in our table", () => {
  const { forwards } = forwardsOf(
    `{"web1": {"private_ip": "192.168.122.10", "public_ip": "203.0.113.7", "port_map": {"tcp": [[2222, 22]]},
      "source_set": "office"}}`,
    "web1",
  );
  const p = `d${domainHash("web1")}`;
  assert.deepEqual(
    nftDomainObjects("web1", forwards).filter((l) =>
      l.startsWith(`add rule inet libvirt_hook_qemu ${p}-dnat`)
    ),
    [
      `add rule inet libvirt_hook_qemu ${p}-dnat ip saddr 192.168.122.0/24 ip saddr @src-office-v4 ip daddr 203.0.113.7 tcp dport 2222 ct label set 126 comment "libvirt-hook-qemu:1:web1"`,
      `add rule inet libvirt_hook_qemu ${p}-dnat ip saddr @src-office-v4 ip daddr 203.0.113.7 tcp dport 2222 ct label set 127 counter dnat ip to 192.168.122.10:22 comment "libvirt-hook-qemu:1:web1"`,
    ],
  );
});
