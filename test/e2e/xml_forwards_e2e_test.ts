/**
 * Issue #14 under a real libvirtd 9.0 (iptables backend): forwards only in the guests' XML, no config file; a
 * DHCP reservation, a real lease (dhclient) applied by the watcher, a live change with `virsh metadata --live` and
 * `qemu apply`. The scenario is in xml_forwards.ts (shared with xml_forwards_nft_e2e_test.ts for libvirt 11.3).
 *
 * installLibvirt() switches an installed libvirt 11.3 back to 9.0. Needs root, working `ip netns`, libvirt or
 * apt-get, and dhclient (isc-dhcp-client). Skipped otherwise (with the reason printed), or when LVH_E2E=0.
 */
import { iptablesSave, skipping } from "./common.ts";
import { xmlForwardsScenario, xmlForwardsSkipReason } from "./xml_forwards.ts";
import { HookRecorder, installLibvirt, startLibvirt } from "./libvirt_env.ts";

const NAME = "xml_forwards_e2e_test";
const reason = (await skipping(NAME, "9.0")) ?? (await xmlForwardsSkipReason(NAME));

Deno.test({
  name:
    "e2e #14 (libvirt 9.0, iptables): forwards from the guest's XML: reservation, real lease, live change",
  ignore: reason !== undefined,
  sanitizeOps: true,
  sanitizeResources: true,
  fn: (t) =>
    xmlForwardsScenario(t, {
      name: NAME,
      libvirt: "9.0",
      install: () => installLibvirt(),
      startLibvirt: (opts) => startLibvirt(opts),
      createRecorder: (dir) => HookRecorder.create(dir),
      ruleset: async (env) =>
        `${await iptablesSave(env)}--- ip6tables-save ---\n${await iptablesSave(env, 6)}`,
    }),
});
