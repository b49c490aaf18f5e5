/** Unit tests of the nftables backend: the exact commands, and how our accepts sit in libvirt's chains. */

import assert from "node:assert/strict";
import { loadParser, parseConfig } from "../config/validate.ts";
import { carriedDomain, domainHash } from "./names.ts";
import { planForwards } from "../rules.ts";
import { COUNTING, dedent, FACTS } from "../test/util.ts";
import {
  bridgesOf,
  holdsTheUsers,
  libvirtAccepts,
  nftBase,
  nftDomainObjects,
  nftRemoveDomain,
  nftRemoveIptables,
  nftSnatObjects,
} from "./nftables.ts";
import {
  emptyNftLive,
  liveAccepts,
  nftBridges,
  type NftLive,
  nftLiveForwards,
  parseNftJson,
} from "./nftables_live.ts";
import { describeForward, describePlan } from "./forward.ts";
import { nftCommands } from "./nftables_backend.ts";
import type { ApplyDeps } from "./state.ts";

await loadParser();

const EXAMPLE = await Deno.readTextFile(new URL("../hooks.jsonc", import.meta.url));

function forwards(text: string, domain: string) {
  return planForwards(parseConfig(text, "hooks.jsonc").domains.get(domain)!, FACTS).forwards;
}

Deno.test("nftDomainObjects() renders the example config: maps for pairs found through the dispatch map, rules for ranges and sources, the hairpin labelled", () => {
  const f = forwards(EXAMPLE.replace(/"source_ip".*\n/, ""), "web1");
  const p = `d${domainHash("web1")}`;
  const c = 'comment "libvirt-hook-qemu:1:web1"';
  assert.equal(
    [...nftBase(), ...nftDomainObjects("web1", f, { bridges: bridgesOf(f, FACTS.connected) })].join("\n") +
      "\n",
    dedent(`
      add table inet libvirt_hook_qemu
      add map inet libvirt_hook_qemu dispatch4 { type ipv4_addr . inet_proto . inet_service : verdict; }
      add map inet libvirt_hook_qemu dispatch6 { type ipv6_addr . inet_proto . inet_service : verdict; }
      add chain inet libvirt_hook_qemu dispatch { type nat hook prerouting priority dstnat - 1; policy accept; }
      flush chain inet libvirt_hook_qemu dispatch
      add rule inet libvirt_hook_qemu dispatch ip daddr . meta l4proto . th dport vmap @dispatch4
      add rule inet libvirt_hook_qemu dispatch ip6 daddr . meta l4proto . th dport vmap @dispatch6
      add chain inet libvirt_hook_qemu dispatch_out { type nat hook output priority -101; policy accept; }
      flush chain inet libvirt_hook_qemu dispatch_out
      add rule inet libvirt_hook_qemu dispatch_out ip daddr . meta l4proto . th dport vmap @dispatch4
      add rule inet libvirt_hook_qemu dispatch_out ip6 daddr . meta l4proto . th dport vmap @dispatch6
      add chain inet libvirt_hook_qemu prerouting { type nat hook prerouting priority dstnat; policy accept; }
      add chain inet libvirt_hook_qemu output { type nat hook output priority -100; policy accept; }
      add chain inet libvirt_hook_qemu hairpin { type nat hook postrouting priority srcnat - 1; policy accept; }
      flush chain inet libvirt_hook_qemu hairpin
      add rule inet libvirt_hook_qemu hairpin ct label 126 masquerade
      add chain inet libvirt_hook_qemu user_forward { type filter hook forward priority -10; policy accept; }
      add map inet libvirt_hook_qemu ${p}-dnat4 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; counter; elements = { 203.0.113.7 . tcp . 2222 : 192.168.122.10 . 22, 203.0.113.7 . tcp . 443 : 192.168.122.10 . 443, 203.0.113.7 . udp . 51820 : 192.168.122.10 . 51820 }; }
      add set inet libvirt_hook_qemu ${p}-pub4 { type ipv4_addr . inet_proto . inet_service; elements = { 203.0.113.7 . tcp . 2222, 203.0.113.7 . tcp . 443, 203.0.113.7 . udp . 51820 }; }
      add set inet libvirt_hook_qemu ${p}-br4 { type ifname; elements = { "virbr0" }; }
      add chain inet libvirt_hook_qemu ${p}-dnat
      add rule inet libvirt_hook_qemu ${p}-dnat ip saddr 192.168.122.0/24 ip daddr . meta l4proto . th dport @${p}-pub4 ct label set 126 ${c}
      add rule inet libvirt_hook_qemu ${p}-dnat ip daddr . meta l4proto . th dport @${p}-pub4 ct label set 127 dnat ip to ip daddr . meta l4proto . th dport map @${p}-dnat4 ${c}
      add rule inet libvirt_hook_qemu ${p}-dnat ip saddr 192.168.122.0/24 ip daddr 203.0.113.7 udp dport 30000-30099 ct label set 126 ${c}
      add rule inet libvirt_hook_qemu ${p}-dnat ip daddr 203.0.113.7 udp dport 30000-30099 ct label set 127 counter dnat ip to 192.168.122.10 ${c}
      add element inet libvirt_hook_qemu dispatch4 { 203.0.113.7 . tcp . 2222 : jump ${p}-dnat, 203.0.113.7 . tcp . 443 : jump ${p}-dnat, 203.0.113.7 . udp . 51820 : jump ${p}-dnat }
      insert rule inet libvirt_hook_qemu prerouting jump ${p}-dnat ${c}
      insert rule inet libvirt_hook_qemu output jump ${p}-dnat ${c}
    `),
  );
});

