/** Reading the live state on iptables-nft with one `nft -i` process, and a sync from that read. */

import type { Forward } from "./forward.ts";
import { iptablesTools, renderSync } from "./iptables.ts";
import { type Live, liveOf, ownChainsAndJumps, parseInteractive, parseSave } from "./iptables_live.ts";
import { domainHash } from "./names.ts";
import { nftItems } from "./nft_json.ts";
import { readState } from "./state.ts";
import { syncDomain } from "../rules.ts";
import assert from "node:assert/strict";
import { dedent, recordingRunner } from "../test/util.ts";

// ---- One nft look instead of iptables-save, where iptables is iptables-nft ----
const META =
  '{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}';

const doc = (...items: string[]) => `{"nftables": [${[META, ...items].join(", ")}]}`;

const chain = (family: string, table: string, name: string) =>
  `{"chain": {"family": "${family}", "table": "${table}", "name": "${name}", "handle": 9}}`;

const jump = (family: string, table: string, from: string, target: string, handle = 70620) =>
  `{"rule": {"family": "${family}", "table": "${table}", "chain": "${from}", "handle": ${handle}, "expr": ` +
  `[{"xt": {"type": "match", "name": "comment"}}, {"counter": {"packets": 0, "bytes": 0}}, ` +
  `{"jump": {"target": "${target}"}}]}}`;

const missing = (command: string) => `Error: No such file or directory\n${command}\n   ^^^\n`;

const H = domainHash("vm1");

/** A host as `nft -j -i` sees it: the answer to each command, undefined where nft says "No such file". */
type NftHost = Record<string, string | undefined>;

/** What `nft -j -i` prints for `commands` on `host`: a document per command answered, an error per other. */
function answer(host: NftHost, commands: string[]): { stdout: string; stderr: string } {
  const stdout = commands.flatMap((c) => host[c] === undefined ? [] : [host[c]]);
  const stderr = commands.filter((c) => host[c] === undefined).map(missing);
  return { stdout: stdout.map((d) => `${d}\n`).join(""), stderr: stderr.join("") };
}

/** An iptables-nft host where vm1 has IPv4 forwards live (documents captured from nft 1.0.6). */
const VM1_HOST: NftHost = {
  "list chains": doc(
    chain("ip", "nat", "PREROUTING"),
    chain("ip", "nat", `LVH-${H}-DNAT`),
    chain("ip", "nat", `LVH-${H}-SNAT`),
    chain("ip", "nat", `LVH-${domainHash("other")}-DNAT`),
    chain("ip", "filter", `LVH-${H}-FWD`),
    chain("ip", "filter", "LVH-FORWARD"),
    chain("ip", "filter", "LIBVIRT_FWI"),
  ),
  "list chain ip nat PREROUTING": doc(
    jump("ip", "nat", "PREROUTING", `LVH-${H}-DNAT`, 101),
    jump("ip", "nat", "PREROUTING", "DOCKER"),
  ),
  "list chain ip nat OUTPUT": doc(jump("ip", "nat", "OUTPUT", `LVH-${H}-DNAT`, 102)),
  "list chain ip nat POSTROUTING": doc(
    jump("ip", "nat", "POSTROUTING", `LVH-${H}-SNAT`, 103),
    jump("ip", "nat", "POSTROUTING", "LVH-0000-SNAT"),
  ),
  "list chain ip filter FORWARD": doc(jump("ip", "filter", "FORWARD", "LVH-FORWARD", 104)),
  "list chain ip filter LVH-FORWARD": doc(jump("ip", "filter", "LVH-FORWARD", `LVH-${H}-FWD`, 105)),
};

/** The same host with nothing of vm1: only `list chains` and the chains of iptables' nat and filter tables. */
const EMPTY_HOST: NftHost = {
  "list chains": doc(chain("ip", "nat", "PREROUTING")),
  "list chain ip nat PREROUTING": doc(),
  "list chain ip nat OUTPUT": doc(),
  "list chain ip nat POSTROUTING": doc(),
  "list chain ip filter FORWARD": doc(),
};

