/** check(): the config's problems on stderr, and one line of all-clear on stdout. */

import assert from "node:assert/strict";
import { check } from "./check.ts";
import { captureStdout, fakeCommandDeps } from "../test/commands_deps.ts";

Deno.test("check() of a valid config says OK with its domains and the backend start would use", async () => {
  const f = await fakeCommandDeps(
    `{"web1": {"private_ip": "192.168.122.10", "port_map": {"tcp": [[2222, 22]]}}}`,
  );
  const { value, stdout } = await captureStdout(() => check(f.deps));
  assert.equal(value, 0, f.stderr.join("\n"));
  assert.deepEqual(stdout, [
    `${
      f.deps.env("CONFIG_PATH")
    }/hooks.jsonc: OK, 1 domain(s); firewall backend: iptables (setting "auto"; ` +
    "no libvirt network firewall seen)",
  ]);
  // It only reads: no batch of any kind.
  assert.deepEqual(f.calls.filter((c) => c.argv[0]!.endsWith("-restore") || c.argv.includes("-f")), []);
});

Deno.test("check() of a config with an error prints it positioned, says how many, and exits 1", async () => {
  const f = await fakeCommandDeps(
    `{"web1": {"private_ip": "192.168.122.300", "port_map": {"tcp": [[2222, 22]]}}}`,
  );
  const { value, stdout } = await captureStdout(() => check(f.deps));
  assert.equal(value, 1);
  assert.deepEqual(stdout, []);
  const file = `${f.deps.env("CONFIG_PATH")}/hooks.jsonc`;
  assert.deepEqual(f.stderr, [
    `${file}:1:25: Not an IP address (web1.private_ip = "192.168.122.300")`,
    `${file}: 1 error(s); the domains they name will not start`,
  ]);
});

Deno.test("check() warns about a dev no interface of this host has, and still says OK", async () => {
  const f = await fakeCommandDeps(
    `{"web1": {"private_ip": "192.168.122.10", "public_ip": "*", "dev": "lvhnosuch0",
      "port_map": {"tcp": [[2222, 22]]}}}`,
  );
  const { value, stdout } = await captureStdout(() => check(f.deps));
  assert.equal(value, 0, f.stderr.join("\n"));
  assert.match(stdout[0]!, /: OK, 1 domain\(s\)/);
  assert.deepEqual(f.stderr.filter((l) => l.includes("lvhnosuch0")), [
    `${f.deps.env("CONFIG_PATH")}/hooks.jsonc: warning: web1: dev lvhnosuch0 does not exist on this host; ` +
    "the forwards take only what arrives on it",
  ]);
});
