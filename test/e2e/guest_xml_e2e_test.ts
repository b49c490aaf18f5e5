/**
 * Issue #14 under a real libvirtd 9.0 (iptables backend): forwards in a guest's XML, no config file, its address
 * from a DHCP reservation or a real lease (see guest_xml_e2e.ts). Needs root, `ip netns`, libvirt or apt-get
 * and dhclient (isc-dhcp-client); skipped otherwise, with the reason printed.
 */
import { iptablesSave, skipping } from "./common.ts";
import { allRules, guestXmlScenario } from "./guest_xml_e2e.ts";
import { installLibvirt, run, startLibvirt } from "./libvirt_env.ts";

const dhclient = await run(["sh", "-c", "command -v dhclient"], { check: false, timeoutMs: 10_000 });
const skipped = await skipping("guest_xml_e2e_test", "9.0");
const reason = skipped ?? (dhclient.success ? undefined : "no dhclient (apt-get install isc-dhcp-client)");
if (skipped === undefined && reason) console.log(`guest_xml_e2e_test: skipped: ${reason}`);

Deno.test({
  name:
    "e2e #14, libvirt 9.0 (iptables): a guest's forwards in its XML, no config file; reservation, lease, live change",
  ignore: reason !== undefined,
  sanitizeOps: true,
  sanitizeResources: true,
  fn: (t) =>
    guestXmlScenario(t, {
      libvirt: "9.0",
      install: () => installLibvirt(),
      start: (hooksDir) => startLibvirt({ hooksDir }),
      ruleset: allRules,
      ours: async (env) =>
        (await iptablesSave(env)).split("\n").filter((l) => l.includes("LVH-")).join("\n") ||
        "(no rules of ours)",
    }),
});
