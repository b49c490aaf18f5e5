/** The iptables backend's text: the exact iptables-restore batches each config produces. */

import {
  buildRules,
  iptablesTools,
  renderAdditions,
  renderRollback,
  renderSync,
  ruleLines,
} from "./iptables.ts";
import { describeForward, describePlan, logPrefix } from "./forward.ts";
import { liveForwards, liveOf, parseSave, userChainGoes } from "./iptables_live.ts";
import { domainHash } from "./names.ts";
import assert from "node:assert/strict";
import { COUNTING, dedent, EXAMPLE, forwardsOf, SAVED } from "../test/util.ts";

Deno.test("renderSync() renders the example config as one iptables-restore batch", () => {
  const { forwards, problems } = forwardsOf(EXAMPLE, "web1");
  assert.deepEqual(problems, []);
  const h = domainHash("web1");
  const c = "-m comment --comment libvirt-hook-qemu:1:web1";
  const label = "-m connlabel --label 127 --set";
  const ct = (port: string) =>
    `-m conntrack --ctstate DNAT --ctorigdst 203.0.113.7/32 --ctorigdstport ${port}`;
  assert.equal(
    renderSync("web1", { chains: [], rules: [] }, { forwards }),
    dedent(`
      *nat
      :LVH-${h}-DNAT - [0:0]
      :LVH-${h}-SNAT - [0:0]
      -I PREROUTING ${c} -j LVH-${h}-DNAT
      -I OUTPUT ${c} -j LVH-${h}-DNAT
      -I POSTROUTING ${c} -j LVH-${h}-SNAT
      -A LVH-${h}-DNAT -d 203.0.113.7/32 -s 198.51.100.0/24 -p tcp -m tcp --dport 2222 ${label} ${c} -j DNAT --to-destination 192.168.122.10:22
      -A LVH-${h}-DNAT -d 203.0.113.7/32 -s 198.51.100.0/24 -p tcp -m tcp --dport 443 ${label} ${c} -j DNAT --to-destination 192.168.122.10:443
      -A LVH-${h}-DNAT -d 203.0.113.7/32 -s 198.51.100.0/24 -p udp -m udp --dport 51820 ${label} ${c} -j DNAT --to-destination 192.168.122.10:51820
      -A LVH-${h}-DNAT -d 203.0.113.7/32 -s 198.51.100.0/24 -p udp -m udp --dport 30000:30099 ${label} ${c} -j DNAT --to-destination 192.168.122.10
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
      :LVH-USER - [0:0]
      :LVH-FORWARD - [0:0]
      -I FORWARD -m connlabel --label 127 -j LVH-FORWARD
      -A LVH-FORWARD ${c} -j LVH-${h}-FWD
      -A LVH-${h}-FWD ${c} -j LVH-USER
      -A LVH-${h}-FWD ${c} -j ACCEPT
      COMMIT
    `),
  );
});

