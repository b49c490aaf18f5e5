/** Unit tests of the config: the old format read unchanged, and every mistake reported at its line and column. */

import assert from "node:assert/strict";
import { configClaims, domainConfig, loadConfig, loadConfigFor } from "./config.ts";
import { interfaceNameProblem } from "./config/entry.ts";
import { formatDiagnostic } from "./config/model.ts";
import { configCandidates, configMentions, readConfigSource } from "./config/source.ts";
import { loadParser, parseConfig } from "./config/validate.ts";

await loadParser();

function problems(text: string, options = {}): string[] {
  return parseConfig(text, "hooks.jsonc", options).diagnostics.map(formatDiagnostic);
}

Deno.test("parseConfig() reports each mistake as file:line:column: message (json.path = value)", async (t) => {
  const cases: [string, string, string[]][] = [
    ["a typo in a field name", `{"web1": {"private_ip": "10.0.0.1",\n  "prot_map": {"tcp": [22]}}}`, [
      'hooks.jsonc:2:3: Unknown field "prot_map"; known fields: interface, private_ip, public_ip, source_ip, ' +
      "private_ipv6, public_ipv6, source_ipv6, source_set, port_map, port_range, all_ports, snat, dev, description, enabled, log, counters (web1.prot_map)",
      "hooks.jsonc:1:10: warning: Entry forwards no port: give port_map or port_range (web1)",
    ]],
    ["a malformed address", `{"web1": {"private_ip": "192.168.122.300", "port_map": {"tcp": [22]}}}`, [
      'hooks.jsonc:1:25: Not an IP address (web1.private_ip = "192.168.122.300")',
    ]],
    [
      "a public address of the other family than the guest's (found) address",
      `{"web1": {"source_ip": "10.0.0.0/8", "public_ip": "2001:db8::1", "port_map": {"tcp": [22]}}}`,
      [
        // The found address takes public_ip's family; source_ip must follow it.
        "hooks.jsonc:1:24: Cannot forward between families: the guest's address is IPv6, source_ip is IPv4 " +
        '(web1.source_ip = "10.0.0.0/8")',
      ],
    ],
    [
      "a port out of range and a port as a string",
      `{"w": {"private_ip": "10.0.0.1",\n "port_map": {"tcp": [[70000, 22], "80"]}}}`,
      [
        "hooks.jsonc:2:24: Port out of range 1-65535 (w.port_map.tcp[0][0] = 70000)",
        'hooks.jsonc:2:36: Expected a port number, found a string (w.port_map.tcp[1] = "80")',
      ],
    ],
    [
      "a range running past 65535",
      `{"w": {"private_ip": "10.0.0.1", "port_range": [{"init_port": 65500, "ports_num": 100, "protocol": "tcp"}]}}`,
      [
        "hooks.jsonc:1:83: Range 65500-65599 runs past port 65535 (w.port_range[0].ports_num = 100)",
      ],
    ],
    ["a protocol that has no ports", `{"w": {"private_ip": "10.0.0.1", "port_map": {"sctp": [5]}}}`, [
      'hooks.jsonc:1:47: Protocol "sctp" cannot be forwarded by port; use tcp or udp (w.port_map.sctp)',
    ]],
    [
      "icmp, which the old hook accepted but never applied",
      `{"w": {"private_ip": "10.0.0.1", "port_map": {"icmp": [1], "tcp": [22]}}}`,
      [
        "hooks.jsonc:1:47: warning: icmp cannot be forwarded by port (the old hook could never apply it); skipped (w.port_map.icmp)",
      ],
    ],
    [
      "families mixed inside one forward",
      `{"w": {"private_ip": "10.0.0.1", "public_ip": "2001:db8::1", "port_map": {"tcp": [22]}}}`,
      [
        'hooks.jsonc:1:47: Cannot forward between families: private_ip is IPv4, public_ip is IPv6 (w.public_ip = "2001:db8::1")',
      ],
    ],
    ["a domain mapped to a string, as another tool's file does", `{"iface-WAN": "eth0"}`, [
      "hooks.jsonc:1:15: Expected an entry object or a list of them, found a string; is this a config of another tool? " +
      'libvirt-hook-qemu maps each domain name to its forwards (iface-WAN = "eth0")',
    ]],
    [
      "the same public port claimed twice, with IPv6 in another spelling",
      dedent2(`
      {"a": {"private_ip": "fd00::1", "public_ip": "2001:db8::1", "port_map": {"tcp": [443]}},
       "b": {"private_ip": "fd00::2", "public_ip": "2001:0db8:0:0:0:0:0:1", "port_range": [{"init_port": 400, "ports_num": 50, "protocol": "tcp"}]}}
    `),
      [
        "hooks.jsonc:1:82: Public tcp port 443 on 2001:db8::1 is also claimed by b.port_range[0] (400-449) (a.port_map.tcp[0] = 443)",
        "hooks.jsonc:2:85: Public tcp port 400-449 on 2001:db8::1 is also claimed by a.port_map.tcp[0] (443) (b.port_range[0])",
      ],
    ],
    ["a file that does not parse", `{"a": {"private_ip": "10.0.0.1",, }}`, [
      "hooks.jsonc:1:33: Cannot parse the config: expected a quoted property name",
      "hooks.jsonc:1:33: Cannot parse the config: expected a value",
    ]],
    ["an unknown setting", `{"/settings": {"backend": "iptables", "colour": "blue"}}`, [
      'hooks.jsonc:1:39: Unknown setting "colour"; known: backend, accept_in, host_addresses, xml_forwards (["/settings"].colour)',
    ]],
  ];
  for (const [name, text, expected] of cases) {
    await t.step(name, () => assert.deepEqual(problems(text), expected));
  }
});

