/**
 * What our domains share, so that no packet walks a rule per domain: the gate in iptables' FORWARD, the accept per
 * bridge in libvirt's guest_input, the dispatch maps and the hairpin of our table. With real packets, on both
 * libvirt variants and both backends: two domains' forwards work side by side, each domain's stop leaves the
 * other's working (client and hairpin) with one shared object of each kind, and the last stop leaves the firewall
 * as it was before the first start.
 */

import assert from "node:assert/strict";
import { LAB_ADDR as A } from "./lab.ts";
import { labFirewall, labTest, labVariants, runInLab } from "./lab_hook.ts";

const VARIANTS = await labVariants("shared objects", [
  "iptables/iptables",
  "iptables/nftables",
  "nftables/nftables",
]);

for (const v of VARIANTS) {
  labTest(v, {
    what: "shared objects",
    claim:
      "two domains side by side, either stops first, the other's forward still works (client and hairpin), " +
      "the last stop leaves no residue",
    entries: `"g1": {"private_ip": "${A.g1v4}", "port_map": {"tcp": [[2222, 22]]}},
              "g2": {"private_ip": "${A.g2v4}", "port_map": {"tcp": [[2223, 22]]}}`,
  }, async (lab, file, t) => {
    await lab.serve(lab.ns.g1, "tcp", 22, "g1");
    await lab.serve(lab.ns.g2, "tcp", 22, "g2");
    const pristine = await labFirewall(lab);
    const hook = (domain: string, op: string) => runInLab(lab, file, [domain, op, "begin", "-"], domain);
    /** What the client gets on 2222 and 2223, and what g1 gets through the public address on 2223. */
    const reach = async () => ({
      g1: await lab.connect(lab.ns.client, "tcp", A.hostPub4, 2222, { timeoutMs: 1500 }),
      g2: await lab.connect(lab.ns.client, "tcp", A.hostPub4, 2223, { timeoutMs: 1500 }),
      hairpin: await lab.connect(lab.ns.g1, "tcp", A.hostPub4, 2223, { timeoutMs: 1500 }),
    });
    /** How many of each shared object are live. */
    const shared = async () => {
      const all = await labFirewall(lab);
      return {
        gate: all.split("\n").filter((l) => /^-A FORWARD .*-j LVH-FORWARD$/.test(l)).length,
        accept: all.split("\n").filter((l) => l.includes('comment "libvirt-hook-qemu:1:accept"')).length,
        hairpin: all.split("\n").filter((l) => l.trim() === "ct label 126 masquerade").length,
      };
    };
    // Where libvirt uses iptables, both backends put the gate in FORWARD; the accept in guest_input is
    // libvirt's nftables chain's; the hairpin rule is our table's.
    const one = {
      gate: v.libvirt === "iptables" ? 1 : 0,
      accept: v.libvirt === "nftables" ? 1 : 0,
      hairpin: v.backend === "nftables" ? 1 : 0,
    };
    const both = { g1: `g1 ${A.client4}`, g2: `g2 ${A.client4}`, hairpin: `g2 ${A.bridge4}` };

    for (const first of ["g1", "g2"]) {
      await t.step(`both run, then ${first} stops: the other's forward still works`, async () => {
        await hook("g1", "start");
        await hook("g2", "start");
        assert.deepEqual(await reach(), both);
        assert.deepEqual(await shared(), one);
        await hook(first, "stopped");
        const left = await reach();
        if (first === "g1") assert.deepEqual(left, { g1: null, g2: both.g2, hairpin: both.hairpin });
        else assert.deepEqual(left, { g1: both.g1, g2: null, hairpin: null });
        assert.deepEqual(await shared(), one);
        await hook(first === "g1" ? "g2" : "g1", "stopped");
        assert.deepEqual(await reach(), { g1: null, g2: null, hairpin: null });
        assert.equal(await labFirewall(lab), pristine);
      });
    }
  });
}
