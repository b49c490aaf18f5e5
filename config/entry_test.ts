import assert from "node:assert/strict";
import type { Diagnostic } from "./model.ts";
import { interfaceNameProblem, readDomain, target } from "./entry.ts";
import { parseTree } from "./jsonc.ts";
import type { Claim } from "./ports.ts";
import type { Report } from "./nodes.ts";
import { parseAddress } from "../system/address.ts";

/** Reads one domain's JSON with readDomain(), recording its problems as `path: message` and its claims. */
function read(json: string, defaultPublicIp = {}) {
  const problems: string[] = [];
  const report: Report = (_n, path, message, extra: Partial<Diagnostic> = {}) =>
    problems.push(`${extra.severity === "warning" ? "warning: " : ""}${path}: ${message} [${extra.domains}]`);
  const claims: Claim[] = [];
  const entries = readDomain("web1", parseTree(json)!, { report, claims, options: { defaultPublicIp } });
  const claimed = claims.map((c) =>
    `${c.protocol} ${c.address} ${c.first}-${c.last}${c.public ? " explicit" : ""}`
  );
  return { entries, problems, claimed };
}

Deno.test("readDomain() reads an entry: its targets, its ports, and the public ports it claims", () => {
  const { entries, problems, claimed } = read(
    `{"interface": "virbr0", "private_ip": "192.168.122.10", "public_ip": "203.0.113.5",
      "source_ip": "198.51.100.77/24", "private_ipv6": "FD00::10",
      "port_map": {"tcp": [22, [8080, 80]]}, "port_range": [{"init_port": 5000, "ports_num": 3, "protocol": "udp"}]}`,
    { 6: "2001:db8::1" },
  );
  assert.deepEqual(problems, []);
  assert.deepEqual(entries, [{
    path: "web1",
    interface: "virbr0",
    targets: [
      { family: 4, privateIp: "192.168.122.10", publicIp: "203.0.113.5", sources: ["198.51.100.0/24"] },
      { family: 6, privateIp: "fd00::10" },
    ],
    ports: [
      { protocol: "tcp", publicPort: 22, privatePort: 22, count: 1 },
      { protocol: "tcp", publicPort: 8080, privatePort: 80, count: 1 },
      { protocol: "udp", publicPort: 5000, privatePort: 5000, count: 3 },
    ],
  }]);
  assert.deepEqual(claimed, [
    "tcp 203.0.113.5 22-22 explicit",
    "tcp 2001:db8::1 22-22",
    "tcp 203.0.113.5 8080-8080 explicit",
    "tcp 2001:db8::1 8080-8080",
    "udp 203.0.113.5 5000-5002 explicit",
    "udp 2001:db8::1 5000-5002",
  ]);
});

Deno.test("readDomain() reports each mistake of an entry at its path, for its domain, and keeps none", async (t) => {
  const cases: [string, string, string[]][] = [
    ["not an entry", `"web"`, [
      "web1: Expected an entry object or a list of them, found a string; is this a config of another tool? " +
      "libvirt-hook-qemu maps each domain name to its forwards [web1]",
    ]],
    ["an empty list", `[]`, [
      "web1: Expected an entry object or a non-empty list of them, found an empty list [web1]",
    ]],
    ["a list item that is no entry", `[{"port_map": {"tcp": [22]}}, 3]`, [
      "web1[1]: Expected an entry object, found a number [web1]",
    ]],
    ["an unknown field, and a bad interface", `{"interfce": "x", "interface": "a b", "port_map": {}}`, [
      'web1.interfce: Unknown field "interfce"; known fields: interface, private_ip, public_ip, source_ip, ' +
      "private_ipv6, public_ipv6, source_ipv6, source_set, port_map, port_range, all_ports, snat, dev, description, enabled, log, counters [web1]",
      'web1.interface: Not a valid interface name: it holds " ", which no interface name may hold here [web1]',
    ]],
    ["families mixed", `{"private_ip": "10.0.0.1", "public_ip": "2001:db8::1", "port_map": {"tcp": [22]}}`, [
      "web1.public_ip: Cannot forward between families: private_ip is IPv4, public_ip is IPv6 [web1]",
    ]],
    ["public_ipv6 without private_ipv6", `{"public_ipv6": "2001:db8::1", "port_map": {"tcp": [22]}}`, [
      "web1.public_ipv6: public_ipv6 needs private_ipv6 [web1]",
    ]],
    ["all_ports without a public address", `{"all_ports": true}`, [
      "web1.all_ports: all_ports takes every port of its public address, so it needs one given: set public_ip [web1]",
    ]],
    ["snat that is no boolean", `{"public_ip": "203.0.113.5", "snat": "yes", "port_map": {"tcp": [22]}}`, [
      "web1.snat: Expected true or false, found a string [web1]",
    ]],
    ["log that is no boolean", `{"log": "yes", "port_map": {"tcp": [22]}}`, [
      "web1.log: Expected true or false, found a string [web1]",
    ]],
    ["counters that is no boolean", `{"counters": 1, "port_map": {"tcp": [22]}}`, [
      "web1.counters: Expected true or false, found a number [web1]",
    ]],
  ];
  for (const [name, json, want] of cases) {
    await t.step(name, () => {
      const { entries, problems } = read(json);
      assert.deepEqual(problems, want);
      assert.equal(entries, undefined);
    });
  }
});

