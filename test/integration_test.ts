/** The hook against real iptables and real packets, in network namespaces wired like a libvirt host. */

import assert from "node:assert/strict";
import { canRunLab, createLab, type Lab, LAB_ADDR as A } from "./lab.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const can = await canRunLab();
if (!can.ok) console.log(`Skipping the namespace integration tests: ${can.reason}`);
const brNf = can.ok ? await import("./lab.ts").then((m) => m.brNetfilterAvailable()) : false;
if (can.ok && !brNf) {
  console.log("Skipping the bridge-netfilter variant: br_netfilter is not loaded on this machine");
}

const CONFIG = `{
  // g1: dual stack, pairs, a plain port, udp and a range; the public address is the host's default one.
  "g1": {
    "interface": "virbr0",
    "private_ip": "${A.g1v4}",
    "private_ipv6": "${A.g1v6}",
    "port_map": { "tcp": [[2222, 22], 80], "udp": [[5353, 53]] },
    "port_range": [{ "init_port": 30000, "ports_num": 3, "protocol": "tcp" }],
  },
  // g2: only the client's second address may use it.
  "g2": {
    "private_ip": "${A.g2v4}",
    "source_ip": "${A.client4b}",
    "private_ipv6": "${A.g2v6}",
    "source_ipv6": "${A.client6b}",
    "port_map": { "tcp": [[2223, 22]] },
  },
}`;

const XML = (name: string, tap: string) =>
  `<domain type='kvm'><name>${name}</name><devices><interface type='network'>` +
  `<source network='default' bridge='virbr0'/><target dev='${tap}'/></interface></devices></domain>`;
const TAPS: Record<string, string> = { g1: "vnet0", g2: "vnet1" };

/** A lab plus a config file and a way to call the hook exactly as libvirt does. */
class Host {
  constructor(readonly lab: Lab, readonly config: string, readonly stateDir: string) {}

  static async create(brNetfilter: boolean, configText = CONFIG): Promise<Host> {
    const lab = await createLab({ brNetfilter, ipv6Forward: "established" });
    const config = await Deno.makeTempFile({ suffix: ".jsonc" });
    await Deno.writeTextFile(config, configText);
    // A state directory of its own (config cache, busy-ruleset hint), as /run/libvirt-hook-qemu is on a host.
    return new Host(lab, config, await Deno.makeTempDir());
  }

  setConfig(text: string) {
    return Deno.writeTextFile(this.config, text);
  }

  /** Runs `<domain> <op> <sub> -` in the host namespace with libvirt's minimal environment and cwd `/`. */
  async hook(domain: string, op: string, sub = op === "stopped" || op === "release" ? "end" : "begin") {
    const r = await this.lab.exec(this.lab.ns.host, [
      Deno.execPath(),
      "run",
      "-A",
      MAIN,
      domain,
      op,
      sub,
      "-",
    ], {
      stdin: XML(domain, TAPS[domain] ?? "vnet9"),
      clearEnv: true,
      env: {
        LC_ALL: "C",
        PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        CONFIG_FILENAME: this.config,
        LIBVIRT_HOOK_QEMU_STATE_DIR: this.stateDir,
      },
      cwd: "/",
      timeoutMs: 30_000,
    });
    assert.equal(r.stdout, "", "the hook must never write to stdout");
    return r;
  }

  async rules() {
    return `${await this.lab.ruleset(4)}\n${await this.lab.ruleset(6)}`;
  }

  async close() {
    await this.lab.close();
    await Deno.remove(this.config).catch(() => {});
    await Deno.remove(this.stateDir, { recursive: true }).catch(() => {});
  }
}

async function serveGuests(lab: Lab) {
  await lab.serve(lab.ns.g1, "tcp", 22, "g1");
  await lab.serve(lab.ns.g1, "tcp", 80, "g1-web");
  await lab.serve(lab.ns.g1, "udp", 53, "g1-dns");
  for (const p of [30000, 30001, 30002]) await lab.serve(lab.ns.g1, "tcp", p, `g1-${p}`);
  await lab.serve(lab.ns.g2, "tcp", 22, "g2");
}

