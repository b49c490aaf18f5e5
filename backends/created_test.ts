/** The iptables-nft tables and chains we created: deleted only when left unused. */

import { uncreated } from "./created.ts";
import type { Live } from "./iptables_live.ts";
import type { FirewallState } from "./state.ts";
import assert from "node:assert/strict";

Deno.test("uncreated() deletes only the tables and built-in chains we created that are left unused", async (t) => {
  const live = (tables: NonNullable<Live["tables"]>, othersIn: NonNullable<Live["othersIn"]> = {}): Live => ({
    chains: [],
    rules: [],
    tables,
    othersIn,
  });
  const none = { 4: { chains: [], rules: [] }, 6: { chains: [], rules: [] } };
  const state = (v4: Live): FirewallState => ({ ipt: { 4: v4, 6: undefined }, nft: undefined });
  await t.step("a table of ours whose chains are all empty, policy accept: chains, then the table", () => {
    const v4 = live({ nat: { PREROUTING: "accept", POSTROUTING: "accept" } }, {
      "nat PREROUTING": { foreign: 0, ours: 0 },
      "nat POSTROUTING": { foreign: 0, ours: 0 },
    });
    assert.deepEqual(uncreated(["4 nat", "4 nat PREROUTING"], state(v4), none), {
      commands: ["delete chain ip nat PREROUTING", "delete chain ip nat POSTROUTING", "delete table ip nat"],
      keep: [],
    });
  });
  await t.step("another domain of ours still uses it: kept, and remembered", () => {
    const v4 = live({ nat: { PREROUTING: "accept" } }, { "nat PREROUTING": { foreign: 0, ours: 1 } });
    assert.deepEqual(uncreated(["4 nat"], state(v4), none), { commands: [], keep: ["4 nat"] });
  });
  await t.step("other software uses it now (a rule, a policy, a chain not listed): it is theirs too", () => {
    for (
      const v4 of [
        live({ nat: { PREROUTING: "accept" } }, { "nat PREROUTING": { foreign: 1, ours: 0 } }),
        live({ filter: { FORWARD: "drop" } }, { "filter FORWARD": { foreign: 0, ours: 0 } }),
        live({ nat: { PREROUTING: "accept", DOCKER: "" } }, { "nat PREROUTING": { foreign: 0, ours: 0 } }),
      ]
    ) {
      const table = Object.keys(v4.tables!)[0]!;
      assert.deepEqual(uncreated([`4 ${table}`], state(v4), none), { commands: [], keep: [] });
    }
  });
  await t.step("a built-in chain we created in a table that was there", () => {
    const v4 = live({ nat: { DOCKER: "", POSTROUTING: "accept" } }, {
      "nat POSTROUTING": { foreign: 0, ours: 0 },
    });
    assert.deepEqual(uncreated(["4 nat POSTROUTING"], state(v4), none), {
      commands: ["delete chain ip nat POSTROUTING"],
      keep: [],
    });
  });
});
