/** Unit tests of the rule model: the forwards a config plans, and a sync that fails put back as it was. */

import { iptablesTools, renderRollback } from "./backends/iptables.ts";
import { domainHash } from "./backends/names.ts";
import { loadParser } from "./config/validate.ts";
import { batchHeader, desiredState, startBatches, syncDomain, wantedOf } from "./rules.ts";
import assert from "node:assert/strict";
import { dedent, FACTS, forwardsOf, recordingRunner, SAVED } from "./test/util.ts";

await loadParser();

Deno.test("planForwards() resolves defaults and hairpin sources from the host", async (t) => {
  await t.step("a missing public_ip takes the host's default address", () => {
    const { forwards } = forwardsOf(`{"a": {"private_ip": "192.168.122.5", "port_map": {"tcp": [80]}}}`, "a");
    assert.equal(forwards[0]?.publicIp, "203.0.113.1");
  });
  await t.step("no default address is a problem that names the field to set", () => {
    const facts = { ...FACTS, defaultPublicIp: { 4: { problem: "the host has no IPv4 default route" } } };
    const { forwards, problems } = forwardsOf(
      `{"a": {"private_ip": "192.168.122.5", "port_map": {"tcp": [80]}}}`,
      "a",
      facts,
    );
    assert.deepEqual(forwards, []);
    assert.deepEqual(problems, [
      'a: Cannot find the default public IPv4 address: the host has no IPv4 default route; set "public_ip"',
    ]);
  });
  await t.step("a guest outside every connected network is masqueraded only when it reaches itself", () => {
    const { forwards } = forwardsOf(`{"a": {"private_ip": "10.9.9.9", "port_map": {"tcp": [80]}}}`, "a");
    assert.equal(forwards[0]?.hairpinFrom, "10.9.9.9/32");
  });
});

Deno.test("syncDomain() puts every family back as it was when a batch fails", async () => {
  const h = domainHash("web1");
  const dual =
    `{"web1": {"private_ip": "192.168.122.10", "private_ipv6": "fd00:122::10", "port_map": {"tcp": [80]}}}`;
  const { forwards } = forwardsOf(dual, "web1");
  let saves = 0;
  const runner = recordingRunner((argv) => {
    if (argv[0] === "iptables-save") return { stdout: saves++ === 0 ? SAVED(h) : "*nat\nCOMMIT\n" };
    if (argv[0] === "ip6tables-restore") return { code: 2, stderr: "ip6tables-restore: line 5 failed\n" };
    return {};
  });
  await assert.rejects(
    syncDomain("web1", { runner, tools: iptablesTools() }, { forwards }),
    /ip6tables-restore failed: ip6tables-restore: line 5 failed/,
  );
  const commands = runner.calls.map((c) => c.argv[0]);
  assert.deepEqual(commands, [
    "iptables-save",
    "ip6tables-save",
    "iptables-restore",
    "ip6tables-restore",
    "iptables-save",
    "iptables-restore",
    "ip6tables-save",
  ]);
  // The IPv4 rollback re-creates the rules that were live before, from their saved text.
  const rollback = runner.calls[5]!.stdin!;
  assert.match(
    rollback,
    new RegExp(`-I FORWARD -m comment --comment "libvirt-hook-qemu:1:web1" -j LVH-${h}-FWD`),
  );
  assert.match(rollback, new RegExp(`-A LVH-${h}-FWD -d 192.168.122.10/32 -p tcp`));
  assert.equal(
    renderRollback("web1", { before: { chains: [], rules: [] }, now: { chains: [], rules: [] } }),
    undefined,
  );
});

// ---- plan prints what start runs: the batches of syncDomain() and of startBatches(), host by host ----

const NFT_META =
  '{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}';
const nftDoc = (...items: object[]) => JSON.stringify({ nftables: [JSON.parse(NFT_META), ...items] });
const baseChain = (family: string, table: string, name: string, policy = "accept") => ({
  chain: { family, table, name, handle: 1, type: "filter", hook: "forward", prio: 0, policy },
});
const rejectRule = (family: string, table: string, chain: string) => ({
  rule: { family, table, chain, handle: 5, expr: [{ reject: null }] },
});

