/** libvirtElsewhere(), readLibvirtElsewhere(): libvirt's iptables rules in the other iptables than ours. */

import assert from "node:assert/strict";
import { libvirtElsewhere, readLibvirtElsewhere } from "./elsewhere.ts";
import type { FirewallState } from "./state.ts";
import { recordingRunner } from "../test/util.ts";

/** What the iptables we run shows: our tables, no libvirt chain in them, and no libvirt nftables chain. */
const UNSEEN: FirewallState = {
  ipt: { 4: { chains: [], rules: [] }, 6: { chains: [], rules: [] } },
  nft: undefined,
};
const SEEN: FirewallState = { ...UNSEEN, ipt: { 4: { chains: [], rules: [], libvirt: true }, 6: undefined } };
const NFT_CHAINS = JSON.stringify({
  nftables: [
    { metainfo: { json_schema_version: 1 } },
    { chain: { family: "ip", table: "filter", name: "FORWARD", handle: 1 } },
    { chain: { family: "ip", table: "filter", name: "LIBVIRT_FWI", handle: 2 } },
  ],
});

Deno.test("libvirtElsewhere() finds libvirt's chains in the other iptables", async (t) => {
  await t.step("in iptables-nft: listed by nft in ip/ip6 filter, nat or mangle", () => {
    assert.equal(libvirtElsewhere({ chains: ["ip6 nat LIBVIRT_PRT"] }), "iptables-nft");
    assert.equal(libvirtElsewhere({ chains: ["ip filter FORWARD", "inet lvh LIBVIRT_X"] }), undefined);
  });
  await t.step("in iptables-legacy: a LIBVIRT_ chain declared in iptables-legacy-save", () => {
    assert.equal(
      libvirtElsewhere({ legacySave: "*filter\n:LIBVIRT_FWI - [0:0]\nCOMMIT\n" }),
      "iptables-legacy",
    );
    assert.equal(libvirtElsewhere({ legacySave: "*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n" }), undefined);
  });
});

Deno.test("readLibvirtElsewhere() looks into the other iptables only where libvirt's chains are unseen", async (t) => {
  await t.step("we run iptables-legacy: nft lists the chains, and finds them in iptables-nft", async () => {
    const runner = recordingRunner(() => ({ stdout: NFT_CHAINS }));
    const state = await readLibvirtElsewhere({ runner, nft: "nft" }, UNSEEN);
    assert.equal(state.libvirtElsewhere, "iptables-nft");
    assert.deepEqual(runner.calls.map((c) => c.argv), [["nft", "-j", "list", "chains"]]);
  });
  await t.step("we run iptables-nft with legacy tables loaded: iptables-legacy-save finds them", async () => {
    const runner = recordingRunner(() => ({ stdout: "*nat\n:LIBVIRT_PRT - [0:0]\nCOMMIT\n" }));
    const state = await readLibvirtElsewhere({ runner, nft: "nft", iptablesNft: true }, UNSEEN, {
      legacyLoaded: () => true,
    });
    assert.equal(state.libvirtElsewhere, "iptables-legacy");
    assert.deepEqual(runner.calls.map((c) => c.argv), [["iptables-legacy-save"]]);
  });
  await t.step(
    "no legacy table loaded: nothing is run (iptables-legacy-save would load the modules)",
    async () => {
      const runner = recordingRunner();
      const state = await readLibvirtElsewhere({ runner, nft: "nft", iptablesNft: true }, UNSEEN, {
        legacyLoaded: () => false,
      });
      assert.equal(state.libvirtElsewhere, undefined);
      assert.equal(runner.calls.length, 0);
    },
  );
  await t.step("libvirt's chains seen where we run: nothing is run", async () => {
    const runner = recordingRunner(() => ({ stdout: NFT_CHAINS }));
    assert.equal((await readLibvirtElsewhere({ runner, nft: "nft" }, SEEN)).libvirtElsewhere, undefined);
    assert.equal(runner.calls.length, 0);
  });
  await t.step("a look that fails finds nothing (never a failure of its own)", async () => {
    const runner = recordingRunner(() => ({ code: 1, stderr: "Operation not permitted" }));
    assert.equal((await readLibvirtElsewhere({ runner, nft: "nft" }, UNSEEN)).libvirtElsewhere, undefined);
  });
});
