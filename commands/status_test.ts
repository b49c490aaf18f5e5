/** status(): the live forwards by domain, as text and as JSON, read through a recording runner. */

import assert from "node:assert/strict";
import { status } from "./status.ts";
import { domainHash } from "../backends/names.ts";
import { captureStdout, fakeCommandDeps, twoLive } from "../test/commands_deps.ts";

const CONFIG = `{"web1": {"private_ip": "192.168.122.10", "port_map": {"tcp": [[2222, 22]]}}}`;
const live = (argv: string[]) => argv[0] === "iptables-save" ? { stdout: twoLive(domainHash) } : {};

Deno.test("status() shows each live forward, and flags what the config does not explain", async (t) => {
  await t.step("as text", async () => {
    const f = await fakeCommandDeps(CONFIG, live);
    const { value, stdout } = await captureStdout(() => status(f.deps));
    assert.equal(value, 0);
    assert.deepEqual(stdout, [
      'Firewall backend: iptables (setting "auto"; no libvirt network firewall seen)',
      "web1 (not running)",
      "  tcp 203.0.113.1:2222 -> 192.168.122.10:22",
      "web2 (not running, not in the config)",
      "  tcp 203.0.113.1:2222 -> 192.168.122.11:22   <- not explained by the config",
    ]);
  });
  await t.step("as JSON, of one domain, in one piece", async () => {
    const f = await fakeCommandDeps(CONFIG, live);
    const { value, stdout } = await captureStdout(() => status(f.deps, { only: "web2", json: true }));
    assert.equal(value, 0);
    assert.equal(stdout.length, 1);
    assert.deepEqual(JSON.parse(stdout[0]!).domains, [{
      domain: "web2",
      running: false,
      inConfig: false,
      forwards: [{ forward: "tcp 203.0.113.1:2222 -> 192.168.122.11:22", explained: false }],
    }]);
  });
});
