/**
 * Shared hosts: forwards beside other firewall software, in lab hosts with real iptables/nftables and packets:
 * Docker's rules (see hosts.ts), the real ufw and firewalld, an administrator's nftables table with policy drop.
 */

import assert from "node:assert/strict";
import { baseRulesText, canRunLab, createLab, type Lab, LAB_ADDR as A, libvirtNftText } from "./lab.ts";
import { dockerd, firewalld, installed, loadDocker, ufw } from "./hosts.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const can = await canRunLab();
const nft = can.ok &&
  (await new Deno.Command("nft", { args: ["--version"] }).output().catch(() => undefined))?.success;
if (!can.ok) console.log(`Skipping the shared-host tests: ${can.reason}`);
else if (!nft) console.log("Skipping the shared-host tests: nft is not installed");
const opts = { sanitizeOps: false, sanitizeResources: false };
const PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/** Every file these tests write lives here, removed when the tests end. */
const SCRATCH = await Deno.makeTempDir();
globalThis.addEventListener("unload", () => Deno.removeSync(SCRATCH, { recursive: true }));

/** A host as libvirt and an operator find it: the config, and libvirt's run directory with the running guest. */
async function host(lab: Lab, settings: Record<string, unknown>) {
  const dir = await Deno.makeTempDir({ dir: SCRATCH });
  await Deno.mkdir(`${dir}/run`);
  const xml = `<domain><name>web1</name><devices><interface type='network'><source bridge='virbr0'/>` +
    `<target dev='vnet0'/></interface></devices></domain>`;
  await Deno.writeTextFile(`${dir}/run/web1.xml`, xml);
  await Deno.writeTextFile(
    `${dir}/hooks.jsonc`,
    JSON.stringify({
      "/settings": settings,
      web1: {
        private_ip: A.g1v4,
        private_ipv6: A.g1v6,
        port_map: { tcp: [[2222, 22]], udp: [[5353, 53]] },
      },
    }),
  );
  const env = {
    LC_ALL: "C",
    PATH,
    CONFIG_FILENAME: `${dir}/hooks.jsonc`,
    LIBVIRT_QEMU_RUN_DIR: `${dir}/run`,
  };
  const run = (args: string[]) =>
    lab.exec(lab.ns.host, [Deno.execPath(), "run", "-A", MAIN, ...args], {
      stdin: xml,
      clearEnv: true,
      env,
      cwd: "/",
      timeoutMs: 30_000,
    });
  return { run, env, file: `${dir}/hooks.jsonc` };
}

/** The whole firewall of the lab's host: iptables per family and every nftables table. */
async function firewall(lab: Lab): Promise<string> {
  return [await lab.ruleset(4), await lab.ruleset(6), await lab.nftRuleset()].join("\n");
}

/** The forward, from a client outside, from the host itself, and from another guest, in both families. */
async function reaches(lab: Lab, t: Deno.TestContext) {
  const { ns } = lab;
  await t.step("a client outside reaches the guest, which sees the client's address", async () => {
    assert.equal(await lab.connect(ns.client, "tcp", A.hostPub4, 2222), `g1 ${A.client4}`);
    assert.equal(await lab.connect(ns.client, "tcp", A.hostPub6, 2222), `g1 ${A.client6}`);
    assert.equal(await lab.connect(ns.client, "udp", A.hostPub4, 5353), `g1-dns ${A.client4}`);
  });
  await t.step("the host itself reaches it through the public address", async () => {
    assert.match((await lab.connect(ns.host, "tcp", A.hostPub4, 2222)) ?? "", /^g1 /);
  });
  await t.step("another guest reaches it through the public address (hairpin)", async () => {
    assert.match((await lab.connect(ns.g2, "tcp", A.hostPub4, 2222)) ?? "", /^g1 /);
  });
}