Deno.test("nftDomainObjects() restricts sources rule by rule, IPv6 with brackets", () => {
  const f = forwards(
    `{"v6": {"private_ip": "fd00:122::10", "public_ip": "2001:db8:1::7", "source_ip": "2001:db8:99::/48",
    "port_map": {"tcp": [[2222, 22]]}}}`,
    "v6",
  );
  const lines = nftDomainObjects("v6", f);
  assert.ok(lines.includes(
    `add rule inet libvirt_hook_qemu d${
      domainHash("v6")
    }-dnat ip6 saddr 2001:db8:99::/48 ip6 daddr 2001:db8:1::7 ` +
      `tcp dport 2222 ct label set 127 counter dnat ip6 to [fd00:122::10]:22 comment "libvirt-hook-qemu:1:v6"`,
  ));
});

/** A live state as `nft -j list` gives it: our table with one domain, and libvirt's guest_input. */
function live(libvirtRules: { handle: number; comment?: string; oif?: string }[]): NftLive {
  const p = `d${domainHash("web1")}`;
  const rule = (chain: string, handle: number, extra: object) => ({
    rule: { family: "inet", table: "libvirt_hook_qemu", chain, handle, ...extra },
  });
  return parseNftJson(JSON.stringify({
    nftables: [
      { table: { family: "inet", name: "libvirt_hook_qemu", handle: 1 } },
      { chain: { family: "inet", table: "libvirt_hook_qemu", name: "prerouting", handle: 1 } },
      { chain: { family: "inet", table: "libvirt_hook_qemu", name: `${p}-dnat`, handle: 5 } },
      { map: { family: "inet", table: "libvirt_hook_qemu", name: `${p}-dnat4`, handle: 6 } },
      { set: { family: "inet", table: "libvirt_hook_qemu", name: `${p}-br4`, handle: 7, elem: ["virbr0"] } },
      rule("prerouting", 9, {
        comment: "libvirt-hook-qemu:1:web1",
        expr: [{ jump: { target: `${p}-dnat` } }],
      }),
      { chain: { family: "ip", table: "libvirt_network", name: "guest_input", handle: 3 } },
      ...libvirtRules.map((r) => ({
        rule: {
          family: "ip",
          table: "libvirt_network",
          chain: "guest_input",
          handle: r.handle,
          ...(r.comment ? { comment: r.comment } : {}),
          expr: [{
            match: { left: { meta: { key: r.comment ? "oifname" : "oif" } }, right: r.oif ?? "virbr0" },
          }],
        },
      })),
    ],
  }));
}

Deno.test("nftRemoveDomain() deletes the domain's jumps by handle, then its chains, maps and sets", () => {
  const p = `d${domainHash("web1")}`;
  const t = "inet libvirt_hook_qemu";
  assert.deepEqual(nftRemoveDomain("web1", live([]), { keepTable: true }), [
    `delete rule ${t} prerouting handle 9`,
    `flush chain ${t} ${p}-dnat`,
    `delete chain ${t} ${p}-dnat`,
    `delete map ${t} ${p}-dnat4`,
    `delete set ${t} ${p}-br4`,
  ]);
  // The last domain takes the table with it, so stop leaves nothing behind.
  assert.deepEqual(nftRemoveDomain("web1", live([])), [`delete table ${t}`]);
  assert.deepEqual(nftRemoveDomain("web1", emptyNftLive()), []);
});