Deno.test("readDomain() keeps an entry with warnings only: no port, the old example's source", () => {
  const { entries, problems } = read(`{"private_ip": "10.0.0.1", "source_ip": "8.8.8.8"}`);
  assert.deepEqual(problems, [
    "warning: web1.source_ip: This is the old example's placeholder: only 8.8.8.8 may use these forwards [web1]",
    "warning: web1: Entry forwards no port: give port_map or port_range [web1]",
  ]);
  assert.deepEqual(entries, [{
    path: "web1",
    targets: [{ family: 4, privateIp: "10.0.0.1", sources: ["8.8.8.8"] }],
    ports: [],
  }]);
});

Deno.test("readDomain() takes the found address's family from public_ip, and all_ports and snat claim it whole", () => {
  const { entries, problems, claimed } = read(
    `{"public_ip": "2001:db8::5", "all_ports": true, "snat": true}`,
  );
  assert.deepEqual(problems, []);
  assert.deepEqual(entries?.[0]?.targets, [{ family: 6, publicIp: "2001:db8::5" }]);
  assert.equal(entries?.[0]?.snat, true);
  assert.deepEqual(entries?.[0]?.ports.map((p) => `${p.protocol} ${p.publicPort}+${p.count}`), [
    "tcp 1+65535",
    "udp 1+65535",
  ]);
  assert.deepEqual(claimed, [
    "tcp 2001:db8::5 1-65535 explicit",
    "udp 2001:db8::5 1-65535 explicit",
    "tcp 2001:db8::5 0-0 explicit",
  ]);
});

Deno.test("interfaceNameProblem() refuses what the kernel or our rule languages would not take", async (t) => {
  const cases: [string, string | undefined][] = [
    ["virbr0", undefined],
    ["br-lan.100", undefined],
    ["", "0 bytes; the kernel allows 1 to 15"],
    ["a23456789012345x", "16 bytes; the kernel allows 1 to 15"],
    ["..", '".." is a directory, not a name'],
    ["eth0:1", 'it holds ":", which no interface name may hold here'],
    ["!eth0", 'a leading "!" would negate the match'],
    ["eth+", 'a trailing "+" would match every interface it begins'],
  ];
  for (const [name, want] of cases) {
    await t.step(JSON.stringify(name), () => assert.equal(interfaceNameProblem(name), want));
  }
});

Deno.test("target() keeps each address given as its text, and leaves out those not given", () => {
  const a = (text: string) => parseAddress(text)!;
  assert.deepEqual(target(4), { family: 4 });
  assert.deepEqual(target(6, { publicIp: a("2001:db8::1"), privateIp: undefined }), {
    family: 6,
    publicIp: "2001:db8::1",
  });
  assert.deepEqual(
    target(4, { privateIp: a("10.0.0.1"), publicIp: a("203.0.113.1") }),
    { family: 4, privateIp: "10.0.0.1", publicIp: "203.0.113.1" },
  );
});

Deno.test("readDomain() reads source_ip as a list of both families: each family's items to its own target", () => {
  const { entries, problems } = read(
    `{"private_ip": "192.168.122.10", "private_ipv6": "fd00::10", "port_map": {"tcp": [22]},
      "source_ip": ["198.51.100.0/24", "2001:db8:1::/48", "203.0.113.10-203.0.113.20", "198.51.100.7",
                    "2001:db8:2::1-2001:db8:2::9", "192.0.2.0/25", "192.0.2.128/25"]}`,
  );
  assert.deepEqual(problems, []);
  assert.deepEqual(entries?.[0]?.targets, [
    // Sorted, overlapping and adjacent items merged: the form nftables lists them in.
    {
      family: 4,
      privateIp: "192.168.122.10",
      sources: ["192.0.2.0/24", "198.51.100.0/24", "203.0.113.10-203.0.113.20"],
    },
    { family: 6, privateIp: "fd00::10", sources: ["2001:db8:1::/48", "2001:db8:2::1-2001:db8:2::9"] },
  ]);
});