/** The other software, set up in a lab's host as it would be on a real host before the guest starts. */
const SOFTWARE: { name: string; missing?: string; setUp(lab: Lab): Promise<unknown> }[] = [
  { name: "Docker 27", setUp: (lab) => loadDocker(lab, 27) },
  { name: "Docker 28", setUp: (lab) => loadDocker(lab, 28) },
  {
    name: "ufw",
    ...(installed("ufw") ? {} : { missing: "ufw is not installed" }),
    setUp: (lab) => ufw(lab, SCRATCH),
  },
  {
    // Debian 12's docker.io (20.10): its rules are Docker 27's for IPv4 (above), from the daemon itself.
    name: "dockerd (Debian's docker.io)",
    ...(installed("dockerd") && installed("containerd") ? {} : { missing: "docker.io is not installed" }),
    setUp: (lab) => dockerd(lab, SCRATCH),
  },
];
for (const s of SOFTWARE) if (s.missing && can.ok) console.log(`Skipping the ${s.name} tests: ${s.missing}`);

for (const software of SOFTWARE) {
  for (const libvirt of ["iptables", "nftables"] as const) {
    for (const backend of libvirt === "iptables" ? ["auto"] : ["auto", "iptables"]) {
      Deno.test({
        name:
          `${software.name} (FORWARD policy DROP), libvirt on ${libvirt}, backend ${backend}: the whole ` +
          "connection passes, without any rule of Docker's advice, and stop leaves the firewall as it was",
        ignore: !can.ok || !nft || software.missing !== undefined,
        ...opts,
        async fn(t) {
          await using lab = await createLab({ libvirt, ipv6Forward: "established" });
          const { ns } = lab;
          const running = await software.setUp(lab) as
            | { stop?(): Promise<void>; reload?(): Promise<void> }
            | undefined;
          await using _ = { [Symbol.asyncDispose]: async () => await running?.stop?.() };
          await lab.serve(ns.g1, "tcp", 22, "g1");
          await lab.serve(ns.g1, "udp", 53, "g1-dns");
          const { run } = await host(lab, { backend });
          const before = await firewall(lab);
          assert.equal(await lab.connect(ns.client, "tcp", A.hostPub4, 2222, { timeoutMs: 1000 }), null);
          const started = await run(["web1", "start", "begin", "-"]);
          assert.equal(started.code, 0, started.stderr);
          await reaches(lab, t);
          if (running?.reload) {
            await t.step("its reload leaves our rules alone", async () => {
              await running.reload!();
              assert.equal(await lab.connect(ns.client, "tcp", A.hostPub4, 2222), `g1 ${A.client4}`);
            });
          }
          const doctor = await run(["doctor", "web1"]);
          assert.doesNotMatch(doctor.stdout, /FAIL +(the forward|libvirt|blocked)/, doctor.stdout);
          const stopped = await run(["web1", "stopped", "end", "-"]);
          assert.equal(stopped.code, 0, stopped.stderr);
          assert.equal(await firewall(lab), before);
        },
      });
    }
  }
}

/** Debian's /etc/nftables.conf, tightened: policy drop at the forward hook, replies only. */
const ADMIN_TABLE = `table inet filter {
  chain forward {
    type filter hook forward priority filter; policy drop;
    ct state established,related accept
  }
}
`;

