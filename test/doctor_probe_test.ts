/**
 * doctor's probes in a lab host: a guest that drops every connection is a failure, never an all-clear, and the
 * probes of many forwards run in parallel under one bound.
 */

import assert from "node:assert/strict";
import { canRunLab, createLab, LAB_ADDR as A } from "./lab.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const can = await canRunLab();
if (!can.ok) console.log(`doctor_probe_test.ts: skipped: ${can.reason}`);

const DOMAINS = 100;

Deno.test({
  name:
    `doctor(), ${DOMAINS} running guests × 2 forwards whose guest drops everything: each fails, in under 30 s`,
  ignore: !can.ok,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await using lab = await createLab();
    const dir = await Deno.makeTempDir();
    try {
      // The guest drops every connection to it: no refusal, no answer.
      const drop = await lab.exec(lab.ns.g1, ["nft", "-f", "-"], {
        stdin: "table inet guest { chain input { type filter hook input priority 0; policy drop; }; }\n",
      });
      assert.equal(drop.code, 0, drop.stderr);
      const config: Record<string, unknown> = {};
      for (let i = 0; i < DOMAINS; i++) {
        const name = `vm${i}`;
        config[name] = { private_ip: A.g1v4, port_map: { tcp: [[10000 + 2 * i, 22], [10001 + 2 * i, 80]] } };
        await Deno.writeTextFile(`${dir}/${name}.xml`, `<domain><name>${name}</name></domain>`);
      }
      await Deno.writeTextFile(`${dir}/hooks.json`, JSON.stringify(config));
      const started = performance.now();
      const out = await new Deno.Command("ip", {
        args: ["netns", "exec", lab.ns.host, Deno.execPath(), "run", "-A", MAIN, "doctor"],
        env: { CONFIG_FILENAME: `${dir}/hooks.json`, LIBVIRT_QEMU_RUN_DIR: dir, NO_COLOR: "1" },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      const seconds = (performance.now() - started) / 1000;
      const stdout = new TextDecoder().decode(out.stdout);
      assert.equal(out.code, 1, new TextDecoder().decode(out.stderr));
      const silent = stdout.split("\n").filter((l) =>
        l.startsWith(`  FAIL  no answer from ${A.g1v4}:`) &&
        l.endsWith(
          "within 2 s: something in the guest (its firewall) drops connections to it, or it is still booting",
        )
      );
      assert.equal(silent.length, 2 * DOMAINS);
      assert.doesNotMatch(stdout, /All is well/);
      // One after another, 200 probes of 2 s each took 400 s.
      assert.ok(seconds < 30, `doctor took ${seconds.toFixed(1)} s`);
      console.log(`doctor examined ${2 * DOMAINS} forwards in ${seconds.toFixed(1)} s`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "doctor(), a guest with no route back: connections arrive and are translated, no reply comes: a FAIL",
  ignore: !can.ok,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    await using lab = await createLab();
    const dir = await Deno.makeTempDir();
    try {
      await Deno.writeTextFile(
        `${dir}/hooks.json`,
        JSON.stringify({ web1: { private_ip: A.g1v4, port_map: { tcp: [[2222, 22]] } } }),
      );
      await Deno.writeTextFile(`${dir}/web1.xml`, "<domain><name>web1</name></domain>");
      const env = { CONFIG_FILENAME: `${dir}/hooks.json`, LIBVIRT_QEMU_RUN_DIR: dir, NO_COLOR: "1" };
      const run = async (args: string[]) => {
        const out = await new Deno.Command("ip", {
          args: ["netns", "exec", lab.ns.host, Deno.execPath(), "run", "-A", MAIN, ...args],
          env,
          stdin: "null",
          stdout: "piped",
          stderr: "piped",
        }).output();
        return { code: out.code, stdout: new TextDecoder().decode(out.stdout) };
      };
      assert.equal((await run(["web1", "start", "begin", "-"])).code, 0);
      await lab.serve(lab.ns.g1, "tcp", 22, "g1");
      // The guest answers the host on its bridge, but has no way back to anyone else.
      const del = await lab.exec(lab.ns.g1, ["ip", "-4", "route", "del", "default"]);
      assert.equal(del.code, 0, del.stderr);
      assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 2222), null);
      const doctor = await run(["doctor", "web1"]);
      assert.equal(doctor.code, 1);
      assert.match(
        doctor.stdout,
        /\n {2}FAIL {2}\d+ connection\(s\) arrived and were translated to the guest, but no reply came back: the guest drops them, or has no route back to the client \(its default route does not lead through this host\)\n {8}fix: inside the guest: ip route get <client address> must leave through virbr0's address, and its firewall must accept tcp port 22\n/,
      );
      assert.match(doctor.stdout, /\n {2}ok {4}the guest accepts connections on 192\.168\.122\.10:22\n/);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