const opts = { sanitizeOps: false, sanitizeResources: false };

for (const brNetfilter of [false, true]) {
  Deno.test({
    name: `hook forwards real traffic with bridge-nf-call-iptables=${brNetfilter ? 1 : 0}`,
    ignore: !can.ok || (brNetfilter && !brNf),
    ...opts,
    async fn(t) {
      const h = await Host.create(brNetfilter);
      const { lab } = h;
      const { ns } = lab;
      try {
        await serveGuests(lab);
        const before = await h.rules();
        await t.step("before start, the guest cannot be reached through the public address", async () => {
          assert.equal(await lab.connect(ns.client, "tcp", A.hostPub4, 2222), null);
        });
        await t.step("start exits 0 and prints nothing", async () => {
          const r = await h.hook("g1", "start");
          assert.equal(r.stderr, "");
          assert.equal(r.code, 0);
        });
        await t.step("tcp pair: the guest sees the client's own address", async () => {
          assert.equal(await lab.connect(ns.client, "tcp", A.hostPub4, 2222), `g1 ${A.client4}`);
        });
        await t.step("tcp single port", async () => {
          assert.equal(await lab.connect(ns.client, "tcp", A.hostPub4, 80), `g1-web ${A.client4}`);
        });
        await t.step("udp pair", async () => {
          assert.equal(await lab.connect(ns.client, "udp", A.hostPub4, 5353), `g1-dns ${A.client4}`);
        });
        await t.step("every port of a range, and not one past it", async () => {
          for (const p of [30000, 30001, 30002]) {
            assert.equal(await lab.connect(ns.client, "tcp", A.hostPub4, p), `g1-${p} ${A.client4}`);
          }
          assert.equal(await lab.connect(ns.client, "tcp", A.hostPub4, 30003, { timeoutMs: 800 }), null);
        });
        await t.step("a connection opened on the host itself", async () => {
          assert.match((await lab.connect(ns.host, "tcp", A.hostPub4, 2222)) ?? "", /^g1 /);
        });
        await t.step("hairpin: the guest reaches its own forward through the public address", async () => {
          assert.equal(await lab.connect(ns.g1, "tcp", A.hostPub4, 2222), `g1 ${A.bridge4}`);
        });
        await t.step("hairpin: another guest on the bridge reaches it too", async () => {
          assert.equal(await lab.connect(ns.g2, "tcp", A.hostPub4, 2222), `g1 ${A.bridge4}`);
        });
        await t.step("IPv6: client, host and hairpin", async () => {
          assert.equal(await lab.connect(ns.client, "tcp", A.hostPub6, 2222), `g1 ${A.client6}`);
          assert.match((await lab.connect(ns.host, "tcp", A.hostPub6, 2222)) ?? "", /^g1 /);
          assert.equal(await lab.connect(ns.g2, "tcp", A.hostPub6, 2222), `g1 ${A.bridge6}`);
          assert.equal(await lab.connect(ns.g1, "tcp", A.hostPub6, 2222), `g1 ${A.bridge6}`);
          assert.equal(await lab.connect(ns.client, "udp", A.hostPub6, 5353), `g1-dns ${A.client6}`);
        });
        await t.step("source_ip: only the named client gets through", async () => {
          assert.equal((await h.hook("g2", "start")).code, 0);
          assert.equal(
            await lab.connect(ns.client, "tcp", A.hostPub4, 2223, { source: A.client4b }),
            `g2 ${A.client4b}`,
          );
          assert.equal(await lab.connect(ns.client, "tcp", A.hostPub4, 2223, { timeoutMs: 800 }), null);
          assert.equal(
            await lab.connect(ns.client, "tcp", A.hostPub6, 2223, { source: A.client6b }),
            `g2 ${A.client6b}`,
          );
          assert.equal(await lab.connect(ns.client, "tcp", A.hostPub6, 2223, { timeoutMs: 800 }), null);
        });
        await t.step(
          "stop restores the exact pre-start ruleset, both families, and the forwards are gone",
          async () => {
            assert.equal((await h.hook("g1", "stopped")).code, 0);
            assert.equal((await h.hook("g2", "stopped")).code, 0);
            assert.equal(await h.rules(), before);
            assert.equal(await lab.connect(ns.client, "tcp", A.hostPub4, 2222, { timeoutMs: 800 }), null);
          },
        );
      } finally {
        await h.close();
      }
    },
  });
}