Deno.test("nftRemoveDomain() keeps our table while the administrator's user_forward holds a ban or a set", async (t) => {
  const p = `d${domainHash("web1")}`;
  const tbl = "inet libvirt_hook_qemu";
  const mine = [
    `delete rule ${tbl} prerouting handle 9`,
    `flush chain ${tbl} ${p}-dnat`,
    `delete chain ${tbl} ${p}-dnat`,
    `delete map ${tbl} ${p}-dnat4`,
    `delete set ${tbl} ${p}-br4`,
  ];
  const chain = { family: "inet", table: "libvirt_hook_qemu", name: "user_forward", handle: 20 };
  const cases: [string, Record<string, unknown>[], string[]][] = [
    ["an empty user_forward goes with the table", [{ chain }], [`delete table ${tbl}`]],
    ["a ban in user_forward (no comment of ours) keeps the table; the ban is untouched", [{ chain }, {
      rule: { family: "inet", table: "libvirt_hook_qemu", chain: "user_forward", handle: 21, expr: [] },
    }], mine],
    ["fail2ban's set (its nftables action) keeps the table", [{ chain }, {
      set: { family: "inet", table: "libvirt_hook_qemu", name: "addr-set-sshd", handle: 22 },
    }], mine],
  ];
  for (const [name, items, expected] of cases) {
    await t.step(name, () => {
      const state = live([]);
      parseNftJson(JSON.stringify({ nftables: items }), state);
      assert.deepEqual(nftRemoveDomain("web1", state), expected);
      assert.equal(holdsTheUsers(state), expected !== cases[0]![2]);
    });
  }
});

Deno.test("nftRemoveIptables() deletes a domain's jumps by handle, then empties and deletes its chains", () => {
  const jump = (table: string, chain: string, handle?: number) => ({
    table,
    chain,
    spec: "",
    owner: "h",
    ...(handle === undefined ? {} : { handle }),
  });
  const live = {
    4: {
      chains: [{ table: "nat", chain: "LVH-h-DNAT", owner: "h" }],
      rules: [jump("nat", "PREROUTING", 7), jump("nat", "OUTPUT", 9)],
    },
    6: {
      chains: [{ table: "filter", chain: "LVH-h-FWD", owner: "h" }],
      rules: [jump("filter", "FORWARD", 3)],
    },
  };
  assert.deepEqual(nftRemoveIptables(live), [
    "delete rule ip nat PREROUTING handle 7",
    "delete rule ip nat OUTPUT handle 9",
    "flush chain ip nat LVH-h-DNAT",
    "delete chain ip nat LVH-h-DNAT",
    "delete rule ip6 filter FORWARD handle 3",
    "flush chain ip6 filter LVH-h-FWD",
    "delete chain ip6 filter LVH-h-FWD",
  ]);
  assert.deepEqual(nftRemoveIptables({ 4: { chains: [], rules: [] }, 6: { chains: [], rules: [] } }), []);
  // A jump read without its handle (iptables-save) cannot be deleted exactly this way.
  assert.equal(nftRemoveIptables({ ...live, 4: { chains: [], rules: [jump("nat", "OUTPUT")] } }), undefined);
});

Deno.test("libvirtAccepts() keeps our accepts in front of libvirt's reject, and touches nothing of libvirt's", async (t) => {
  const wanted = new Map([["web1", { 4: ["virbr0"], 6: [] }]]);
  const accept =
    'insert rule ip libvirt_network guest_input oifname "virbr0" ct status dnat counter accept ' +
    'comment "libvirt-hook-qemu:1:web1:accept"';
  await t.step("missing: inserted at the top", () => {
    assert.deepEqual(libvirtAccepts(live([{ handle: 10 }, { handle: 11 }]), wanted), [accept]);
  });
  await t.step("already first: nothing to do", () => {
    const l = live([{ handle: 12, comment: "libvirt-hook-qemu:1:web1:accept" }, { handle: 10 }, {
      handle: 11,
    }]);
    assert.deepEqual(libvirtAccepts(l, wanted), []);
  });
  await t.step("pushed below libvirt's rules by a restart: moved back to the top, by handle", () => {
    const l = live([{ handle: 20 }, { handle: 12, comment: "libvirt-hook-qemu:1:web1:accept" }, {
      handle: 21,
    }]);
    assert.deepEqual(libvirtAccepts(l, wanted), [
      "delete rule ip libvirt_network guest_input handle 12",
      accept,
    ]);
  });
  await t.step("no longer wanted: deleted by handle", () => {
    const l = live([{ handle: 12, comment: "libvirt-hook-qemu:1:web1:accept" }, { handle: 10 }]);
    assert.deepEqual(libvirtAccepts(l, new Map()), ["delete rule ip libvirt_network guest_input handle 12"]);
  });
  await t.step("no libvirt table: nothing", () => {
    assert.deepEqual(libvirtAccepts(emptyNftLive(), wanted), []);
  });
  await t.step("a name too long for a comment: carried by its hash, and its accept goes when it goes", () => {
    const name = "名前".repeat(60);
    const comment = `libvirt-hook-qemu:1:#${domainHash(name)}:accept`;
    const l = live([{ handle: 12, comment }, { handle: 10 }]);
    const read = liveAccepts(l);
    assert.deepEqual([...read.keys()], [carriedDomain(name)]);
    // What start writes for it is what is read back: nothing to do while it runs...
    assert.deepEqual(libvirtAccepts(l, new Map([[carriedDomain(name), { 4: ["virbr0"], 6: [] }]])), []);
    // ...and its accept is deleted by handle when it stops.
    read.delete(carriedDomain(name));
    assert.deepEqual(libvirtAccepts(l, read), ["delete rule ip libvirt_network guest_input handle 12"]);
  });
  await t.step("read back: which domain, which bridge", () => {
    const l = live([{ handle: 12, comment: "libvirt-hook-qemu:1:web1:accept" }]);
    assert.deepEqual([...liveAccepts(l)], [["web1", { 4: ["virbr0"], 6: [] }]]);
    assert.deepEqual([...nftBridges(l)], [["web1", { 4: ["virbr0"], 6: [] }]]);
  });
});

