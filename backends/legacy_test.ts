/** legacyRules(): the old Python hook's chains, found in iptables-save output, and their removal. */

import assert from "node:assert/strict";
import { legacyRules } from "./legacy.ts";
import { dedent } from "../test/util.ts";

const SAVED = dedent(`
  *nat
  :PREROUTING ACCEPT [0:0]
  :DNAT-web1 - [0:0]
  :SNAT-web1 - [0:0]
  :DNAT-other - [0:0]
  -A PREROUTING -j DNAT-web1
  -A PREROUTING -j DNAT-other
  -A DNAT-web1 -d 203.0.113.1/32 -p tcp -m tcp --dport 2222 -j DNAT --to-destination 192.168.122.10:22
  COMMIT
  *filter
  :FORWARD ACCEPT [0:0]
  :FWD-web1 - [0:0]
  -A FORWARD -j FWD-web1
  COMMIT
`);

Deno.test("legacyRules() finds only the named domains' old chains, and removes their jumps before them", () => {
  const found = legacyRules(SAVED, ["web1"]);
  assert.deepEqual(Object.fromEntries(found.chains), {
    nat: ["DNAT-web1", "SNAT-web1"],
    filter: ["FWD-web1"],
  });
  assert.deepEqual(Object.fromEntries(found.jumps), {
    nat: ["PREROUTING -j DNAT-web1"],
    filter: ["FORWARD -j FWD-web1"],
  });
  assert.equal(
    found.batch,
    dedent(`
      *nat
      :DNAT-web1 - [0:0]
      :SNAT-web1 - [0:0]
      -D PREROUTING -j DNAT-web1
      -X DNAT-web1
      -X SNAT-web1
      COMMIT
      *filter
      :FWD-web1 - [0:0]
      -D FORWARD -j FWD-web1
      -X FWD-web1
      COMMIT
    `),
  );
  assert.equal(legacyRules(SAVED, ["nobody"]).batch, "");
});
