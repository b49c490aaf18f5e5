/** Choosing the backend: what is live first, then libvirt's own setting, then what is installed. */

import assert from "node:assert/strict";
import { chooseBackend, type FirewallState, parseNetworkConf } from "./apply.ts";
import { emptyNftLive } from "./nft.ts";

const ipt = (libvirt: boolean) => ({ chains: [], rules: [], libvirt });
const nftWithLibvirt = () => ({ ...emptyNftLive(), libvirt: { 4: [] } });

Deno.test("chooseBackend() follows what libvirt uses, and refuses what cannot work", async (t) => {
  const cases: [string, FirewallState, "auto" | "iptables" | "nftables", string][] = [
    ["libvirt on iptables", { ipt: { 4: ipt(true), 6: ipt(true) }, nft: emptyNftLive() }, "auto", "iptables"],
    [
      "libvirt on nftables",
      { ipt: { 4: ipt(false), 6: ipt(false) }, nft: nftWithLibvirt() },
      "auto",
      "nftables",
    ],
    [
      "libvirt on nftables, iptables asked for",
      { ipt: { 4: ipt(false), 6: ipt(false) }, nft: nftWithLibvirt() },
      "iptables",
      "iptables",
    ],
    [
      "no network up yet, network.conf says nftables",
      {
        ipt: { 4: ipt(false), 6: ipt(false) },
        nft: emptyNftLive(),
        libvirtSetting: "nftables",
      },
      "auto",
      "nftables",
    ],
    ["no libvirt at all", { ipt: { 4: ipt(false), 6: ipt(false) }, nft: emptyNftLive() }, "auto", "iptables"],
    [
      "no iptables installed",
      { ipt: { 4: undefined, 6: undefined }, nft: emptyNftLive() },
      "auto",
      "nftables",
    ],
  ];
  for (const [name, state, setting, want] of cases) {
    await t.step(name, () => assert.equal(chooseBackend(setting, state), want));
  }
  await t.step("nftables asked for where libvirt uses iptables: refused, saying why", () => {
    assert.throws(
      () => chooseBackend("nftables", { ipt: { 4: ipt(true), 6: ipt(true) }, nft: emptyNftLive() }),
      /libvirt uses its iptables backend here: an accept in our nftables table cannot get past LIBVIRT_FWI's REJECT/,
    );
  });
  await t.step("nftables asked for without nft: refused", () => {
    assert.throws(
      () => chooseBackend("nftables", { ipt: { 4: ipt(false), 6: ipt(false) }, nft: undefined }),
      /needs nft/,
    );
  });
});

Deno.test("parseNetworkConf() reads libvirt's firewall_backend", () => {
  assert.equal(parseNetworkConf('# comment\nfirewall_backend = "nftables"\n'), "nftables");
  assert.equal(parseNetworkConf('#firewall_backend = "iptables"\n'), undefined);
});
