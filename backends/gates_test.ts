/** Gates: which base chains at the forward hook would drop a forward of ours, read from real `nft -j` output. */

import assert from "node:assert/strict";
import { type BaseChain, forwardHooks, gateKind, openingLine, type Packet, passage } from "./gates.ts";
import { nftItems } from "./nft_json.ts";

/** `nft -j list chains` of a host with an administrator's table and iptables-nft's filter table (nft 1.0.6). */
const CHAINS =
  `{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
{"chain": {"family": "inet", "table": "filter", "name": "sub", "handle": 1}},
{"chain": {"family": "inet", "table": "filter", "name": "forward", "handle": 2, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
{"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
{"chain": {"family": "ip", "table": "libvirt_network", "name": "forward", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
{"chain": {"family": "inet", "table": "libvirt_hook_qemu", "name": "prerouting", "handle": 1, "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}}]}`;

const GATE: BaseChain = { family: "inet", table: "filter", chain: "forward", prio: 0, policy: "drop" };
const SSH: Packet = { family: 4, protocol: "tcp", daddr: "192.168.122.10", dport: 22, oif: "virbr0" };

/** The rules of `table inet filter`, as `nft -j list table inet filter` prints them (the exprs of real output). */
function table(...rules: { chain?: string; expr: unknown[] }[]) {
  return nftItems(JSON.stringify({
    nftables: rules.map((r, i) => ({
      rule: { family: "inet", table: "filter", chain: r.chain ?? "forward", handle: 10 + i, expr: r.expr },
    })),
  }));
}
const accept = { accept: null }, drop = { drop: null };
const match = (left: unknown, right: unknown, op = "==") => ({ match: { op, left, right } });
const ctState = (...s: string[]) => match({ ct: { key: "state" } }, s, "in");
const ctDnat = match({ ct: { key: "status" } }, "dnat", "in");
const oif = (name: string) => match({ meta: { key: "oifname" } }, name);
const iif = (name: string) => match({ meta: { key: "iifname" } }, name);
const daddr = (right: unknown) => match({ payload: { protocol: "ip", field: "daddr" } }, right);
const dport = (proto: string, right: unknown) =>
  match({ payload: { protocol: proto, field: "dport" } }, right);

Deno.test("forwardHooks() finds every base chain at the forward hook; gateKind() says who opens it", () => {
  const hooks = forwardHooks(nftItems(CHAINS));
  assert.deepEqual(hooks.map((h) => [`${h.family} ${h.table} ${h.chain}`, h.policy]), [
    ["inet filter forward", "drop"],
    ["ip filter FORWARD", "drop"],
    ["ip libvirt_network forward", "accept"],
  ]);
  const kind = (h: BaseChain, handed: string[] = []) =>
    gateKind(h, handed, { ownTable: "libvirt_hook_qemu", libvirtTable: "libvirt_network" });
  assert.deepEqual(hooks.map((h) => kind(h)), ["foreign", "iptables", "libvirt"]);
  assert.equal(kind(hooks[0]!, ["inet filter forward"]), "handed");
  assert.equal(openingLine(hooks[0]!), "nft insert rule inet filter forward ct status dnat accept");
});

Deno.test("passage() follows a forwarded connection through a gate", async (t) => {
  const cases: [string, ReturnType<typeof table>, Packet, string][] = [
    ["policy drop and nothing else", table(), SSH, "drop: inet filter forward has policy drop"],
    [
      "established only: the first packet is new",
      table({ expr: [ctState("established", "related"), accept] }),
      SSH,
      "drop: inet filter forward has policy drop",
    ],
    ["ct status dnat accept (firewalld's way)", table({ expr: [ctDnat, accept] }), SSH, "accept"],
    [
      "an accept for the bridge, the guests' network and the port",
      table({
        expr: [
          oif("virbr0"),
          daddr({ prefix: { addr: "192.168.122.0", len: 24 } }),
          dport("tcp", { set: [22, 80] }),
          accept,
        ],
      }),
      SSH,
      "accept",
    ],
    [
      "the same accept, another port",
      table({
        expr: [
          oif("virbr0"),
          daddr({ prefix: { addr: "192.168.122.0", len: 24 } }),
          dport("tcp", { set: [22, 80] }),
          accept,
        ],
      }),
      { ...SSH, dport: 443 },
      "drop: inet filter forward has policy drop",
    ],
    [
      "an accept on another bridge (wildcard)",
      table({ expr: [oif("docker*"), accept] }),
      SSH,
      "drop: inet filter forward has policy drop",
    ],
    [
      "a drop of udp does not touch tcp",
      table({ expr: [dport("udp", 53), drop] }, { expr: [accept] }),
      SSH,
      "accept",
    ],
    [
      "a reject of everything but one address",
      table({
        expr: [daddr("10.0.0.1"), { reject: null }].map((e, i) =>
          i === 0 ? match({ payload: { protocol: "ip", field: "daddr" } }, "10.0.0.1", "!=") : e
        ),
      }),
      SSH,
      "drop: inet filter forward handle 10 drops it",
    ],
    [
      "an ip6 match in an inet table never holds for IPv4",
      table({ expr: [match({ payload: { protocol: "ip6", field: "daddr" } }, "::1", "!="), drop] }, {
        expr: [accept],
      }),
      SSH,
      "accept",
    ],
    [
      "a jump into a chain that drops",
      table({ expr: [oif("virbr0"), { jump: { target: "sub" } }] }, { chain: "sub", expr: [drop] }),
      SSH,
      "drop: inet filter sub handle 11 drops it",
    ],
    [
      "a jump into a chain that returns",
      table({ expr: [{ jump: { target: "sub" } }] }, { chain: "sub", expr: [{ return: null }] }, {
        expr: [ctDnat, accept],
      }),
      SSH,
      "accept",
    ],
    [
      "an accept by incoming interface cannot be told: a maybe",
      table({ expr: [iif("eth0"), accept] }),
      SSH,
      "maybe: inet filter forward has policy drop, unless inet filter forward handle 10 may or may not accept it",
    ],
  ];
  for (const [name, items, packet, want] of cases) {
    await t.step(name, () => {
      const p = passage(items, GATE, packet);
      assert.equal(p.verdict === "accept" ? "accept" : `${p.verdict}: ${p.why}`, want);
    });
  }
  await t.step("policy accept and no rules: passes", () => {
    assert.deepEqual(passage(table(), { ...GATE, policy: "accept" }, SSH), { verdict: "accept" });
  });
});
