/** What libvirt says about its networks' firewall backend, and dnsmasq's lease records. */

import { LeaseFileError, parseLeases, parseNetworkConf, readLeases } from "./libvirt.ts";
import assert from "node:assert/strict";

Deno.test("parseNetworkConf() reads libvirt's firewall_backend", () => {
  assert.equal(parseNetworkConf('# comment\nfirewall_backend = "nftables"\n'), "nftables");
  assert.equal(parseNetworkConf('#firewall_backend = "iptables"\n'), undefined);
});

Deno.test("parseLeases() reads libvirt's JSON, none from an empty file, and refuses what is not its list", () => {
  const text = JSON.stringify([{
    "ip-address": "192.168.122.5",
    "mac-address": "52:54:00:AA:00:01",
    "expiry-time": 9,
  }]);
  assert.deepEqual(parseLeases(text), [{ address: "192.168.122.5", mac: "52:54:00:aa:00:01", expiry: 9 }]);
  assert.deepEqual(parseLeases(""), []);
  assert.deepEqual(parseLeases(" \n"), []);
  assert.throws(() => parseLeases(text.slice(0, 20)), { name: "SyntaxError", message: "not JSON" });
  assert.throws(() => parseLeases("{}"), { name: "SyntaxError", message: "not a JSON list of leases" });
});

Deno.test("readLeases() reads a bridge's leases within a bound, and names the file it cannot read", async (t) => {
  const dir = await Deno.makeTempDir({ prefix: "lvh-leases-" });
  const path = `${dir}/virbr0.status`;
  try {
    await t.step("none where the file is not there, nor for a name that is no file name", () => {
      assert.deepEqual(readLeases("virbr0", dir), []);
      assert.deepEqual(readLeases("../etc/passwd", dir), []);
    });
    await t.step("a file that is there: its leases", () => {
      Deno.writeTextFileSync(path, JSON.stringify([{ "ip-address": "192.168.122.5", "expiry-time": 0 }]));
      assert.deepEqual(readLeases("virbr0", dir), [{ address: "192.168.122.5", expiry: 0 }]);
    });
    const cases: [string, string | Uint8Array, string][] = [
      ["truncated", '[{"ip-address": "192.168.1', "not JSON"],
      ["garbage", new Uint8Array([0xff, 0xfe, 0x00, 0x7b]), "not JSON"],
      ["beyond the bound", `[${" ".repeat(2000)}]`, "larger than 0 MB"],
    ];
    for (const [what, content, why] of cases) {
      await t.step(`${what}: a LeaseFileError naming the file`, () => {
        if (typeof content === "string") Deno.writeTextFileSync(path, content);
        else Deno.writeFileSync(path, content);
        assert.throws(() => readLeases("virbr0", dir, 1024), (err: unknown) => {
          assert.ok(err instanceof LeaseFileError);
          assert.equal(err.message, `Cannot read the DHCP leases in ${path}: ${why}`);
          return true;
        });
      });
    }
    await t.step("a directory in its place: a LeaseFileError too", () => {
      Deno.removeSync(path);
      Deno.mkdirSync(path);
      assert.throws(() => readLeases("virbr0", dir), LeaseFileError);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
