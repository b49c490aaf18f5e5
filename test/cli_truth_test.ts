/**
 * Operator commands that tell the truth, run whole in a lab host: a full stdout never stops a change half-way, and
 * removing what is not live says so.
 */

import assert from "node:assert/strict";
import { baseRulesText, canRunLab, createLab, LAB_ADDR as A } from "./lab.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const can = await canRunLab();
if (!can.ok) console.log(`cli_truth_test.ts: skipped: ${can.reason}`);
const opts = { sanitizeOps: false, sanitizeResources: false };
/**
 * What the stop of web1's two forwards says it removed. nftables: its rules in our table (in its one chain: the
 * hairpin's label, then the translation; its plain pairs are elements of the dispatch maps, not rules), 2 in all;
 * the accept in libvirt's guest_input that it shared with the other domains of our table is no domain's own. iptables-nft: removed by chain name in one
 * nft transaction, what is in the chains never listed (~0.1 ms a rule): the 4 jumps, and the 3 chains.
 */
const REMOVED = {
  // The domain's 4 jumps and our gate's rule in FORWARD; its three chains, and the empty LVH-USER and our gate,
  // which go with the last domain.
  iptables: "5 old rule(s) removed, and 5 chain(s) of ours with the rules in them",
  nftables: "2 old rule(s) removed",
};

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

for (const libvirt of ["iptables", "nftables"] as const) {
  Deno.test({
    name: `runHook(), libvirt on ${libvirt}: the syslog line of a stop counts the rules it removed`,
    ignore: !can.ok,
    ...opts,
    async fn() {
      await using lab = await createLab({ libvirt });
      const dir = await Deno.makeTempDir();
      try {
        // A logger that keeps the line it is given (logger -t TAG -p daemon.info -- LINE), in place of syslog.
        await Deno.mkdir(`${dir}/bin`);
        await Deno.writeTextFile(`${dir}/bin/logger`, `#!/bin/sh\nprintf '%s\\n' "$6" >>${dir}/syslog\n`);
        await Deno.chmod(`${dir}/bin/logger`, 0o755);
        const config = `${dir}/hooks.jsonc`;
        await Deno.writeTextFile(
          config,
          JSON.stringify({
            web1: { private_ip: A.g1v4, port_map: { tcp: [[2221, 22]], udp: [[2222, 53]] } },
          }),
        );
        const env = {
          CONFIG_FILENAME: config,
          LIBVIRT_QEMU_RUN_DIR: dir,
          PATH: `${dir}/bin:${Deno.env.get("PATH")}`,
        };
        for (const operation of ["start", "stopped"]) {
          const r = await inNs(lab.ns.host, ["web1", operation, "begin", "-"], env);
          assert.equal(r.code, 0, r.stderr);
        }
        // logger runs unawaited: give it a moment.
        let lines: string[] = [];
        for (let i = 0; i < 50 && lines.length < 2; i++) {
          lines = (await Deno.readTextFile(`${dir}/syslog`).catch(() => "")).split("\n").filter((l) => l);
          await new Promise((r) => setTimeout(r, 100));
        }
        const stop = lines.find((l) => l.startsWith("stopped web1: "));
        assert.equal(
          stop,
          `stopped web1: 0 forward(s) live, ${REMOVED[libvirt]}`,
          lines.join("\n"),
        );
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}

/**
 * libvirt 9.0's rules loaded into one iptables while the hook runs the other (IPTABLES_BINARY, as the
 * alternatives would select it): the start must fail saying why and write nothing, anywhere.
 */
for (
  const [libvirtIn, ours] of [["iptables-nft", "iptables-legacy"], [
    "iptables-legacy",
    "iptables-nft",
  ]] as const
) {
  Deno.test({
    name:
      `runHook(): libvirt's rules in ${libvirtIn}, ours in ${ours}: a start fails saying why, changes nothing`,
    ignore: !can.ok,
    ...opts,
    async fn() {
      await using lab = await createLab({ baseRules: false });
      const dir = await Deno.makeTempDir();
      try {
        const restore = await lab.exec(lab.ns.host, [`${libvirtIn}-restore`], { stdin: baseRulesText(4) });
        assert.equal(restore.code, 0, restore.stderr);
        const config = `${dir}/hooks.jsonc`;
        await Deno.writeTextFile(
          config,
          JSON.stringify({ web1: { private_ip: A.g1v4, port_map: { tcp: [[2221, 22]] } } }),
        );
        const env = { CONFIG_FILENAME: config, LIBVIRT_QEMU_RUN_DIR: dir, IPTABLES_BINARY: ours };
        const saves = () =>
          Promise.all([
            ...["iptables-nft-save", "iptables-legacy-save"].map((p) => lab.exec(lab.ns.host, [p])),
            lab.exec(lab.ns.host, ["nft", "list", "ruleset"]),
          ]).then((rs) =>
            rs.map((r) =>
              r.stdout.replace(/^#.*\n/gm, "").replace(/\[\d+:\d+\]|counter packets \d+ bytes \d+/g, "")
            )
          );
        const before = await saves();

        const r = await inNs(lab.ns.host, ["web1", "start", "begin", "-"], env);
        assert.equal(r.code, 1);
        assert.equal(r.stdout, "");
        assert.match(
          r.stderr,
          new RegExp(
            `libvirt's iptables rules are in ${libvirtIn}.*, but the iptables this hook runs is ${ours}.*: our ` +
              "rules would go where libvirt's reject is not, and it drops every forward; nothing was changed\\. " +
              `Fix: update-alternatives --set iptables /usr/sbin/${libvirtIn}`,
          ),
        );
        assert.deepEqual(await saves(), before);
        // plan says the same, and doctor names it with the fix.
        const plan = await inNs(lab.ns.host, ["plan", "web1"], env);
        assert.equal(plan.code, 1);
        assert.match(plan.stderr, new RegExp(`libvirt's iptables rules are in ${libvirtIn}`));
        const doctor = await inNs(lab.ns.host, ["doctor"], { ...env, NO_COLOR: "1" });
        assert.equal(doctor.code, 1);
        assert.match(doctor.stdout, new RegExp(`FAIL +libvirt's iptables rules are in ${libvirtIn}`));
        assert.doesNotMatch(doctor.stdout, /All is well/);
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}