Deno.test('parseConfig() reports each mistake of dev, description, enabled and "*" where it is', () => {
  const text = `{
  "web": {"private_ip": "10.0.0.2", "public_ip": "*", "dev": "eth0:1", "description": "say \\"hi\\"",
          "enabled": "no", "port_map": {"tcp": [80]}},
  "db": {"private_ip": "10.0.0.3", "public_ip": "*", "snat": true, "port_map": {"tcp": [5432]}},
  "a": {"private_ip": "10.0.0.4", "public_ip": "*", "port_map": {"tcp": [8080]}},
  "b": {"private_ip": "10.0.0.5", "public_ip": "203.0.113.1", "port_map": {"tcp": [8080]}},
  "c": {"private_ip": "fd00::5", "public_ip": "*", "port_map": {"tcp": [8080]}},
  "d": {"private_ip": "10.0.0.6", "description": "${"x".repeat(65)}", "port_map": {"tcp": [1]}}
}`;
  // "*" clashes with an address of its own family on the same port (a, b), not with the other family's (c).
  assert.deepEqual(problems(text, { hostAddresses: ["203.0.113.1"] }), [
    'hooks.jsonc:2:62: Not a valid interface name: it holds ":", which no interface name may hold here (web.dev = "eth0:1")',
    'hooks.jsonc:2:87: A description holds printable ASCII without double quotes or backslashes, found "\\"" (web.description = "say \\"hi\\"")',
    'hooks.jsonc:3:22: Expected true or false, found a string (web.enabled = "no")',
    'hooks.jsonc:4:62: snat makes the guest\'s connections leave from its public address, so it needs one address, not "*" (db.snat = true)',
    `hooks.jsonc:8:50: A description holds at most 64 characters, not 65 (d.description = "${
      "x".repeat(56)
    }...)`,
    "hooks.jsonc:6:84: Public tcp port 8080 on 203.0.113.1 is also claimed by a.port_map.tcp[0] (8080) (b.port_map.tcp[0] = 8080)",
    "hooks.jsonc:5:74: Public tcp port 8080 on any IPv4 address is also claimed by b.port_map.tcp[0] (8080) (a.port_map.tcp[0] = 8080)",
  ]);
});

Deno.test('parseConfig() keeps dev, description, enabled: false and "*" on the entry', () => {
  const config = parseConfig(
    `{"web": {"private_ip": "10.0.0.5", "private_ipv6": "fd00::5", "public_ip": "*", "public_ipv6": "*", "dev": "eth1",
      "description": "shop", "enabled": false, "port_map": {"tcp": [443]}}}`,
    "hooks.jsonc",
  );
  assert.deepEqual(config.diagnostics, []);
  assert.deepEqual(config.domains.get("web"), [{
    path: "web",
    file: "hooks.jsonc",
    targets: [
      { family: 4, privateIp: "10.0.0.5", publicIp: "*" },
      { family: 6, privateIp: "fd00::5", publicIp: "*" },
    ],
    ports: [{ protocol: "tcp", publicPort: 443, privatePort: 443, count: 1 }],
    dev: "eth1",
    description: "shop",
    enabled: false,
  }]);
});

Deno.test('parseConfig() leaves the port of a forward on "*" out of all_ports of its family: the forward takes it', () => {
  const config = parseConfig(
    `{"web": {"private_ip": "10.0.0.2", "public_ip": "*", "port_map": {"tcp": [8080]}},
      "vm": {"private_ip": "10.0.0.1", "public_ip": "203.0.113.9", "private_ipv6": "fd00::1",
             "public_ipv6": "2001:db8::9", "all_ports": true}}`,
    "hooks.jsonc",
  );
  assert.deepEqual(config.diagnostics, []);
  assert.deepEqual(config.domains.get("vm")?.[0]?.ports.map((p) => [p.protocol, p.all?.except]), [
    ["tcp", { 4: [[8080, 8080]], 6: [] }],
    ["udp", { 4: [], 6: [] }],
  ]);
});

function dedent2(text: string): string {
  return text.trim().split("\n").map((l) => l.trim()).join("\n");
}

Deno.test("parseConfig() counts a public port claimed by an explicit address and by the default one as a clash", () => {
  const text = `{"a": {"private_ip": "10.0.0.1", "port_map": {"tcp": [22]}},
    "b": {"private_ip": "10.0.0.2", "public_ip": "203.0.113.1", "port_map": {"tcp": [22]}}}`;
  assert.equal(problems(text).length, 0);
  assert.equal(problems(text, { defaultPublicIp: { 4: "203.0.113.1" } }).length, 2);
});

