/** hostFindings(): forwarding is a failure only for a family the forwards use. */

import assert from "node:assert/strict";
import { hostFindings, iptablesMismatch } from "./doctor_host.ts";
import type { Settings } from "../config/model.ts";
import type { FirewallState } from "../backends/state.ts";
import { FACTS } from "../test/util.ts";

const SETTINGS: Settings = { backend: "iptables", acceptIn: [], hostAddresses: [], xmlForwards: [] };
const STATE: FirewallState = {
  ipt: { 4: { chains: [], rules: [] }, 6: { chains: [], rules: [] } },
  nft: undefined,
};
/** IPv4 forwarding on, IPv6 forwarding off. */
const sysctl = (path: string) => path.includes("ipv4") ? "1" : "0";

Deno.test("hostFindings() fails forwarding only for the families the forwards use", async (t) => {
  const forwarding = (families: (4 | 6)[]) =>
    hostFindings(STATE, { facts: FACTS, settings: SETTINGS, gates: [], chains: [], families, sysctl })
      .filter((f) => f.what.includes("forwarding"))
      .map((f) => `${f.level} ${f.what}${f.fix ? ` | fix: ${f.fix}` : ""}`);
  await t.step("an IPv4-only config: IPv6 forwarding off is a note", () => {
    assert.deepEqual(forwarding([4]), [
      "ok IPv4 forwarding is on",
      "note IPv6 forwarding is off (net.ipv6.conf.all.forwarding = 0); no forward here is IPv6",
    ]);
  });
  await t.step("an IPv6 forward: IPv6 forwarding off fails, with its fix", () => {
    assert.deepEqual(forwarding([4, 6]), [
      "ok IPv4 forwarding is on",
      "fail IPv6 forwarding is off (net.ipv6.conf.all.forwarding = 0): the host forwards nothing of that family" +
      " | fix: sysctl -w net.ipv6.conf.all.forwarding=1 (and keep it in /etc/sysctl.d/)",
    ]);
  });
  await t.step("no forward at all: nothing fails", () => {
    assert.deepEqual(forwarding([]).map((l) => l.split(" ")[0]), ["ok", "note"]);
  });
});

Deno.test("iptablesMismatch() names libvirt's iptables rules in the other iptables than ours", async (t) => {
  const legacyOurs: FirewallState = {
    ipt: { 4: { chains: [], rules: [] }, 6: undefined },
    nft: undefined,
    libvirtElsewhere: "iptables-nft",
  };
  await t.step("iptables-legacy selected, libvirt's chains in iptables-nft: a failure, with the fix", () => {
    assert.deepEqual(iptablesMismatch(legacyOurs), {
      level: "fail",
      what: "libvirt's iptables rules are in iptables-nft (nf_tables), but the iptables this hook runs is " +
        "iptables-legacy: our rules would go where libvirt's reject is not, and it drops every forward",
      fix:
        "update-alternatives --set iptables /usr/sbin/iptables-nft and --set ip6tables /usr/sbin/ip6tables-nft " +
        "(or IPTABLES_BINARY=iptables-nft), then qemu reload",
    });
  });
  await t.step("iptables-nft selected, libvirt's chains in iptables-legacy: a failure, with the fix", () => {
    const found = iptablesMismatch({ ...legacyOurs, libvirtElsewhere: "iptables-legacy" });
    assert.equal(found?.level, "fail");
    assert.match(
      found!.what,
      /^libvirt's iptables rules are in iptables-legacy, but the iptables this hook runs/,
    );
    assert.match(found!.fix!, /--set iptables \/usr\/sbin\/iptables-legacy/);
  });
  await t.step("nothing elsewhere: nothing to say", () => {
    assert.equal(iptablesMismatch(STATE), undefined);
  });
  await t.step("and hostFindings() reports it in place of the backend it cannot have", () => {
    const findings = hostFindings(legacyOurs, {
      facts: FACTS,
      settings: SETTINGS,
      gates: [],
      chains: [],
      sysctl,
    });
    const failures = findings.filter((f) => f.level === "fail").map((f) => f.what);
    assert.deepEqual(failures.filter((w) => !w.includes("forwarding")), [iptablesMismatch(legacyOurs)!.what]);
    assert.ok(!findings.some((f) => f.what.startsWith("firewall backend")));
  });
});
