/**
 * The experiment behind test/e2e/FINDINGS.md: runs a real libvirtd 9.0 in a namespace with the recorder hook
 * installed as qemu and network hook, and prints what libvirt did (hook calls with times relative to the virsh
 * command, hook environment, iptables rules, virsh output) as a report.
 *
 *   deno run -A test/e2e/measure.ts > /tmp/report.txt
 *
 * Needs root. Tears everything down at the end, also on failure.
 */
import {
  attachClientNamespace,
  attachServiceNamespace,
  defineGuest,
  destroyGuest,
  destroyNetwork,
  domainState,
  type HookCall,
  HookRecorder,
  installLibvirt,
  type LibvirtEnv,
  startGuest,
  startLibvirt,
  startNatNetwork,
  startNetwork,
  startTcpServer,
  tcpRequest,
} from "./libvirt_env.ts";

/** Our own chain MYCHAIN (accepting tcp to the service's port 80), jumped to first from FORWARD. */
const MYCHAIN = [
  ["iptables", "-w", "-N", "MYCHAIN"],
  ["iptables", "-w", "-A", "MYCHAIN", "-d", "192.168.150.10", "-p", "tcp", "--dport", "80", "-j", "ACCEPT"],
  ["iptables", "-w", "-I", "FORWARD", "1", "-j", "MYCHAIN"],
];

const out: string[] = [];
const say = (s = "") => {
  out.push(s);
  console.log(s);
};
const log = (m: string) => console.error(`[measure] ${m}`);
const now = () => (performance.timeOrigin + performance.now()) / 1000;

function fmtCall(c: HookCall, t0: number): string {
  const rel = ((c.t - t0) * 1000).toFixed(0).padStart(6);
  const tap = c.links.filter((l) => l.startsWith("vnet")).map((l) => l.replace(/\s+/g, " ")).join("; ");
  return `${rel} ms  ${c.hook} ${c.argv.join(" ")}  (exit ${c.exit})${tap ? `  [${tap}]` : ""}`;
}

