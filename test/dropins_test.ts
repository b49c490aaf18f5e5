/**
 * Drop-in files (`hooks.d/*.jsonc`, `*.json` beside the config) with the real hook, real iptables and real packets:
 * a guest configured only in a drop-in gets its forwards; a clash across files stops the guests it names and says
 * where, in each file; `check` checks every file; stop leaves nothing behind.
 */

import assert from "node:assert/strict";
import { canRunLab, createLab, type Lab, LAB_ADDR as A } from "./lab.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const can = await canRunLab();
if (!can.ok) console.log(`Skipping the drop-in namespace tests: ${can.reason}`);

const XML = (name: string) =>
  `<domain type='kvm'><name>${name}</name><devices><interface type='network'>` +
  `<source network='default' bridge='virbr0'/><target dev='vnet0'/></interface></devices></domain>`;

/** Runs the hook (or a command) in the lab's host, with `dir` as CONFIG_PATH, as libvirt runs it. */
async function run(lab: Lab, dir: string, state: string, args: string[], domain = "") {
  const r = await lab.exec(lab.ns.host, [Deno.execPath(), "run", "-A", MAIN, ...args], {
    stdin: XML(domain),
    clearEnv: true,
    env: {
      LC_ALL: "C",
      PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
      CONFIG_PATH: dir,
      LIBVIRT_HOOK_QEMU_STATE_DIR: state,
    },
    cwd: "/",
    timeoutMs: 30_000,
  });
  return r;
}

Deno.test({
  name:
    "drop-in files: a guest configured only in hooks.d gets its forwards; a clash across files is named in both",
  ignore: !can.ok,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const lab = await createLab({ libvirt: "iptables" });
    const dir = await Deno.makeTempDir();
    const state = await Deno.makeTempDir();
    const hook = (domain: string, op: string) =>
      run(lab, dir, state, [domain, op, op === "stopped" ? "end" : "begin", "-"], domain);
    try {
      await Deno.mkdir(`${dir}/hooks.d`);
      await Deno.writeTextFile(
        `${dir}/hooks.jsonc`,
        `{"g1": {"private_ip": "${A.g1v4}", "port_map": {"tcp": [[2222, 22]]}}}`,
      );
      await Deno.writeTextFile(
        `${dir}/hooks.d/g2.jsonc`,
        `// one file per guest, as configuration management writes them\n` +
          `{"g2": {"private_ip": "${A.g2v4}", "port_map": {"tcp": [[2223, 22]]}}}`,
      );
      await lab.serve(lab.ns.g1, "tcp", 22, "g1");
      await lab.serve(lab.ns.g2, "tcp", 22, "g2");
      const pristine = await lab.ruleset(4);

      const checked = await run(lab, dir, state, ["check"]);
      assert.equal(checked.code, 0, checked.stderr);
      assert.match(
        checked.stdout,
        /hooks\.jsonc \(and 1 drop-in file\(s\) in hooks\.d\/\): OK, 2 domain\(s\)/,
      );

      assert.equal((await hook("g2", "start")).code, 0);
      assert.equal((await hook("g1", "start")).code, 0);
      assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 2223), `g2 ${A.client4}`);
      assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 2222), `g1 ${A.client4}`);
      assert.equal((await hook("g2", "stopped")).code, 0);
      assert.equal((await hook("g1", "stopped")).code, 0);
      assert.equal(await lab.ruleset(4), pristine);

      // Another file claims g2's public port for a third guest: both are stopped, each told where the other is.
      const other = `${dir}/hooks.d/web.json`;
      await Deno.writeTextFile(
        other,
        `{"web": {"private_ip": "192.168.122.30", "port_map": {"tcp": [2223]}}}`,
      );
      const refused = await hook("g2", "start");
      assert.equal(refused.code, 1);
      assert.match(
        refused.stderr,
        new RegExp(
          `${dir}/hooks\\.d/g2\\.jsonc:2:\\d+: Public tcp port 2223 on ${A.hostPub4} is also claimed by ` +
            `web\\.port_map\\.tcp\\[0\\] in ${other} `,
        ),
      );
      const bad = await run(lab, dir, state, ["check"]);
      assert.equal(bad.code, 1);
      assert.match(
        bad.stderr,
        new RegExp(`^${other}:1:\\d+: Public tcp port 2223 .* in ${dir}/hooks\\.d/g2\\.jsonc `, "m"),
      );
      // g1's own file and entry are fine: it still starts.
      assert.equal((await hook("g1", "start")).code, 0);
      assert.equal((await hook("g1", "stopped")).code, 0);
      assert.equal(await lab.ruleset(4), pristine);
    } finally {
      await lab.close();
      await Deno.remove(dir, { recursive: true });
      await Deno.remove(state, { recursive: true });
    }
  },
});