Deno.test("domainConfig() stops only the domains a problem belongs to", async (t) => {
  const text = `{"good": {"private_ip": "10.0.0.1", "port_map": {"tcp": [22]}},
    "bad": {"private_ip": "nope", "port_map": {"tcp": [23]}}}`;
  const config = parseConfig(text, "hooks.jsonc");
  await t.step(
    "a valid entry beside an invalid one",
    () => assert.equal(domainConfig(config, "good").kind, "ok"),
  );
  await t.step("the invalid entry", () => assert.equal(domainConfig(config, "bad").kind, "invalid"));
  await t.step(
    "a domain the file does not name",
    () => assert.equal(domainConfig(config, "other").kind, "absent"),
  );
  await t.step("every claimant of a clashing port", () => {
    const clash = parseConfig(
      `{"x": {"private_ip": "10.0.0.1", "public_ip": "192.0.2.1", "port_map": {"tcp": [22]}},
        "y": {"private_ip": "10.0.0.2", "public_ip": "192.0.2.1", "port_map": {"tcp": [[22, 2222]]}},
        "z": {"private_ip": "10.0.0.3", "public_ip": "192.0.2.1", "port_map": {"tcp": [80]}}}`,
      "hooks.jsonc",
    );
    assert.deepEqual(["x", "y", "z"].map((d) => domainConfig(clash, d).kind), ["invalid", "invalid", "ok"]);
  });
  await t.step("a broken file stops the domains it names, and only those", () => {
    const broken = parseConfig(`{"a": {"private_ip": "10.0.0.1",, }, "b": {`, "hooks.jsonc");
    assert.equal(broken.broken, true);
    assert.deepEqual(["a", "b", "c"].map((d) => domainConfig(broken, d).kind), [
      "invalid",
      "invalid",
      "absent",
    ]);
  });
  await t.step("a broken file that names nobody stops everyone", () => {
    const broken = parseConfig(`[1, 2`, "hooks.jsonc");
    assert.equal(domainConfig(broken, "anyone").kind, "invalid");
  });
});

Deno.test("parseConfig() reads dual-stack entries and IPv6 in canonical form", () => {
  const config = parseConfig(
    `{"w": {"private_ip": "192.168.122.10", "private_ipv6": "FD00:0122:0:0::10", "public_ipv6": "2001:db8::7",
      "source_ipv6": "2001:db8:99::/48", "port_map": {"tcp": [22]}}}`,
    "hooks.jsonc",
  );
  assert.deepEqual(config.diagnostics, []);
  assert.deepEqual(config.domains.get("w")?.[0]?.targets, [
    { family: 4, privateIp: "192.168.122.10" },
    { family: 6, privateIp: "fd00:122::10", publicIp: "2001:db8::7", sources: ["2001:db8:99::/48"] },
  ]);
});

Deno.test("configCandidates() follows CONFIG_FILENAME, then CONFIG_PATH, then /etc/libvirt/hooks", () => {
  const env = (vars: Record<string, string>) => (name: string) => vars[name];
  assert.deepEqual(configCandidates(env({ CONFIG_FILENAME: "/x/my.json", CONFIG_PATH: "/y" })), [
    "/x/my.json",
  ]);
  assert.deepEqual(configCandidates(env({ CONFIG_PATH: "/y/" })), ["/y/hooks.jsonc", "/y/hooks.json"]);
  assert.deepEqual(configCandidates(env({})), [
    "/etc/libvirt/hooks/hooks.jsonc",
    "/etc/libvirt/hooks/hooks.json",
  ]);
});

const CORPUS = new URL("./test/fixtures/legacy/", import.meta.url);

Deno.test("parseConfig() reads the old hook's real configs as their README says", async (t) => {
  const expect: Record<string, { domains: string[]; errors?: RegExp; warnings?: number }> = {
    "01-saschpe-initial-pairs.json": { domains: ["cloud-admin", "cloud-node1"] },
    "02-bronson-single-port.json": { domains: ["cloud-admin", "cloud-node1"] },
    "03-bronson-comments.json": { domains: ["cloud-admin", "cloud-node1"] },
    "04-bronson-no-interface.json": { domains: ["cloud-admin", "cloud-node1"] },
    "05-bronson-interface-restored.json": { domains: ["cloud-admin", "cloud-node1"] },
    "06-rehn-source-ip.json": { domains: ["cloud-admin", "cloud-node1"], warnings: 1 },
    "07-perflyst-notes.json": { domains: ["cloud-admin", "cloud-node1"], warnings: 1 },
    "08-stridsberg-documented-trailing-comma.json": {
      domains: ["example-guest-vm-name-please-change"],
      warnings: 1,
    },
    "09-regunakyle-no-trailing-comma.json": { domains: ["example-guest-vm-name-please-change"], warnings: 1 },
    "10-ricardoboss-no-comments.json": { domains: ["example-guest-vm-name-please-change"], warnings: 1 },
    "11-crc-remote-access-guide.json": { domains: ["crc"] },
    "12-testvm-notes.json": { domains: ["testvm"] },
    "13-shell-generated-ssh-nginx.json": { domains: [], errors: /^[^:]+:12:23: Not an IP address/ },
    "14-foreign-tobima-hook-nat.json": {
      domains: [],
      errors: /^[^:]+:2:14: .*is this a config of another tool/,
    },
    "15-foreign-deadbok-fork.json": {
      domains: [],
      errors: /^[^:]+:2:14: .*found a boolean; is this a config/,
    },
  };
  for (const [file, want] of Object.entries(expect)) {
    await t.step(file, async () => {
      const config = parseConfig(await Deno.readTextFile(new URL(file, CORPUS)), file);
      assert.deepEqual([...config.domains.keys()], want.domains);
      const errors = config.diagnostics.filter((d) => d.severity === "error").map(formatDiagnostic);
      if (want.errors) assert.match(errors[0] ?? "", want.errors);
      else assert.deepEqual(errors, []);
      if (!want.errors) {
        assert.equal(config.diagnostics.filter((d) => d.severity === "warning").length, want.warnings ?? 0);
      }
    });
  }
  await t.step(
    "08 forwards the range init_port .. init_port+ports_num-1, restricted to source_ip",
    async () => {
      const file = "08-stridsberg-documented-trailing-comma.json";
      const config = parseConfig(await Deno.readTextFile(new URL(file, CORPUS)), file);
      const [entry] = config.domains.get("example-guest-vm-name-please-change")!;
      assert.deepEqual(entry!.ports.filter((p) => p.count > 1), [
        { protocol: "tcp", publicPort: 8888, privatePort: 8888, count: 2 },
        { protocol: "udp", publicPort: 30000, privatePort: 30000, count: 100 },
      ]);
      assert.deepEqual(entry!.targets[0]!.sources, ["8.8.8.8"]);
    },
  );
  await t.step("13 with a real name and address substituted is accepted", async () => {
    const text = (await Deno.readTextFile(new URL("13-shell-generated-ssh-nginx.json", CORPUS)))
      .replace("$VM_NAME", "vm1").replace("$GUEST_IP", "192.168.122.50");
    assert.deepEqual(parseConfig(text, "13.json").diagnostics, []);
  });
});

