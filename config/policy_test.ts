import assert from "node:assert/strict";
import { formatDiagnostic } from "./model.ts";
import { loadParser, parseConfig } from "./validate.ts";
import { DEFAULT_XML_RULE, globMatch, inNetworks, isHostAddress, xmlRuleFor } from "./policy.ts";
import { parseAddress } from "../system/address.ts";

await loadParser();

const settings = (text: string) => parseConfig(`{ "/settings": ${text} }`, "hooks.jsonc").settings;

Deno.test("parseConfig() reads xml_forwards: off, the defaults, or rules with every field", () => {
  assert.deepEqual(settings(`{ "xml_forwards": true }`).xmlForwards, []);
  assert.deepEqual(settings(`{ "xml_forwards": false }`).xmlForwards, [
    { ...DEFAULT_XML_RULE, path: '["/settings"].xml_forwards', enabled: false },
  ]);
  const rules = settings(`{ "xml_forwards": [
    { "domains": "tenant-*", "addresses": ["203.0.113.10", "2001:db8::/64"], "protocols": ["tcp"],
      "ports": [[10000, 19999], 443] },
    { "domains": ["infra-?", "gw"], "snat": true, "all_ports": true, "host_ports": true, "targets": ["10.9.9.0/24"] },
  ] }`).xmlForwards;
  assert.deepEqual(rules, [
    {
      ...DEFAULT_XML_RULE,
      path: '["/settings"].xml_forwards[0]',
      domains: ["tenant-*"],
      addresses: ["203.0.113.10", "2001:db8::/64"],
      protocols: ["tcp"],
      ports: [[10000, 19999], [443, 443]],
    },
    {
      ...DEFAULT_XML_RULE,
      path: '["/settings"].xml_forwards[1]',
      domains: ["infra-?", "gw"],
      snat: true,
      allPorts: true,
      hostPorts: true,
      targets: ["10.9.9.0/24"],
    },
  ]);
});

Deno.test("parseConfig() reports each mistake of the policy settings where it is", async (t) => {
  const cases: [string, string, string[]][] = [
    ["xml_forwards of the wrong type", `{ "xml_forwards": "yes" }`, [
      'hooks.jsonc:1:34: Expected true, false or a list of rules, found a string (["/settings"].xml_forwards = "yes")',
    ]],
    [
      "a rule without domains, an unknown field, a bad flag",
      `{ "xml_forwards": [{ "ports": [22], "sudo": true, "snat": 1 }] }`,
      [
        'hooks.jsonc:1:52: Unknown field "sudo" of an xml_forwards rule; known: domains, enabled, addresses, targets, protocols, ports, host_ports, snat, all_ports, any_address (["/settings"].xml_forwards[0].sudo)',
        'hooks.jsonc:1:74: Expected true or false, found a number (["/settings"].xml_forwards[0].snat = 1)',
        'hooks.jsonc:1:35: A rule needs "domains": the domain name patterns it is for (["/settings"].xml_forwards[0])',
      ],
    ],
    [
      "ports, protocols and addresses that are none",
      `{ "xml_forwards": [{ "domains": "*", "ports": [[30, 20]], "protocols": ["icmp"], "addresses": ["x"] }] }`,
      [
        'hooks.jsonc:1:63: Expected a port (1-65535) or a range [first, last] (["/settings"].xml_forwards[0].ports[0])',
        'hooks.jsonc:1:87: Expected a list of protocols ("tcp", "udp") (["/settings"].xml_forwards[0].protocols)',
        'hooks.jsonc:1:111: Not an IP address or network (CIDR) (["/settings"].xml_forwards[0].addresses[0] = "x")',
      ],
    ],
    ["host_addresses that are none", `{ "host_addresses": ["203.0.113.9", "198.51.100.0/33"] }`, [
      'hooks.jsonc:1:52: Not an IP address or network (CIDR) (["/settings"].host_addresses[1] = "198.51.100.0/33")',
    ]],
  ];
  for (const [name, text, expected] of cases) {
    await t.step(name, () => {
      const config = parseConfig(`{ "/settings": ${text} }`, "hooks.jsonc");
      assert.deepEqual(config.diagnostics.map(formatDiagnostic), expected);
    });
  }
});