/** The commands of the read that lists the jumps too (a removal). */
const READ_WITH_JUMPS = [
  "list chains",
  ...["ip", "ip6"].flatMap((f) =>
    ["nat PREROUTING", "nat OUTPUT", "nat POSTROUTING", "filter FORWARD"].map((c) => `list chain ${f} ${c}`)
  ),
  "list table inet libvirt_hook_qemu",
  "list chain ip libvirt_network guest_input",
  "list chain ip6 libvirt_network guest_input",
  // Whether the administrator's chain is empty: a removal of our last domain takes an empty one with it.
  "list chain ip filter LVH-USER",
  "list chain ip filter LVH-FORWARD",
  "list chain ip6 filter LVH-USER",
  "list chain ip6 filter LVH-FORWARD",
];

const VM1_LIVE = answer(VM1_HOST, READ_WITH_JUMPS);

/** iptables-save of VM1_LIVE's host: what the whole read sees. */
const VM1_SAVE = dedent(`
  *nat
  :PREROUTING ACCEPT [0:0]
  :LVH-${H}-DNAT - [0:0]
  :LVH-${H}-SNAT - [0:0]
  -A PREROUTING -m comment --comment "libvirt-hook-qemu:1:vm1" -j LVH-${H}-DNAT
  -A PREROUTING -j DOCKER
  -A OUTPUT -m comment --comment "libvirt-hook-qemu:1:vm1" -j LVH-${H}-DNAT
  -A POSTROUTING -m comment --comment "libvirt-hook-qemu:1:vm1" -j LVH-${H}-SNAT
  -A LVH-${H}-DNAT -d 203.0.113.1/32 -p tcp -m tcp --dport 2222 -m comment --comment "libvirt-hook-qemu:1:vm1" -j DNAT --to-destination 192.168.122.10:22
  COMMIT
  *filter
  :FORWARD ACCEPT [0:0]
  :LIBVIRT_FWI - [0:0]
  :LVH-${H}-FWD - [0:0]
  :LVH-FORWARD - [0:0]
  -A FORWARD -m connlabel --label 127 -j LVH-FORWARD
  -A LVH-FORWARD -m comment --comment "libvirt-hook-qemu:1:vm1" -j LVH-${H}-FWD
  COMMIT
`);

Deno.test("parseInteractive() takes one document per listing and tolerates only what does not exist", () => {
  assert.deepEqual(parseInteractive(VM1_LIVE.stdout, VM1_LIVE.stderr)?.missing, [
    "list chain ip6 nat PREROUTING",
    "list chain ip6 nat OUTPUT",
    "list chain ip6 nat POSTROUTING",
    "list chain ip6 filter FORWARD",
    "list table inet libvirt_hook_qemu",
    "list chain ip libvirt_network guest_input",
    "list chain ip6 libvirt_network guest_input",
    "list chain ip filter LVH-USER",
    "list chain ip6 filter LVH-USER",
    "list chain ip6 filter LVH-FORWARD",
  ]);
  assert.equal(parseInteractive(VM1_LIVE.stdout, VM1_LIVE.stderr)?.docs.length, 6);
  // A build that prints its prompt before each answer.
  assert.deepEqual(parseInteractive(`nft> ${doc()}\nnft> \n`, "")?.docs, [doc()]);
  assert.equal(parseInteractive("", "Error: Could not process rule: Operation not permitted\n"), undefined);
});

Deno.test("ownChainsAndJumps() sees what iptables-save shows of a domain, but what is in its chains", () => {
  const [chains = [], ...listings] = parseInteractive(VM1_LIVE.stdout, VM1_LIVE.stderr)!.docs.map(nftItems);
  const quick = ownChainsAndJumps(chains, listings, "vm1");
  const whole = liveOf(parseSave(VM1_SAVE), "vm1");
  const sorted = (l: Live) => ({
    chains: l.chains.map((c) => `${c.table} ${c.chain}`).sort(),
    jumps: l.rules.filter((r) => !r.chain.startsWith("LVH-")).map((r) => `${r.table} ${r.chain} ${r.spec}`)
      .sort(),
  });
  assert.deepEqual(sorted(quick[4]), sorted(whole));
  assert.equal(quick[4].libvirt, true);
  // No ip6 table of iptables-nft's: nothing of the domain, and no table (a start there creates one).
  assert.deepEqual(quick[6], { chains: [], rules: [], tables: {}, user: false, gate: { chain: false } });
});

