/** Unit tests of the rules: the exact firewall text each config produces, and how live rules are read back. */

import assert from "node:assert/strict";
import { loadParser, parseConfig } from "./config.ts";
import {
  buildRules,
  carriedDomain,
  chainNames,
  commentDomain,
  domainHash,
  domainLabel,
  hashOnly,
  iptablesTools,
  isHashOnly,
  listingsToSave,
  liveOf,
  parseSave,
  planForwards,
  renderRollback,
  renderSync,
  ruleComment,
  tokenize,
} from "./rules.ts";
import { syncDomain } from "./lib/apply.ts";
import { dedent, FACTS, recordingRunner } from "./test/util.ts";

await loadParser();

function forwardsOf(text: string, domain: string, facts = FACTS) {
  const config = parseConfig(text, "hooks.jsonc");
  assert.deepEqual(config.diagnostics.filter((d) => d.severity === "error"), []);
  return planForwards(config.domains.get(domain)!, facts);
}

const EXAMPLE = await Deno.readTextFile(new URL("./hooks.jsonc", import.meta.url));

Deno.test("renderSync() renders the example config as one iptables-restore batch", () => {
  const { forwards, problems } = forwardsOf(EXAMPLE, "web1");
  assert.deepEqual(problems, []);
  const h = domainHash("web1");
  const c = "-m comment --comment libvirt-hook-qemu:1:web1";
  const ct = (port: string) =>
    `-m conntrack --ctstate DNAT --ctorigdst 203.0.113.7/32 --ctorigdstport ${port}`;
  // The accept pins the whole connection, both directions: where it was addressed, and who answers.
  const reply = (port: string) => `--ctreplsrc 192.168.122.10/32 --ctreplsrcport ${port}`;
  assert.equal(
    renderSync("web1", forwards, { chains: [], rules: [] }),
    dedent(`
      *nat
      :LVH-${h}-DNAT - [0:0]
      :LVH-${h}-SNAT - [0:0]
      -I PREROUTING ${c} -j LVH-${h}-DNAT
      -I OUTPUT ${c} -j LVH-${h}-DNAT
      -I POSTROUTING ${c} -j LVH-${h}-SNAT
      -A LVH-${h}-DNAT -d 203.0.113.7/32 -s 198.51.100.0/24 -p tcp -m tcp --dport 2222 ${c} -j DNAT --to-destination 192.168.122.10:22
      -A LVH-${h}-DNAT -d 203.0.113.7/32 -s 198.51.100.0/24 -p tcp -m tcp --dport 443 ${c} -j DNAT --to-destination 192.168.122.10:443
      -A LVH-${h}-DNAT -d 203.0.113.7/32 -s 198.51.100.0/24 -p udp -m udp --dport 51820 ${c} -j DNAT --to-destination 192.168.122.10:51820
      -A LVH-${h}-DNAT -d 203.0.113.7/32 -s 198.51.100.0/24 -p udp -m udp --dport 30000:30099 ${c} -j DNAT --to-destination 192.168.122.10
      -A LVH-${h}-SNAT -s 192.168.122.0/24 -d 192.168.122.10/32 -p tcp -m tcp --dport 22 ${
      ct("2222")
    } ${c} -j MASQUERADE
      -A LVH-${h}-SNAT -s 192.168.122.0/24 -d 192.168.122.10/32 -p tcp -m tcp --dport 443 ${
      ct("443")
    } ${c} -j MASQUERADE
      -A LVH-${h}-SNAT -s 192.168.122.0/24 -d 192.168.122.10/32 -p udp -m udp --dport 51820 ${
      ct("51820")
    } ${c} -j MASQUERADE
      -A LVH-${h}-SNAT -s 192.168.122.0/24 -d 192.168.122.10/32 -p udp -m udp --dport 30000:30099 ${
      ct("30000:30099")
    } ${c} -j MASQUERADE
      COMMIT
      *filter
      :LVH-${h}-FWD - [0:0]
      -I FORWARD ${c} -j LVH-${h}-FWD
      -A LVH-${h}-FWD -p tcp ${ct("2222")} ${reply("22")} ${c} -j ACCEPT
      -A LVH-${h}-FWD -p tcp ${ct("443")} ${reply("443")} ${c} -j ACCEPT
      -A LVH-${h}-FWD -p udp ${ct("51820")} ${reply("51820")} ${c} -j ACCEPT
      -A LVH-${h}-FWD -p udp ${ct("30000:30099")} ${reply("30000:30099")} ${c} -j ACCEPT
      COMMIT
    `),
  );
});

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