Deno.test("readDomain() leaves a family with no item of a source_ip list unpublished, and says so", () => {
  const { entries, problems } = read(
    `{"private_ip": "192.168.122.10", "private_ipv6": "fd00::10", "port_map": {"tcp": [22]},
      "source_ip": ["198.51.100.0/24"]}`,
  );
  assert.deepEqual(problems, [
    "warning: web1.source_ip: No IPv6 item: the entry's IPv6 forwards are not published [web1]",
  ]);
  assert.deepEqual(entries?.[0]?.targets, [{
    family: 4,
    privateIp: "192.168.122.10",
    sources: ["198.51.100.0/24"],
  }]);
});

Deno.test("readDomain() keeps the old single-string source_ip to its own family, source_ipv6 to IPv6", () => {
  const { entries, problems } = read(
    `{"private_ip": "192.168.122.10", "private_ipv6": "fd00::10", "port_map": {"tcp": [22]},
      "source_ip": "198.51.100.0/24"}`,
  );
  assert.deepEqual(problems, []);
  assert.deepEqual(entries?.[0]?.targets, [
    { family: 4, privateIp: "192.168.122.10", sources: ["198.51.100.0/24"] },
    { family: 6, privateIp: "fd00::10" },
  ]);
  const six = read(
    `{"private_ip": "192.168.122.10", "private_ipv6": "fd00::10", "port_map": {"tcp": [22]},
      "source_ip": ["198.51.100.0/24"], "source_ipv6": ["2001:db8::/32", "2001:db9::1"]}`,
  );
  assert.deepEqual(six.problems, []);
  assert.deepEqual(six.entries?.[0]?.targets[1], {
    family: 6,
    privateIp: "fd00::10",
    sources: ["2001:db8::/32", "2001:db9::1"],
  });
});

Deno.test("readDomain() reports each bad source item at its own position, and source_set beside source_ip", async (t) => {
  const cases: [string, string[]][] = [
    [`"source_ip": ["198.51.100.0/24", "198.51.100.300", 7]`, [
      "web1.source_ip[1]: Not an IP address, network (CIDR) or range (first-last) [web1]",
      "web1.source_ip[2]: Expected an address, network or range as a string, found a number [web1]",
    ]],
    [`"source_ip": ["10.0.0.9-10.0.0.1"]`, [
      "web1.source_ip[0]: The range's first address is after its last [web1]",
    ]],
    [`"source_ip": ["10.0.0.1-2001:db8::1"]`, [
      "web1.source_ip[0]: A range cannot span both families [web1]",
    ]],
    [`"source_ip": ["10.0.0.0/33"]`, ["web1.source_ip[0]: Not a network: the prefix must be 0 to 32 [web1]"]],
    [`"source_ip": []`, [
      "web1.source_ip: Expected at least one address, network or range; leave the field out to allow all [web1]",
    ]],
    [`"source_ip": "2001:db8::1"`, [
      "web1.source_ip: Cannot forward between families: private_ip is IPv4, source_ip is IPv6 [web1]",
    ]],
    [`"source_set": "office", "source_ip": "10.0.0.1"`, [
      "web1.source_set: Give source_set or source_ip/source_ipv6, not both: add those addresses to the set [web1]",
    ]],
    [`"source_set": "my-office"`, [
      "web1.source_set: A set name is 1 to 20 letters, digits or underscores [web1]",
    ]],
  ];
  for (const [fields, want] of cases) {
    await t.step(fields, () => {
      const { entries, problems } = read(
        `{"private_ip": "192.168.122.10", "port_map": {"tcp": [22]}, ${fields}}`,
      );
      assert.deepEqual(problems, want);
      assert.equal(entries, undefined);
    });
  }
});

Deno.test("readDomain() gives source_set to every target", () => {
  const { entries, problems } = read(
    `{"private_ip": "192.168.122.10", "private_ipv6": "fd00::10", "port_map": {"tcp": [22]}, "source_set": "office"}`,
  );
  assert.deepEqual(problems, []);
  assert.deepEqual(entries?.[0]?.targets, [
    { family: 4, privateIp: "192.168.122.10", sourceSet: "office" },
    { family: 6, privateIp: "fd00::10", sourceSet: "office" },
  ]);
});

for (const flag of ["log", "counters"] as const) {
  Deno.test(`readDomain() reads "${flag}": true onto the entry, and false as nothing`, async (t) => {
    for (const [value, want] of [["true", true], ["false", undefined]] as const) {
      await t.step(`${flag} ${value}`, () => {
        const { entries, problems } = read(
          `{"private_ip": "10.0.0.1", "${flag}": ${value}, "port_map": {"tcp": [22]}}`,
        );
        assert.deepEqual(problems, []);
        assert.equal(entries?.[0]?.[flag], want);
      });
    }
  });
}
