import assert from "node:assert/strict";
import { formatDiagnostic } from "./model.ts";
import { emptyConfig, fileProblem, loadParser, parseConfigs } from "./validate.ts";

await loadParser();

Deno.test("parseConfigs() reads several files as one, each problem in its own file", () => {
  const config = parseConfigs([
    { file: "hooks.jsonc", text: `{"web1": {"private_ip": "10.0.0.1", "port_map": {"tcp": [80]}}}` },
    {
      file: "hooks.d/10-db.jsonc",
      text: `{\n"db": {"private_ip": "10.0.0.2", "port_map": {"tcp": [5432]}},\n"x": 1}`,
    },
  ]);
  assert.deepEqual([...config.domains.keys()], ["web1", "db"]);
  assert.deepEqual(config.domains.get("db")?.[0]?.file, "hooks.d/10-db.jsonc");
  assert.deepEqual([...config.names], ["web1", "db", "x"]);
  assert.deepEqual(config.diagnostics.map(formatDiagnostic), [
    "hooks.d/10-db.jsonc:3:6: Expected an entry object or a list of them, found a number; is this a config of " +
    "another tool? libvirt-hook-qemu maps each domain name to its forwards (x = 1)",
  ]);
  assert.equal(config.file, "hooks.jsonc");
  assert.deepEqual(config.claims?.map((c) => `${c.file} ${c.domain} ${c.protocol} ${c.first}`), [
    "hooks.jsonc web1 tcp 80",
    "hooks.d/10-db.jsonc db tcp 5432",
  ]);
});

Deno.test("parseConfigs() refuses a domain named in two files, settings given twice, a port claimed twice", () => {
  const config = parseConfigs([
    {
      file: "a.jsonc",
      text:
        `{"/settings": {"backend": "iptables"},\n"web1": {"private_ip": "10.0.0.1", "port_map": {"tcp": [80]}}}`,
    },
    {
      file: "b.jsonc",
      text: `{"/settings": {},\n"web1": {"private_ip": "10.0.0.3", "port_map": {"tcp": [81]}},\n` +
        `"db": {"private_ip": "10.0.0.2", "port_map": {"tcp": [80]}}}`,
    },
  ], { defaultPublicIp: { 4: "203.0.113.1" } });
  // Each file's problems together, in its own file: the clash, the domain named twice, the settings twice.
  assert.deepEqual(config.diagnostics.map(formatDiagnostic), [
    "a.jsonc:2:57: Public tcp port 80 on 203.0.113.1 is also claimed by db.port_map.tcp[0] in b.jsonc (80) " +
    "(web1.port_map.tcp[0] = 80)",
    'a.jsonc:2:1: Domain "web1" is also configured in b.jsonc:2:1; a domain may be named in one file only (web1)',
    'a.jsonc:1:2: Settings are also given in b.jsonc:1:2; "/settings" may appear in one file only (["/settings"])',
    "b.jsonc:3:55: Public tcp port 80 on 203.0.113.1 is also claimed by web1.port_map.tcp[0] in a.jsonc (80) " +
    "(db.port_map.tcp[0] = 80)",
    'b.jsonc:2:1: Domain "web1" is also configured in a.jsonc:2:1; a domain may be named in one file only (web1)',
    'b.jsonc:1:2: Settings are also given in a.jsonc:1:2; "/settings" may appear in one file only (["/settings"])',
  ]);
  assert.deepEqual([...config.domains.keys()], [], "every domain with an error stops");
});

Deno.test("parseConfigs() takes nothing from an untrusted file, and names the domains that do not start", () => {
  const config = parseConfigs([
    { file: "hooks.jsonc", text: `{"web1": {"private_ip": "10.0.0.1", "port_map": {"tcp": [80]}}}` },
    {
      file: "hooks.d/evil.jsonc",
      text:
        `{"/settings": {"backend": "nftables"}, "web2": {"private_ip": "10.0.0.2", "port_map": {"tcp": [80]}}}`,
      untrusted: "owned by user 1000",
    },
  ]);
  assert.deepEqual([...config.domains.keys()], ["web1"]);
  assert.equal(config.settings.backend, "auto");
  assert.deepEqual(config.diagnostics.map(formatDiagnostic), [
    "hooks.d/evil.jsonc:1:1: Not trusted, nothing in it is used: owned by user 1000; the domains it names do not " +
    "start (web2)",
  ]);
});

Deno.test("parseConfigs() reports a broken file's parse errors and stops the domains it names", () => {
  const config = parseConfigs([{ file: "hooks.jsonc", text: `{"web1": {"private_ip": "10.0.0.1",, }}` }]);
  assert.equal(config.broken, true);
  assert.deepEqual(config.diagnostics.map((d) => [formatDiagnostic(d), d.domains]), [
    ["hooks.jsonc:1:36: Cannot parse the config: expected a quoted property name", ["web1"]],
    ["hooks.jsonc:1:36: Cannot parse the config: expected a value", ["web1"]],
  ]);
});

Deno.test("emptyConfig() and fileProblem() are a config with nothing in it and a problem of the whole file", () => {
  assert.deepEqual(emptyConfig("hooks.jsonc", false), {
    file: "hooks.jsonc",
    exists: false,
    broken: false,
    domains: new Map(),
    names: new Set(),
    settings: { backend: "auto", acceptIn: [], hostAddresses: [], xmlForwards: [] },
    diagnostics: [],
  });
  assert.equal(
    formatDiagnostic(fileProblem("hooks.jsonc", "Cannot read it")),
    "hooks.jsonc:1:1: Cannot read it",
  );
});