Deno.test("nftDomainObjects() maps a range to other ports of the guest port by port (nft has no offset)", () => {
  const f = forwards(
    `{"shift": {"private_ip": "192.168.122.10", "public_ip": "203.0.113.7",
      "port_range": [{"init_port": 30000, "ports_num": 3, "protocol": "tcp", "to_port": 40000}]}}`,
    "shift",
  );
  const p = `d${domainHash("shift")}`;
  const c = 'comment "libvirt-hook-qemu:1:shift"';
  const rules = nftDomainObjects("shift", f).filter((l) => l.startsWith("add rule"));
  assert.deepEqual(rules, [
    `add rule inet libvirt_hook_qemu ${p}-dnat ip saddr 192.168.122.0/24 ip daddr 203.0.113.7 tcp dport 30000-30002 ` +
    `ct label set 126 ${c}`,
    `add rule inet libvirt_hook_qemu ${p}-dnat ip daddr 203.0.113.7 tcp dport 30000-30002 ct label set 127 counter dnat ip to tcp dport map ` +
    `{ 30000 : 192.168.122.10 . 40000, 30001 : 192.168.122.10 . 40001, 30002 : 192.168.122.10 . 40002 } ${c}`,
  ]);
});

const nftHere = Deno.uid() === 0 &&
  (await new Deno.Command("unshare", {
    args: ["-n", "nft", "list", "ruleset"],
    stdout: "null",
    stderr: "null",
  })
    .output().then((o) => o.success, () => false));
if (!nftHere) console.log("skipping the nft read-back of a shifted range: needs root, unshare and nft");

Deno.test({
  name: "nftLiveForwards() reads a shifted range back from what the real nft lists, as it was planned",
  ignore: !nftHere,
  async fn() {
    const f = forwards(
      `{"shift": {"private_ip": "192.168.122.10", "private_ipv6": "fd00:122::10", "public_ip": "203.0.113.7",
        "public_ipv6": "2001:db8:1::7",
        "port_range": [{"init_port": 30000, "ports_num": 3, "protocol": "tcp", "to_port": 40000}]}}`,
      "shift",
    );
    // In a network namespace of its own: nothing of this machine's firewall is touched.
    const batch = [...nftBase(), ...nftDomainObjects("shift", f)].join("\n");
    const script = `nft -f - <<'EOF'\n${batch}\nEOF\nnft -j list table inet libvirt_hook_qemu`;
    const out = await new Deno.Command("unshare", {
      args: ["-n", "sh", "-c", script],
      stdout: "piped",
      stderr: "piped",
    })
      .output();
    assert.ok(out.success, new TextDecoder().decode(out.stderr));
    const live = parseNftJson(new TextDecoder().decode(out.stdout));
    assert.deepEqual(nftLiveForwards(live).map(describeForward), [
      "tcp 203.0.113.7:30000-30002 -> 192.168.122.10:40000-40002",
      "tcp [2001:db8:1::7]:30000-30002 -> [fd00:122::10]:40000-40002",
    ]);
  },
});

/** A forward on "*" from one interface with a description, and an IPv6 one on "*": what the next tests render. */
const LISTEN = `{"web": [
  {"private_ip": "192.168.122.10", "public_ip": "*", "dev": "eth1", "description": "web shop",
   "port_map": {"tcp": [[8080, 80]]}},
  {"private_ip": "fd00:122::10", "public_ip": "*", "port_map": {"udp": [53]}},
  {"private_ip": "192.168.122.10", "public_ip": "203.0.113.7", "port_map": {"tcp": [22]}}]}`;

