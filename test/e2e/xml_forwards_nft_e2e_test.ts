/**
 * Issue #14 under a real libvirtd 11.3 (nftables backend): forwards only in the guests' XML, no config file; a
 * DHCP reservation, a real lease (dhclient) applied by the watcher, a live change with `virsh metadata --live` and
 * `qemu apply`. The scenario is in xml_forwards.ts (shared with xml_forwards_e2e_test.ts for libvirt 9.0).
 *
 * installLibvirt11() switches an installed libvirt 9.0 to 11.3. Needs root, working `ip netns`, apt-get (or
 * libvirt 11.3 installed), and dhclient (isc-dhcp-client). Skipped otherwise (with the reason printed), or when
 * LVH_E2E=0.
 */
import { iptablesSave, skipping, stripNft } from "./common.ts";
import { xmlForwardsScenario, xmlForwardsSkipReason } from "./xml_forwards.ts";
import { createNftRecorder, installLibvirt11, nftRuleset, startLibvirt11 } from "./libvirt11_env.ts";

const NAME = "xml_forwards_nft_e2e_test";
const reason = (await skipping(NAME, "11.3")) ?? (await xmlForwardsSkipReason(NAME));

Deno.test({
  name:
    "e2e #14 (libvirt 11.3, nftables): forwards from the guest's XML: reservation, real lease, live change",
  ignore: reason !== undefined,
  sanitizeOps: true,
  sanitizeResources: true,
  fn: (t) =>
    xmlForwardsScenario(t, {
      name: NAME,
      libvirt: "11.3",
      install: () => installLibvirt11(),
      startLibvirt: (opts) => startLibvirt11(opts),
      createRecorder: (dir) => createNftRecorder(dir),
      ruleset: async (env) =>
        `${stripNft(await nftRuleset(env))}--- iptables-save ---\n${await iptablesSave(env)}`,
    }),
});