for (const libvirt of ["iptables", "nftables"] as const) {
  Deno.test({
    name:
      `an administrator's nftables table with policy drop, libvirt on ${libvirt}: named by check, status and ` +
      "doctor; with accept_in, traffic passes; after stop, the table is exactly as written",
    ignore: !can.ok || !nft,
    ...opts,
    async fn(t) {
      await using lab = await createLab({ libvirt, ipv6Forward: "established" });
      const { ns } = lab;
      await lab.exec(ns.host, ["nft", "-f", "-"], { stdin: ADMIN_TABLE });
      const adminTable = async () =>
        (await lab.exec(ns.host, ["nft", "list", "table", "inet", "filter"])).stdout;
      const written = await adminTable();
      await lab.serve(ns.g1, "tcp", 22, "g1");
      await lab.serve(ns.g1, "udp", 53, "g1-dns");

      await t.step("not handed to us: start succeeds, and every report names the gate", async () => {
        const { run } = await host(lab, {});
        const started = await run(["web1", "start", "begin", "-"]);
        assert.equal(started.code, 0, started.stderr);
        assert.equal(await lab.connect(ns.client, "tcp", A.hostPub4, 2222, { timeoutMs: 1000 }), null);
        const check = await run(["check"]);
        assert.match(
          check.stderr,
          /warning: web1: 4 of 4 forward\(s\) blocked by inet filter forward \(priority 0\): inet filter forward has policy drop; let it through with "nft insert rule inet filter forward ct status dnat accept", or hand us the chain: "\/settings": \{"accept_in": \["inet filter forward"\]\}/,
        );
        const status = await run(["status"]);
        assert.match(
          status.stdout,
          /^Gate not ours to open: inet filter forward \(priority 0, policy drop\)/m,
        );
        assert.match(
          status.stdout,
          /tcp 203\.0\.113\.1:2222 -> 192\.168\.122\.10:22 {3}<- blocked by inet filter forward/,
        );
        const json = JSON.parse((await run(["status", "--json"])).stdout);
        assert.deepEqual(json.domains[0].forwards[0].blocked, ["blocked by inet filter forward"]);
        const doctor = await run(["doctor", "web1"]);
        assert.equal(doctor.code, 1);
        assert.match(
          doctor.stdout,
          /FAIL {2}blocked by inet filter forward \(priority 0\): inet filter forward has policy drop/,
        );
        assert.match(doctor.stdout, /fix: nft insert rule inet filter forward ct status dnat accept/);
        const stopped = await run(["web1", "stopped", "end", "-"]);
        assert.equal(stopped.code, 0, stopped.stderr);
        assert.equal(await adminTable(), written);
      });

      await t.step(
        "handed to us with accept_in: the forward passes, both ways, in both families",
        async () => {
          const before = await firewall(lab);
          const { run } = await host(lab, { accept_in: ["inet filter forward"] });
          const started = await run(["web1", "start", "begin", "-"]);
          assert.equal(started.code, 0, started.stderr);
          assert.equal(await lab.connect(ns.client, "tcp", A.hostPub4, 2222), `g1 ${A.client4}`);
          assert.equal(await lab.connect(ns.client, "tcp", A.hostPub6, 2222), `g1 ${A.client6}`);
          assert.equal(await lab.connect(ns.client, "udp", A.hostPub4, 5353), `g1-dns ${A.client4}`);
          // Our accepts are first in the administrator's chain, tagged as ours.
          const table = await adminTable();
          assert.match(
            table,
            /policy drop;\n\t\toifname "virbr0" ct status dnat counter packets \d+ bytes \d+ accept comment "libvirt-hook-qemu:1:web1:accept"/,
          );
          const doctor = await run(["doctor", "web1"]);
          assert.doesNotMatch(doctor.stdout, /blocked by/, doctor.stdout);
          assert.match(doctor.stdout, /ok {4}inet filter forward, handed to us, holds our accept/);
          // check says nothing of a chain handed to us that is there, and warns of one that is not.
          assert.doesNotMatch((await run(["check"])).stderr, /accept_in/);
          const { run: runWrong } = await host(lab, { accept_in: ["inet filter nosuchchain"] });
          assert.match(
            (await runWrong(["check"])).stderr,
            /warning: \["\/settings"\]\.accept_in: inet filter nosuchchain is no base chain at the forward hook on this host/,
          );
          // The administrator reloads the table: our accepts are gone, and reload puts them back in front.
          await lab.exec(ns.host, ["nft", "-f", "-"], { stdin: `flush table inet filter\n${ADMIN_TABLE}` });
          assert.equal(await lab.connect(ns.client, "tcp", A.hostPub4, 2222, { timeoutMs: 1000 }), null);
          const reload = await run(["reload"]);
          assert.equal(reload.code, 0, reload.stderr);
          assert.equal(await lab.connect(ns.client, "tcp", A.hostPub4, 2222), `g1 ${A.client4}`);
          // Stop, with the setting gone from the config meanwhile: what is live goes, whatever the config says.
          const { run: runWithout } = await host(lab, {});
          const stopped = await runWithout(["web1", "stopped", "end", "-"]);
          assert.equal(stopped.code, 0, stopped.stderr);
          assert.equal(await adminTable(), written);
          assert.equal(await firewall(lab), before);
        },
      );
    },
  });
}

const FIREWALLD = installed("firewalld") && installed("dbus-daemon") && installed("firewall-cmd");
if (can.ok && !FIREWALLD) {
  console.log("Skipping the firewalld tests: firewalld or dbus-daemon is not installed");
}

