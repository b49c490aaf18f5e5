/**
 * Upgrading over live rules of the layout before the shared objects (a jump per domain in FORWARD and in our nat
 * base chains, a hairpin chain per domain, an accept per domain in libvirt's guest_input), as that version wrote
 * them for one forward: a stop of the new hook leaves the firewall as it was before them, and a start over them
 * replaces them by the new layout, whose forward works, with nothing of the old one left. Real rules and packets,
 * on both libvirt variants and both backends.
 */

import assert from "node:assert/strict";
import { type Lab, LAB_ADDR as A } from "./lab.ts";
import { labFirewall, labTest, labVariants, runInLab } from "./lab_hook.ts";
import { domainHash } from "../backends/names.ts";

const VARIANTS = await labVariants("upgrade", [
  "iptables/iptables",
  "iptables/nftables",
  "nftables/nftables",
]);

const H = domainHash("g1");
const C = "-m comment --comment libvirt-hook-qemu:1:g1";
const NC = 'comment "libvirt-hook-qemu:1:g1"';
const T = "inet libvirt_hook_qemu";

/** The filter part of the earlier layout: FORWARD jumps to the domain's FWD chain, which checks our label. */
const OLD_FILTER = [
  "*filter",
  `:LVH-${H}-FWD - [0:0]`,
  ":LVH-USER - [0:0]",
  `-I FORWARD ${C} -j LVH-${H}-FWD`,
  `-A LVH-${H}-FWD -m connlabel --label 127 ${C} -j LVH-USER`,
  `-A LVH-${H}-FWD -m connlabel --label 127 ${C} -j ACCEPT`,
  "COMMIT",
];

/** The earlier iptables backend's batch for g1's forward 2222 -> 22. */
const OLD_IPTABLES = [
  "*nat",
  `:LVH-${H}-DNAT - [0:0]`,
  `:LVH-${H}-SNAT - [0:0]`,
  `-I PREROUTING ${C} -j LVH-${H}-DNAT`,
  `-I OUTPUT ${C} -j LVH-${H}-DNAT`,
  `-I POSTROUTING ${C} -j LVH-${H}-SNAT`,
  `-A LVH-${H}-DNAT -d ${A.hostPub4}/32 -p tcp -m tcp --dport 2222 -m connlabel --label 127 --set ${C} ` +
  `-j DNAT --to-destination ${A.g1v4}:22`,
  `-A LVH-${H}-SNAT -s 192.168.122.0/24 -d ${A.g1v4}/32 -p tcp -m tcp --dport 22 -m conntrack --ctstate DNAT ` +
  `--ctorigdst ${A.hostPub4}/32 --ctorigdstport 2222 ${C} -j MASQUERADE`,
  "COMMIT",
  ...OLD_FILTER,
];

/** The earlier nftables backend's commands for the same forward: a jump per domain in each base chain. */
function oldTable(libvirtNft: boolean): string[] {
  const p = `d${H}`;
  return [
    `add table ${T}`,
    `add chain ${T} prerouting { type nat hook prerouting priority dstnat; policy accept; }`,
    `add chain ${T} output { type nat hook output priority -100; policy accept; }`,
    `add chain ${T} postrouting { type nat hook postrouting priority srcnat; policy accept; }`,
    `add chain ${T} user_forward { type filter hook forward priority -10; policy accept; }`,
    `add map ${T} ${p}-dnat4 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; counter; ` +
    `elements = { ${A.hostPub4} . tcp . 2222 : ${A.g1v4} . 22 }; }`,
    `add set ${T} ${p}-to4 { type ipv4_addr . inet_proto . inet_service; elements = { ${A.g1v4} . tcp . 22 }; }`,
    `add set ${T} ${p}-pub4 { type ipv4_addr . inet_proto . inet_service; ` +
    `elements = { ${A.hostPub4} . tcp . 2222 }; }`,
    `add set ${T} ${p}-br4 { type ifname; elements = { "virbr0" }; }`,
    `add chain ${T} ${p}-dnat`,
    `add chain ${T} ${p}-snat`,
    `add rule ${T} ${p}-dnat ip daddr . meta l4proto . th dport @${p}-pub4 ct label set 127 dnat ip to ` +
    `ip daddr . meta l4proto . th dport map @${p}-dnat4 ${NC}`,
    `add rule ${T} ${p}-snat ip saddr 192.168.122.0/24 ct status dnat ip daddr . meta l4proto . th dport ` +
    `@${p}-to4 masquerade ${NC}`,
    `insert rule ${T} prerouting jump ${p}-dnat ${NC}`,
    `insert rule ${T} output jump ${p}-dnat ${NC}`,
    `insert rule ${T} postrouting jump ${p}-snat ${NC}`,
    ...(libvirtNft
      ? [
        'insert rule ip libvirt_network guest_input oifname "virbr0" ct status dnat counter accept ' +
        'comment "libvirt-hook-qemu:1:g1:accept"',
      ]
      : []),
  ];
}

