/** Choosing the backend: what is live first, then libvirt's own setting, then what is installed. */

import { chooseBackend, drivesNfTables } from "./choose.ts";
import { iptablesTools } from "./iptables.ts";
import { emptyNftLive } from "./nftables_live.ts";
import type { FirewallState } from "./state.ts";
import assert from "node:assert/strict";

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
  await t.step(
    "libvirt's iptables rules in the other iptables: refused by every setting, with the fix",
    () => {
      for (const setting of ["auto", "iptables", "nftables"] as const) {
        assert.throws(
          () =>
            chooseBackend(setting, {
              ipt: { 4: ipt(false), 6: ipt(false) },
              nft: undefined,
              libvirtElsewhere: "iptables-legacy",
            }),
          new RegExp(
            "^ApplyError: libvirt's iptables rules are in iptables-legacy, but the iptables this hook runs is " +
              "iptables-nft \\(nf_tables\\): .*; nothing was changed\\. Fix: update-alternatives --set iptables " +
              "/usr/sbin/iptables-legacy",
          ),
        );
      }
    },
  );
});

Deno.test("drivesNfTables() follows PATH and the alternatives' links to the program", async () => {
  const dir = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${dir}/xtables-nft-multi`, "");
    await Deno.writeTextFile(`${dir}/xtables-legacy-multi`, "");
    await Deno.mkdir(`${dir}/nft`);
    await Deno.mkdir(`${dir}/legacy`);
    for (const name of ["iptables", "ip6tables"]) {
      await Deno.symlink(`${dir}/xtables-nft-multi`, `${dir}/nft/${name}`);
      await Deno.symlink(`${dir}/xtables-legacy-multi`, `${dir}/legacy/${name}`);
    }
    assert.equal(drivesNfTables(iptablesTools(), `/nonexistent:${dir}/nft`), true);
    assert.equal(drivesNfTables(iptablesTools(), `${dir}/legacy:${dir}/nft`), false);
    assert.equal(drivesNfTables(iptablesTools(`${dir}/nft/iptables`), ""), true);
    assert.equal(drivesNfTables(iptablesTools(), "/nonexistent"), false);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