Deno.test('nftDomainObjects() gives a forward on "*", on one interface or named a rule of its own, named by its comment', () => {
  const p = `d${domainHash("web")}`;
  const c = 'comment "libvirt-hook-qemu:1:web"';
  const rules = nftDomainObjects("web", forwards(LISTEN, "web")).filter((l) => / (map|rule) /.test(l));
  // The plain forward stays in the map; the others match `fib daddr type local` (loopback excluded) and iifname.
  assert.deepEqual(rules, [
    `add map inet libvirt_hook_qemu ${p}-dnat4 { type ipv4_addr . inet_proto . inet_service : ipv4_addr . ` +
    "inet_service; counter; elements = { 203.0.113.7 . tcp . 22 : 192.168.122.10 . 22 }; }",
    `add rule inet libvirt_hook_qemu ${p}-dnat ip saddr 192.168.122.0/24 ip daddr . meta l4proto . th dport ` +
    `@${p}-pub4 ct label set 126 ${c}`,
    `add rule inet libvirt_hook_qemu ${p}-dnat ip daddr . meta l4proto . th dport @${p}-pub4 ct label set 127 ` +
    `dnat ip to ip daddr . meta l4proto . th dport map @${p}-dnat4 ${c}`,
    `add rule inet libvirt_hook_qemu ${p}-dnat ip saddr 192.168.122.0/24 fib daddr type local ip daddr != ` +
    `127.0.0.0/8 iifname "eth1" tcp dport 8080 ct label set 126 ${c}`,
    `add rule inet libvirt_hook_qemu ${p}-dnat fib daddr type local ip daddr != 127.0.0.0/8 iifname "eth1" ` +
    'tcp dport 8080 ct label set 127 counter dnat ip to 192.168.122.10:80 comment "web shop"',
    `add rule inet libvirt_hook_qemu ${p}-dnat ip6 saddr fd00:122::/64 fib daddr type local ip6 daddr != ::1 ` +
    `udp dport 53 ct label set 126 ${c}`,
    `add rule inet libvirt_hook_qemu ${p}-dnat fib daddr type local ip6 daddr != ::1 udp dport 53 ` +
    `ct label set 127 counter dnat ip6 to [fd00:122::10]:53 ${c}`,
    `insert rule inet libvirt_hook_qemu prerouting jump ${p}-dnat ${c}`,
    `insert rule inet libvirt_hook_qemu output jump ${p}-dnat ${c}`,
  ]);
});

Deno.test({
  name: 'nftLiveForwards() reads "*", the interface and the description back from what the real nft lists',
  ignore: !nftHere,
  async fn() {
    const f = forwards(LISTEN, "web");
    // In a network namespace of its own: nothing of this machine's firewall is touched.
    const batch = [...nftBase(), ...nftDomainObjects("web", f)].join("\n");
    const script = `nft -f - <<'EOF'\n${batch}\nEOF\nnft -j list table inet libvirt_hook_qemu`;
    const out = await new Deno.Command("unshare", {
      args: ["-n", "sh", "-c", script],
      stdout: "piped",
      stderr: "piped",
    })
      .output();
    assert.ok(out.success, new TextDecoder().decode(out.stderr));
    const live = nftLiveForwards(parseNftJson(new TextDecoder().decode(out.stdout))).map(describeForward);
    assert.deepEqual(live, [
      "tcp 203.0.113.7:22 -> 192.168.122.10:22",
      'tcp *:8080 -> 192.168.122.10:80 on eth1 "web shop"',
      "udp [*]:53 -> [fd00:122::10]:53",
    ]);
    assert.deepEqual([...live].sort(), describePlan("web", { forwards: f, snats: [] }).sort());
  },
});

Deno.test("nftDomainObjects() sends every port of an all_ports address to the guest, after returning those others take", () => {
  const f = forwards(
    `{"vm": {"private_ip": "192.168.122.10", "public_ip": "203.0.113.9", "all_ports": true},
      "mail": {"private_ip": "192.168.122.11", "public_ip": "203.0.113.9", "port_map": {"tcp": [25, 587]},
               "port_range": [{"init_port": 1000, "ports_num": 10, "protocol": "udp"}]}}`,
    "vm",
  );
  const p = `d${domainHash("vm")}`;
  const c = 'comment "libvirt-hook-qemu:1:vm"';
  assert.deepEqual(
    nftDomainObjects("vm", f).filter((l) => l.startsWith(`add rule inet libvirt_hook_qemu ${p}-dnat`)),
    [
      `add rule inet libvirt_hook_qemu ${p}-dnat ip daddr 203.0.113.9 tcp dport { 25, 587 } return ${c}`,
      `add rule inet libvirt_hook_qemu ${p}-dnat ip saddr 192.168.122.0/24 ip daddr 203.0.113.9 tcp dport 1-65535 ct label set 126 ${c}`,
      `add rule inet libvirt_hook_qemu ${p}-dnat ip daddr 203.0.113.9 tcp dport 1-65535 ct label set 127 counter dnat ip to 192.168.122.10 ${c}`,
      `add rule inet libvirt_hook_qemu ${p}-dnat ip daddr 203.0.113.9 udp dport { 1000-1009 } return ${c}`,
      `add rule inet libvirt_hook_qemu ${p}-dnat ip saddr 192.168.122.0/24 ip daddr 203.0.113.9 udp dport 1-65535 ct label set 126 ${c}`,
      `add rule inet libvirt_hook_qemu ${p}-dnat ip daddr 203.0.113.9 udp dport 1-65535 ct label set 127 counter dnat ip to 192.168.122.10 ${c}`,
    ],
  );
});