Deno.test('renderSync() puts a forward on "*" on every local address but loopback\'s, on one interface, named', () => {
  const { forwards } = forwardsOf(
    `{"web": {"private_ip": "192.168.122.10", "public_ip": "*", "dev": "eth1", "description": "web shop",
      "port_map": {"tcp": [[8080, 80]]}}}`,
    "web",
  );
  const six = forwardsOf(
    `{"v6": {"private_ip": "fd00:122::10", "public_ip": "*", "port_map": {"udp": [53]}}}`,
    "v6",
  );
  const h = domainHash("web"), h6 = domainHash("v6");
  const c = "-m comment --comment libvirt-hook-qemu:1:web",
    c6 = "-m comment --comment libvirt-hook-qemu:1:v6";
  // No --ctorigdst in the hairpin: "*" has no one address; the original port and the guest still pin it.
  assert.equal(
    renderSync("web", { chains: [], rules: [] }, { forwards }),
    dedent(`
      *nat
      :LVH-${h}-DNAT - [0:0]
      :LVH-${h}-SNAT - [0:0]
      -I PREROUTING ${c} -j LVH-${h}-DNAT
      -I OUTPUT ${c} -j LVH-${h}-DNAT
      -I POSTROUTING ${c} -j LVH-${h}-SNAT
      -A LVH-${h}-DNAT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -i eth1 -p tcp -m tcp --dport 8080 -m connlabel --label 127 --set ${c} -m comment --comment "web shop" -j DNAT --to-destination 192.168.122.10:80
      -A LVH-${h}-SNAT -s 192.168.122.0/24 -d 192.168.122.10/32 -p tcp -m tcp --dport 80 -m conntrack --ctstate DNAT --ctorigdstport 8080 ${c} -j MASQUERADE
      COMMIT
      *filter
      :LVH-${h}-FWD - [0:0]
      :LVH-USER - [0:0]
      :LVH-FORWARD - [0:0]
      -I FORWARD -m connlabel --label 127 -j LVH-FORWARD
      -A LVH-FORWARD ${c} -j LVH-${h}-FWD
      -A LVH-${h}-FWD ${c} -j LVH-USER
      -A LVH-${h}-FWD ${c} -j ACCEPT
      COMMIT
    `),
  );
  assert.match(
    renderSync("v6", { chains: [], rules: [] }, { forwards: six.forwards })!,
    new RegExp(
      `\\n-A LVH-${h6}-DNAT ! -d ::1/128 -m addrtype --dst-type LOCAL -p udp -m udp --dport 53 ` +
        `-m connlabel --label 127 --set ${c6} ` +
        "-j DNAT --to-destination \\[fd00:122::10\\]:53\\n",
    ),
  );
});

Deno.test('liveForwards() reads "*", the interface and the description back from what iptables-save prints', () => {
  const h = domainHash("web");
  const c = '-m comment --comment "libvirt-hook-qemu:1:web"';
  // As iptables-save 1.8.9 printed the batch above (its own order of matches).
  const live = parseSave(
    `*nat\n:LVH-${h}-DNAT - [0:0]\n-A PREROUTING ${c} -j LVH-${h}-DNAT\n` +
      `-A LVH-${h}-DNAT ! -d 127.0.0.0/8 -i eth1 -p tcp -m addrtype --dst-type LOCAL -m tcp --dport 8080 ${c} ` +
      '-m comment --comment "web shop" -j DNAT --to-destination 192.168.122.10:80\nCOMMIT\n',
  );
  const { forwards } = forwardsOf(
    `{"web": {"private_ip": "192.168.122.10", "public_ip": "*", "dev": "eth1", "description": "web shop",
      "port_map": {"tcp": [[8080, 80]]}}}`,
    "web",
  );
  assert.deepEqual(liveForwards(live, 4).map(describeForward), [
    'tcp *:8080 -> 192.168.122.10:80 on eth1 "web shop"',
  ]);
  assert.deepEqual(liveForwards(live, 4).map(describeForward), describePlan("web", { forwards, snats: [] }));
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
    "filter LVH-FORWARD",
  ]);
});

