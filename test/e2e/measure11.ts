/**
 * Measures libvirt 11.3 with the nftables backend (issue #5): the ruleset libvirt creates, the hook calls for
 * guest start/destroy, daemon restart, net-destroy/net-start and SIGHUP, whether a rule inserted into libvirt's
 * `guest_input` survives each of them, and real traffic through a DNAT of our own. Prints a report; the results
 * are written down in test/e2e/FINDINGS-nft.md. Run as root: `deno run -A test/e2e/measure11.ts`.
 */
import {
  attachClientNamespace,
  attachServiceNamespace,
  defineGuest,
  destroyGuest,
  destroyNetwork,
  type HookCall,
  type LibvirtEnv,
  sleep,
  startGuest,
  startNatNetwork,
  startNetwork,
  startTcpServer,
  tcpRequest,
} from "./libvirt_env.ts";
import {
  createNftRecorder,
  guestInputPosition,
  insertGuestInputAccept,
  installLibvirt11,
  nft,
  nftRuleset,
  nftScript,
  startLibvirt11,
  tcWrapperLog,
} from "./libvirt11_env.ts";

const say = (s: string) => console.log(s);
const inst = await installLibvirt11({ log: say });
say(`installLibvirt11: ${JSON.stringify(inst)}`);

const rec = await createNftRecorder();
let env: LibvirtEnv | undefined;
let monitor: Deno.ChildProcess | undefined;
let monitorText = "";
const tcBefore = (await tcWrapperLog()).length;
try {
  env = await startLibvirt11({ hooksDir: rec.hooksDir, log: (m) => say(`  [${m}]`) });
  const e = env;
  say(`virsh version:\n${(await e.virsh(["version", "--daemon"])).stdout}`);
  say(`--- nft list ruleset before any network ---\n${await nftRuleset(e)}`);

  // nft monitor rules, running for the whole measurement (killed by its PID below)
  monitor = new Deno.Command("ip", {
    args: ["netns", "exec", e.ns, "nft", "monitor", "rules"],
    stdin: "null",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const monitorDone = (async () => {
    const r = monitor.stdout.pipeThrough(new TextDecoderStream()).getReader();
    while (true) {
      const { value, done } = await r.read();
      if (done) break;
      monitorText += value;
    }
  })();
  e.onStop(async () => {
    try {
      monitor?.kill("SIGTERM");
    } catch {
      // gone
    }
    await monitor?.status;
    await monitorDone;
  });
  const mark = (what: string) => {
    monitorText += `\n##### ${what}\n`;
  };

  let since = Date.now() / 1000;
  const callsSince = async (): Promise<HookCall[]> => {
    const cs = (await rec.calls()).filter((c) => c.t >= since - 0.001);
    since = Date.now() / 1000;
    return cs;
  };
  const show = async (title: string, t0: number) => {
    const cs = await callsSince();
    say(`--- hook calls: ${title} ---`);
    for (const c of cs) {
      say(`  +${Math.round((c.t - t0) * 1000)} ms ${c.hook} ${c.argv.join(" ")} (exit ${c.exit})`);
    }
    return cs;
  };
  const pos = async (title: string) => {
    const p = await guestInputPosition(e);
    say(`--- our rule after ${title}: ${p.position} ---`);
    for (const r of p.rules) say(`  [${r.handle}] ${r.text}`);
    return p.position;
  };

  mark("net-start");
  let t0 = Date.now() / 1000;
  const net = await startNatNetwork(e);
  const netCalls = await show("net-define + net-start", t0);
  say(`--- nft list ruleset after net-start ---\n${await nftRuleset(e)}`);
  for (const c of netCalls) {
    say(`  ${c.argv.join(" ")}: stdin1=${c.stdin1.slice(0, 60)}`);
    const snap = await Deno.readTextFile(c.iptablesFile);
    say(`    libvirt_network table at that call: ${snap.includes("table ip libvirt_network")}`);
  }

  // traffic setup: our own DNAT table, a service on the bridge, a client on the public side
  const svc = await attachServiceNamespace(e, net);
  const cli = await attachClientNamespace(e);
  await startTcpServer(e, svc.ns, { port: 80, label: "svc" });
  await nftScript(
    e,
    `table ip lvhtest {
  chain pre { type nat hook prerouting priority dstnat; ip daddr 203.0.113.1 tcp dport 8080 dnat to 192.168.150.10:80; }
  chain out { type nat hook output priority -100; ip daddr 203.0.113.1 tcp dport 8080 dnat to 192.168.150.10:80; }
}
`,
  );
  const traffic = async (title: string) => {
    const r = await tcpRequest(cli.ns, "203.0.113.1", 8080);
    const h = await tcpRequest(e.ns, "203.0.113.1", 8080);
    say(
      `--- traffic ${title}: client -> 203.0.113.1:8080: ${JSON.stringify(r)}; host -> same: ${
        JSON.stringify(h)
      }`,
    );
    return r.ok;
  };
  await traffic("before our insert");
  mark("insert");
  await insertGuestInputAccept(e, net.bridge);
  await pos("insert");
  await traffic("after our insert");

  const guest = await defineGuest(e, { network: net.name });
  mark("guest start");
  t0 = Date.now() / 1000;
  await startGuest(e, guest.name);
  const startCalls = await show("start guest", t0);
  for (const c of startCalls) say(`  stdin1 ${c.argv[1]}: ${c.stdin1.slice(0, 50)}`);
  await pos("guest start");

  mark("guest destroy");
  t0 = Date.now() / 1000;
  await destroyGuest(e, guest.name);
  await rec.waitForCall((c) => c.hook === "qemu" && c.argv[1] === "release" && c.t >= t0);
  await show("destroy guest", t0);
  await pos("guest destroy");

  await startGuest(e, guest.name);
  await callsSince();

  mark("daemon restart");
  t0 = Date.now() / 1000;
  await e.restartDaemon();
  await rec.waitForCall((c) => c.argv[1] === "reconnect" && c.t >= t0);
  await sleep(1000);
  await show("libvirtd restart (guest running)", t0);
  for (const c of (await rec.calls()).filter((c) => c.t >= t0)) {
    const snap = await Deno.readTextFile(c.iptablesFile);
    const chain = /chain guest_input \{[^}]*\}/.exec(snap.slice(0, snap.indexOf("table ip6")))?.[0] ??
      "(none)";
    say(`  guest_input when ${c.hook} ${c.argv.join(" ")} ran:\n${chain}`);
  }
  await pos("daemon restart");
  await traffic("after daemon restart");
  await insertGuestInputAccept(e, net.bridge);
  await pos("re-insert");

  mark("net-destroy");
  t0 = Date.now() / 1000;
  await destroyNetwork(e, net.name);
  await show("net-destroy (guest running)", t0);
  say(`--- nft list ruleset after net-destroy ---\n${await nftRuleset(e)}`);
  mark("net-start again");
  t0 = Date.now() / 1000;
  await startNetwork(e, net.name);
  await show("net-start (guest running)", t0);
  await pos("net-destroy + net-start");
  await svc.reattach();
  await traffic("after net restart (service re-attached)");
  await insertGuestInputAccept(e, net.bridge);
  await pos("re-insert");
  await traffic("after re-insert");

  mark("SIGHUP");
  t0 = Date.now() / 1000;
  Deno.kill(e.libvirtdPid, "SIGHUP");
  await sleep(2000);
  await show("SIGHUP to libvirtd", t0);
  await pos("SIGHUP");
  await traffic("after SIGHUP");

  // qemu hook environment under 11.3
  const q = (await rec.calls()).find((c) => c.hook === "qemu");
  say(`qemu hook initEnv: ${JSON.stringify(q?.initEnv)} cwd=${q?.cwd}`);

  say(`--- final nft list ruleset ---\n${await nftRuleset(e)}`);
  say(
    `--- nft -a list table ip libvirt_network ---\n${
      (await nft(e, ["-a", "list", "table", "ip", "libvirt_network"])).stdout
    }`,
  );
} finally {
  await env?.stop();
  await rec.remove();
}
say(`--- nft monitor rules ---\n${monitorText}`);
say(`--- tc wrapper log (this run) ---\n${(await tcWrapperLog()).slice(tcBefore).join("\n")}`);
say(`--- timings ---\n${env?.timings.map((t) => `${t.step}: ${t.ms} ms`).join("\n")}`);