Deno.test("buildRules() declares every chain it jumps to, and fills only its own chains", () => {
  const { forwards } = forwardsOf(EXAMPLE, "web1");
  const { chains, jumps, rules } = buildRules("web1", forwards);
  const declared = new Set(chains.map((c) => `${c.table} ${c.chain}`));
  for (const j of jumps) {
    const target = / -j (\S+)$/.exec(j.spec)?.[1];
    assert.ok(declared.has(`${j.table} ${target}`), `jump to undeclared ${j.table} ${target}`);
  }
  for (const r of rules) assert.ok(declared.has(`${r.table} ${r.chain}`), `rule in undeclared ${r.chain}`);
  assert.deepEqual(jumps.map((j) => `${j.table} ${j.chain}`), [
    "nat PREROUTING",
    "nat OUTPUT",
    "nat POSTROUTING",
    "filter FORWARD",
  ]);
});

Deno.test("chainNames() stays within 28 characters and tells apart long names that share a prefix", () => {
  const a = chainNames("example-guest-vm-name-please-change");
  const b = chainNames("example-guest-vm-name-please-change-2");
  for (const name of [...Object.values(a), ...Object.values(b)]) assert.ok(name.length <= 28, name);
  assert.notEqual(a.dnat, b.dnat);
  assert.match(a.dnat, /^LVH-[0-9a-f]{12}-DNAT$/);
});

Deno.test("ruleComment() names the domain so that commentDomain() reads it back", async (t) => {
  const names = [
    "web1",
    "$VM_NAME",
    'my guest "quoted"',
    "ünïcode:name",
    "#0123456789ab",
    "%23",
    "x".repeat(100),
    "x".repeat(101),
    "x".repeat(300),
    "日本語のなまえ十二文字だよ",
    "😀",
    "😀".repeat(250),
  ];
  for (const name of names) {
    await t.step(name.slice(0, 20), () => {
      const comment = ruleComment(name);
      // nftables keeps 128 bytes of a comment, and our accept in libvirt's chain adds ":accept".
      assert.ok(new TextEncoder().encode(`${comment}:accept`).length <= 128, comment);
      assert.match(
        comment,
        /^libvirt-hook-qemu:1:[A-Za-z0-9._~+@=,%-]+$|^libvirt-hook-qemu:1:#[0-9a-f]{12}$/,
      );
      const read = commentDomain(comment)!;
      // Read back: the name itself, or (too long for a comment) the domain known by its hash, the same hash.
      assert.equal(read, carriedDomain(name));
      assert.equal(domainHash(read), domainHash(name));
      assert.equal(isHashOnly(read), comment.includes("#"));
    });
  }
  await t.step("a real name that looks like a hash is never taken for one", () => {
    assert.equal(commentDomain(ruleComment("#0123456789ab")), "#0123456789ab");
    assert.notEqual(domainHash("#0123456789ab"), "0123456789ab");
  });
  await t.step("a domain known only by its hash keeps it, and reads as #<hash>", () => {
    const known = hashOnly(domainHash("x".repeat(300)));
    assert.equal(ruleComment(known), ruleComment("x".repeat(300)));
    assert.deepEqual(chainNames(known), chainNames("x".repeat(300)));
    assert.equal(domainLabel(known), `#${domainHash("x".repeat(300))}`);
    assert.equal(domainLabel("web1"), "web1");
  });
});

