/** forwardsByDomain() and hostListener(): what is live, by domain, read from a saved ruleset. */

import assert from "node:assert/strict";
import { forwardsByDomain, hostListener } from "./live.ts";
import { describeForward } from "../backends/forward.ts";
import { parseSave } from "../backends/iptables_live.ts";
import { domainHash } from "../backends/names.ts";
import { twoLive } from "../test/commands_deps.ts";
import type { FirewallState } from "../backends/state.ts";

const STATE: FirewallState = { ipt: { 4: parseSave(twoLive(domainHash)), 6: undefined }, nft: undefined };

Deno.test("forwardsByDomain() gives each domain its live forwards", () => {
  const live = forwardsByDomain(STATE, []);
  assert.deepEqual(
    [...live].map(([domain, forwards]) => [domain, forwards.map(describeForward)]),
    [
      ["web1", ["tcp 203.0.113.1:2222 -> 192.168.122.10:22"]],
      ["web2", ["tcp 203.0.113.1:2222 -> 192.168.122.11:22"]],
    ],
  );
});

Deno.test("hostListener() finds the host's own listener a forward's public port takes", () => {
  const f = forwardsByDomain(STATE, []).get("web1")![0]!;
  const listener = { family: 4 as const, protocol: "tcp" as const, address: "0.0.0.0", port: 2222 };
  assert.equal(hostListener(f, [listener]), "0.0.0.0:2222");
  assert.equal(hostListener(f, [{ ...listener, port: 22 }]), undefined);
});