const FORWARD_VM1: Forward = {
  family: 4,
  protocol: "tcp",
  publicIp: "203.0.113.1",
  publicPort: 2222,
  privateIp: "192.168.122.10",
  privatePort: 22,
  count: 1,
  hairpinFrom: "192.168.122.0/24",
  interface: "virbr0",
};

/** What the whole read runs: iptables-save per family and three nft lists. */
// iptables-save per family; nft: our table, libvirt's chain per family, and every chain (the gates).
const WHOLE_READ = ["iptables-save", "ip6tables-save", "nft", "nft", "nft", "nft"];

/**
 * syncDomain() against a recording runner on an iptables-nft host: `host` answers nft -j -i (`reply` turns that
 * answer into what nft printed); `nftRefuses` makes nft -f fail.
 */
async function syncOnNft(
  forwards: Forward[],
  host: NftHost,
  { nftRefuses = false, reply = (a) => a }: {
    nftRefuses?: boolean;
    reply?: (a: { stdout: string; stderr: string }) => { stdout: string; stderr: string; code?: number };
  } = {},
) {
  const runner = recordingRunner((argv, stdin) => {
    if (argv.join(" ") === "nft -j -i") return { code: 0, ...reply(answer(host, stdin!.trim().split("\n"))) };
    if (argv.join(" ") === "nft -f -") {
      return nftRefuses
        ? { code: 1, stderr: "Error: Could not process rule: No such file or directory" }
        : {};
    }
    if (argv[0] === "iptables-save") return { stdout: VM1_SAVE };
    if (argv[0] === "nft") return { code: 1, stderr: "Error: No such file or directory\n" };
    return {};
  });
  const deps = {
    runner,
    tools: iptablesTools(),
    nft: "nft",
    iptablesNft: true,
    networkConf: "/nonexistent/network.conf",
    backend: "iptables" as const,
  };
  const changes = await syncDomain("vm1", deps, { forwards });
  return { changes, calls: runner.calls };
}

