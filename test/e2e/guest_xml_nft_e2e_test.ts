/**
 * Issue #14 under a real libvirtd 11.3 (nftables backend): forwards in a guest's XML, no config file, its address
 * from a DHCP reservation or a real lease (see guest_xml_e2e.ts). Needs root, `ip netns`, apt-get (or libvirt 11.3)
 * and dhclient (isc-dhcp-client); skipped otherwise, with the reason printed.
 */
import { skipping } from "./common.ts";
import { allRules, guestXmlScenario } from "./guest_xml_e2e.ts";
import { run } from "./libvirt_env.ts";
import { installLibvirt11, nftRuleset, startLibvirt11 } from "./libvirt11_env.ts";

const dhclient = await run(["sh", "-c", "command -v dhclient"], { check: false, timeoutMs: 10_000 });
const skipped = await skipping("guest_xml_nft_e2e_test", "11.3");
const reason = skipped ?? (dhclient.success ? undefined : "no dhclient (apt-get install isc-dhcp-client)");
if (skipped === undefined && reason) console.log(`guest_xml_nft_e2e_test: skipped: ${reason}`);

Deno.test({
  name:
    "e2e #14, libvirt 11.3 (nftables): a guest's forwards in its XML, no config file; reservation, lease, live change",
  ignore: reason !== undefined,
  sanitizeOps: true,
  sanitizeResources: true,
  fn: (t) =>
    guestXmlScenario(t, {
      libvirt: "11.3",
      install: () => installLibvirt11(),
      start: (hooksDir) => startLibvirt11({ hooksDir }),
      ruleset: allRules,
      ours: async (env) => {
        const all = await nftRuleset(env);
        return /table inet libvirt_hook_qemu \{[\s\S]*?\n\}/.exec(all)?.[0] ?? "(no table of ours)";
      },
    }),
});