Deno.test("xmlRuleFor(): the first rule whose pattern matches the name, else the defaults", () => {
  const rules = settings(`{ "xml_forwards": [
    { "domains": "web?", "ports": [80] }, { "domains": ["web*", "db"], "enabled": false },
  ] }`).xmlForwards;
  assert.deepEqual(xmlRuleFor(rules, "web1").ports, [[80, 80]]);
  assert.equal(xmlRuleFor(rules, "web10").enabled, false);
  assert.equal(xmlRuleFor(rules, "db").enabled, false);
  assert.equal(xmlRuleFor(rules, "mail"), DEFAULT_XML_RULE);
  assert.equal(globMatch("a.b*", "a.bc"), true);
  assert.equal(globMatch("a.b*", "axbc"), false);
});

Deno.test("isHostAddress(): an interface's address or a declared one, never loopback; unknown: yes", () => {
  const a = (text: string) => parseAddress(text)!;
  const host = ["203.0.113.1", "127.0.0.1", "2001:db8:1::1"];
  assert.equal(isHostAddress(a("203.0.113.1"), host, []), true);
  assert.equal(isHostAddress(a("8.8.8.8"), host, []), false);
  assert.equal(isHostAddress(a("203.0.113.66"), host, ["203.0.113.64/29"]), true);
  assert.equal(isHostAddress(a("127.0.0.1"), host, []), false);
  assert.equal(isHostAddress(a("::1"), undefined, []), false);
  assert.equal(isHostAddress(a("8.8.8.8"), undefined, []), true);
  assert.equal(inNetworks(a("2001:db8:1::9"), ["2001:db8:1::/64"]), true);
  assert.equal(inNetworks(a("203.0.113.9"), ["2001:db8:1::/64"]), false);
});

Deno.test("parseConfig() refuses a public_ip that is not the host's, unless host_addresses declares it", () => {
  const text = `{
  "/settings": { "host_addresses": ["198.51.100.0/29"] },
  "a": { "private_ip": "192.168.122.10", "public_ip": "8.8.8.8", "port_map": { "tcp": [80] } },
  "b": { "private_ip": "192.168.122.11", "public_ip": "198.51.100.5", "port_map": { "tcp": [80] } },
  "c": { "private_ip": "192.168.122.12", "public_ip": "127.0.0.1", "port_map": { "tcp": [81] } },
}`;
  const options = { hostAddresses: ["203.0.113.1", "127.0.0.1"] };
  const config = parseConfig(text, "hooks.jsonc", options);
  assert.deepEqual(config.diagnostics.map(formatDiagnostic), [
    "hooks.jsonc:3:55: 8.8.8.8 is not an address of this host: its forward would capture the host's and the " +
    "guests' own connections to 8.8.8.8; if it is routed to this host (or comes up later), list it in " +
    '"/settings".host_addresses (a.public_ip = "8.8.8.8")',
    "hooks.jsonc:5:55: 127.0.0.1 is a loopback address: a forward there would take the host's own services on it " +
    '(c.public_ip = "127.0.0.1")',
  ]);
  assert.deepEqual([...config.domains.keys()], ["b"]);
  // check says it as a warning: the file is valid, a start on this host refuses it.
  const checked = parseConfig(text, "hooks.jsonc", { ...options, foreignAddresses: "warning" });
  assert.deepEqual([...checked.domains.keys()], ["a", "b", "c"]);
  assert.match(
    formatDiagnostic(checked.diagnostics[0]!),
    /: warning: 8\.8\.8\.8 .*; a start of "a" refuses it here/,
  );
  // Where the host's addresses are unknown, nothing is said.
  assert.deepEqual(parseConfig(text, "hooks.jsonc").diagnostics, []);
});