Deno.test("nftSnatObjects() puts a guest's outbound NAT in a chain our base chain `outbound` jumps to, ahead of libvirt's", () => {
  const { snats } = planForwards(
    parseConfig(
      `{"mail": {"private_ip": "192.168.122.10", "public_ip": "203.0.113.9", "private_ipv6": "fd00:122::10",
        "public_ipv6": "2001:db8:1::9", "snat": true}}`,
      "hooks.jsonc",
    ).domains.get("mail")!,
    FACTS,
  );
  const p = `d${domainHash("mail")}`;
  const c = 'comment "libvirt-hook-qemu:1:mail"';
  const t = "inet libvirt_hook_qemu";
  // Without forwards, nftDomainObjects() gives the NAT alone.
  assert.deepEqual(nftDomainObjects("mail", [], { snats }), [
    `add chain ${t} outbound { type nat hook postrouting priority srcnat - 5; policy accept; }`,
    `add chain ${t} ${p}-out`,
    `add rule ${t} ${p}-out ip saddr 192.168.122.10 ip daddr != 192.168.122.0/24 ip daddr != 224.0.0.0/24 ` +
    `ip daddr != 255.255.255.255 snat ip to 203.0.113.9 ${c}`,
    `add rule ${t} ${p}-out ip6 saddr fd00:122::10 ip6 daddr != fd00:122::/64 ip6 daddr != ff00::/8 ` +
    `snat ip6 to 2001:db8:1::9 ${c}`,
    `insert rule ${t} outbound jump ${p}-out ${c}`,
  ]);
  assert.deepEqual(nftSnatObjects("mail", []), []);
});

Deno.test('nftDomainObjects() logs each new connection of a "log" entry, rate-limited, ahead of the lookups', () => {
  const f = forwards(
    `{"web1": {"private_ip": "192.168.122.10", "public_ip": "203.0.113.7", "log": true,
               "port_map": {"tcp": [[2222, 22]]}, "port_range": [{"init_port": 3000, "ports_num": 2, "protocol": "udp"}]}}`,
    "web1",
  );
  const p = `d${domainHash("web1")}`;
  const c = 'comment "libvirt-hook-qemu:1:web1"';
  const rules = nftDomainObjects("web1", f).filter((l) =>
    l.startsWith(`add rule inet libvirt_hook_qemu ${p}-dnat `)
  );
  assert.deepEqual(rules.map((l) => l.slice(`add rule inet libvirt_hook_qemu ${p}-dnat `.length)), [
    `ip daddr 203.0.113.7 tcp dport 2222 limit rate 10/minute burst 5 packets log prefix "lvh web1 tcp/2222: " ${c}`,
    `ip saddr 192.168.122.0/24 ip daddr . meta l4proto . th dport @${p}-pub4 ct label set 126 ${c}`,
    `ip daddr . meta l4proto . th dport @${p}-pub4 ct label set 127 dnat ip to ip daddr . meta l4proto . th dport ` +
    `map @${p}-dnat4 ${c}`,
    `ip daddr 203.0.113.7 udp dport 3000-3001 limit rate 10/minute burst 5 packets log prefix "lvh web1 udp/3000: " ${c}`,
    `ip saddr 192.168.122.0/24 ip daddr 203.0.113.7 udp dport 3000-3001 ct label set 126 ${c}`,
    `ip daddr 203.0.113.7 udp dport 3000-3001 ct label set 127 counter dnat ip to 192.168.122.10 ${c}`,
  ]);
});

/** Our table as `nft -j` lists it, with its objects (`map` or `set`: `name`, `elem`), each with a handle. */
function tableListing(objects: { kind: "map" | "set"; name: string; elem: unknown[] }[]): NftLive {
  return parseNftJson(JSON.stringify({
    nftables: [
      { table: { family: "inet", name: "libvirt_hook_qemu", handle: 1 } },
      ...objects.map(({ kind, name, elem }, i) => ({
        [kind]: { family: "inet", table: "libvirt_hook_qemu", name, handle: i + 2, elem },
      })),
    ],
  }));
}

/** A set or map element as nft -j lists it where its set counts: its key with its counter. */
const counted = (val: unknown, packets: number, bytes: number) => ({
  elem: { val, counter: { packets, bytes } },
});

Deno.test("nftLiveForwards() reads each plain forward's new connections from its map element's counter", () => {
  const live = tableListing([{
    kind: "map",
    name: `d${domainHash("web1")}-dnat4`,
    elem: [
      [counted({ concat: ["203.0.113.7", "tcp", 2222] }, 3, 180), { concat: ["192.168.122.10", 22] }],
      // A map made before counters: its forward has none.
      [{ concat: ["203.0.113.7", "tcp", 443] }, { concat: ["192.168.122.10", 443] }],
    ],
  }]);
  assert.deepEqual(
    nftLiveForwards(live).map((f) => [describeForward(f), f.counters]),
    [
      ["tcp 203.0.113.7:2222 -> 192.168.122.10:22", { connections: 3 }],
      ["tcp 203.0.113.7:443 -> 192.168.122.10:443", undefined],
    ],
  );
});