/** What libvirt does when firewalld (re)starts: it re-creates its iptables chains, its jumps first in FORWARD. */
async function libvirtRecreates(lab: Lab) {
  await lab.exec(lab.ns.host, ["iptables-restore"], {
    stdin: baseRulesText(4, { checksum: lab.checksumRule }),
  });
  await lab.exec(lab.ns.host, ["ip6tables-restore"], {
    stdin: baseRulesText(6, { ipv6Forward: "established" }),
  });
}

/** Waits until `probe` gives `want`, for at most `ms`. */
async function eventually<T>(probe: () => Promise<T>, want: T, ms: number): Promise<T> {
  const deadline = Date.now() + ms;
  let got = await probe();
  while (got !== want && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 250));
    got = await probe();
  }
  return got;
}

for (const libvirt of ["iptables", "nftables"] as const) {
  for (const backend of libvirt === "iptables" ? ["auto"] : ["auto", "iptables"]) {
    Deno.test({
      name:
        `firewalld, libvirt on ${libvirt}, backend ${backend}: forwards pass; after firewall-cmd --reload ` +
        "wipes every iptables rule, the watcher puts ours back in front of libvirt's; stop leaves no residue",
      ignore: !can.ok || !nft || !FIREWALLD,
      ...opts,
      async fn(t) {
        await using lab = await createLab({ libvirt, ipv6Forward: "established" });
        const { ns } = lab;
        const fw = await firewalld(lab, SCRATCH);
        try {
          if (libvirt === "iptables") await libvirtRecreates(lab);
          await lab.serve(ns.g1, "tcp", 22, "g1");
          await lab.serve(ns.g1, "udp", 53, "g1-dns");
          const { run, env } = await host(lab, { backend });
          const before = await firewall(lab);
          let started = await run(["web1", "start", "begin", "-"]);
          assert.equal(started.code, 0, started.stderr);
          await reaches(lab, t);
          const stoppedFirst = await run(["web1", "stopped", "end", "-"]);
          assert.equal(stoppedFirst.code, 0, stoppedFirst.stderr);
          assert.equal(await firewall(lab), before);
          // A reload alone leaves iptables' tables behind, emptied (it flushes each of them): the firewall as it
          // is after one is what the second round must leave.
          assert.equal((await fw.cmd("--reload")).code, 0);
          if (libvirt === "iptables") await libvirtRecreates(lab);
          const reloaded = await firewall(lab);
          started = await run(["web1", "start", "begin", "-"]);
          assert.equal(started.code, 0, started.stderr);
          const watcher = new Deno.Command("ip", {
            args: ["netns", "exec", ns.host, Deno.execPath(), "run", "-A", MAIN, "watch", "--poll", "2"],
            clearEnv: true,
            env,
            stdin: "null",
            stdout: "null",
            stderr: "piped",
          }).spawn();
          try {
            // Give the watcher its first look, then reload firewalld: every iptables rule goes, ours too.
            await new Promise((r) => setTimeout(r, 1500));
            const reload = await fw.cmd("--reload");
            assert.equal(reload.code, 0, reload.stderr);
            if (libvirt === "iptables") await libvirtRecreates(lab);
            assert.equal(
              await eventually(
                () => lab.connect(ns.client, "tcp", A.hostPub4, 2222),
                `g1 ${A.client4}`,
                15_000,
              ),
              `g1 ${A.client4}`,
            );
            if (libvirt === "iptables") {
              // Ours is back above LIBVIRT_FWI's reject.
              const rules = (await lab.exec(ns.host, ["iptables", "-S", "FORWARD"])).stdout.split("\n");
              const ours = rules.findIndex((r) => r.includes("LVH-"));
              assert.ok(
                ours >= 0 && ours < rules.findIndex((r) => r.includes("LIBVIRT_FWI")),
                rules.join("\n"),
              );
            }
          } finally {
            watcher.kill("SIGTERM");
            await watcher.output();
          }
          const stopped = await run(["web1", "stopped", "end", "-"]);
          assert.equal(stopped.code, 0, stopped.stderr);
          assert.equal(await firewall(lab), reloaded);
        } finally {
          await fw.stop();
        }
      },
    });
  }
}