Deno.test("renderSync() removes what is live for the domain before adding, whatever the config says now", () => {
  const h = domainHash("web1");
  const live = liveOf(parseSave(SAVED(h)), "web1");
  assert.equal(
    renderSync("web1", live),
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
  assert.equal(renderSync("other-domain", liveOf(parseSave(SAVED(h)), "other-domain")), undefined);
});

Deno.test("renderSync() on a second start replaces the live rules instead of adding to them", () => {
  const { forwards } = forwardsOf(
    `{"web1": {"private_ip": "192.168.122.10", "port_map": {"tcp": [80]}}}`,
    "web1",
  );
  const h = domainHash("web1");
  const text = renderSync("web1", liveOf(parseSave(SAVED(h)), "web1"), { forwards })!;
  const lines = text.split("\n");
  // Chains are declared (so flushed) once, old jumps deleted, chains kept, new jumps inserted once.
  assert.equal(lines.filter((l) => l === `:LVH-${h}-FWD - [0:0]`).length, 1);
  assert.equal(lines.filter((l) => l.startsWith("-D FORWARD")).length, 1);
  assert.equal(lines.filter((l) => l.startsWith("-I FORWARD")).length, 1);
  assert.equal(lines.filter((l) => l.startsWith("-X")).length, 0);
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

Deno.test("renderSync() renders IPv6 forwards for ip6tables-restore", () => {
  const { forwards } = forwardsOf(
    `{"v6": {"private_ip": "fd00:122::10", "public_ip": "2001:db8:1::7", "source_ip": "2001:db8:99::/48",
      "port_map": {"tcp": [[2222, 22]]}}}`,
    "v6",
  );
  const h = domainHash("v6");
  const c = "-m comment --comment libvirt-hook-qemu:1:v6";
  const ct = "-m conntrack --ctstate DNAT --ctorigdst 2001:db8:1::7/128 --ctorigdstport 2222";
  const label = "-m connlabel --label 127 --set";
  assert.equal(
    renderSync("v6", { chains: [], rules: [] }, { forwards }),
    dedent(`
      *nat
      :LVH-${h}-DNAT - [0:0]
      :LVH-${h}-SNAT - [0:0]
      -I PREROUTING ${c} -j LVH-${h}-DNAT
      -I OUTPUT ${c} -j LVH-${h}-DNAT
      -I POSTROUTING ${c} -j LVH-${h}-SNAT
      -A LVH-${h}-DNAT -d 2001:db8:1::7/128 -s 2001:db8:99::/48 -p tcp -m tcp --dport 2222 ${label} ${c} -j DNAT --to-destination [fd00:122::10]:22
      -A LVH-${h}-SNAT -s fd00:122::/64 -d fd00:122::10/128 -p tcp -m tcp --dport 22 ${ct} ${c} -j MASQUERADE
      COMMIT
      *filter
      :LVH-${h}-FWD - [0:0]
      :LVH-USER - [0:0]
      :LVH-FORWARD - [0:0]
      -I FORWARD -m connlabel --label 127 -j LVH-FORWARD
      -A LVH-FORWARD ${c} -j LVH-${h}-FWD
      -A LVH-${h}-FWD ${c} -j LVH-USER
      -A LVH-${h}-FWD ${c} -j ACCEPT
      COMMIT
    `),
  );
});

Deno.test("renderSync() maps a range to other ports of the guest with DNAT's base port, in both families", () => {
  const { forwards } = forwardsOf(
    `{"shift": {"private_ip": "192.168.122.10", "private_ipv6": "fd00:122::10", "public_ip": "203.0.113.7",
      "public_ipv6": "2001:db8:1::7",
      "port_range": [{"init_port": 30000, "ports_num": 100, "protocol": "tcp", "to_port": 40000},
                     {"init_port": 50000, "ports_num": 2, "protocol": "udp"}]}}`,
    "shift",
  );
  const h = domainHash("shift");
  const c = "-m comment --comment libvirt-hook-qemu:1:shift";
  const label = "-m connlabel --label 127 --set";
  const ct = (pub: string, ports: string) =>
    `-m conntrack --ctstate DNAT --ctorigdst ${pub} --ctorigdstport ${ports}`;
  const text = (family: 4 | 6) =>
    renderSync("shift", { chains: [], rules: [] }, { forwards: forwards.filter((f) => f.family === family) });
  assert.equal(
    text(4),
    dedent(`
      *nat
      :LVH-${h}-DNAT - [0:0]
      :LVH-${h}-SNAT - [0:0]
      -I PREROUTING ${c} -j LVH-${h}-DNAT
      -I OUTPUT ${c} -j LVH-${h}-DNAT
      -I POSTROUTING ${c} -j LVH-${h}-SNAT
      -A LVH-${h}-DNAT -d 203.0.113.7/32 -p tcp -m tcp --dport 30000:30099 ${label} ${c} -j DNAT --to-destination 192.168.122.10:40000-40099/30000
      -A LVH-${h}-DNAT -d 203.0.113.7/32 -p udp -m udp --dport 50000:50001 ${label} ${c} -j DNAT --to-destination 192.168.122.10
      -A LVH-${h}-SNAT -s 192.168.122.0/24 -d 192.168.122.10/32 -p tcp -m tcp --dport 40000:40099 ${
      ct("203.0.113.7/32", "30000:30099")
    } ${c} -j MASQUERADE
      -A LVH-${h}-SNAT -s 192.168.122.0/24 -d 192.168.122.10/32 -p udp -m udp --dport 50000:50001 ${
      ct("203.0.113.7/32", "50000:50001")
    } ${c} -j MASQUERADE
      COMMIT
      *filter
      :LVH-${h}-FWD - [0:0]
      :LVH-USER - [0:0]
      :LVH-FORWARD - [0:0]
      -I FORWARD -m connlabel --label 127 -j LVH-FORWARD
      -A LVH-FORWARD ${c} -j LVH-${h}-FWD
      -A LVH-${h}-FWD ${c} -j LVH-USER
      -A LVH-${h}-FWD ${c} -j ACCEPT
      COMMIT
    `),
  );
  assert.match(text(6)!, / -j DNAT --to-destination \[fd00:122::10\]:40000-40099\/30000\n/);
});

Deno.test("renderSync() sends every port of an all_ports address to the guest, after returning those others take", () => {
  const { forwards } = forwardsOf(
    `{"vm": {"private_ip": "192.168.122.10", "public_ip": "203.0.113.9", "all_ports": true,
             "port_map": {"tcp": [[2222, 22]]}},
      "mail": {"private_ip": "192.168.122.11", "public_ip": "203.0.113.9", "port_map": {"tcp": [25, 587]}}}`,
    "vm",
  );
  const h = domainHash("vm");
  const c = "-m comment --comment libvirt-hook-qemu:1:vm";
  const label = "-m connlabel --label 127 --set";
  const lines = renderSync("vm", { chains: [], rules: [] }, { forwards })!.split("\n");
  // Its own port first; then the ports other forwards take on the address go back to PREROUTING; then the rest.
  assert.deepEqual(lines.filter((l) => l.startsWith(`-A LVH-${h}-DNAT`)), [
    `-A LVH-${h}-DNAT -d 203.0.113.9/32 -p tcp -m tcp --dport 2222 ${label} ${c} -j DNAT --to-destination 192.168.122.10:22`,
    `-A LVH-${h}-DNAT -d 203.0.113.9/32 -p tcp -m tcp --dport 25 ${c} -j RETURN`,
    `-A LVH-${h}-DNAT -d 203.0.113.9/32 -p tcp -m tcp --dport 587 ${c} -j RETURN`,
    `-A LVH-${h}-DNAT -d 203.0.113.9/32 -p tcp -m tcp --dport 2222 ${c} -j RETURN`,
    `-A LVH-${h}-DNAT -d 203.0.113.9/32 -p tcp -m tcp --dport 1:65535 ${label} ${c} -j DNAT --to-destination 192.168.122.10`,
    `-A LVH-${h}-DNAT -d 203.0.113.9/32 -p udp -m udp --dport 1:65535 ${label} ${c} -j DNAT --to-destination 192.168.122.10`,
  ]);
  // The administrator's bans, then one accept, whatever the number of forwards: our DNAT labels what it translates.
  assert.deepEqual(lines.filter((l) => l.startsWith(`-A LVH-${h}-FWD`)), [
    `-A LVH-${h}-FWD ${c} -j LVH-USER`,
    `-A LVH-${h}-FWD ${c} -j ACCEPT`,
  ]);
});

Deno.test("ruleLines() puts a guest's outbound NAT in its SNAT chain, after the hairpin rules; nothing else changes", () => {
  const config =
    `{"mail": {"private_ip": "192.168.122.10", "public_ip": "203.0.113.9", "private_ipv6": "fd00:122::10",
    "public_ipv6": "2001:db8:1::9", "snat": true, "port_map": {"tcp": [25]}}}`;
  const { forwards, snats } = forwardsOf(config, "mail");
  assert.deepEqual(snats, [
    { family: 4, privateIp: "192.168.122.10", publicIp: "203.0.113.9", network: "192.168.122.0/24" },
    { family: 6, privateIp: "fd00:122::10", publicIp: "2001:db8:1::9", network: "fd00:122::/64" },
  ]);
  const h = domainHash("mail");
  const c = "-m comment --comment libvirt-hook-qemu:1:mail";
  const text = (family: 4 | 6) =>
    ruleLines("mail", forwards.filter((f) => f.family === family), {
      snats: snats.filter((s) => s.family === family),
    });
  const v4 = text(4);
  assert.deepEqual(v4.text.nat.split("\n").slice(-4), [
    `-A LVH-${h}-SNAT -s 192.168.122.0/24 -d 192.168.122.10/32 -p tcp -m tcp --dport 25 -m conntrack --ctstate DNAT --ctorigdst 203.0.113.9/32 --ctorigdstport 25 ${c} -j MASQUERADE`,
    `-A LVH-${h}-SNAT -s 192.168.122.10/32 -d 224.0.0.0/24 ${c} -j RETURN`,
    `-A LVH-${h}-SNAT -s 192.168.122.10/32 -d 255.255.255.255/32 ${c} -j RETURN`,
    `-A LVH-${h}-SNAT -s 192.168.122.10/32 ! -d 192.168.122.0/24 ${c} -j SNAT --to-source 203.0.113.9`,
  ]);
  // Three rules per forward, the jump to the administrator's chain, and the NAT's three.
  assert.equal(v4.count, 3 + 1 + 3);
  assert.deepEqual(text(6).text.nat.split("\n").slice(-2), [
    `-A LVH-${h}-SNAT -s fd00:122::10/128 -d ff00::/8 ${c} -j RETURN`,
    `-A LVH-${h}-SNAT -s fd00:122::10/128 ! -d fd00:122::/64 ${c} -j SNAT --to-source 2001:db8:1::9`,
  ]);
  // Without forwards, the NAT alone still gets its chain and its jump from POSTROUTING.
  const alone = ruleLines("mail", [], { snats: snats.filter((s) => s.family === 4) });
  assert.deepEqual(alone.text.nat.split("\n").length, 3);
  assert.ok(alone.jumps.some((j) => j.chain === "POSTROUTING"));
  // Read back for status.
  const live = parseSave(`*nat\n:LVH-${h}-SNAT - [0:0]\n${v4.text.nat}\nCOMMIT\n`);
  assert.deepEqual(liveForwards(live, 4).filter((f) => f.outbound).map(describeForward), [
    "snat 192.168.122.10 -> 203.0.113.9 (outgoing connections)",
  ]);
});

Deno.test("renderSync() creates the administrator's LVH-USER where it is missing, and never declares a live one", () => {
  const { forwards } = forwardsOf(EXAMPLE, "web1");
  const h = domainHash("web1");
  const filter = (userChain: boolean) => {
    const text = renderSync("web1", { chains: [], rules: [] }, { forwards, userChain })!;
    return text.slice(text.indexOf("*filter")).split("\n").slice(0, 7);
  };
  const c = "-m comment --comment libvirt-hook-qemu:1:web1";
  // Declaring a chain in iptables-restore flushes it: a live LVH-USER (with fail2ban's jumps) is only jumped to.
  assert.deepEqual(filter(true), [
    "*filter",
    `:LVH-${h}-FWD - [0:0]`,
    ":LVH-FORWARD - [0:0]",
    "-I FORWARD -m connlabel --label 127 -j LVH-FORWARD",
    `-A LVH-FORWARD ${c} -j LVH-${h}-FWD`,
    `-A LVH-${h}-FWD ${c} -j LVH-USER`,
    `-A LVH-${h}-FWD ${c} -j ACCEPT`,
  ]);
  assert.deepEqual(filter(false).slice(0, 3), ["*filter", `:LVH-${h}-FWD - [0:0]`, ":LVH-USER - [0:0]"]);
  // A removal neither declares nor deletes it: it is the administrator's.
  const live = parseSave(renderSync("web1", { chains: [], rules: [] }, { forwards })!);
  assert.equal(live.user, true);
  const removal = renderSync("web1", liveOf(live, "web1"), { userChain: true })!;
  assert.doesNotMatch(removal, /LVH-USER/);
});

Deno.test("userChainGoes() takes LVH-USER with our last domain only while it is empty", async (t) => {
  const { forwards } = forwardsOf(EXAMPLE, "web1");
  const web1 = renderSync("web1", { chains: [], rules: [] }, { forwards })!;
  const other = renderSync("web2", { chains: [], rules: [] }, { forwards })!;
  const ban = "*filter\n-A LVH-USER -s 198.51.100.9/32 -j DROP\nCOMMIT\n";
  const cases: [string, string, boolean][] = [
    ["the last domain, LVH-USER empty: it goes", web1, true],
    ["a ban in it (fail2ban's jump or a rule of the administrator's): it stays", web1 + ban, false],
    ["another domain's FWD chain still jumps to it: it stays", web1 + other, false],
    ["never created: nothing to take", web1.replace(":LVH-USER - [0:0]\n", ""), false],
  ];
  for (const [name, saved, goes] of cases) {
    await t.step(name, () => {
      const live = parseSave(saved);
      assert.equal(userChainGoes(live, "web1"), goes);
      const removal = renderSync("web1", liveOf(live, "web1"), { userChain: true, dropUser: goes })!;
      assert.equal(removal.includes("-X LVH-USER\n"), goes);
    });
  }
});

Deno.test('ruleLines() logs each new connection of a "log" entry in its DNAT chain, rate-limited, named', () => {
  const { forwards } = forwardsOf(
    `{"web1": {"private_ip": "192.168.122.10", "public_ip": "203.0.113.7", "log": true,
               "port_map": {"tcp": [[2222, 22]]}}}`,
    "web1",
  );
  const h = domainHash("web1");
  const c = "-m comment --comment libvirt-hook-qemu:1:web1";
  const rules = ruleLines("web1", forwards);
  assert.deepEqual(rules.text.nat.split("\n").slice(0, 2), [
    `-A LVH-${h}-DNAT -d 203.0.113.7/32 -p tcp -m tcp --dport 2222 -m limit --limit 10/min --limit-burst 5 ${c} -j LOG --log-prefix "lvh web1 tcp/2222: "`,
    `-A LVH-${h}-DNAT -d 203.0.113.7/32 -p tcp -m tcp --dport 2222 -m connlabel --label 127 --set ${c} ` +
    "-j DNAT --to-destination 192.168.122.10:22",
  ]);
  // Three rules, the jump to LVH-USER, the log.
  assert.equal(rules.count, 5);
  // Read back, the log line is no forward of its own.
  assert.equal(liveForwards(parseSave(`*nat\n${rules.text.nat}\nCOMMIT\n`), 4).length, 1);
});

Deno.test("logPrefix() names the domain and the forward in at most 29 characters, with nothing to quote", async (t) => {
  const cases: [string, string, number, string][] = [
    ["a short name", "web1", 2222, "lvh web1 tcp/2222: "],
    ["a long name, cut", "a-very-long-domain-name-indeed", 65535, "lvh a-very-long-d tcp/65535: "],
    ["quotes and spaces", 'we "b" 1', 22, "lvh we__b__1 tcp/22: "],
  ];
  for (const [name, domain, port, prefix] of cases) {
    await t.step(name, () => {
      const got = logPrefix(domain, { protocol: "tcp", publicPort: port });
      assert.equal(got, prefix);
      assert.ok(got.length <= 29, got);
      assert.match(got, /^lvh [A-Za-z0-9._-]+ tcp\/\d+: $/);
    });
  }
});

Deno.test("renderSync() keeps one gate in FORWARD for every domain, and takes it with the last domain's jump", async (t) => {
  const { forwards } = forwardsOf(EXAMPLE, "web1");
  const [h1, h2, h3] = [domainHash("web1"), domainHash("web2"), domainHash("web3")];
  const c = (d: string) => `-m comment --comment "libvirt-hook-qemu:1:${d}"`;
  const chain = (h: string, d: string) =>
    `:LVH-${h}-FWD - [0:0]\n-A LVH-${h}-FWD ${c(d)} -j LVH-USER\n-A LVH-${h}-FWD ${c(d)} -j ACCEPT\n`;
  // As iptables-save prints two running domains on a libvirt host; `gateFirst`: whether ours is still on top.
  const saved = (domains: [string, string][], gateFirst = true) => {
    const gate = "-A FORWARD -m connlabel --label 127 -j LVH-FORWARD\n";
    const libvirt = "-A FORWARD -j LIBVIRT_FWX\n";
    return "*filter\n:FORWARD ACCEPT [0:0]\n:LIBVIRT_FWX - [0:0]\n:LVH-FORWARD - [0:0]\n:LVH-USER - [0:0]\n" +
      domains.map(([h, d]) => chain(h, d)).join("") + (gateFirst ? gate + libvirt : libvirt + gate) +
      domains.map(([h, d]) => `-A LVH-FORWARD ${c(d)} -j LVH-${h}-FWD\n`).join("") + "COMMIT\n";
  };
  const two = parseSave(saved([[h2, "web2"], [h1, "web1"]]));
  const filter = (text: string | undefined) => text!.slice(text!.indexOf("*filter"));

  await t.step("the other domains' jumps stay, and the gate with them", () => {
    assert.equal(
      filter(renderSync("web1", liveOf(two, "web1"), { userChain: true })),
      dedent(`
        *filter
        :LVH-${h1}-FWD - [0:0]
        -D LVH-FORWARD ${c("web1")} -j LVH-${h1}-FWD
        -X LVH-${h1}-FWD
        COMMIT
      `),
    );
  });
  await t.step("the last domain's removal takes the gate's rule, then the gate", () => {
    const one = parseSave(saved([[h2, "web2"]]));
    assert.equal(
      filter(renderSync("web2", liveOf(one, "web2"), { userChain: true })),
      dedent(`
        *filter
        :LVH-${h2}-FWD - [0:0]
        -D LVH-FORWARD ${c("web2")} -j LVH-${h2}-FWD
        -D FORWARD -m connlabel --label 127 -j LVH-FORWARD
        -X LVH-${h2}-FWD
        -X LVH-FORWARD
        COMMIT
      `),
    );
  });
  await t.step(
    "a start joins the live gate without declaring it (that would flush the others' jumps)",
    () => {
      const text = filter(renderSync("web3", liveOf(two, "web3"), { forwards, userChain: true }));
      assert.doesNotMatch(text, /:LVH-FORWARD|FORWARD -m connlabel/);
      assert.match(
        text,
        new RegExp(`\\n-A LVH-FORWARD -m comment --comment libvirt-hook-qemu:1:web3 -j LVH-${h3}-FWD\\n`),
      );
    },
  );
  await t.step(
    "a gate below another tool's rule (libvirt reloaded) goes back on top with the next sync",
    () => {
      const buried = parseSave(saved([[h2, "web2"], [h1, "web1"]], false));
      assert.equal(buried.gate?.jump?.buried, true);
      const lines = filter(renderSync("web1", liveOf(buried, "web1"), { forwards, userChain: true })).split(
        "\n",
      );
      const del = lines.indexOf("-D FORWARD -m connlabel --label 127 -j LVH-FORWARD");
      const ins = lines.indexOf("-I FORWARD -m connlabel --label 127 -j LVH-FORWARD");
      assert.ok(del > 0 && ins > del, lines.join("\n"));
      assert.ok(!lines.includes(":LVH-FORWARD - [0:0]"));
    },
  );
  await t.step("a rollback puts the gate back where the removal took it", () => {
    const one = parseSave(saved([[h1, "web1"]]));
    const now = parseSave(
      "*filter\n:FORWARD ACCEPT [0:0]\n:LVH-USER - [0:0]\n-A FORWARD -j LIBVIRT_FWX\nCOMMIT\n",
    );
    const text = renderRollback("web1", { before: liveOf(one, "web1"), now: liveOf(now, "web1") })!;
    assert.match(text, /\n:LVH-FORWARD - \[0:0\]\n/);
    assert.ok(text.trimEnd().endsWith("-I FORWARD -m connlabel --label 127 -j LVH-FORWARD\nCOMMIT"), text);
  });
});

Deno.test('ruleLines() counts a "counters" entry\'s packets and bytes in a chain of its own, ahead of every accept; liveForwards() reads them', () => {
  const { forwards } = forwardsOf(COUNTING, "web1");
  const h = domainHash("web1");
  const c = "-m comment --comment libvirt-hook-qemu:1:web1";
  const rules = ruleLines("web1", forwards);
  // One rule a forward, by its connection's original destination ("*": its port alone, which no other forward
  // may have); all_ports in runs around the ports other forwards take, whose traffic is theirs.
  const counting = [
    `-A LVH-${h}-CNT -p tcp -m conntrack --ctorigdst 203.0.113.7/32 --ctorigdstport 2222 ${c} -j RETURN`,
    `-A LVH-${h}-CNT -p udp -m conntrack --ctorigdstport 5353 ${c} -j RETURN`,
    `-A LVH-${h}-CNT -p tcp -m conntrack --ctorigdst 203.0.113.8/32 --ctorigdstport 1:21 ${c} -j RETURN`,
    `-A LVH-${h}-CNT -p tcp -m conntrack --ctorigdst 203.0.113.8/32 --ctorigdstport 23:65535 ${c} -j RETURN`,
    `-A LVH-${h}-CNT -p udp -m conntrack --ctorigdst 203.0.113.8/32 --ctorigdstport 1:5352 ${c} -j RETURN`,
    `-A LVH-${h}-CNT -p udp -m conntrack --ctorigdst 203.0.113.8/32 --ctorigdstport 5354:65535 ${c} -j RETURN`,
  ];
  assert.deepEqual(rules.text.filter.split("\n").slice(2), counting);
  // In the gate, the accept goes at the end and the counters on top: every domain's counters come before the
  // first accept, whichever domain started last.
  assert.deepEqual(
    renderAdditions(rules).filter.split("\n").filter((l) => l.includes("LVH-FORWARD ")),
    [
      `-A LVH-FORWARD ${c} -j LVH-${h}-FWD`,
      // Entered by the packets of its guests' connections alone, both ways.
      `-I LVH-FORWARD -d 192.168.122.10/32 ${c} -j LVH-${h}-CNT`,
      `-I LVH-FORWARD -s 192.168.122.10/32 ${c} -j LVH-${h}-CNT`,
      `-I LVH-FORWARD -d 192.168.122.11/32 ${c} -j LVH-${h}-CNT`,
      `-I LVH-FORWARD -s 192.168.122.11/32 ${c} -j LVH-${h}-CNT`,
    ],
  );
  // A domain that does not count has no counting chain.
  assert.equal(
    ruleLines("web1", forwards.map(({ countTraffic: _, ...f }) => f)).text.filter.includes("CNT"),
    false,
  );
  // Read back from iptables-save -c: each forward's packets and bytes are its rules' (all_ports: its runs').
  const counted = counting.map((l, i) => `[${i + 1}:${(i + 1) * 100}] ${l}`);
  const dnat = rules.text.nat.split("\n").filter((l) => l.includes("-j DNAT")).map((l) => `[1:60] ${l}`);
  const live = parseSave(
    `*nat\n-A PREROUTING ${c} -j LVH-${h}-DNAT\n${dnat.join("\n")}\nCOMMIT\n*filter\n${
      counted.join("\n")
    }\nCOMMIT\n`,
  );
  assert.deepEqual(liveForwards(live, 4).map((f) => [describeForward(f), f.counters]), [
    ["tcp 203.0.113.7:2222 -> 192.168.122.10:22", { connections: 1, packets: 1, bytes: 100 }],
    ["udp *:5353 -> 192.168.122.10:53", { connections: 1, packets: 2, bytes: 200 }],
    ["tcp 203.0.113.8:22 -> 192.168.122.11:22", { connections: 1 }],
    ["tcp 203.0.113.8:1-65535 -> 192.168.122.11:1-65535", { connections: 1, packets: 7, bytes: 700 }],
    ["udp 203.0.113.8:1-65535 -> 192.168.122.11:1-65535", { connections: 1, packets: 11, bytes: 1100 }],
  ]);
});
