/** Several allowed sources per forward, with real packets: each backend on each libvirt variant. */

import assert from "node:assert/strict";
import { canRunLab, createLab, type Lab, LAB_ADDR as A } from "./lab.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const can = await canRunLab();
if (!can.ok) console.log(`Skipping the source list namespace tests: ${can.reason}`);

/** A third client address, in no source below and in none of the lab's own. */
const OTHER4 = "203.0.113.61", OTHER6 = "2001:db8:1::61";
/** A client address inside the range allowed below. */
const RANGED4 = "203.0.113.65";

const config = (backend: string) =>
  `{
  "/settings": { "backend": "${backend}" },
  "g1": {
    "private_ip": "${A.g1v4}",
    "private_ipv6": "${A.g1v6}",
    "port_map": { "tcp": [[2222, 22]] },
    // The client's first address, a range holding a third one, and the client's IPv6 address.
    "source_ip": ["${A.client4}", "203.0.113.64-203.0.113.70", "${A.client6}"],
  },
}`;

const ENV = { LC_ALL: "C", PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" };
const XML = `<domain><name>g1</name><devices><interface type='network'><source bridge='virbr0'/>` +
  `<target dev='vnet0'/></interface></devices></domain>`;

async function run(lab: Lab, file: string, args: string[], { stdin = "", sets = "" } = {}) {
  return await lab.exec(lab.ns.host, [Deno.execPath(), "run", "-A", MAIN, ...args], {
    stdin,
    clearEnv: true,
    env: { ...ENV, CONFIG_FILENAME: file, ...(sets ? { LIBVIRT_HOOK_QEMU_SETS_DIR: sets } : {}) },
    cwd: "/",
    timeoutMs: 30_000,
  });
}

const VARIANTS = [
  { libvirt: "iptables", backend: "auto" },
  { libvirt: "nftables", backend: "auto" },
  { libvirt: "nftables", backend: "iptables" },
] as const;

for (const { libvirt, backend } of VARIANTS) {
  Deno.test({
    name: `source_ip list (libvirt on ${libvirt}, backend ${backend}): the sources pass, others do not`,
    ignore: !can.ok,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn(t) {
      const lab = await createLab({ libvirt, ipv6Forward: "established" });
      const file = await Deno.makeTempFile({ suffix: ".jsonc" });
      const { ns } = lab;
      try {
        await Deno.writeTextFile(file, config(backend));
        await lab.exec(ns.client, ["ip", "addr", "add", `${OTHER4}/24`, "dev", "eth0"]);
        await lab.exec(ns.client, ["ip", "addr", "add", `${RANGED4}/24`, "dev", "eth0"]);
        // Not preferred: the client's own connections keep leaving from its first address.
        await lab.exec(ns.client, [
          ...["ip", "-6", "addr", "add", `${OTHER6}/64`, "dev", "eth0", "nodad", "preferred_lft", "0"],
        ]);
        await lab.serve(ns.g1, "tcp", 22, "g1");
        const start = await run(lab, file, ["g1", "start", "begin", "-"], { stdin: XML });
        assert.deepEqual([start.code, start.stderr, start.stdout], [0, "", ""]);
        await t.step("an allowed address and an address of an allowed range pass", async () => {
          assert.equal(await lab.connect(ns.client, "tcp", A.hostPub4, 2222), `g1 ${A.client4}`);
          assert.equal(
            await lab.connect(ns.client, "tcp", A.hostPub4, 2222, { source: RANGED4 }),
            `g1 ${RANGED4}`,
          );
        });
        await t.step("a third address, in no source, is refused", async () => {
          for (const source of [OTHER4, A.client4b]) {
            assert.equal(
              await lab.connect(ns.client, "tcp", A.hostPub4, 2222, { source, timeoutMs: 800 }),
              null,
            );
          }
        });
        await t.step("IPv6 gets the list's IPv6 item only", async () => {
          assert.equal(await lab.connect(ns.client, "tcp", A.hostPub6, 2222), `g1 ${A.client6}`);
          assert.equal(
            await lab.connect(ns.client, "tcp", A.hostPub6, 2222, { source: OTHER6, timeoutMs: 800 }),
            null,
          );
        });
        await t.step("status reads the sources back as planned: one forward per family", async () => {
          const r = await run(lab, file, ["status"]);
          assert.equal(r.code, 0, r.stderr);
          assert.ok(
            r.stdout.includes(
              `  tcp ${A.hostPub4}:2222 -> ${A.g1v4}:22 from ${A.client4}, 203.0.113.64-203.0.113.70\n`,
            ),
            r.stdout,
          );
          assert.ok(
            r.stdout.includes(`  tcp [${A.hostPub6}]:2222 -> [${A.g1v6}]:22 from ${A.client6}\n`),
            r.stdout,
          );
          assert.doesNotMatch(r.stdout, /not explained/);
        });
        await t.step("plan shows the range in the rules a start writes", async () => {
          const r = await run(lab, file, ["plan", "g1"]);
          assert.equal(r.code, 0, r.stderr);
          assert.match(r.stdout, /(--src-range |saddr \{ [^}]*)203\.0\.113\.64-203\.0\.113\.70/, r.stdout);
        });
        await t.step("stop removes them", async () => {
          assert.equal((await run(lab, file, ["g1", "stopped", "end", "-"], { stdin: XML })).code, 0);
          assert.equal(await lab.connect(ns.client, "tcp", A.hostPub4, 2222, { timeoutMs: 800 }), null);
        });
      } finally {
        await lab.close();
        await Deno.remove(file).catch(() => {});
      }
    },
  });
}

const setConfig = (backend: string) =>
  `{
  "/settings": { "backend": "${backend}" },
  "g1": { "private_ip": "${A.g1v4}", "private_ipv6": "${A.g1v6}", "port_map": { "tcp": [[2222, 22]] },
          "source_set": "office" },
}`;

for (const { libvirt, backend } of VARIANTS) {
  Deno.test({
    name: `source_set (libvirt on ${libvirt}, backend ${backend}): qemu set changes who passes, no hook call`,
    ignore: !can.ok,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn(t) {
      const lab = await createLab({ libvirt, ipv6Forward: "established" });
      const file = await Deno.makeTempFile({ suffix: ".jsonc" });
      const sets = await Deno.makeTempDir();
      const { ns } = lab;
      const set = (...args: string[]) => run(lab, file, ["set", ...args], { sets });
      const hook = (op: string) =>
        run(lab, file, ["g1", op, op === "stopped" ? "end" : "begin", "-"], { stdin: XML, sets });
      const reaches = (source: string, ip: string = A.hostPub4) =>
        lab.connect(ns.client, "tcp", ip, 2222, { source, timeoutMs: 800 });
      try {
        await Deno.writeTextFile(file, setConfig(backend));
        await lab.serve(ns.g1, "tcp", 22, "g1");
        await t.step("a set is filled before any forward uses it: stored only", async () => {
          const r = await set("add", "office", A.client4);
          assert.deepEqual([r.code, r.stderr], [0, ""]);
          assert.match(r.stdout, /no running forward uses it/);
        });
        await t.step("start: the set's member passes, another address does not", async () => {
          assert.deepEqual([(await hook("start")).code], [0]);
          assert.equal(await reaches(A.client4), `g1 ${A.client4}`);
          assert.equal(await reaches(A.client4b), null);
          assert.equal(await reaches(A.client6, A.hostPub6), null);
        });
        await t.step("set add, while the forward runs: the new member passes at once, IPv6 too", async () => {
          const r = await set("add", "office", A.client4b, A.client6);
          assert.deepEqual([r.code, r.stderr], [0, ""]);
          // .50 and .51 are adjacent: stored merged, as one range.
          assert.match(r.stdout, /^Set "office": 2 item\(s\), live in (nftables|ipset)\n$/);
          assert.equal(await reaches(A.client4b), `g1 ${A.client4b}`);
          assert.equal(await reaches(A.client6, A.hostPub6), `g1 ${A.client6}`);
        });
        await t.step("set del: the removed member no longer passes", async () => {
          assert.equal((await set("del", "office", A.client4)).code, 0);
          assert.equal(await reaches(A.client4), null);
          assert.equal(await reaches(A.client4b), `g1 ${A.client4b}`);
          assert.equal((await set("list", "office")).stdout, `${A.client4b}\n${A.client6}\n`);
        });
        await t.step("status shows the forward from the set, as planned", async () => {
          const r = await run(lab, file, ["status"], { sets });
          assert.ok(r.stdout.includes(`  tcp ${A.hostPub4}:2222 -> ${A.g1v4}:22 from @office\n`), r.stdout);
          assert.doesNotMatch(r.stdout, /not explained/);
        });
        await t.step("reload, and a stop of the last user then a start, keep the members", async () => {
          assert.equal((await run(lab, file, ["reload"], { sets })).code, 0);
          assert.equal(await reaches(A.client4b), `g1 ${A.client4b}`);
          assert.equal((await hook("stopped")).code, 0);
          assert.equal(await reaches(A.client4b), null);
          assert.equal((await set("list", "office")).stdout, `${A.client4b}\n${A.client6}\n`);
          assert.equal((await hook("start")).code, 0);
          assert.equal(await reaches(A.client4b), `g1 ${A.client4b}`);
          assert.equal(await reaches(A.client4), null);
        });
      } finally {
        await lab.close();
        await Deno.remove(file).catch(() => {});
        await Deno.remove(sets, { recursive: true }).catch(() => {});
      }
    },
  });
}