Deno.test({
  name: "hook keeps the firewall exact across repeats, config changes, errors and parallel guests",
  ignore: !can.ok,
  ...opts,
  async fn(t) {
    const h = await Host.create(false);
    const { lab } = h;
    try {
      await serveGuests(lab);
      const pristine = await h.rules();

      await t.step("stop without start is a quiet no-op", async () => {
        const r = await h.hook("g1", "stopped");
        assert.deepEqual([r.code, r.stderr], [0, ""]);
        assert.equal(await h.rules(), pristine);
      });

      await t.step("start twice equals start once", async () => {
        await h.hook("g1", "start");
        const once = await h.rules();
        await h.hook("g1", "start");
        assert.equal(await h.rules(), once);
        await h.hook("g1", "stopped");
        assert.equal(await h.rules(), pristine);
      });

      await t.step(
        "reconnect with an unchanged config changes nothing; with a new config, applies it",
        async () => {
          await h.hook("g1", "start");
          const once = await h.rules();
          assert.equal((await h.hook("g1", "reconnect")).code, 0);
          assert.equal(await h.rules(), once);
          await h.setConfig(CONFIG.replace("[[2222, 22], 80]", "[[2224, 22]]"));
          assert.equal((await h.hook("g1", "reconnect")).code, 0);
          assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 2224), `g1 ${A.client4}`);
          assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 2222, { timeoutMs: 800 }), null);
          await h.setConfig(CONFIG);
          await h.hook("g1", "stopped");
          assert.equal(await h.rules(), pristine);
        },
      );

      await t.step("reconnect keeps the live rules when the entry became invalid, and exits 0", async () => {
        await h.hook("g1", "start");
        const live = await h.rules();
        await h.setConfig(CONFIG.replace(`"${A.g1v4}"`, `"${A.g1v4}.5"`));
        const r = await h.hook("g1", "reconnect");
        assert.equal(r.code, 0);
        assert.match(r.stderr, /:5:19: Not an IP address \(g1\.private_ip = "192\.168\.122\.10\.5"\)/);
        assert.equal(await h.rules(), live);
        await h.setConfig(CONFIG);
        await h.hook("g1", "stopped");
      });

      await t.step(
        "stop after the config changed ports, addresses, or dropped the domain leaves nothing",
        async () => {
          const changes = [
            CONFIG.replace("[[2222, 22], 80]", "[[4000, 22]]"),
            CONFIG.replaceAll(A.g1v4, "192.168.122.77"),
            CONFIG.replace(`"interface": "virbr0",`, `"interface": "virbr0", "public_ip": "203.0.113.9",`),
            `{}`,
            `{ "g1": [`,
          ];
          for (const changed of changes) {
            await h.setConfig(CONFIG);
            await h.hook("g1", "start");
            await h.setConfig(changed);
            assert.equal((await h.hook("g1", "stopped")).code, 0);
            assert.equal(await h.rules(), pristine, `residue after: ${changed.slice(0, 60)}`);
          }
          await h.setConfig(CONFIG);
        },
      );

      await t.step("an invalid entry fails start with file:line:column and changes nothing", async () => {
        await h.setConfig(CONFIG.replace("[[2223, 22]]", "[[2223, 70000]]"));
        const r = await h.hook("g2", "start");
        assert.equal(r.code, 1);
        assert.match(
          r.stderr,
          new RegExp(
            `^${h.config}:16:34: Port out of range 1-65535 \\(g2\\.port_map\\.tcp\\[0\\]\\[1\\] = 70000\\)$`,
            "m",
          ),
        );
        assert.match(
          r.stderr,
          /^Cannot apply forwards for "g2": 1 problem\(s\) in .*; nothing was changed$/m,
        );
        assert.equal(await h.rules(), pristine);
        // Another guest in the same file still starts.
        assert.equal((await h.hook("g1", "start")).code, 0);
        await h.hook("g1", "stopped");
        await h.setConfig(CONFIG);
      });

      await t.step("8 domains started and stopped in parallel keep each other's rules", async () => {
        const names = Array.from({ length: 8 }, (_, i) => `par${i}`);
        const config = Object.fromEntries(names.map((n, i) => [n, {
          private_ip: `192.168.122.${100 + i}`,
          port_map: { tcp: [[40000 + i, 22]], udp: [[41000 + i, 53]] },
        }]));
        await h.setConfig(JSON.stringify(config));
        const starts = await Promise.all(names.map((n) => h.hook(n, "start")));
        assert.deepEqual(starts.map((r) => r.code), names.map(() => 0));
        const live = await lab.ruleset(4);
        for (const [i] of names.entries()) {
          assert.match(
            live,
            new RegExp(`--dport ${40000 + i} .*--to-destination 192\\.168\\.122\\.${100 + i}:22`),
          );
        }
        const stops = await Promise.all(names.map((n) => h.hook(n, "stopped")));
        assert.deepEqual(stops.map((r) => r.code), names.map(() => 0));
        assert.equal(await h.rules(), pristine);
        await h.setConfig(CONFIG);
      });
    } finally {
      await h.close();
    }
  },
});