Deno.test("syncDomain() on iptables-nft: one nft look, then one batch", async (t) => {
  await t.step("a start with nothing live: no iptables-save, the whole batch of new rules", async () => {
    const { calls, changes } = await syncOnNft([FORWARD_VM1], EMPTY_HOST);
    assert.deepEqual(calls.map((c) => c.argv[0]), ["nft", "iptables-restore"]);
    assert.equal(calls[1]!.stdin, renderSync("vm1", { chains: [], rules: [] }, { forwards: [FORWARD_VM1] }));
    // Three rules, the jump to the administrator's LVH-USER, four jumps into our chains, and our gate's rule.
    assert.deepEqual(changes, [{ target: "iptables", removed: 0, added: 9 }]);
  });
  await t.step(
    "a stop: one nft transaction deletes the jumps read (by handle) and the chains, nothing else is read",
    async () => {
      const { calls, changes } = await syncOnNft([], VM1_HOST);
      assert.deepEqual(calls.map((c) => c.argv.join(" ")), ["nft -j -i", "nft -f -"]);
      assert.equal(
        calls[1]!.stdin,
        dedent(`
          delete rule ip nat PREROUTING handle 101
          delete rule ip nat OUTPUT handle 102
          delete rule ip nat POSTROUTING handle 103
          delete rule ip filter LVH-FORWARD handle 105
          delete rule ip filter FORWARD handle 104
          flush chain ip nat LVH-${H}-DNAT
          flush chain ip nat LVH-${H}-SNAT
          flush chain ip filter LVH-${H}-FWD
          flush chain ip filter LVH-FORWARD
          delete chain ip nat LVH-${H}-DNAT
          delete chain ip nat LVH-${H}-SNAT
          delete chain ip filter LVH-${H}-FWD
          delete chain ip filter LVH-FORWARD
        `),
      );
      // The 4 jumps and our gate's rule (vm1's was its last jump), and the 3 chains and the gate with whatever
      // they hold (never listed: ~0.1 ms a rule).
      assert.deepEqual(changes, [{ target: "iptables", removed: 5, added: 0, chains: 4 }]);
    },
  );
  await t.step("a stop with nothing live: no transaction at all", async () => {
    const { calls, changes } = await syncOnNft([], EMPTY_HOST);
    assert.deepEqual(calls.map((c) => c.argv.join(" ")), ["nft -j -i"]);
    assert.deepEqual(changes, []);
  });
  await t.step("a start over live chains reads them whole: rolling back needs what is in them", async () => {
    const { calls } = await syncOnNft([FORWARD_VM1], VM1_HOST);
    assert.deepEqual(calls.map((c) => c.argv[0]), ["nft", ...WHOLE_READ, "iptables-restore"]);
  });
  await t.step(
    "a stop that nft refuses (the firewall changed since the read): nothing changed, redone from a whole read",
    async () => {
      const { calls, changes } = await syncOnNft([], VM1_HOST, { nftRefuses: true });
      const programs = calls.map((c) => c.argv[0]);
      assert.deepEqual(programs, ["nft", "nft", ...WHOLE_READ, "iptables-restore"]);
      assert.equal(calls.at(-1)!.stdin, renderSync("vm1", liveOf(parseSave(VM1_SAVE), "vm1")));
      // Its 5 rules, and our gate's rule in FORWARD (vm1's jump was the last in it).
      assert.deepEqual(changes, [{ target: "iptables", removed: 6, added: 0 }]);
    },
  );
  await t.step("an nft without its interactive mode: the whole read", async () => {
    const { calls } = await syncOnNft([FORWARD_VM1], EMPTY_HOST, {
      reply: () => ({ code: 1, stdout: "", stderr: "Error: interactive CLI not supported in this build\n" }),
    });
    assert.deepEqual(calls.map((c) => c.argv[0]), ["nft", ...WHOLE_READ, "iptables-restore"]);
  });
  await t.step("an answer short of a listing: the whole read", async () => {
    const { calls } = await syncOnNft([], EMPTY_HOST, { reply: (a) => ({ ...a, stderr: "" }) });
    assert.equal(calls[1]!.argv[0], "iptables-save");
  });
  await t.step("an answer that is not JSON: the whole read", async () => {
    const { calls } = await syncOnNft([FORWARD_VM1], VM1_HOST, {
      reply: (a) => ({ ...a, stdout: a.stdout.replace('{"nftables"', '{"nftables": [broken') }),
    });
    assert.deepEqual(calls.map((c) => c.argv[0]), ["nft", ...WHOLE_READ, "iptables-restore"]);
  });
  await t.step(
    "a start lists no jumps; where the domain's chains are live, it reads everything",
    async () => {
      const fresh = await syncOnNft([FORWARD_VM1], EMPTY_HOST);
      assert.deepEqual(fresh.calls[0]!.stdin!.trim().split("\n"), [
        "list chains",
        "list table inet libvirt_hook_qemu",
        "list chain ip libvirt_network guest_input",
        "list chain ip6 libvirt_network guest_input",
      ]);
      const stop = await syncOnNft([], EMPTY_HOST);
      assert.deepEqual(stop.calls[0]!.stdin!.trim().split("\n"), READ_WITH_JUMPS);
    },
  );
  await t.step(
    "a removal from a read without jumps (a start that planned none) reads everything",
    async () => {
      const deps = {
        runner: recordingRunner((argv, stdin) => {
          if (argv.join(" ") === "nft -j -i") return answer(VM1_HOST, stdin!.trim().split("\n"));
          if (argv[0] === "iptables-save") return { stdout: VM1_SAVE };
          return argv[0] === "nft" ? { code: 1, stderr: "Error: No such file or directory\n" } : {};
        }),
        tools: iptablesTools(),
        nft: "nft",
        iptablesNft: true,
        networkConf: "/nonexistent/network.conf",
      };
      const read = readState(deps, { domain: "vm1", jumps: false });
      assert.equal((await read).scope, "chains, no jumps");
      await syncDomain("vm1", deps, { forwards: [], read });
      assert.deepEqual(deps.runner.calls.map((c) => c.argv[0]), ["nft", ...WHOLE_READ, "iptables-restore"]);
    },
  );
});