Deno.test({
  name:
    "doctor says OK for a working forward, and for broken ones what is wrong and the command that fixes it",
  ignore: !can.ok || !nft,
  ...opts,
  async fn(t) {
    await using lab = await createLab({ libvirt: "nftables" });
    const { ns } = lab;
    const { run } = await host(lab, {});
    assert.equal((await run(["web1", "start", "begin", "-"])).code, 0);
    const doctor = async () => {
      const r = await run(["doctor", "web1"]);
      return {
        code: r.code,
        fails: r.stdout.split("\n").filter((l) => l.startsWith("  FAIL") || / fix: /.test(l)),
      };
    };
    await t.step("the guest does not listen on its port", async () => {
      assert.deepEqual(await doctor(), {
        code: 1,
        fails: [
          `  FAIL  nothing in the guest listens on ${A.g1v4}:22 (connection refused)`,
          "        fix: start the service in the guest, or forward to the port it listens on",
          `  FAIL  nothing in the guest listens on [${A.g1v6}]:22 (connection refused)`,
          "        fix: start the service in the guest, or forward to the port it listens on",
        ],
      });
    });
    await lab.serve(ns.g1, "tcp", 22, "g1");
    await t.step("a working forward", async () => assert.deepEqual(await doctor(), { code: 0, fails: [] }));
    await t.step("IPv4 forwarding off", async () => {
      await lab.exec(ns.host, ["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
      assert.deepEqual(await doctor(), {
        code: 1,
        fails: [
          "  FAIL  IPv4 forwarding is off (net.ipv4.ip_forward = 0): the host forwards nothing of that family",
          "        fix: sysctl -w net.ipv4.ip_forward=1 (and keep it in /etc/sysctl.d/)",
        ],
      });
      await lab.exec(ns.host, ["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
    });
    await t.step("the forward's rules gone (another tool wiped them)", async () => {
      await lab.exec(ns.host, ["nft", "delete", "table", "inet", "libvirt_hook_qemu"]);
      const { fails } = await doctor();
      assert.deepEqual(fails.slice(0, 2), [
        "  FAIL  the forward is not live",
        "        fix: qemu apply web1   (or restart the guest)",
      ]);
    });
  },
});

for (const libvirt of ["iptables", "nftables"] as const) {
  Deno.test({
    name:
      `systemctl restart nftables (flush ruleset, then /etc/nftables.conf), libvirt on ${libvirt}: once libvirt ` +
      "has its rules back, the watcher puts ours back",
    ignore: !can.ok || !nft,
    ...opts,
    async fn() {
      await using lab = await createLab({ libvirt, ipv6Forward: "established" });
      const { ns } = lab;
      await lab.serve(ns.g1, "tcp", 22, "g1");
      const { run, env } = await host(lab, {});
      const iptables = async () => [await lab.ruleset(4), await lab.ruleset(6)].join("\n");
      const before = await iptables();
      assert.equal((await run(["web1", "start", "begin", "-"])).code, 0);
      assert.equal(await lab.connect(ns.client, "tcp", A.hostPub4, 2222), `g1 ${A.client4}`);
      const watcher = new Deno.Command("ip", {
        args: ["netns", "exec", ns.host, Deno.execPath(), "run", "-A", MAIN, "watch", "--poll", "2"],
        clearEnv: true,
        env,
        stdin: "null",
        stdout: "null",
        stderr: "null",
      }).spawn();
      try {
        await new Promise((r) => setTimeout(r, 1500));
        // nftables.service's reload: its file starts with `flush ruleset`; everything goes, libvirt's too, until
        // libvirt re-creates its own (its networks restarted).
        await lab.exec(ns.host, ["nft", "-f", "-"], { stdin: "flush ruleset\n" });
        if (libvirt === "iptables") await libvirtRecreates(lab);
        else await lab.exec(ns.host, ["nft", "-f", "-"], { stdin: libvirtNftText() });
        assert.equal(
          await eventually(() => lab.connect(ns.client, "tcp", A.hostPub4, 2222), `g1 ${A.client4}`, 15_000),
          `g1 ${A.client4}`,
        );
      } finally {
        watcher.kill("SIGTERM");
        await watcher.output();
      }
      const stopped = await run(["web1", "stopped", "end", "-"]);
      assert.equal(stopped.code, 0, stopped.stderr);
      // The flush took the lab's other tables, and re-created tables list in another order: iptables is as it
      // was, and nothing of ours is left in nftables.
      assert.equal(await iptables(), before);
      assert.doesNotMatch(await lab.nftRuleset(), /libvirt[-_]hook[-_]qemu/);
    },
  });
}