/** A host as the runner answers it: libvirt's rules in iptables or in nftables, and maybe a chain handed to us. */
function hostRunner(libvirt: "iptables" | "nftables", handed: string | undefined) {
  const save = (family: 4 | 6) =>
    libvirt === "nftables"
      ? dedent(`
        *filter
        :INPUT ACCEPT [0:0]
        :FORWARD ACCEPT [0:0]
        COMMIT
        *nat
        :PREROUTING ACCEPT [0:0]
        :POSTROUTING ACCEPT [0:0]
        COMMIT
      `)
      : dedent(`
        *filter
        :INPUT ACCEPT [0:0]
        :FORWARD ACCEPT [0:0]
        :LIBVIRT_FWI - [0:0]
        -A FORWARD -j LIBVIRT_FWI
        -A LIBVIRT_FWI -o virbr0 -j REJECT --reject-with icmp${
        family === 6 ? "6-adm-prohibited" : "-port-unreachable"
      }
        COMMIT
        *nat
        :PREROUTING ACCEPT [0:0]
        :POSTROUTING ACCEPT [0:0]
        :LIBVIRT_PRT - [0:0]
        -A POSTROUTING -j LIBVIRT_PRT
        COMMIT
      `);
  const absent = { code: 1, stderr: "Error: No such file or directory\n" };
  return recordingRunner((argv) => {
    if (argv[0] === "iptables-save") return { stdout: save(4) };
    if (argv[0] === "ip6tables-save") return { stdout: save(6) };
    if (argv[0] !== "nft" || argv[1] !== "-j") return {};
    const what = argv.slice(2).join(" ");
    if (what === "list chains") {
      return {
        stdout: nftDoc(
          ...(libvirt === "nftables"
            ? [baseChain("ip", "libvirt_network", "forward"), baseChain("ip6", "libvirt_network", "forward")]
            : []),
          ...(handed ? [baseChain("inet", "filter", "forward", "drop")] : []),
        ),
      };
    }
    for (const family of ["ip", "ip6"]) {
      if (libvirt === "nftables" && what === `list chain ${family} libvirt_network guest_input`) {
        return {
          stdout: nftDoc(
            { chain: { family, table: "libvirt_network", name: "guest_input", handle: 2 } },
            rejectRule(family, "libvirt_network", "guest_input"),
          ),
        };
      }
    }
    if (handed && what === `list chain ${handed}`) {
      return { stdout: nftDoc({ chain: { family: "inet", table: "filter", name: "forward", handle: 1 } }) };
    }
    return absent;
  });
}

/** What a start ran, as plan prints it: each batch's command line, then its input. */
function ranBatches(calls: { argv: string[]; stdin?: string }[]): string {
  return calls
    .filter((c) => /-restore$/.test(c.argv[0]!) || (c.argv[0] === "nft" && c.argv[1] === "-f"))
    .map((c) => `# ${c.argv.join(" ")}\n${c.stdin}`)
    .join("");
}