const SAVED = (h: string) =>
  dedent(`
  # Generated by iptables-save v1.8.9 (nf_tables)
  *filter
  :INPUT ACCEPT [0:0]
  :FORWARD ACCEPT [10:600]
  :LIBVIRT_FWI - [0:0]
  :LVH-${h}-FWD - [0:0]
  -A FORWARD -m comment --comment "libvirt-hook-qemu:1:web1" -j LVH-${h}-FWD
  -A FORWARD -j LIBVIRT_FWI
  -A LIBVIRT_FWI -o virbr0 -j REJECT --reject-with icmp-port-unreachable
  -A LVH-${h}-FWD -d 192.168.122.10/32 -p tcp -m tcp --dport 22 -m comment --comment "libvirt-hook-qemu:1:web1" -j ACCEPT
  -A LVH-000000000000-FWD -d 192.168.122.99/32 -m comment --comment "libvirt-hook-qemu:1:other" -j ACCEPT
  COMMIT
  *nat
  :PREROUTING ACCEPT [0:0]
  :LVH-${h}-DNAT - [0:0]
  -A PREROUTING -m comment --comment "libvirt-hook-qemu:1:web1" -j LVH-${h}-DNAT
  -A PREROUTING -p tcp -m tcp --dport 9999 -m comment --comment "someone else's LVH-like rule" -j REDIRECT --to-ports 9998
  -A PREROUTING -d 203.0.113.9/32 -m comment --comment "libvirt-hook-qemu:7:web1" -j ACCEPT
  COMMIT
`);

Deno.test("parseSave() finds our chains, the jumps into them and rules with our comment, nothing else", () => {
  const h = domainHash("web1");
  const mine = liveOf(parseSave(SAVED(h)), "web1");
  assert.deepEqual(mine.chains.map((c) => `${c.table} ${c.chain}`), [
    `filter LVH-${h}-FWD`,
    `nat LVH-${h}-DNAT`,
  ]);
  assert.deepEqual(mine.rules.map((r) => `${r.table} ${r.chain}`), [
    "filter FORWARD",
    `filter LVH-${h}-FWD`,
    "nat PREROUTING",
    // A rule of a later format version is still recognised by its comment.
    "nat PREROUTING",
  ]);
});

Deno.test("renderSync() removes what is live for the domain before adding, whatever the config says now", () => {
  const h = domainHash("web1");
  const live = liveOf(parseSave(SAVED(h)), "web1");
  assert.equal(
    renderSync("web1", [], live),
    dedent(`
      *nat
      :LVH-${h}-DNAT - [0:0]
      -D PREROUTING -m comment --comment "libvirt-hook-qemu:1:web1" -j LVH-${h}-DNAT
      -D PREROUTING -d 203.0.113.9/32 -m comment --comment "libvirt-hook-qemu:7:web1" -j ACCEPT
      -X LVH-${h}-DNAT
      COMMIT
      *filter
      :LVH-${h}-FWD - [0:0]
      -D FORWARD -m comment --comment "libvirt-hook-qemu:1:web1" -j LVH-${h}-FWD
      -X LVH-${h}-FWD
      COMMIT
    `),
  );
  assert.equal(renderSync("other-domain", [], liveOf(parseSave(SAVED(h)), "other-domain")), undefined);
});

Deno.test("renderSync() on a second start replaces the live rules instead of adding to them", () => {
  const { forwards } = forwardsOf(
    `{"web1": {"private_ip": "192.168.122.10", "port_map": {"tcp": [80]}}}`,
    "web1",
  );
  const h = domainHash("web1");
  const text = renderSync("web1", forwards, liveOf(parseSave(SAVED(h)), "web1"))!;
  const lines = text.split("\n");
  // Chains are declared (so flushed) once, old jumps deleted, chains kept, new jumps inserted once.
  assert.equal(lines.filter((l) => l === `:LVH-${h}-FWD - [0:0]`).length, 1);
  assert.equal(lines.filter((l) => l.startsWith("-D FORWARD")).length, 1);
  assert.equal(lines.filter((l) => l.startsWith("-I FORWARD")).length, 1);
  assert.equal(lines.filter((l) => l.startsWith("-X")).length, 0);
});

