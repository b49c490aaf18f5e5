/** Hosts where libvirt uses nftables: the native backend and the iptables backend, with real packets. */

import assert from "node:assert/strict";
import { baseRulesText, brNetfilterAvailable, canRunLab, createLab, type Lab, LAB_ADDR as A } from "./lab.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const can = await canRunLab();
const nft = can.ok &&
  (await new Deno.Command("nft", { args: ["--version"] }).output().catch(() => undefined))?.success;
if (!can.ok) console.log(`Skipping the nftables integration tests: ${can.reason}`);
else if (!nft) console.log("Skipping the nftables integration tests: nft is not installed");
const brNf = can.ok ? await brNetfilterAvailable() : false;
if (can.ok && !brNf) {
  console.log("Skipping the bridge-netfilter variant: br_netfilter is not loaded on this machine");
}

const config = (backend: string) =>
  `{
  "/settings": { "backend": "${backend}" },
  "g1": {
    "private_ip": "${A.g1v4}",
    "private_ipv6": "${A.g1v6}",
    "port_map": { "tcp": [[2222, 22], 80], "udp": [[5353, 53]] },
    "port_range": [{ "init_port": 30000, "ports_num": 3, "protocol": "tcp" }],
  },
  "g2": { "private_ip": "${A.g2v4}", "source_ip": "${A.client4b}", "port_map": { "tcp": [[2223, 22]] } },
}`;

