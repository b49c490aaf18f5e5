/** readCounters() and forwardFindings(): what our rules counted, and the links of one forward, fake deps. */

import assert from "node:assert/strict";
import { forwardFindings, readCounters, readFlows } from "./doctor_forward.ts";
import { domainHash } from "../backends/names.ts";
import { fakeCommandDeps } from "../test/commands_deps.ts";
import { FACTS, forwardsOf } from "../test/util.ts";

const h = domainHash("web 1");

Deno.test("readCounters() sums our DNAT and counting chain counters by protocol and public port", async () => {
  const f = await fakeCommandDeps("{}", (argv) =>
    argv[0] === "iptables-save"
      ? {
        stdout: [
          "*nat",
          `[7:420] -A LVH-${h}-DNAT -d 203.0.113.1/32 -p tcp -m tcp --dport 2222 -j DNAT --to-destination 192.168.122.10:22`,
          `[3:180] -A LVH-${h}-DNAT -d 203.0.113.1/32 -p udp -m udp --dport 2222 -j DNAT --to-destination 192.168.122.10:53`,
          "COMMIT",
          "*filter",
          `[0:0] -A LVH-${h}-CNT -p tcp -m conntrack --ctorigdst 203.0.113.1 --ctorigdstport 2222 -j RETURN`,
          `[5:300] -A LVH-${h}-FWD -j ACCEPT`,
          "[9:9] -A FORWARD -j ACCEPT",
          "COMMIT",
        ].join("\n"),
      }
      : {});
  assert.deepEqual(
    [...await readCounters(f.deps, "web 1")],
    [["dnat tcp 2222", 7], ["dnat udp 2222", 3], ["fwd tcp 2222", 0]],
  );
});

Deno.test("forwardFindings() of a guest that does not run: its fix lines quote its name for a shell", async () => {
  const [forward] = forwardsOf(
    `{"web 1": {"private_ip": "192.168.122.10", "port_map": {"udp": [[2222, 53]]}}}`,
    "web 1",
  ).forwards;
  const findings = await forwardFindings("web 1", forward!, {
    acceptIn: [],
    xml: undefined,
    facts: FACTS,
    hostAddresses: [],
    state: { ipt: { 4: { chains: [], rules: [] }, 6: undefined }, nft: undefined },
    gates: [],
    live: false,
    misplaced: false,
    counters: new Map(),
  });
  const fails = findings.filter((f) => f.level === "fail").map((f) => `${f.what} | ${f.fix}`);
  assert.ok(fails.includes(`"web 1" is not running | virsh start 'web 1'`), fails.join("\n"));
  assert.ok(
    fails.includes("the forward is not live | qemu apply 'web 1'   (or restart the guest)"),
    fails.join("\n"),
  );
});

Deno.test("readFlows() counts the forward's connections and those no reply came for", async (t) => {
  const listed = [
    "tcp      6 118 SYN_SENT src=203.0.113.50 dst=203.0.113.1 sport=40000 dport=2222 [UNREPLIED] " +
    "src=192.168.122.10 dst=203.0.113.50 sport=22 dport=40000 mark=0 use=1",
    "tcp      6 431999 ESTABLISHED src=203.0.113.51 dst=203.0.113.1 sport=40001 dport=2222 " +
    "src=192.168.122.10 dst=203.0.113.51 sport=22 dport=40001 [ASSURED] mark=0 use=1",
  ].join("\n");
  const forward = { family: 4 as const, protocol: "tcp" as const, publicIp: "203.0.113.1", publicPort: 2222 };
  await t.step("listed with conntrack, for the forward's public address and port", async () => {
    const f = await fakeCommandDeps("{}", () => ({ stdout: `${listed}\n` }));
    f.deps.conntrack = () => "/usr/sbin/conntrack";
    assert.deepEqual(await readFlows(f.deps, forward), { total: 2, unreplied: 1 });
    assert.deepEqual(f.calls.map((c) => c.argv), [
      [
        "/usr/sbin/conntrack",
        "-L",
        "-f",
        "ipv4",
        "-p",
        "tcp",
        "--orig-dst",
        "203.0.113.1",
        "--dport",
        "2222",
      ],
    ]);
  });
  await t.step("without conntrack: unknown, nothing run", async () => {
    const f = await fakeCommandDeps("{}");
    f.deps.conntrack = () => undefined;
    assert.equal(await readFlows(f.deps, forward), undefined);
    assert.deepEqual(f.calls, []);
  });
});