/** Writes g1's rules as the earlier version did, on this variant. */
async function writeOldLayout(lab: Lab, v: { libvirt: string; backend: string }): Promise<void> {
  const restore = async (lines: string[]) => {
    const r = await lab.exec(lab.ns.host, ["iptables-restore", "--noflush"], {
      stdin: lines.join("\n") + "\n",
    });
    assert.equal(r.code, 0, r.stderr);
  };
  const nft = async (lines: string[]) => {
    const r = await lab.exec(lab.ns.host, ["nft", "-f", "-"], { stdin: lines.join("\n") + "\n" });
    assert.equal(r.code, 0, r.stderr);
  };
  if (v.backend === "iptables") await restore(OLD_IPTABLES);
  else {
    if (v.libvirt === "iptables") await restore(OLD_FILTER);
    await nft(oldTable(v.libvirt === "nftables"));
  }
}

/** What of the earlier layout is live: the domain's own jump in FORWARD or accept in guest_input, its -snat. */
function oldPieces(firewall: string): string[] {
  return firewall.split("\n").filter((l) =>
    /^-A FORWARD .*-j LVH-\w+-FWD$/.test(l) || l.includes("libvirt-hook-qemu:1:g1:accept") ||
    l.includes(`d${H}-snat`) || l.includes(`d${H}-to4`)
  );
}

for (const v of VARIANTS) {
  labTest(v, {
    what: "upgrade",
    claim: "the earlier layout's rules go with a stop, and a start replaces them by the shared objects",
    entries: `"g1": {"private_ip": "${A.g1v4}", "port_map": {"tcp": [[2222, 22]]}}`,
  }, async (lab, file, t) => {
    await lab.serve(lab.ns.g1, "tcp", 22, "g1");
    const pristine = await labFirewall(lab);
    const reach = () => lab.connect(lab.ns.client, "tcp", A.hostPub4, 2222, { timeoutMs: 1500 });
    const hairpin = () => lab.connect(lab.ns.g2, "tcp", A.hostPub4, 2222, { timeoutMs: 1500 });

    await t.step("the earlier layout works, and a stop of the new hook takes all of it", async () => {
      await writeOldLayout(lab, v);
      assert.equal(await reach(), `g1 ${A.client4}`);
      assert.notDeepEqual(oldPieces(await labFirewall(lab)), []);
      await runInLab(lab, file, ["g1", "stopped", "end", "-"], "g1");
      assert.equal(await labFirewall(lab), pristine);
    });
    await t.step(
      "a start over it: the new layout, nothing of the old, the forward and hairpin work",
      async () => {
        await writeOldLayout(lab, v);
        await runInLab(lab, file, ["g1", "start", "begin", "-"], "g1");
        assert.deepEqual(oldPieces(await labFirewall(lab)), []);
        assert.equal(await reach(), `g1 ${A.client4}`);
        assert.equal(await hairpin(), `g1 ${A.bridge4}`);
        await runInLab(lab, file, ["g1", "stopped", "end", "-"], "g1");
        assert.equal(await labFirewall(lab), pristine);
      },
    );
  });
}