async function main() {
  const rec = await HookRecorder.create();
  let env: LibvirtEnv | undefined;
  let seen = 0;
  const newCalls = async (t0: number, settleMs = 700) => {
    await new Promise((r) => setTimeout(r, settleMs));
    const calls = await rec.calls();
    const fresh = calls.slice(seen);
    seen = calls.length;
    for (const c of fresh) say(`    ${fmtCall(c, t0)}`);
    if (fresh.length === 0) say("    (no hook calls)");
    return fresh;
  };
  const ipt = async (title: string, tables = ["filter", "nat"]) => {
    say(`  iptables-save (${title}):`);
    for (const t of tables) {
      const r = await env!.exec(["iptables-save", "-t", t]);
      for (const l of r.stdout.split("\n")) {
        if (l && !l.startsWith("#")) say(`    ${l}`);
      }
    }
  };
  const step = async (title: string, fn: () => Promise<unknown>, settleMs = 700) => {
    say(`\n## ${title}`);
    const t0 = now();
    const p0 = performance.now();
    try {
      const r = await fn();
      if (r && typeof r === "object" && "stdout" in r) {
        const rr = r as { stdout: string; stderr: string; code: number };
        say(
          `  exit ${rr.code}; stdout: ${JSON.stringify(rr.stdout.trim())}; stderr: ${
            JSON.stringify(rr.stderr.trim())
          }`,
        );
      }
    } catch (e) {
      say(`  THREW: ${e instanceof Error ? e.message : String(e)}`);
    }
    say(`  took ${(performance.now() - p0).toFixed(0)} ms; hook calls (ms after the command began):`);
    return await newCalls(t0, settleMs);
  };
  const tcp = async (what: string, ns: string, host: string, port: number) => {
    const r = await tcpRequest(ns, host, port, 2000);
    say(`  tcp ${what} ${host}:${port}: ${r.ok ? `OK ${r.text}` : `FAILED ${r.error}`}`);
  };
  const bridgePorts = async () => {
    const r = await env!.exec(["ip", "-br", "link", "show", "master", "virbr9"], { check: false });
    say(
      `  ports of virbr9: ${
        r.stdout.trim().split("\n").map((l) => l.split(/\s+/)[0]).join(", ") || "(none)"
      }`,
    );
  };

  try {
    say("# libvirt 9.0 hook measurements");
    const inst = await installLibvirt({ log });
    say(`installLibvirt: ${JSON.stringify(inst)}`);
    const p0 = performance.now();
    env = await startLibvirt({ hooksDir: rec.hooksDir, log });
    say(
      `startLibvirt: ${(performance.now() - p0).toFixed(0)} ms; ns ${env.ns}; timings ${
        JSON.stringify(env.timings)
      }`,
    );
    const ver = await env.virsh(["version"]);
    say(ver.stdout.trim());
    await newCalls(now(), 0);

    let fresh = await step(
      "network define + start (lvhnet, virbr9, 192.168.150.1/24)",
      () => startNatNetwork(env!),
    );
    const started = fresh.find((c) => c.hook === "network" && c.argv[1] === "started");
    const start = fresh.find((c) => c.hook === "network" && c.argv[1] === "start");
    if (start) {
      say(`  network hook stdin (start), first line: ${start.stdin1}`);
      say(
        `  iptables at 'network start begin': ${
          (await Deno.readTextFile(start.iptablesFile)).includes("LIBVIRT_FWI")
            ? "libvirt rules present"
            : "no libvirt rules"
        }`,
      );
    }
    if (started) {
      const t = await Deno.readTextFile(started.iptablesFile);
      say(
        `  iptables at 'network started begin': ${
          t.includes("virbr9") ? "libvirt's virbr9 rules present" : "no virbr9 rules yet"
        }`,
      );
      say(
        `  network hook stdin (started):\n${
          (await Deno.readTextFile(started.stdinFile)).replace(/^/gm, "      ")
        }`,
      );
      say(
        `  hook env: ${JSON.stringify(started.env)}; initial env ${
          JSON.stringify(started.initEnv)
        }; cwd ${started.cwd}`,
      );
    }
    await ipt("after net-start");

    // our own chains
    say(
      "\n## adding our own chains (MYCHAIN from FORWARD, MYNAT from nat PREROUTING/OUTPUT) and a rule inside LIBVIRT_FWI",
    );
    for (
      const argv of [
        ...MYCHAIN,
        ["iptables", "-w", "-t", "nat", "-N", "MYNAT"],
        [
          "iptables",
          "-w",
          "-t",
          "nat",
          "-A",
          "MYNAT",
          "-d",
          "203.0.113.1",
          "-p",
          "tcp",
          "--dport",
          "8080",
          "-j",
          "DNAT",
        ]
          .concat(["--to-destination", "192.168.150.10:80"]),
        ["iptables", "-w", "-t", "nat", "-I", "PREROUTING", "1", "-j", "MYNAT"],
        ["iptables", "-w", "-t", "nat", "-I", "OUTPUT", "1", "-j", "MYNAT"],
        ["iptables", "-w", "-I", "LIBVIRT_FWI", "1", "-d", "192.168.150.11", "-j", "ACCEPT"],
      ]
    ) {
      await env.exec(argv);
    }
    await ipt("with our chains", ["filter"]);

    const svc = await attachServiceNamespace(env, {
      name: "lvhnet",
      bridge: "virbr9",
      address: "192.168.150.1",
      prefix: 24,
      subnet: "192.168.150.0/24",
    });
    const cli = await attachClientNamespace(env);
    await startTcpServer(env, svc.ns, { port: 80, label: "svc80" });
    await startTcpServer(env, svc.ns, { port: 81, label: "svc81" });
    say(`service ns ${svc.ns} (${svc.ip}), client ns ${cli.ns} (${cli.ip}, host side ${cli.hostIp})`);
    await tcp("client -> DNAT", cli.ns, "203.0.113.1", 8080);
    await tcp("client -> direct (port 81, not in MYCHAIN)", cli.ns, "192.168.150.10", 81);
    await tcp("libvirt ns (host) -> service", env.ns, "192.168.150.10", 81);
    await startTcpServer(env, cli.ns, { port: 9000, label: "cli9000" });
    await tcp("service -> client (outbound, masqueraded?)", svc.ns, "203.0.113.50", 9000);
    await newCalls(now(), 0);

    const guest = await defineGuest(env);
    fresh = await step("guest start (virsh start lvhguest)", () => startGuest(env!, guest.name));
    for (const c of fresh.filter((c) => c.hook === "qemu")) {
      const xml = await Deno.readTextFile(c.stdinFile);
      const target = xml.match(/<target dev='([^']+)'/)?.[1];
      const source = xml.match(/<source network='[^']*'[^>]*>/)?.[0];
      say(`    ${c.argv[1]}: domain XML target=${target ?? "-"} source=${source ?? "-"}`);
    }
    const q = fresh.find((c) => c.hook === "qemu");
    if (q) say(`  qemu hook env: ${JSON.stringify(q.env)}; cwd ${q.cwd}; stdin first line: ${q.stdin1}`);
    await bridgePorts();
    const ps = await env.exec([
      "ps",
      "-o",
      "pid,ppid,pcpu,rss,args",
      "--no-headers",
      "-C",
      "qemu-system-x86_64",
    ], {
      check: false,
    });
    say(`  qemu process: ${ps.stdout.trim().slice(0, 200)}`);

    fresh = await step("libvirtd restart while the guest runs", () => env!.restartDaemon(), 3000);
    const rc = fresh.find((c) => c.argv[1] === "reconnect");
    if (rc) {
      const xml = await Deno.readTextFile(rc.stdinFile);
      say(`  reconnect stdin: ${xml.length} bytes, target=${xml.match(/<target dev='([^']+)'/)?.[1] ?? "-"}`);
    }
    say(`  guest state: ${await domainState(env, guest.name)}`);
    await bridgePorts();
    await ipt("after libvirtd restart", ["filter"]);
    await tcp("client -> DNAT (after restart)", cli.ns, "203.0.113.1", 8080);

    fresh = await step("virsh net-destroy lvhnet while the guest runs", () => destroyNetwork(env!, "lvhnet"));
    say(`  guest state: ${await domainState(env, guest.name)}`);
    await bridgePorts();
    await ipt("after net-destroy");
    fresh = await step("virsh net-start lvhnet while the guest runs", () => startNetwork(env!, "lvhnet"));
    await bridgePorts();
    await ipt("after net-start");
    await svc.reattach();
    await tcp("client -> DNAT (after net restart, service re-attached)", cli.ns, "203.0.113.1", 8080);
    fresh = await step("libvirtd restart after the network restart", () => env!.restartDaemon(), 3000);
    await bridgePorts();
    await ipt("after second libvirtd restart", ["filter"]);

    fresh = await step("guest destroy (virsh destroy lvhguest)", () => destroyGuest(env!, guest.name));
    await bridgePorts();

    await rec.setFail("qemu", "start", "recorder: no forwarding for you (marker)");
    fresh = await step(
      "virsh start with the hook failing on 'start'",
      () => startGuest(env!, guest.name, { check: false }),
    );
    say(`  guest state: ${await domainState(env, guest.name)}`);
    await rec.clearFail("qemu", "start");

    await rec.setFail("qemu", "prepare");
    fresh = await step(
      "virsh start with the hook failing on 'prepare'",
      () => startGuest(env!, guest.name, { check: false }),
    );
    await rec.clearFail("qemu", "prepare");

    await rec.setFail("qemu", "started");
    fresh = await step(
      "virsh start with the hook failing on 'started'",
      () => startGuest(env!, guest.name, { check: false }),
    );
    say(`  guest state: ${await domainState(env, guest.name)}`);
    await rec.clearFail("qemu", "started");

    await rec.setFail("qemu", "stopped");
    await rec.setFail("qemu", "release");
    await step("virsh start (hook ok)", () => startGuest(env!, guest.name, { check: false }));
    fresh = await step(
      "virsh destroy with the hook failing on 'stopped' and 'release'",
      () => destroyGuest(env!, guest.name, { check: false }),
    );
    await rec.clearFail("qemu", "stopped");
    await rec.clearFail("qemu", "release");

    await rec.setSleep("qemu", "start", 2);
    fresh = await step(
      "virsh start with the hook sleeping 2 s on 'start'",
      () => startGuest(env!, guest.name, { check: false }),
    );
    await rec.clearSleep("qemu", "start");

    await rec.setFail("qemu", "reconnect");
    fresh = await step(
      "libvirtd restart with the hook failing on 'reconnect'",
      () => env!.restartDaemon(),
      3000,
    );
    say(`  guest state: ${await domainState(env, guest.name).catch((e) => String(e))}`);
    await rec.clearFail("qemu", "reconnect");

    const st = await domainState(env, guest.name);
    if (st === "running") await step("guest destroy", () => destroyGuest(env!, guest.name));
    await step("net-destroy without guests", () => destroyNetwork(env!, "lvhnet"));
    await step("net-undefine", () => env!.virsh(["net-undefine", "lvhnet"]));

    const t1 = performance.now();
    await env.stop();
    say(`\nstop: ${(performance.now() - t1).toFixed(0)} ms`);
    say(`timings: ${JSON.stringify(env.timings)}`);

    // a second start must work after stop(); this time the daemon has HOME and USER, and our FORWARD jump exists
    // before libvirt creates its chains (as after a reboot when something else installs rules first)
    const p1 = performance.now();
    env = await startLibvirt({ hooksDir: rec.hooksDir, log, daemonEnv: { HOME: "/root", USER: "root" } });
    say(`\n# second run (libvirtd started with HOME=/root USER=root added)`);
    say(`second startLibvirt: ${(performance.now() - p1).toFixed(0)} ms`);
    await newCalls(now(), 0);
    for (
      const argv of [
        ...MYCHAIN,
      ]
    ) {
      await env.exec(argv);
    }
    fresh = await step(
      "net-start with MYCHAIN jumped from FORWARD before libvirt's chains exist",
      () => startNatNetwork(env!),
    );
    await ipt("after first net-start in a fresh namespace", ["filter"]);
    const g2 = await defineGuest(env);
    fresh = await step("guest start under a daemon with HOME", () => startGuest(env!, g2.name));
    const q2 = fresh.find((c) => c.hook === "qemu");
    if (q2) say(`  qemu hook initial env: ${JSON.stringify(q2.initEnv)}; env: ${JSON.stringify(q2.env)}`);
    await env.exec(["iptables", "-w", "-D", "FORWARD", "-j", "LIBVIRT_FWI"]);
    await ipt("deleted libvirt's FORWARD -j LIBVIRT_FWI jump", ["filter"]);
    fresh = await step("libvirtd restart with libvirt's FWI jump missing", () => env!.restartDaemon(), 3000);
    await ipt("after restart", ["filter"]);
    fresh = await step("net-destroy + net-start with libvirt's FWI jump missing", async () => {
      await destroyNetwork(env!, "lvhnet");
      await startNetwork(env!, "lvhnet");
    });
    await ipt("after net restart", ["filter"]);
    say(`second run: guest ${await domainState(env, g2.name)}; stopping with the guest running`);
    const t2 = performance.now();
    await env.stop();
    say(
      `stop with a running guest: ${(performance.now() - t2).toFixed(0)} ms; timings ${
        JSON.stringify(env.timings)
      }`,
    );
  } finally {
    await env?.stop();
    await rec.remove();
    const left = await new Deno.Command("ip", { args: ["netns", "list"], stdout: "piped" }).output();
    const ours = new TextDecoder().decode(left.stdout).split("\n").filter((l) => l.startsWith("lvhe2e-"));
    say(`\nnamespaces of ours left: ${JSON.stringify(ours)}`);
  }
}

await main();