Deno.test({
  name: "hook on a busy host reads only what it needs, with the same result",
  ignore: !can.ok,
  ...opts,
  async fn() {
    const h = await Host.create(false);
    const { lab } = h;
    try {
      await serveGuests(lab);
      // 5000 rules of another tool, as on a Docker or Kubernetes host: iptables-save grows past 256 KB.
      const busy = ["*filter", ":BUSY - [0:0]"];
      for (let i = 0; i < 5000; i++) {
        busy.push(`-A BUSY -s 10.${i >> 8}.${i & 255}.1/32 -p tcp -m tcp --dport ${1000 + i} -j ACCEPT`);
      }
      busy.push("COMMIT", "");
      assert.equal(
        (await lab.exec(lab.ns.host, ["iptables-restore", "--noflush"], { stdin: busy.join("\n") })).code,
        0,
      );
      const pristine = await h.rules();
      // A start with nothing of the domain live needs one nft look, whatever the host has.
      assert.equal((await h.hook("g1", "start")).code, 0);
      const hint = `${h.stateDir}/busy-ruleset`;
      await assert.rejects(Deno.stat(hint), Deno.errors.NotFound);
      const once = await h.rules();
      // A start over live chains reads them: the first time everything, noting that the host is busy.
      assert.equal((await h.hook("g1", "start")).code, 0);
      assert.ok(Number(await Deno.readTextFile(hint)) > 256 * 1024);
      assert.equal(await h.rules(), once);
      // From then on single chains: the rules are still replaced, not added to.
      assert.equal((await h.hook("g1", "start")).code, 0);
      assert.equal(await h.rules(), once);
      assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 2222), `g1 ${A.client4}`);
      assert.equal(await lab.connect(lab.ns.g2, "tcp", A.hostPub4, 2222), `g1 ${A.bridge4}`);
      assert.equal((await h.hook("g1", "stopped")).code, 0);
      assert.equal(await h.rules(), pristine);
    } finally {
      await h.close();
    }
  },
});