Deno.test("readConfigSource() reads the first config that exists once; loadConfig() and configMentions() use it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const missing = readConfigSource([`${dir}/hooks.jsonc`, `${dir}/hooks.json`]);
    assert.deepEqual(missing, { file: `${dir}/hooks.jsonc`, missing: true });
    assert.equal((await loadConfig([], { source: missing })).exists, false);
    await Deno.writeTextFile(
      `${dir}/hooks.json`,
      `{"web1": {"private_ip": "10.0.0.1", "port_map": {"tcp": [22]}}}`,
    );
    const found = readConfigSource([`${dir}/hooks.jsonc`, `${dir}/hooks.json`]);
    assert.equal(found.file, `${dir}/hooks.json`);
    assert.equal(configMentions(found, "web1"), true);
    assert.equal(configMentions(found, "db"), false);
    // Validated from what was read, not from the candidates read again.
    await Deno.remove(`${dir}/hooks.json`);
    assert.deepEqual([...(await loadConfig([], { source: found })).domains.keys()], ["web1"]);
    // A config that cannot be read (here a directory) is broken, said at its file's first line.
    await Deno.mkdir(`${dir}/hooks.jsonc`);
    const unreadable = readConfigSource([`${dir}/hooks.jsonc`]);
    assert.equal(configMentions(unreadable, "web1"), false);
    const broken = await loadConfig([], { source: unreadable });
    assert.equal(broken.broken, true);
    assert.match(
      formatDiagnostic(broken.diagnostics[0]!),
      new RegExp(`^${dir}/hooks\\.jsonc:1:1: Cannot read the config: `),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("loadConfig() reuses a validated config from its cache until the text changes", async () => {
  const dir = await Deno.makeTempDir();
  const file = `${dir}/hooks.jsonc`;
  try {
    await Deno.writeTextFile(
      file,
      `{"a": {"private_ip": "10.0.0.1", "port_map": {"tcp": [22]}}, "b": {"private_ip": "x"}}`,
    );
    const first = await loadConfig([file], { cacheDir: `${dir}/cache` });
    const [entry] = [...Deno.readDirSync(`${dir}/cache`)];
    const cacheFile = `${dir}/cache/${entry!.name}`;
    assert.match(entry!.name, /^config-cache-[0-9a-f]+\.json$/);
    const cached = JSON.parse(await Deno.readTextFile(cacheFile));
    assert.equal(cached.config.file, file);
    const second = await loadConfig([file], { cacheDir: `${dir}/cache` });
    assert.deepEqual(second, first);
    assert.deepEqual([...second.domains.keys()], ["a"]);
    await Deno.writeTextFile(file, `{"c": {"private_ip": "10.0.0.3", "port_map": {"tcp": [22]}}}`);
    assert.deepEqual([...(await loadConfig([file], { cacheDir: `${dir}/cache` })).domains.keys()], ["c"]);
    // The new text was validated afresh, under a new key.
    assert.notDeepEqual(
      JSON.parse(await Deno.readTextFile(cacheFile)).key,
      cached.key,
    );
    await Deno.writeTextFile(cacheFile, "{broken");
    assert.deepEqual([...(await loadConfig([file], { cacheDir: `${dir}/cache` })).domains.keys()], ["c"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("parseConfig() reads accept_in: chains handed to us, each a positioned error when it cannot be one", () => {
  const text =
    `{"/settings": {"accept_in": ["inet filter forward", "inet  filter  forward", "bridge filter forward",
  "inet filter", "ip libvirt_network guest_input", 7]}}`;
  const config = parseConfig(text, "hooks.jsonc");
  assert.deepEqual(config.settings.acceptIn, ["inet filter forward"]);
  assert.deepEqual(config.diagnostics.map(formatDiagnostic), [
    'hooks.jsonc:1:78: Family "bridge" has no forward hook for routed traffic; use ip, ip6 or inet (["/settings"].accept_in[2] = "bridge filter forward")',
    'hooks.jsonc:2:3: Expected "<family> <table> <chain>", as nft names a chain (e.g. "inet filter forward") (["/settings"].accept_in[3] = "inet filter")',
    'hooks.jsonc:2:18: This chain is opened for our forwards already (libvirt\'s, ours, or iptables\' FORWARD) (["/settings"].accept_in[4] = "ip libvirt_network guest_input")',
    'hooks.jsonc:2:52: Expected "<family> <table> <chain>", as nft names a chain (e.g. "inet filter forward") (["/settings"].accept_in[5] = 7)',
  ]);
});

const WEB1 = `"web1": {"private_ip": "192.168.122.10", "port_map": {"tcp": [[2222, 22]]}}`;

Deno.test("parseConfig() keeps nesting too deep for the parser to the entry that holds it", async (t) => {
  const cases: [string, string, string[], boolean][] = [
    [
      "100 000 levels beside a valid entry",
      `{\n${WEB1},\n"other": ${"[".repeat(100_000)}${"]".repeat(100_000)}\n}`,
      ["hooks.jsonc:3:73: Nesting deeper than 64 levels (other)"],
      true,
    ],
    [
      "unclosed, to the end of the file",
      `{\n${WEB1},\n"other": {"x": ${"[".repeat(10_000)}`,
      ["hooks.jsonc:3:78: Nesting deeper than 64 levels (other)"],
      false,
    ],
    [
      "in the settings: the whole file",
      `{\n${WEB1},\n"/settings": ${"[".repeat(100)}${"]".repeat(100)}\n}`,
      ['hooks.jsonc:3:77: Nesting deeper than 64 levels (["/settings"])'],
      false,
    ],
    ["at the root", `${"[".repeat(6000)}${"]".repeat(6000)}`, [
      "hooks.jsonc:1:65: Nesting deeper than 64 levels",
    ], false],
  ];
  for (const [name, text, want, web1] of cases) {
    await t.step(name, () => {
      const config = parseConfig(text, "hooks.jsonc");
      const errors = config.diagnostics.map(formatDiagnostic);
      for (const w of want) assert.ok(errors.includes(w), `${w} not in ${errors.join("\n")}`);
      assert.ok(errors.every((e) => !/stack|Maximum call/i.test(e)));
      assert.equal(domainConfig(config, "web1").kind, web1 ? "ok" : "invalid");
      // A file that no longer parses, or whose settings cannot be read, stops the guests it names; at the root,
      // where none can be named, every guest.
      const everyone = name === "at the root" || name.includes("settings");
      assert.equal(domainConfig(config, "unnamed").kind, everyone ? "invalid" : "absent");
    });
  }
});

Deno.test("readConfigSource() reports bytes that are no UTF-8 where they are, scoped like any problem", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const file = `${dir}/hooks.jsonc`;
    const enc = new TextEncoder();
    // virbr0\xff in db's entry; a Latin-1 comment (caf\xe9) between entries.
    const bytes = new Uint8Array([
      ...enc.encode(`{\n${WEB1},\n// caf`),
      0xe9,
      ...enc.encode(`\n"db": {"interface": "virbr0`),
      0xff,
      ...enc.encode(`", "private_ip": "192.168.122.20", "port_map": {"tcp": [5432]}}\n}\n`),
    ]);
    await Deno.writeFile(file, bytes);
    const source = readConfigSource([file]);
    assert.ok("text" in source);
    assert.deepEqual(source.invalidUtf8?.length, 2);
    const config = await loadConfig([file], { source });
    assert.deepEqual(config.diagnostics.map(formatDiagnostic), [
      `${file}:3:7: warning: Not UTF-8: bytes here are no text (between entries: ignored)`,
      `${file}:4:28: Not UTF-8: bytes here are no text (db)`,
    ]);
    assert.equal(domainConfig(config, "web1").kind, "ok");
    assert.equal(domainConfig(config, "db").kind, "invalid");
    // Valid UTF-8 (and a U+FFFD written as such) reads as before.
    await Deno.writeTextFile(file, `{${WEB1}} // \uFFFD`);
    const plain = readConfigSource([file]);
    assert.ok("text" in plain && plain.invalidUtf8 === undefined);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("interfaceNameProblem() takes what the kernel takes, and nothing our rules would misread", async (t) => {
  const cases: [string, string | undefined][] = [
    ["virbr0", undefined],
    ["br-lan.100", undefined],
    ["ünïcødé_br0", undefined],
    ["x".repeat(15), undefined],
    ["", "0 bytes; the kernel allows 1 to 15"],
    ["x".repeat(16), "16 bytes; the kernel allows 1 to 15"],
    ["éééééééé", "16 bytes; the kernel allows 1 to 15"],
    ["..", '".." is a directory, not a name'],
    ['virbr0"', 'it holds "\\"", which no interface name may hold here'],
    ["vir'br", `it holds "'", which no interface name may hold here`],
    ["vir\\br", 'it holds "\\\\", which no interface name may hold here'],
    ["a b", 'it holds " ", which no interface name may hold here'],
    ["br/0", 'it holds "/", which no interface name may hold here'],
    ["br:0", 'it holds ":", which no interface name may hold here'],
    ["br\u0007", 'it holds "\\u0007", which no interface name may hold here'],
    ["!virbr0", 'a leading "!" would negate the match'],
    ["virbr+", 'a trailing "+" would match every interface it begins'],
    ["virbr*", 'a trailing "*" would match every interface it begins'],
  ];
  for (const [name, want] of cases) {
    await t.step(JSON.stringify(name), () => assert.equal(interfaceNameProblem(name), want));
  }
  await t.step("in an entry: a positioned error of that entry only", () => {
    const text = `{${WEB1}, "db": {"interface": "virbr0\\"", "private_ip": "192.168.122.20"}}`;
    const config = parseConfig(text, "hooks.jsonc");
    assert.deepEqual(config.diagnostics.map(formatDiagnostic).filter((d) => !d.includes("warning")), [
      'hooks.jsonc:1:99: Not a valid interface name: it holds "\\"", which no interface name may hold here (db.interface = "virbr0\\"")',
    ]);
    assert.equal(domainConfig(config, "web1").kind, "ok");
  });
});

Deno.test("loadConfigFor() gives one domain what the whole config says of it, from a cache read by shard", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const file = `${dir}/hooks.jsonc`;
    const bad = Array.from(
      { length: 3000 },
      (_, i) => `"bad${i}": {"private_ip": "10.0.${i >> 8}.${i & 255}", "port_map": {"tcp": [22]}}`,
    );
    await Deno.writeTextFile(file, `{${WEB1},\n${bad.join(",\n")}}`);
    const whole = parseConfig(await Deno.readTextFile(file), file, { defaultPublicIp: { 4: "203.0.113.1" } });
    const options = { defaultPublicIp: { 4: "203.0.113.1" } };
    for (const round of ["parsed", "cached"]) {
      for (const domain of ["web1", "bad7", "absent"]) {
        const view = await loadConfigFor(domain, [file], { options, cacheDir: `${dir}/cache` });
        assert.deepEqual(domainConfig(view, domain), domainConfig(whole, domain), `${round} ${domain}`);
        assert.equal(view.diagnosticCount ?? view.diagnostics.length, whole.diagnostics.length);
        // The file's first problems are there, in the file's order, to be printed before the count of the rest.
        const first = whole.diagnostics.slice(0, 20).map(formatDiagnostic);
        assert.deepEqual(view.diagnostics.map(formatDiagnostic).filter((d) => first.includes(d)), first);
        // Every domain's public ports, for a guest's XML to be checked against: the view's file, read on demand.
        assert.deepEqual(configClaims(view), whole.claims, `${round} ${domain}`);
      }
    }
    assert.equal(whole.claims?.length, 3001);
    // 3001 names: several shards, and a changed text is never answered from the cache.
    assert.ok([...Deno.readDirSync(`${dir}/cache`)].some((e) => e.isDirectory));
    await Deno.writeTextFile(file, `{${WEB1.replace("2222", "2223")}}`);
    const changed = await loadConfigFor("web1", [file], { options, cacheDir: `${dir}/cache` });
    const entries = domainConfig(changed, "web1");
    assert.ok(entries.kind === "ok" && entries.entries[0]!.ports[0]!.publicPort === 2223);
    assert.equal(changed.diagnosticCount ?? changed.diagnostics.length, 0);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("drop-in files: hooks.d/*.jsonc and *.json beside the config are part of it, read in name order", async (t) => {
  const dir = await Deno.makeTempDir();
  const main = `${dir}/hooks.jsonc`;
  const drop = (name: string, text: string) => Deno.writeTextFile(`${dir}/hooks.d/${name}`, text);
  try {
    await Deno.mkdir(`${dir}/hooks.d`);
    await Deno.writeTextFile(
      main,
      `{"web1": {"private_ip": "10.0.0.1", "public_ip": "203.0.113.1", "port_map": {"tcp": [22]}}}`,
    );
    await drop(
      "20-db.json",
      `{"db": {"private_ip": "10.0.0.3", "public_ip": "203.0.113.1", "port_map": {"tcp": [5432]}}}`,
    );
    await drop(
      "10-web2.jsonc",
      `// web2\n{"web2": {"private_ip": "10.0.0.2", "public_ip": "203.0.113.1", "port_map": {"tcp": [80]}}}`,
    );
    // Not drop-ins: another extension, a hidden file, a folder.
    await drop("30-old.jsonc.bak", `{"bak": {}}`);
    await drop(".40-hidden.jsonc", `{"hidden": {}}`);
    await Deno.mkdir(`${dir}/hooks.d/50-dir.jsonc`);

    await t.step("all apply, in name order", async () => {
      const source = readConfigSource([main]);
      assert.deepEqual(source.dropIns?.map((f) => f.file), [
        `${dir}/hooks.d/10-web2.jsonc`,
        `${dir}/hooks.d/20-db.json`,
      ]);
      assert.equal(configMentions(source, "db"), true);
      const config = await loadConfig([main]);
      assert.deepEqual(config.diagnostics, []);
      assert.deepEqual([...config.domains.keys()], ["web1", "web2", "db"]);
      assert.equal(config.file, main);
    });

    await t.step(
      "a domain in two files, a port claimed in two files, settings twice: each problem in its own file",
      async () => {
        await drop(
          "30-web1.jsonc",
          `{\n  "web1": {"private_ip": "10.0.0.9", "public_ip": "203.0.113.1", "port_map": {"tcp": [5432]}},\n  "/settings": {"backend": "iptables"}\n}`,
        );
        await drop("40-settings.json", `{"/settings": {"backend": "nftables"}}`);
        const config = await loadConfig([main]);
        assert.deepEqual(config.diagnostics.map(formatDiagnostic), [
          `${main}:1:2: Domain "web1" is also configured in ${dir}/hooks.d/30-web1.jsonc:2:3; a domain may be named in one file only (web1)`,
          `${dir}/hooks.d/20-db.json:1:84: Public tcp port 5432 on 203.0.113.1 is also claimed by web1.port_map.tcp[0] in ${dir}/hooks.d/30-web1.jsonc (5432) (db.port_map.tcp[0] = 5432)`,
          `${dir}/hooks.d/30-web1.jsonc:2:87: Public tcp port 5432 on 203.0.113.1 is also claimed by db.port_map.tcp[0] in ${dir}/hooks.d/20-db.json (5432) (web1.port_map.tcp[0] = 5432)`,
          `${dir}/hooks.d/30-web1.jsonc:2:3: Domain "web1" is also configured in ${main}:1:2; a domain may be named in one file only (web1)`,
          `${dir}/hooks.d/30-web1.jsonc:3:3: Settings are also given in ${dir}/hooks.d/40-settings.json:1:2; "/settings" may appear in one file only (["/settings"])`,
          `${dir}/hooks.d/40-settings.json:1:2: Settings are also given in ${dir}/hooks.d/30-web1.jsonc:3:3; "/settings" may appear in one file only (["/settings"])`,
        ]);
        // The clash and the duplicate stop the domains they name; settings given twice stop every domain.
        assert.equal(domainConfig(config, "web2").kind, "invalid");
        await Deno.remove(`${dir}/hooks.d/40-settings.json`);
        const fixed = await loadConfig([main]);
        assert.deepEqual([...fixed.domains.keys()], ["web2"]);
        assert.equal(fixed.settings.backend, "iptables");
        await Deno.remove(`${dir}/hooks.d/30-web1.jsonc`);
      },
    );

    await t.step("the cache follows a drop-in added, changed or removed", async () => {
      const cache = `${dir}/cache`;
      const names = async () => [...(await loadConfig([main], { cacheDir: cache })).domains.keys()];
      const has = async (d: string) => (await loadConfigFor(d, [main], { cacheDir: cache })).domains.has(d);
      assert.deepEqual(await names(), ["web1", "web2", "db"]);
      assert.equal(await has("db"), true);
      assert.equal(await has("db"), true); // now from the view
      await drop("15-mail.jsonc", `{"mail": {"private_ip": "10.0.0.4", "port_map": {"tcp": [25]}}}`);
      assert.deepEqual(await names(), ["web1", "web2", "mail", "db"]);
      assert.equal(await has("mail"), true);
      await drop("15-mail.jsonc", `{"mail": {"private_ip": "10.0.0.4", "port_map": {"tcp": [587]}}}`);
      const mail = await loadConfigFor("mail", [main], { cacheDir: cache });
      assert.equal(mail.domains.get("mail")?.[0]?.ports[0]?.publicPort, 587);
      await Deno.remove(`${dir}/hooks.d/15-mail.jsonc`);
      assert.deepEqual(await names(), ["web1", "web2", "db"]);
      assert.equal(await has("mail"), false);
    });

    await t.step(
      "drop-ins alone are a config; a drop-in that cannot be read stops every domain",
      async () => {
        await Deno.remove(main);
        const config = await loadConfig([main]);
        assert.equal(config.exists, true);
        assert.deepEqual([...config.domains.keys()], ["web2", "db"]);
        // A drop-in that is no file to read (here a link to a folder): nothing of the config can be trusted.
        await Deno.symlink(dir, `${dir}/hooks.d/25-link.jsonc`);
        const broken = await loadConfig([main]);
        assert.equal(broken.broken, true);
        assert.deepEqual([...broken.domains.keys()], []);
        assert.match(
          formatDiagnostic(broken.diagnostics[0]!),
          /hooks\.d\/25-link\.jsonc:1:1: Cannot read the config: /,
        );
        await Deno.remove(`${dir}/hooks.d/25-link.jsonc`);
        await Deno.writeTextFile(
          `${dir}/hooks.d/20-db.json`,
          `{"db": {"private_ip": "10.0.0.3", "port_map": {"tcp": [5432]}},}`,
        );
        await Deno.remove(`${dir}/hooks.d`, { recursive: true });
        assert.equal((await loadConfig([main])).exists, false);
      },
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("parseConfig() reads to_port: a range shifted to other ports of the guest, checked like any port", () => {
  const range = (fields: string) =>
    `{"vm": {"private_ip": "10.0.0.1", "port_range": [{"init_port": 30000, "ports_num": 100, "protocol": "tcp"${fields}}]}}`;
  const config = parseConfig(range(`, "to_port": 40000`), "hooks.jsonc");
  assert.deepEqual(config.diagnostics, []);
  assert.deepEqual(config.domains.get("vm")?.[0]?.ports, [
    { protocol: "tcp", publicPort: 30000, privatePort: 40000, count: 100 },
  ]);
  // Without it, the same ports, as always.
  assert.equal(parseConfig(range(""), "hooks.jsonc").domains.get("vm")?.[0]?.ports[0]?.privatePort, 30000);
  assert.deepEqual(problems(range(`, "to_port": 65500`)), [
    "hooks.jsonc:1:119: The guest's range 65500-65599 runs past port 65535 (vm.port_range[0].to_port = 65500)",
  ]);
  assert.deepEqual(problems(range(`, "to_port": 0`)), [
    "hooks.jsonc:1:119: Port out of range 1-65535 (vm.port_range[0].to_port = 0)",
  ]);
  assert.deepEqual(problems(range(`, "to_port": "40000"`)), [
    'hooks.jsonc:1:119: Expected a port number, found a string (vm.port_range[0].to_port = "40000")',
  ]);
});

Deno.test("parseConfig() reads all_ports: every port of an explicit public address but those other forwards take", () => {
  const config = parseConfig(
    `{
      "mail": {"private_ip": "10.0.0.2", "public_ip": "203.0.113.9", "port_map": {"tcp": [25, [587, 25], 26]}},
      "dns": {"private_ip": "10.0.0.3", "public_ip": "203.0.113.9", "port_map": {"udp": [53]},
              "port_range": [{"init_port": 1000, "ports_num": 10, "protocol": "udp"}]},
      "vm": {"private_ip": "10.0.0.1", "public_ip": "203.0.113.9", "private_ipv6": "fd00::1",
             "public_ipv6": "2001:db8::9", "all_ports": true},
      "other": {"private_ip": "10.0.0.4", "public_ip": "203.0.113.10", "port_map": {"tcp": [80]}}
    }`,
    "hooks.jsonc",
  );
  assert.deepEqual(config.diagnostics, []);
  assert.deepEqual(config.domains.get("vm")?.[0]?.ports, [
    {
      protocol: "tcp",
      publicPort: 1,
      privatePort: 1,
      count: 65535,
      all: { except: { 4: [[25, 26], [587, 587]], 6: [] } },
    },
    {
      protocol: "udp",
      publicPort: 1,
      privatePort: 1,
      count: 65535,
      all: { except: { 4: [[53, 53], [1000, 1009]], 6: [] } },
    },
  ]);
  // It clashes with no specific forward, but with another all_ports on the same address; it needs the address.
  assert.deepEqual(
    problems(`{
      "a": {"private_ip": "10.0.0.1", "public_ip": "203.0.113.9", "all_ports": true},
      "b": {"private_ip": "10.0.0.2", "public_ip": "203.0.113.9", "all_ports": true},
      "c": {"private_ip": "10.0.0.3", "all_ports": true},
      "d": {"private_ip": "10.0.0.4", "public_ip": "203.0.113.8", "all_ports": "yes"}
    }`),
    [
      `hooks.jsonc:4:52: all_ports takes every port of its public address, so it needs one given: set public_ip (c.all_ports = true)`,
      `hooks.jsonc:5:80: Expected true or false, found a string (d.all_ports = "yes")`,
      `hooks.jsonc:2:80: Every tcp port of 203.0.113.9 is also claimed by b.all_ports (all_ports) (a.all_ports = true)`,
      `hooks.jsonc:2:80: Every udp port of 203.0.113.9 is also claimed by b.all_ports (all_ports) (a.all_ports = true)`,
      `hooks.jsonc:3:80: Every tcp port of 203.0.113.9 is also claimed by a.all_ports (all_ports) (b.all_ports = true)`,
      `hooks.jsonc:3:80: Every udp port of 203.0.113.9 is also claimed by a.all_ports (all_ports) (b.all_ports = true)`,
    ],
  );
});

Deno.test("parseConfig() reads snat: an explicit public address, the outgoing source of one guest address only", () => {
  const config = parseConfig(
    `{"mail": {"private_ip": "10.0.0.2", "public_ip": "203.0.113.9", "snat": true, "port_map": {"tcp": [25]}},
      "bare": {"private_ip": "10.0.0.3", "public_ip": "203.0.113.10", "snat": true}}`,
    "hooks.jsonc",
  );
  // An entry with snat and no port is no mistake: it only leaves from its address.
  assert.deepEqual(config.diagnostics, []);
  assert.equal(config.domains.get("mail")?.[0]?.snat, true);
  assert.deepEqual(config.domains.get("bare")?.[0]?.ports, []);
  assert.deepEqual(
    problems(`{
      "a": {"private_ip": "10.0.0.1", "public_ip": "203.0.113.9", "snat": true},
      "b": {"private_ip": "10.0.0.2", "public_ip": "203.0.113.9", "snat": true},
      "c": {"private_ip": "10.0.0.3", "snat": true},
      "d": {"private_ip": "10.0.0.4", "public_ip": "203.0.113.8", "snat": 1, "port_map": {"tcp": [22]}}
    }`),
    [
      "hooks.jsonc:4:47: snat makes the guest's connections leave from its public address, so it needs one given: set public_ip (c.snat = true)",
      "hooks.jsonc:5:75: Expected true or false, found a number (d.snat = 1)",
      "hooks.jsonc:2:75: 203.0.113.9 is also the outgoing address of 10.0.0.2 (b.snat); one public address can be the source of one guest address only (a.snat = true)",
      "hooks.jsonc:3:75: 203.0.113.9 is also the outgoing address of 10.0.0.1 (a.snat); one public address can be the source of one guest address only (b.snat = true)",
    ],
  );
});

Deno.test("parseConfig() takes an entry without private_ip: the guest's address is found when it starts", () => {
  const config = parseConfig(
    `{"a": {"port_map": {"tcp": [22]}},
      "b": {"public_ip": "2001:db8::7", "port_map": {"tcp": [22]}},
      "c": {"private_ipv6": "fd00::10", "port_map": {"tcp": [23]}}}`,
    "hooks.jsonc",
  );
  assert.deepEqual(config.diagnostics, []);
  // IPv4 where nothing says; the family of public_ip where it does; no found target beside an explicit IPv6 one.
  assert.deepEqual(config.domains.get("a")?.[0]?.targets, [{ family: 4 }]);
  assert.deepEqual(config.domains.get("b")?.[0]?.targets, [{ family: 6, publicIp: "2001:db8::7" }]);
  assert.deepEqual(config.domains.get("c")?.[0]?.targets, [{ family: 6, privateIp: "fd00::10" }]);
});

Deno.test("parseConfig() keeps the same public port for disjoint sources a clash: one port, one target", () => {
  const config = parseConfig(
    `{"x": {"private_ip": "10.0.0.1", "public_ip": "192.0.2.1", "port_map": {"tcp": [22]},
            "source_ip": ["198.51.100.0/24"]},
      "y": {"private_ip": "10.0.0.2", "public_ip": "192.0.2.1", "port_map": {"tcp": [22]}, "source_set": "office"}}`,
    "hooks.jsonc",
  );
  assert.deepEqual(["x", "y"].map((d) => domainConfig(config, d).kind), ["invalid", "invalid"]);
  assert.equal(config.diagnostics.filter((d) => d.severity === "error").length, 2);
});
