/**
 * Operator commands that tell the truth, run whole in a lab host: a full stdout never stops a change half-way, and
 * removing what is not live says so.
 */

import assert from "node:assert/strict";
import { canRunLab, createLab, LAB_ADDR as A } from "./lab.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const can = await canRunLab();
if (!can.ok) console.log(`cli_truth_test.ts: skipped: ${can.reason}`);
const opts = { sanitizeOps: false, sanitizeResources: false };

/** The program in namespace `ns`, its stdout sent to `stdout` (a file such as /dev/full) or piped. */
async function inNs(ns: string, args: string[], env: Record<string, string>, stdout?: string) {
  const argv = ["ip", "netns", "exec", ns, Deno.execPath(), "run", "-A", MAIN, ...args];
  const out = await new Deno.Command(stdout === undefined ? argv[0]! : "sh", {
    args: stdout === undefined ? argv.slice(1) : ["-c", `exec "$@" >${stdout}`, "sh", ...argv],
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const d = new TextDecoder();
  return { code: out.code, stdout: d.decode(out.stdout), stderr: d.decode(out.stderr) };
}

for (const libvirt of ["iptables", "nftables"] as const) {
  Deno.test({
    name:
      `runCli(), libvirt on ${libvirt}: remove --all with stdout on /dev/full removes every domain, then ` +
      "says on stderr that its output failed, exit 1",
    ignore: !can.ok,
    ...opts,
    async fn() {
      await using lab = await createLab({ libvirt });
      const dir = await Deno.makeTempDir();
      try {
        const config = `${dir}/hooks.jsonc`;
        await Deno.writeTextFile(
          config,
          JSON.stringify({
            web1: { private_ip: A.g1v4, port_map: { tcp: [[2221, 22]] } },
            web2: { private_ip: A.g2v4, port_map: { tcp: [[2222, 22]] } },
            "web 3": { private_ip: A.g1v4, port_map: { udp: [[2223, 53]] } },
          }),
        );
        const env = { CONFIG_FILENAME: config, LIBVIRT_QEMU_RUN_DIR: dir, NO_COLOR: "1" };
        const before = [await lab.ruleset(4), await lab.nftRuleset()];
        for (const domain of ["web1", "web2", "web 3"]) {
          const r = await inNs(lab.ns.host, [domain, "start", "begin", "-"], env);
          assert.equal(r.code, 0, r.stderr);
        }
        assert.notDeepEqual([await lab.ruleset(4), await lab.nftRuleset()], before);

        const r = await inNs(lab.ns.host, ["remove", "--all"], env, "/dev/full");
        assert.equal(r.code, 1);
        assert.deepEqual(r.stderr.split("\n"), [
          'Cannot write the output of "qemu remove --all" to stdout: No space left on device (os error 28)',
          "",
        ]);
        // Every domain went, not only the first.
        assert.deepEqual([await lab.ruleset(4), await lab.nftRuleset()], before);
        const status = await inNs(lab.ns.host, ["status"], env);
        assert.match(status.stdout, /\nNo forwards are live\.\n$/);

        // Nothing live for a domain: remove says so, and succeeds (nothing was left to remove).
        const none = await inNs(lab.ns.host, ["remove", "web1"], env);
        assert.deepEqual([none.code, none.stdout, none.stderr], [
          0,
          'No forwards of "web1" are live: nothing to remove\n',
          "",
        ]);
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}