const ENV = { LC_ALL: "C", PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" };
const XML = (name: string, tap: string) =>
  `<domain><name>${name}</name><devices><interface type='network'><source bridge='virbr0'/>` +
  `<target dev='${tap}'/></interface></devices></domain>`;

async function hook(lab: Lab, file: string, args: string[], stdin: string) {
  const r = await lab.exec(lab.ns.host, [Deno.execPath(), "run", "-A", MAIN, ...args], {
    stdin,
    clearEnv: true,
    env: { ...ENV, CONFIG_FILENAME: file },
    cwd: "/",
    timeoutMs: 30_000,
  });
  assert.equal(r.stdout, "");
  return r;
}

const opts = { sanitizeOps: false, sanitizeResources: false };

/** What libvirt does to its guest_input chain when it re-creates its rules: its reject comes back, ours is gone. */
async function libvirtRewritesItsChain(lab: Lab) {
  await lab.exec(lab.ns.host, ["nft", "flush", "chain", "ip", "libvirt_network", "guest_input"]);
  await lab.exec(lab.ns.host, [
    "nft",
    "add",
    "rule",
    "ip",
    "libvirt_network",
    "guest_input",
    "oif",
    "virbr0",
    "counter",
    "reject",
  ]);
}

for (const backend of ["auto", "iptables"]) {
  for (const brNetfilter of [false, true]) {
    Deno.test({
      name: `libvirt on nftables, backend ${backend === "auto" ? "auto (native nftables)" : "iptables"}, ` +
        `bridge-nf-call-iptables=${brNetfilter ? 1 : 0}: forwards work and go without residue`,
      ignore: !can.ok || !nft || (brNetfilter && !brNf),
      ...opts,
      async fn(t) {
        const lab = await createLab({ libvirt: "nftables", brNetfilter });
        const file = await Deno.makeTempFile({ suffix: ".jsonc" });
        const { ns } = lab;
        try {
          await Deno.writeTextFile(file, config(backend));
          await lab.serve(ns.g1, "tcp", 22, "g1");
          await lab.serve(ns.g1, "udp", 53, "g1-dns");
          await lab.serve(ns.g1, "tcp", 30001, "g1-30001");
          await lab.serve(ns.g2, "tcp", 22, "g2");
          const before = { nft: await lab.nftRuleset(), v4: await lab.ruleset(4), v6: await lab.ruleset(6) };
          await t.step("without our accept, libvirt's reject wins", async () => {
            assert.equal(await lab.connect(ns.client, "tcp", A.hostPub4, 2222, { timeoutMs: 800 }), null);
          });
          await t.step(
            "start installs the forwards and one accept in front of libvirt's guest_input",
            async () => {
              const r = await hook(lab, file, ["g1", "start", "begin", "-"], XML("g1", "vnet0"));
              assert.deepEqual([r.code, r.stderr], [0, ""]);
              const chain =
                (await lab.exec(ns.host, ["nft", "list", "chain", "ip", "libvirt_network", "guest_input"]))
                  .stdout;
              const rules = chain.split("\n").map((l) => l.trim()).filter((l) => /accept|reject/.test(l));
              // The domains of our table share one accept per bridge; a domain iptables translates has its own.
              const comment = backend === "auto"
                ? "libvirt-hook-qemu:1:accept"
                : "libvirt-hook-qemu:1:g1:accept";
              assert.equal(
                rules[0]!.replace(/packets \d+ bytes \d+/, "packets 0 bytes 0"),
                `oifname "virbr0" ct status dnat counter packets 0 bytes 0 accept comment "${comment}"`,
              );
              const ours =
                (await lab.exec(ns.host, ["nft", "list", "table", "inet", "libvirt_hook_qemu"])).code === 0;
              assert.equal(ours, backend === "auto", "our own table exists only with the native backend");
            },
          );
          await t.step("status reads the forwards back from whichever backend holds them", async () => {
            const r = await lab.exec(lab.ns.host, [Deno.execPath(), "run", "-A", MAIN, "status"], {
              env: { CONFIG_FILENAME: file },
            });
            assert.equal(r.code, 0, r.stderr);
            const chosen = backend === "auto" ? "nftables" : "iptables";
            assert.match(
              r.stdout,
              new RegExp(`^Firewall backend: ${chosen} \\(setting "${backend}"; libvirt uses nftables\\)\n`),
            );
            for (
              const line of [
                `tcp ${A.hostPub4}:2222 -> ${A.g1v4}:22`,
                `tcp [${A.hostPub6}]:2222 -> [${A.g1v6}]:22`,
                `udp ${A.hostPub4}:5353 -> ${A.g1v4}:53`,
                `tcp ${A.hostPub4}:30000-30002 -> ${A.g1v4}:30000-30002`,
              ]
            ) {
              assert.ok(r.stdout.includes(`  ${line}\n`), `${line} in:\n${r.stdout}`);
            }
            assert.doesNotMatch(r.stdout, /not explained/);
          });
          await t.step("client (IPv4, IPv6, udp, range), host and hairpin", async () => {
            assert.equal(await lab.connect(ns.client, "tcp", A.hostPub4, 2222), `g1 ${A.client4}`);
            assert.equal(await lab.connect(ns.client, "tcp", A.hostPub6, 2222), `g1 ${A.client6}`);
            assert.equal(await lab.connect(ns.client, "udp", A.hostPub4, 5353), `g1-dns ${A.client4}`);
            assert.equal(await lab.connect(ns.client, "tcp", A.hostPub4, 30001), `g1-30001 ${A.client4}`);
            assert.match((await lab.connect(ns.host, "tcp", A.hostPub4, 2222)) ?? "", /^g1 /);
            assert.equal(await lab.connect(ns.g2, "tcp", A.hostPub4, 2222), `g1 ${A.bridge4}`);
            assert.equal(await lab.connect(ns.g1, "tcp", A.hostPub4, 2222), `g1 ${A.bridge4}`);
            assert.equal(await lab.connect(ns.g2, "tcp", A.hostPub6, 2222), `g1 ${A.bridge6}`);
          });
          await t.step("start twice equals start once", async () => {
            const once = await lab.nftRuleset();
            assert.equal((await hook(lab, file, ["g1", "start", "begin", "-"], XML("g1", "vnet0"))).code, 0);
            assert.equal(await lab.nftRuleset(), once);
          });
          await t.step("source restriction", async () => {
            assert.equal((await hook(lab, file, ["g2", "start", "begin", "-"], XML("g2", "vnet1"))).code, 0);
            assert.equal(
              await lab.connect(ns.client, "tcp", A.hostPub4, 2223, { source: A.client4b }),
              `g2 ${A.client4b}`,
            );
            assert.equal(await lab.connect(ns.client, "tcp", A.hostPub4, 2223, { timeoutMs: 800 }), null);
          });
          await t.step(
            "libvirt re-creates its chains: the network hook's started puts our accept back",
            async () => {
              // What a network restart does to libvirt's chain: its rules come back, ours are gone.
              await libvirtRewritesItsChain(lab);
              assert.equal(await lab.connect(ns.client, "tcp", A.hostPub4, 2222, { timeoutMs: 800 }), null);
              const r = await hook(
                lab,
                file,
                ["default", "started", "begin", "-"],
                "<hookData><network><name>default</name></network></hookData>",
              );
              assert.deepEqual([r.code, r.stderr], [0, ""]);
              assert.equal(await lab.connect(ns.client, "tcp", A.hostPub4, 2222), `g1 ${A.client4}`);
              assert.equal(
                await lab.connect(ns.client, "tcp", A.hostPub4, 2223, { source: A.client4b }),
                `g2 ${A.client4b}`,
              );
              // Put libvirt's chain back as it was, for the residue check below.
              await lab.exec(ns.host, ["nft", "flush", "chain", "ip", "libvirt_network", "guest_input"]);
              await lab.exec(ns.host, ["nft", "-f", "-"], {
                stdin:
                  `add rule ip libvirt_network guest_input oif "virbr0" ip daddr ${A.net4} ct state established,related counter accept\n` +
                  `add rule ip libvirt_network guest_input oif "virbr0" counter reject\n`,
              });
            },
          );
          await t.step("stop leaves the exact pre-start rulesets, nft and iptables", async () => {
            assert.equal((await hook(lab, file, ["g1", "stopped", "end", "-"], XML("g1", "vnet0"))).code, 0);
            assert.equal((await hook(lab, file, ["g2", "stopped", "end", "-"], XML("g2", "vnet1"))).code, 0);
            // iptables-nft creates its built-in tables on first use and leaves them, empty, behind.
            assert.equal(withoutEmptyXtables(await lab.nftRuleset()), withoutEmptyXtables(before.nft));
            assert.equal(withoutEmptySaveTables(await lab.ruleset(4)), before.v4);
            assert.equal(withoutEmptySaveTables(await lab.ruleset(6)), before.v6);
          });
        } finally {
          await lab.close();
          await Deno.remove(file).catch(() => {});
        }
      },
    });
  }
}

Deno.test({
  name: "libvirt on iptables, backend nftables: our table translates, one accept per family in iptables' " +
    "FORWARD passes LIBVIRT_FWI's reject; forwards work and go without residue",
  ignore: !can.ok || !nft,
  ...opts,
  async fn(t) {
    const lab = await createLab();
    const file = await Deno.makeTempFile({ suffix: ".jsonc" });
    const { ns } = lab;
    try {
      await lab.serve(ns.g1, "tcp", 22, "g1");
      await lab.serve(ns.g1, "udp", 53, "g1-dns");
      await lab.serve(ns.g1, "tcp", 30001, "g1-30001");
      await lab.serve(ns.g2, "tcp", 22, "g2");
      await Deno.writeTextFile(file, config("nftables"));
      const before = { nft: await lab.nftRuleset(), v4: await lab.ruleset(4), v6: await lab.ruleset(6) };
      await t.step("start: the translation in our table, in iptables one gate by our label", async () => {
        for (const [domain, tap] of [["g1", "vnet0"], ["g2", "vnet1"]]) {
          const r = await hook(lab, file, [domain!, "start", "begin", "-"], XML(domain!, tap!));
          assert.deepEqual([r.code, r.stderr], [0, ""]);
        }
        const v4 = await lab.ruleset(4);
        assert.doesNotMatch(v4, /-j DNAT/);
        assert.deepEqual(
          v4.split("\n").filter((l) => /^-A LVH-\w+-FWD /.test(l)).map((l) => l.replace(/LVH-\w+-/, "LVH-x-"))
            .sort(),
          ["g1", "g2"].flatMap((d) => [
            `-A LVH-x-FWD -m comment --comment "libvirt-hook-qemu:1:${d}" -j ACCEPT`,
            `-A LVH-x-FWD -m comment --comment "libvirt-hook-qemu:1:${d}" -j LVH-USER`,
          ]).sort(),
        );
        // One rule of ours in FORWARD for both domains: the gate, which only our labelled connections pass.
        assert.deepEqual(v4.split("\n").filter((l) => l.startsWith("-A FORWARD ") && l.includes("LVH-")), [
          '-A FORWARD -m connlabel --label "127" -j LVH-FORWARD',
        ]);
        assert.match(await lab.nftRuleset(), / ct label set 127 dnat ip to /);
      });
      await t.step("client (IPv4, IPv6, udp, range), host and hairpin", async () => {
        assert.equal(await lab.connect(ns.client, "tcp", A.hostPub4, 2222), `g1 ${A.client4}`);
        assert.equal(await lab.connect(ns.client, "tcp", A.hostPub6, 2222), `g1 ${A.client6}`);
        assert.equal(await lab.connect(ns.client, "udp", A.hostPub4, 5353), `g1-dns ${A.client4}`);
        assert.equal(await lab.connect(ns.client, "tcp", A.hostPub4, 30001), `g1-30001 ${A.client4}`);
        assert.match((await lab.connect(ns.host, "tcp", A.hostPub4, 2222)) ?? "", /^g1 /);
        assert.equal(await lab.connect(ns.g2, "tcp", A.hostPub4, 2222), `g1 ${A.bridge4}`);
        assert.equal(await lab.connect(ns.g1, "tcp", A.hostPub4, 2222), `g1 ${A.bridge4}`);
      });
      await t.step("source restriction; what is not forwarded still meets libvirt's reject", async () => {
        assert.equal(
          await lab.connect(ns.client, "tcp", A.hostPub4, 2223, { source: A.client4b }),
          `g2 ${A.client4b}`,
        );
        assert.equal(await lab.connect(ns.client, "tcp", A.hostPub4, 2223, { timeoutMs: 800 }), null);
        assert.equal(await lab.connect(ns.client, "tcp", A.g1v4, 22, { timeoutMs: 800 }), null);
      });
      await t.step("stop leaves the exact pre-start rulesets, nft and iptables", async () => {
        assert.equal((await hook(lab, file, ["g1", "stopped", "end", "-"], XML("g1", "vnet0"))).code, 0);
        assert.equal((await hook(lab, file, ["g2", "stopped", "end", "-"], XML("g2", "vnet1"))).code, 0);
        assert.equal(withoutEmptyXtables(await lab.nftRuleset()), withoutEmptyXtables(before.nft));
        assert.equal(withoutEmptySaveTables(await lab.ruleset(4)), before.v4);
        assert.equal(withoutEmptySaveTables(await lab.ruleset(6)), before.v6);
      });
    } finally {
      await lab.close();
      await Deno.remove(file).catch(() => {});
    }
  },
});

const legacy = can.ok &&
  (await new Deno.Command("iptables-legacy", { args: ["--version"] }).output().catch(() => undefined))
    ?.success;
if (can.ok && !legacy) console.log("Skipping the iptables-legacy variant: iptables-legacy is not installed");

Deno.test({
  name: "libvirt on iptables-legacy, either backend: our labelled accept in legacy FORWARD passes what our " +
    "iptables or nftables NAT translated; both go without residue",
  ignore: !can.ok || !nft || !legacy,
  ...opts,
  async fn(t) {
    const lab = await createLab({ baseRules: false });
    const file = await Deno.makeTempFile({ suffix: ".jsonc" });
    const { ns } = lab;
    const run = (argv: string[], stdin?: string) =>
      lab.exec(ns.host, argv, { timeoutMs: 60_000, ...(stdin === undefined ? {} : { stdin }) });
    const save = async () => (await run(["iptables-legacy-save"])).stdout.replace(/^#.*\n|\[\d+:\d+\]/gm, "");
    try {
      for (const family of [4, 6] as const) {
        const restore = family === 4 ? "iptables-legacy-restore" : "ip6tables-legacy-restore";
        assert.equal((await run([restore], baseRulesText(family, { checksum: false }))).code, 0);
      }
      await lab.serve(ns.g1, "tcp", 22, "g1");
      assert.equal(await lab.connect(ns.client, "tcp", A.hostPub4, 2222, { timeoutMs: 800 }), null);
      for (const backend of ["iptables", "nftables"]) {
        await t.step(`backend ${backend}`, async () => {
          await Deno.writeTextFile(
            file,
            `{"/settings": {"backend": "${backend}"}, "g1": {"private_ip": "${A.g1v4}", ` +
              `"port_map": {"tcp": [[2222, 22]]}}}`,
          );
          const before = { v4: await save(), nft: (await run(["nft", "list", "ruleset"])).stdout };
          const env = { ...ENV, CONFIG_FILENAME: file, IPTABLES_BINARY: "iptables-legacy" };
          const hookCall = (op: string) =>
            lab.exec(ns.host, [
              Deno.execPath(),
              "run",
              "-A",
              MAIN,
              "g1",
              op,
              op === "start" ? "begin" : "end",
              "-",
            ], {
              stdin: "<domain><name>g1</name></domain>",
              clearEnv: true,
              env,
              timeoutMs: 60_000,
            });
          const started = await hookCall("start");
          assert.deepEqual([started.code, started.stderr], [0, ""]);
          assert.match(await save(), /\n-A FORWARD -m connlabel --label "?127"? -j LVH-FORWARD\n/);
          assert.equal(await lab.connect(ns.client, "tcp", A.hostPub4, 2222), `g1 ${A.client4}`);
          assert.equal(await lab.connect(ns.g2, "tcp", A.hostPub4, 2222), `g1 ${A.bridge4}`);
          assert.equal((await hookCall("stopped")).code, 0);
          assert.equal(await save(), before.v4);
          assert.equal((await run(["nft", "list", "ruleset"])).stdout, before.nft);
        });
      }
    } finally {
      await lab.close();
      await Deno.remove(file).catch(() => {});
    }
  },
});

/** Drops the tables iptables-nft creates on first use (`ip nat`, `ip6 filter`, ...) when they hold no rule. */
function withoutEmptyXtables(ruleset: string): string {
  return ruleset.replace(
    /table ip6? (nat|filter|mangle|raw) \{\n([\s\S]*?)\n\}\n/g,
    (whole, _name, body: string) => {
      const rules = body.split("\n").map((l) => l.trim()).filter((l) =>
        l && !/^(chain \w+ \{|type .*policy accept;|\})$/.test(l)
      );
      return rules.length === 0 ? "" : whole;
    },
  );
}

/** Drops iptables-save tables that only declare built-in chains with policy ACCEPT (left by iptables-nft). */
function withoutEmptySaveTables(save: string): string {
  return save.replace(/\*\w+\n(?::[A-Z]+ ACCEPT\n)*COMMIT\n?/g, "");
}

Deno.test({
  name:
    "watch puts our accept back when libvirt rewrites its chain, and our rules when another tool wipes them",
  ignore: !can.ok || !nft,
  ...opts,
  async fn() {
    const lab = await createLab({ libvirt: "nftables" });
    const file = await Deno.makeTempFile({ suffix: ".jsonc" });
    const run = await Deno.makeTempDir();
    const state = await Deno.makeTempDir();
    let watcher: Deno.ChildProcess | undefined;
    try {
      await Deno.writeTextFile(file, config("auto"));
      await Deno.writeTextFile(`${run}/g1.xml`, XML("g1", "vnet0"));
      await lab.serve(lab.ns.g1, "tcp", 22, "g1");
      assert.equal((await hook(lab, file, ["g1", "start", "begin", "-"], XML("g1", "vnet0"))).code, 0);
      watcher = new Deno.Command("ip", {
        args: ["netns", "exec", lab.ns.host, Deno.execPath(), "run", "-A", MAIN, "watch", "--poll", "5"],
        env: { CONFIG_FILENAME: file, LIBVIRT_QEMU_RUN_DIR: run, LIBVIRT_HOOK_QEMU_STATE_DIR: state },
        stdout: "null",
        stderr: "piped",
      }).spawn();
      const works = async () => {
        for (let i = 0; i < 40; i++) {
          if (
            await lab.connect(lab.ns.client, "tcp", A.hostPub4, 2222, { timeoutMs: 300 }) ===
              `g1 ${A.client4}`
          ) {
            return true;
          }
          await new Promise((r) => setTimeout(r, 100));
        }
        return false;
      };
      // libvirt re-creates its chain (reload, SIGHUP): its rules come back, ours are gone.
      await libvirtRewritesItsChain(lab);
      assert.ok(await works(), "the watcher put our accept back in front of libvirt's reject");
      // Another tool wipes our table.
      await lab.exec(lab.ns.host, ["nft", "delete", "table", "inet", "libvirt_hook_qemu"]);
      assert.ok(await works(), "the watcher re-applied the running guest's forwards");
      // An administrator's remove is on purpose: the watcher leaves it be.
      const removed = await lab.exec(lab.ns.host, [Deno.execPath(), "run", "-A", MAIN, "remove", "g1"], {
        env: { CONFIG_FILENAME: file, LIBVIRT_QEMU_RUN_DIR: run, LIBVIRT_HOOK_QEMU_STATE_DIR: state },
      });
      assert.equal(removed.code, 0, removed.stderr);
      await new Promise((r) => setTimeout(r, 1500));
      assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 2222, { timeoutMs: 500 }), null);
    } finally {
      if (watcher) {
        try {
          watcher.kill("SIGTERM");
        } catch {
          // already gone
        }
        await watcher.stderr.cancel().catch(() => {});
        await watcher.status;
      }
      await lab.close();
      await Deno.remove(file).catch(() => {});
      await Deno.remove(run, { recursive: true }).catch(() => {});
      await Deno.remove(state, { recursive: true }).catch(() => {});
    }
  },
});