Deno.test("nftCommands(): the domains of our table share one accept per bridge in libvirt's chain", async (t) => {
  const deps = { connected: [], setMembers: () => [] } as unknown as ApplyDeps;
  const shared = 'comment "libvirt-hook-qemu:1:accept"';
  const accepts = (commands: string[]) => commands.filter((c) => c.includes("libvirt_network"));
  const web2 = forwards(
    `{"web2": {"private_ip": "192.168.122.20", "public_ip": "203.0.113.7", "port_map": {"tcp": [[8022, 22]]}}}`,
    "web2",
  );
  const start = (l: NftLive) =>
    nftCommands("web2", { ours: web2, snats: [], bridges: () => ({ 4: ["virbr0"], 6: [] }) }, {
      live: l,
      deps,
    });
  const stop = (domain: string, l: NftLive) =>
    nftCommands(domain, { ours: [], snats: [], bridges: () => undefined }, { live: l, deps });
  // web1 is in our table (its bridge set names virbr0); `libvirt`: what libvirt's guest_input holds.
  const withWeb2 = (l: NftLive) => {
    l.sets.push({ name: `d${domainHash("web2")}-br4`, elem: ["virbr0"] });
    return l;
  };
  await t.step("a second domain on the same bridge: the accept there serves it, nothing is added", () => {
    assert.deepEqual(
      accepts(start(live([{ handle: 12, comment: "libvirt-hook-qemu:1:accept" }, { handle: 10 }]))),
      [],
    );
  });
  await t.step("the first domain: one accept, named by no domain, on top", () => {
    assert.deepEqual(accepts(start(live([{ handle: 10 }]))), [
      `insert rule ip libvirt_network guest_input oifname "virbr0" ct status dnat counter accept ${shared}`,
    ]);
  });
  await t.step("a domain stops while another of our table uses the bridge: the accept stays", () => {
    const l = withWeb2(live([{ handle: 12, comment: "libvirt-hook-qemu:1:accept" }, { handle: 10 }]));
    assert.deepEqual(accepts(stop("web1", l)), []);
  });
  await t.step("the last domain on the bridge stops: the accept goes, by handle", () => {
    const l = live([{ handle: 12, comment: "libvirt-hook-qemu:1:accept" }, { handle: 10 }]);
    assert.deepEqual(accepts(stop("web1", l)), ["delete rule ip libvirt_network guest_input handle 12"]);
  });
  await t.step(
    "an accept of one domain (an earlier version's, or of iptables' forwards) stays its own",
    () => {
      const l = live([{ handle: 13, comment: "libvirt-hook-qemu:1:web1:accept" }, { handle: 10 }]);
      const out = accepts(start(l));
      assert.ok(out.includes("delete rule ip libvirt_network guest_input handle 13"), out.join("\n"));
      assert.deepEqual(out.filter((c) => c.startsWith("insert")).map((c) => c.split(" comment ")[1]).sort(), [
        '"libvirt-hook-qemu:1:accept"',
        '"libvirt-hook-qemu:1:web1:accept"',
      ]);
    },
  );
});

Deno.test("nftDomainObjects(): plain pairs need no jump of the domain's in our base chains; its removal takes its dispatch elements first", () => {
  const f = forwards(
    `{"web2": {"private_ip": "192.168.122.20", "public_ip": "203.0.113.7", "port_map": {"tcp": [[8022, 22], 8080]}}}`,
    "web2",
  );
  const p = `d${domainHash("web2")}`;
  const t = "inet libvirt_hook_qemu";
  const lines = nftDomainObjects("web2", f);
  assert.deepEqual(lines.filter((l) => / (prerouting|output) /.test(l)), []);
  assert.ok(lines.includes(
    `add element ${t} dispatch4 { 203.0.113.7 . tcp . 8022 : jump ${p}-dnat, 203.0.113.7 . tcp . 8080 : jump ${p}-dnat }`,
  ));
  // As nft -j lists the table with web2 and another domain running: only web2's elements go, before its chain.
  const other = `d${domainHash("web3")}-dnat`;
  const l = emptyNftLive();
  l.table = true;
  l.chains.push(`${p}-dnat`, other);
  l.maps.push({
    name: "dispatch4",
    elem: [
      [{ concat: ["203.0.113.7", "tcp", 8022] }, { jump: { target: `${p}-dnat` } }],
      [{ concat: ["203.0.113.8", "tcp", 22] }, { jump: { target: other } }],
      [{ concat: ["203.0.113.7", "tcp", 8080] }, { jump: { target: `${p}-dnat` } }],
    ],
  });
  assert.deepEqual(nftRemoveDomain("web2", l), [
    `delete element ${t} dispatch4 { 203.0.113.7 . tcp . 8022, 203.0.113.7 . tcp . 8080 }`,
    `flush chain ${t} ${p}-dnat`,
    `delete chain ${t} ${p}-dnat`,
  ]);
});