Deno.test("tokenize() reads iptables-save quoting", () => {
  assert.deepEqual(tokenize(`-m comment --comment "a \\"b\\" c" -j X`), [
    "-m",
    "comment",
    "--comment",
    'a "b" c',
    "-j",
    "X",
  ]);
  assert.deepEqual(tokenize(`--comment "" -j X`), ["--comment", "", "-j", "X"]);
});

Deno.test("iptablesTools() follows IPTABLES_BINARY for both families", () => {
  assert.deepEqual(iptablesTools("/usr/sbin/iptables-legacy"), {
    4: {
      save: ["/usr/sbin/iptables-legacy-save"],
      restore: ["/usr/sbin/iptables-legacy-restore", "--noflush", "--wait"],
      list: ["/usr/sbin/iptables-legacy", "--wait"],
    },
    6: {
      save: ["/usr/sbin/ip6tables-legacy-save"],
      restore: ["/usr/sbin/ip6tables-legacy-restore", "--noflush", "--wait"],
      list: ["/usr/sbin/ip6tables-legacy", "--wait"],
    },
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
    syncDomain("web1", forwards, { runner, tools: iptablesTools() }),
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
  assert.equal(renderRollback("web1", { chains: [], rules: [] }, { chains: [], rules: [] }), undefined);
});

Deno.test("renderSync() renders IPv6 forwards for ip6tables-restore", () => {
  const { forwards } = forwardsOf(
    `{"v6": {"private_ip": "fd00:122::10", "public_ip": "2001:db8:1::7", "source_ip": "2001:db8:99::/48",
      "port_map": {"tcp": [[2222, 22]]}}}`,
    "v6",
  );
  const h = domainHash("v6");
  const c = "-m comment --comment libvirt-hook-qemu:1:v6";
  const ct = "-m conntrack --ctstate DNAT --ctorigdst 2001:db8:1::7/128 --ctorigdstport 2222";
  assert.equal(
    renderSync("v6", forwards, { chains: [], rules: [] }),
    dedent(`
      *nat
      :LVH-${h}-DNAT - [0:0]
      :LVH-${h}-SNAT - [0:0]
      -I PREROUTING ${c} -j LVH-${h}-DNAT
      -I OUTPUT ${c} -j LVH-${h}-DNAT
      -I POSTROUTING ${c} -j LVH-${h}-SNAT
      -A LVH-${h}-DNAT -d 2001:db8:1::7/128 -s 2001:db8:99::/48 -p tcp -m tcp --dport 2222 ${c} -j DNAT --to-destination [fd00:122::10]:22
      -A LVH-${h}-SNAT -s fd00:122::/64 -d fd00:122::10/128 -p tcp -m tcp --dport 22 ${ct} ${c} -j MASQUERADE
      COMMIT
      *filter
      :LVH-${h}-FWD - [0:0]
      -I FORWARD ${c} -j LVH-${h}-FWD
      -A LVH-${h}-FWD -p tcp ${ct} --ctreplsrc fd00:122::10/128 --ctreplsrcport 22 ${c} -j ACCEPT
      COMMIT
    `),
  );
});

Deno.test("listingsToSave() reads single-chain listings as iptables-save text", () => {
  const h = domainHash("web1");
  const live = parseSave(listingsToSave([
    {
      table: "nat",
      text:
        `-P PREROUTING ACCEPT\n-A PREROUTING -m comment --comment "libvirt-hook-qemu:1:web1" -j LVH-${h}-DNAT\n`,
    },
    {
      table: "nat",
      text:
        `-N LVH-${h}-DNAT\n-A LVH-${h}-DNAT -d 203.0.113.1/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.1:80\n`,
    },
    { table: "filter", text: "-P FORWARD ACCEPT\n-A FORWARD -j LIBVIRT_FWX\n" },
  ]));
  assert.deepEqual(live.chains.map((c) => `${c.table} ${c.chain}`), [`nat LVH-${h}-DNAT`]);
  assert.deepEqual(live.rules.map((r) => `${r.table} ${r.chain}`), ["nat PREROUTING", `nat LVH-${h}-DNAT`]);
  assert.equal(live.libvirt, true);
});