Deno.test("startBatches() are the very batches syncDomain() runs, for every host and kind of forward", async (t) => {
  let compared = 0, nftSeen = 0, handedSeen = 0;
  for (const libvirt of ["iptables", "nftables"] as const) {
    for (const backend of ["iptables", "nftables"] as const) {
      for (const acceptIn of [false, true]) {
        for (const kind of ["ports", "snat", "all_ports", "listen"] as const) {
          for (const ipv6 of [false, true]) {
            const name =
              `libvirt on ${libvirt}, backend ${backend}${acceptIn ? ", accept_in" : ""}, ${kind}` +
              (ipv6 ? ", IPv6" : "");
            await t.step(name, async () => {
              // "listen": "*" (every local address) from one interface, with a description.
              const listen = { public_ip: "*", dev: "eth1", description: "shop" };
              const pub = kind === "ports" ? {} : kind === "listen" ? listen : { public_ip: "203.0.113.9" };
              const entry = {
                private_ip: "192.168.122.10",
                ...pub,
                ...(ipv6 ? { private_ipv6: "fd00:122::10" } : {}),
                ...(ipv6 && kind !== "ports"
                  ? { public_ipv6: kind === "listen" ? "*" : "2001:db8:1::9" }
                  : {}),
                ...(kind === "all_ports"
                  ? { all_ports: true }
                  : { port_map: { tcp: [[2222, 22]], udp: [53] } }),
                ...(kind === "snat" ? { snat: true } : {}),
                // Packets and bytes counted where a whole address or "*" is forwarded.
                ...(kind === "all_ports" || kind === "listen" ? { counters: true } : {}),
              };
              const { forwards, snats } = forwardsOf(JSON.stringify({ web1: entry }), "web1");
              assert.ok(forwards.length > 0);
              const handed = acceptIn ? "inet filter forward" : undefined;
              const deps = (runner: ReturnType<typeof hostRunner>) => ({
                runner,
                tools: iptablesTools(),
                nft: "nft",
                backend,
                connected: FACTS.connected,
                networkConf: "/nonexistent/network.conf",
                networkRunDir: "/nonexistent",
                ...(handed ? { acceptIn: [handed] } : {}),
              });
              const started = hostRunner(libvirt, handed);
              const planned = hostRunner(libvirt, handed);
              const start = await syncDomain("web1", deps(started), { forwards, snats }).then(
                () => "ok",
                (err: Error) => err.message,
              );
              const plan = await startBatches("web1", deps(planned), { forwards, snats }).then(
                (batches) => batches.map((b) => `${batchHeader(b)}\n${b.stdin}`).join(""),
                (err: Error) => err.message,
              );
              assert.equal(start, "ok");
              assert.equal(plan, ranBatches(started.calls));
              // Reading is all plan does: no batch was run.
              assert.equal(ranBatches(planned.calls), "");
              compared++;
              if (kind === "listen") {
                // The forward on "*" is in what plan shows, in the language of the backend that translates it.
                assert.match(
                  plan,
                  backend === "nftables"
                    ? /fib daddr type local .*iifname "eth1"/
                    : /--dst-type LOCAL -i eth1/,
                );
              }
              if (kind === "all_ports" || kind === "listen") {
                // The counters are in what plan shows: a chain jumped from the gate, or a set in our table.
                assert.match(
                  plan,
                  backend === "nftables"
                    ? /\nadd rule inet libvirt_hook_qemu traffic ct label 127 meta l4proto tcp /
                    : /\n-I LVH-FORWARD -d 192\.168\.122\.10\/32 -m comment --comment \S+ -j LVH-\w+-CNT\n/,
                );
              }
              if (plan.includes("# nft -f -")) nftSeen++;
              if (
                plan.includes("add rule inet filter forward") ||
                plan.includes("insert rule inet filter forward")
              ) {
                handedSeen++;
              }
              if (libvirt === "nftables") {
                // The accept that lets the forward past libvirt's reject is in what plan shows.
                assert.match(plan, /libvirt_network guest_input/);
              }
              if (backend === "nftables") {
                // Our table translates, labelling what it translates; iptables' FORWARD gets our gate, which
                // lets the labelled connections alone into the domain's accept.
                assert.match(plan, / ct label set 127 (counter )?dnat /);
                assert.match(plan, /\n-I FORWARD -m connlabel --label 127 -j LVH-FORWARD\n/);
                assert.match(plan, /\n-A LVH-\w+-FWD -m comment --comment \S+ -j ACCEPT\n/);
                assert.doesNotMatch(plan, /-j DNAT/);
              }
              if (backend === "nftables" && libvirt === "iptables" && kind === "snat") {
                // The outbound NAT goes ahead of libvirt's masquerade, in iptables' POSTROUTING.
                assert.match(plan, / -j SNAT --to-source 203\.0\.113\.9\n/);
                assert.doesNotMatch(plan, / snat ip to /);
              }
              if (backend === "nftables" && libvirt === "nftables") {
                // iptables' own FORWARD gets our accept too, on either backend (Docker, ufw, an admin's rules).
                assert.match(plan, /# iptables-restore --noflush --wait\n\*filter\n/);
              }
            });
          }
        }
      }
    }
  }
  assert.equal(compared, 64);
  assert.ok(nftSeen >= 36, `nft batches compared: ${nftSeen}`);
  assert.ok(handedSeen > 0, `batches with an accept in a handed chain: ${handedSeen}`);
});

Deno.test("desiredState() places every piece of a domain where this host needs it", async (t) => {
  const live = (libvirt: boolean, forward: boolean) => ({
    chains: [],
    rules: [],
    ...(libvirt ? { libvirt: true } : {}),
    ...(forward ? { forward: { policy: "ACCEPT" } } : {}),
  });
  const nft = (libvirt: boolean) => ({
    table: false,
    chains: [],
    maps: [],
    sets: [],
    rules: [],
    libvirt: libvirt ? { 4: [], 6: [] } : {},
    hooks: [],
    handed: {},
  });
  const dual =
    `{"web1": {"private_ip": "192.168.122.10", "private_ipv6": "fd00:122::10", "public_ip": "203.0.113.9",
    "public_ipv6": "2001:db8:1::9", "snat": true, "port_map": {"tcp": [[2222, 22]]}}}`;
  const { forwards, snats } = forwardsOf(dual, "web1");
  // [libvirt on, setting, iptables' FORWARD there, backend, iptables per family, our table: forwards, snats]
  const cases: [string, "auto" | "iptables" | "nftables", boolean, string, string, number, number][] = [
    ["iptables", "auto", true, "iptables", "all", 0, 0],
    ["nftables", "auto", true, "nftables", "filter", 2, 2],
    ["nftables", "auto", false, "nftables", "none", 2, 2],
    // Our iptables backend where libvirt uses nftables: the outbound NAT still goes ahead of libvirt's masquerade.
    ["nftables", "iptables", true, "iptables", "all", 0, 2],
  ];
  for (const [libvirt, setting, forward, backend, place, tableForwards, tableSnats] of cases) {
    await t.step(
      `libvirt on ${libvirt}, backend "${setting}", FORWARD ${forward ? "there" : "absent"}`,
      () => {
        const state = {
          ipt: { 4: live(libvirt === "iptables", forward), 6: live(libvirt === "iptables", forward) },
          nft: nft(libvirt === "nftables"),
        };
        const deps = { backend: setting, connected: FACTS.connected };
        const desired = desiredState("web1", wantedOf("web1", { forwards, snats }, deps), { state, deps });
        assert.equal(desired.backend, backend);
        assert.deepEqual([desired.iptables[4].place, desired.iptables[6].place], [place, place]);
        assert.equal(desired.iptables[4].forwards.length, place === "none" ? 0 : 1);
        // The outbound NAT goes into iptables' SNAT chain only where it is not in our table.
        assert.equal(desired.iptables[4].snat, tableSnats === 0);
        assert.deepEqual([desired.table.forwards.length, desired.table.snats.length], [
          tableForwards,
          tableSnats,
        ]);
        assert.deepEqual(desired.accepts(), { 4: ["virbr0"], 6: ["virbr0"] });
        if (place === "filter") {
          assert.deepEqual(desired.iptables[4].rules.chains.map((c) => c.table), ["filter"]);
        }
      },
    );
  }
  await t.step(
    "where our table translates a counting forward, it counts it: iptables' FORWARD gets no counters",
    () => {
      const counting = forwardsOf(dual.replace('"snat": true', '"counters": true'), "web1").forwards;
      for (const libvirt of ["iptables", "nftables"]) {
        const state = {
          ipt: { 4: live(libvirt === "iptables", true), 6: live(libvirt === "iptables", true) },
          nft: nft(libvirt === "nftables"),
        };
        const deps = { backend: "nftables" as const, connected: FACTS.connected };
        const desired = desiredState("web1", wantedOf("web1", { forwards: counting, snats: [] }, deps), {
          state,
          deps,
        });
        const part = desired.iptables[4];
        assert.equal(part.place, "filter");
        assert.deepEqual(part.rules.chains.map((c) => c.chain), [`LVH-${domainHash("web1")}-FWD`]);
        assert.equal(part.rules.jumps.length, 1);
        assert.doesNotMatch(`${part.rules.text.filter}\n${part.additions?.filter}`, /-CNT/);
        assert.ok(desired.table.forwards.every((f) => f.countTraffic));
      }
    },
  );
  await t.step("a removal wants nothing anywhere, on the iptables backend whatever the setting", () => {
    const state = { ipt: { 4: live(false, true), 6: live(false, true) }, nft: nft(true) };
    const deps = { backend: "nftables" as const, connected: FACTS.connected };
    const desired = desiredState("web1", wantedOf("web1", { forwards: [], snats: [] }, deps), {
      state,
      deps,
    });
    assert.equal(desired.backend, "iptables");
    assert.equal(desired.iptables[4].rules.count, 0);
    assert.deepEqual(desired.table, { forwards: [], snats: [] });
    assert.equal(desired.accepts(), undefined);
  });
});