Deno.test('nftDomainObjects() counts a "counters" entry\'s packets and bytes by a set lookup in base chain traffic', () => {
  const f = forwards(COUNTING, "web1");
  const p = `d${domainHash("web1")}`;
  const t = "inet libvirt_hook_qemu";
  const c = 'comment "libvirt-hook-qemu:1:web1"';
  const set = (name: string, elements: string, interval = "flags interval; ") =>
    `add set ${t} ${p}-count4-${name} { type ipv4_addr . inet_service; ${interval}counter; ` +
    `elements = { ${elements} }; }`;
  const rule = (proto: string) =>
    `add rule ${t} traffic ct label 127 meta l4proto ${proto} ct original ip daddr . ct original proto-dst ` +
    `@${p}-count4-${proto} ${c}`;
  const objects = nftDomainObjects("web1", f);
  assert.deepEqual(
    objects.slice(
      objects.indexOf(`add chain ${t} traffic { type filter hook forward priority -9; policy accept; }`),
    ),
    [
      `add chain ${t} traffic { type filter hook forward priority -9; policy accept; }`,
      // all_ports in runs around the ports other forwards take (their traffic is theirs); "*" on any address.
      set("tcp", "203.0.113.7 . 2222, 203.0.113.8 . 1-21, 203.0.113.8 . 23-65535"),
      rule("tcp"),
      set("udp", "0.0.0.0/0 . 5353, 203.0.113.8 . 1-5352, 203.0.113.8 . 5354-65535"),
      rule("udp"),
    ],
  );
  // Where every element is one address and port, a hash.
  const plain = forwards(
    `{"web1": {"private_ip": "192.168.122.10", "public_ip": "203.0.113.7", "counters": true,
               "port_map": {"tcp": [[2222, 22], 2223]}}}`,
    "web1",
  );
  assert.ok(
    nftDomainObjects("web1", plain).includes(set("tcp", "203.0.113.7 . 2222, 203.0.113.7 . 2223", "")),
  );
  // A domain that does not count has no counting objects.
  assert.equal(
    nftDomainObjects("web1", f.map(({ countTraffic: _, ...x }) => x)).some((l) => l.includes("traffic")),
    false,
  );
});

Deno.test("nftLiveForwards() adds each counting forward's packets and bytes from its elements in the domain's counting set", () => {
  const p = `d${domainHash("web1")}`;
  const live = tableListing([
    {
      kind: "map",
      name: `${p}-dnat4`,
      elem: [
        [counted({ concat: ["203.0.113.7", "tcp", 2222] }, 3, 180), { concat: ["192.168.122.10", 22] }],
        [counted({ concat: ["203.0.113.7", "tcp", 2223] }, 1, 60), { concat: ["192.168.122.10", 22] }],
      ],
    },
    {
      kind: "set",
      name: `${p}-count4-tcp`,
      elem: [
        counted({ concat: ["203.0.113.7", 2222] }, 20, 2400),
        // Another address's: no forward of this domain, so nobody's.
        counted({ concat: ["203.0.113.9", { range: [3000, 3001] }] }, 5, 500),
      ],
    },
  ]);
  assert.deepEqual(nftLiveForwards(live).map((f) => [describeForward(f), f.counters]), [
    // The same guest port through two forwards: each its own.
    ["tcp 203.0.113.7:2222 -> 192.168.122.10:22", { connections: 3, packets: 20, bytes: 2400 }],
    ["tcp 203.0.113.7:2223 -> 192.168.122.10:22", { connections: 1 }],
  ]);
});

Deno.test("nftRemoveDomain() takes base chain traffic with the last counting domain only", () => {
  const rule = (domain: string, handle: number) => ({
    family: "inet",
    table: "libvirt_hook_qemu",
    chain: "traffic",
    handle,
    comment: `libvirt-hook-qemu:1:${domain}`,
    expr: [],
  });
  const state = (rules: ReturnType<typeof rule>[]): NftLive => ({
    ...emptyNftLive(),
    table: true,
    chains: ["traffic", `d${domainHash("web1")}-dnat`, `d${domainHash("web2")}-dnat`],
    rules,
  });
  const t = "inet libvirt_hook_qemu";
  const removal = (live: NftLive) =>
    nftRemoveDomain("web1", live, { keepTable: true }).filter((l) => l.includes("traffic"));
  assert.deepEqual(removal(state([rule("web1", 5), rule("web2", 6)])), [`delete rule ${t} traffic handle 5`]);
  assert.deepEqual(removal(state([rule("web1", 5)])), [
    `delete rule ${t} traffic handle 5`,
    `delete chain ${t} traffic`,
  ]);
  // Left empty by a version that did not take it: it goes too.
  assert.deepEqual(removal(state([])), [`delete chain ${t} traffic`]);
});
