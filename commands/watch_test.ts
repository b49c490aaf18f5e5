/** watch(): looks once at its start, keeps watch, and stops cleanly on SIGTERM, with fake deps. */

import assert from "node:assert/strict";
import { watch } from "./watch.ts";
import { fakeCommandDeps } from "../test/commands_deps.ts";

Deno.test({
  name: "watch() reads the firewall at its start and stops on SIGTERM with exit 0",
  ignore: Deno.build.os !== "linux",
  async fn() {
    const f = await fakeCommandDeps(
      `{"web1": {"private_ip": "192.168.122.10", "port_map": {"tcp": [[2222, 22]]}}}`,
    );
    // No nft to follow (the poll alone keeps watch), no lease directory.
    f.deps.nft = "/nonexistent/nft";
    f.deps.dnsmasqDir = "/nonexistent/dnsmasq";
    const done = watch(f.deps, 2);
    for (let i = 0; i < 100 && !f.calls.some((c) => c.argv[0] === "iptables-save"); i++) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.ok(f.calls.some((c) => c.argv[0] === "iptables-save"), "the first look read the firewall");
    Deno.kill(Deno.pid, "SIGTERM");
    assert.equal(await done, 0);
    const said = f.stderr.map((l) => l.replace(/^\S+ /, ""));
    assert.equal(said[0], "watching the firewall (nft monitor, and every 2 s) and the DHCP leases");
    assert.equal(said.at(-1), "stopped");
    // Nothing was live and web1 does not run: nothing to mend, no batch.
    assert.deepEqual(f.calls.filter((c) => c.argv[0]!.endsWith("-restore")), []);
  },
});
