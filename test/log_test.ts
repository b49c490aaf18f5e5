/**
 * `"log": true` with real packets, on both libvirt variants and both of our backends: each new connection through
 * the forward is one kernel log line with the prefix naming the domain and the forward, and the rate limit holds a
 * burst of 8 to at most 6 lines. Netfilter logs from a network namespace reach the kernel log only with the
 * host-wide `net.netfilter.nf_log_all_netns = 1` (never written by the hook): this test sets it for its run and
 * puts the value back.
 */

import assert from "node:assert/strict";
import { canRunLab, createLab, LAB_ADDR as A } from "./lab.ts";
import { runInLab } from "./lab_hook.ts";

const SYSCTL = "/proc/sys/net/netfilter/nf_log_all_netns";
const can = await canRunLab();
const nft = can.ok &&
  (await new Deno.Command("nft", { args: ["--version"] }).output().catch(() => undefined))?.success;
const dmesg = can.ok && (await new Deno.Command("dmesg", { stdout: "null", stderr: "null" }).output()
      .catch(() => undefined))?.success === true;
const sysctl = can.ok && await Deno.stat(SYSCTL).then(() => true, () => false);
const skip = !can.ok
  ? can.reason
  : !dmesg
  ? "the kernel log cannot be read (dmesg)"
  : !sysctl
  ? `${SYSCTL} is missing`
  : undefined;
if (skip) console.log(`Skipping the log namespace tests: ${skip}`);
else if (!nft) console.log("Skipping the log namespace tests on libvirt's nftables: nft is not installed");

/** The kernel log's lines with `prefix` (a port of this run's own, so no other test's lines count). */
async function logged(prefix: string): Promise<string[]> {
  const out = await new Deno.Command("dmesg", { stdout: "piped" }).output();
  return new TextDecoder().decode(out.stdout).split("\n").filter((l) => l.includes(prefix));
}

const VARIANTS = [
  { libvirt: "iptables" as const, backend: "iptables", ok: !skip },
  { libvirt: "nftables" as const, backend: "iptables", ok: !skip && nft },
  { libvirt: "nftables" as const, backend: "nftables", ok: !skip && nft },
];

for (const v of VARIANTS) {
  Deno.test({
    name:
      `log, libvirt on ${v.libvirt}, backend ${v.backend}: one kernel log line per new connection, named ` +
      "for the domain and the forward, rate-limited",
    ignore: !v.ok,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      const before = (await Deno.readTextFile(SYSCTL)).trim();
      const lab = await createLab({ libvirt: v.libvirt });
      const file = await Deno.makeTempFile({ suffix: ".jsonc" });
      // A port of this run's own: its prefix is in no other line of the kernel log.
      const port = 20000 + Math.floor(Math.random() * 40000);
      try {
        await Deno.writeTextFile(SYSCTL, "1");
        await Deno.writeTextFile(
          file,
          `{"/settings": {"backend": "${v.backend}"},
            "g1": {"private_ip": "${A.g1v4}", "log": true, "port_map": {"tcp": [[${port}, 22]]}}}`,
        );
        await lab.serve(lab.ns.g1, "tcp", 22, "g1");
        await runInLab(lab, file, ["g1", "start", "begin", "-"], "g1");
        const prefix = `lvh g1 tcp/${port}: `;
        for (let i = 0; i < 3; i++) {
          assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, port), `g1 ${A.client4}`);
        }
        // One line per new connection (not per packet: each connection has several), from the client.
        const three = await logged(prefix);
        assert.equal(three.length, 3, three.join("\n"));
        for (const line of three) {
          assert.match(line, new RegExp(`SRC=${A.client4} DST=${A.hostPub4} .*DPT=${port} `));
        }
        // The burst: 5 more within a second or two: the limit (5 at once, then 10 a minute) logs 2 or 3 of them.
        for (let i = 0; i < 5; i++) await lab.connect(lab.ns.client, "tcp", A.hostPub4, port);
        const eight = (await logged(prefix)).length;
        assert.ok(eight >= 5 && eight <= 6, `${eight} lines for 8 connections`);
        await runInLab(lab, file, ["g1", "stopped", "end", "-"], "g1");
      } finally {
        await Deno.writeTextFile(SYSCTL, before);
        await lab.close();
        await Deno.remove(file);
      }
    },
  });
}
