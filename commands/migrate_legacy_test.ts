/** migrateLegacy(): the old Python hook's chains and the jumps into them go, in one batch; nothing else. */

import assert from "node:assert/strict";
import { migrateLegacy } from "./migrate_legacy.ts";
import { captureStdout, fakeCommandDeps } from "../test/commands_deps.ts";
import { dedent } from "../test/util.ts";
import { domstatus, MAC1 } from "../test/guests.ts";

const CONFIG = `{"web1": {"private_ip": "192.168.122.10", "port_map": {"tcp": [[2222, 22]]}}}`;
const LEGACY = dedent(`
  *nat
  :PREROUTING ACCEPT [0:0]
  :DNAT-web1 - [0:0]
  :DNAT-other - [0:0]
  -A PREROUTING -d 203.0.113.1/32 -j DNAT-web1
  -A PREROUTING -d 203.0.113.1/32 -j DNAT-other
  -A DNAT-web1 -d 203.0.113.1/32 -p tcp -m tcp --dport 2222 -j DNAT --to-destination 192.168.122.10:22
  COMMIT
  *filter
  :FORWARD ACCEPT [0:0]
  :FWD-web1 - [0:0]
  -A FORWARD -d 192.168.122.10/32 -j FWD-web1
  COMMIT
`);
const saved = (argv: string[]) => argv[0] === "iptables-save" ? { stdout: LEGACY } : {};

Deno.test("migrateLegacy() removes the configured domains' old chains and jumps in one batch", async () => {
  const f = await fakeCommandDeps(CONFIG, saved);
  const { value, stdout } = await captureStdout(() => migrateLegacy(f.deps));
  assert.equal(value, 0, f.stderr.join("\n"));
  assert.deepEqual(stdout, [
    "Removing the old hook's chains and the jumps into them:",
    "  nat chain DNAT-web1",
    "  filter chain FWD-web1",
    "  nat rule -A PREROUTING -d 203.0.113.1/32 -j DNAT-web1",
    "  filter rule -A FORWARD -d 192.168.122.10/32 -j FWD-web1",
  ]);
  // DNAT-other belongs to no domain of the config nor a running guest: left alone.
  assert.deepEqual(f.calls.filter((c) => c.argv[0] === "iptables-restore").map((c) => c.stdin), [
    dedent(`
      *nat
      :DNAT-web1 - [0:0]
      -D PREROUTING -d 203.0.113.1/32 -j DNAT-web1
      -X DNAT-web1
      COMMIT
      *filter
      :FWD-web1 - [0:0]
      -D FORWARD -d 192.168.122.10/32 -j FWD-web1
      -X FWD-web1
      COMMIT
    `),
  ]);
  assert.deepEqual(f.logged, ["migrate-legacy: removed 2 chain(s) of the old hook"]);
});

Deno.test("migrateLegacy() --dry-run shows what it would remove and runs no batch", async () => {
  const f = await fakeCommandDeps(CONFIG, saved);
  const { value, stdout } = await captureStdout(() => migrateLegacy(f.deps, { dryRun: true }));
  assert.equal(value, 0);
  assert.equal(stdout[0], "Would remove the old hook's chains and the jumps into them:");
  assert.deepEqual(f.calls.filter((c) => c.argv[0]!.endsWith("-restore")), []);
});

Deno.test("migrateLegacy() applies a legacy single-string source_ip unchanged, and a list as one rule per item", async (t) => {
  const cases: [string, string[]][] = [
    [`"198.51.100.4"`, ["-s 198.51.100.4 "]],
    [`["198.51.100.4", "203.0.113.64-203.0.113.70"]`, [
      "-s 198.51.100.4 ",
      "-m iprange --src-range 203.0.113.64-203.0.113.70 ",
    ]],
  ];
  for (const [source, want] of cases) {
    await t.step(source, async () => {
      const config =
        `{"web1": {"private_ip": "192.168.122.10", "public_ip": "203.0.113.1", "source_ip": ${source},
        "port_map": {"tcp": [[2222, 22]]}}}`;
      const f = await fakeCommandDeps(config, saved);
      const run = Deno.env.get("LIBVIRT_QEMU_RUN_DIR")!;
      await Deno.writeTextFile(`${run}/web1.xml`, domstatus("web1", MAC1, ""));
      try {
        const { value } = await captureStdout(() => migrateLegacy(f.deps));
        assert.equal(value, 0, f.stderr.join("\n"));
        const ours = f.calls.filter((c) => c.argv[0] === "iptables-restore").map((c) => c.stdin ?? "").join(
          "",
        );
        const dnat = ours.split("\n").filter((l) => /^-A LVH-\w+-DNAT /.test(l));
        assert.deepEqual(dnat.map((l) => want.find((w) => l.includes(` ${w}`))), want);
      } finally {
        await Deno.remove(`${run}/web1.xml`);
      }
    });
  }
});
