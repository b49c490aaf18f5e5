/**
 * Issue #5: our hook, installed by install.sh (qemu and network hook), run by a real libvirtd 11.3 with its
 * nftables firewall backend (in a network namespace, see libvirt11_env.ts), backend "auto": real traffic through
 * our own table `inet libvirt_hook_qemu` and our accept at the top of libvirt's `ip libvirt_network guest_input`,
 * across a network restart (our network hook's `started`), a daemon restart (`reconnect`), a SIGHUP (no hook at
 * all: our watcher, `qemu watch`, puts the accept back) and destroy (the ruleset is the one before start).
 *
 * Besides our hooks, the recorder (libvirt_env.ts, saving `nft list ruleset` per call) is installed as
 * `qemu.d/zz-recorder` and `network.d/zz-net-recorder`: libvirt runs the `.d` scripts after `qemu`/`network`, so
 * each recorded call marks the moment our hook had finished, and shows libvirt's calls with their times.
 *
 * installLibvirt11() switches an installed libvirt 9.0 to 11.3 (hook_e2e_test.ts switches back). Needs root,
 * working `ip netns`, and apt-get (or libvirt 11.3 installed). Skipped otherwise (with the reason printed), or
 * when LVH_E2E=0.
 */
import assert from "node:assert/strict";
import {
  Actions,
  alive,
  assertNothingLeft,
  attachForwardNamespaces,
  type Background,
  checkForwards as checkForwardPaths,
  checkNoForward as checkNoForwardPath,
  CLIENT_IP,
  diff,
  epoch,
  GUEST,
  installRecorderScript,
  iptablesSave,
  PUBLIC_IP,
  recordedCalls,
  reportAndTearDown,
  runInstallSh,
  SERVICE_IP,
  skipping,
  startBackground,
  Started,
  stripNft,
  svcLine,
} from "./common.ts";
import {
  attachServiceNamespace,
  defineGuest,
  destroyGuest,
  destroyNetwork,
  domainState,
  HOOKS_DIR,
  isCall,
  type LibvirtEnv,
  sleep,
  startGuest,
  startNatNetwork,
  startNetwork,
  startTcpServer,
  tcpRequest,
  type TcpResult,
  waitFor,
} from "./libvirt_env.ts";
import {
  createNftRecorder,
  installLibvirt11,
  nftChainRules,
  type NftRule,
  nftRuleset,
  startLibvirt11,
} from "./libvirt11_env.ts";

const GUEST2 = "lvhguest2";
const SERVICE2_IP = "192.168.150.12";
const BRIDGE = "virbr9";
/** The recorders' names in qemu.d and network.d: the recorder names calls by its own file name. */
const REC_QEMU = "zz-recorder";
const REC_NET = "zz-net-recorder";
/** The comment of our accept in guest_input: one per bridge, shared by every domain of our table. */
const ACCEPT = "libvirt-hook-qemu:1:accept";

const CONFIG = `// hook_nft_e2e_test.ts
{
  "/settings": { "backend": "auto" },
  "${GUEST}": {
    "interface": "${BRIDGE}",
    "private_ip": "${SERVICE_IP}",
    "public_ip": "${PUBLIC_IP}",
    "port_map": { "tcp": [[8080, 80]] }
  },
  "${GUEST2}": {
    "interface": "${BRIDGE}",
    "private_ip": "${SERVICE2_IP}",
    "public_ip": "${PUBLIC_IP}",
    "port_map": { "tcp": [[8082, 80]] }
  }
}
`;

const reason = await skipping("hook_nft_e2e_test", "11.3");

Deno.test({
  name:
    "e2e #5: our installed hooks under libvirtd 11.3 (nftables): forwards live, survive restarts and SIGHUP",
  ignore: reason !== undefined,
  sanitizeOps: true,
  sanitizeResources: true,
  fn: async (t) => {
    const t00 = performance.now();
    const install = await installLibvirt11();
    assert.match(install.libvirtVersion, /^11\.3\./);
    const tmp = await Deno.makeTempDir({ prefix: "lvh-e2e-hook-nft-" });
    const rec = await createNftRecorder(`${tmp}/recorder`);
    const hooksDir = `${tmp}/etc/libvirt/hooks`;
    let env: LibvirtEnv | undefined;
    /** Processes of ours in the libvirt namespace (stopped again in teardown, by PID). */
    const background: Background[] = [];
    let failed = false;
    const actions = new Actions();
    const { act } = actions;
    const rulesets: { title: string; text: string }[] = [];
    const notes: string[] = [];
    const results: string[] = [];
    const started = new Started();

    try {
      await t.step("install our hooks with install.sh and start libvirtd 11.3 with them", async () => {
        await runInstallSh(tmp, notes);
        for (const hook of ["qemu", "network"]) {
          assert.ok((await Deno.stat(`${hooksDir}/${hook}`)).isFile, `install.sh did not install ${hook}`);
        }
        assert.equal(
          await Deno.readTextFile(`${hooksDir}/network`),
          await Deno.readTextFile(`${hooksDir}/qemu`),
          "the network hook is the same program",
        );
        await Deno.writeTextFile(`${hooksDir}/hooks.jsonc`, CONFIG);
        // the recorders run after our hooks (libvirt runs the .d scripts after qemu / network)
        for (const [dir, name] of [["qemu.d", REC_QEMU], ["network.d", REC_NET]] as const) {
          await installRecorderScript(rec, "qemu", `${hooksDir}/${dir}/${name}`);
        }
        env = await startLibvirt11({ hooksDir });
        started.libvirt(env);
        const check = await env.exec([`${HOOKS_DIR}/qemu`, "check"], {
          env: { CONFIG_PATH: HOOKS_DIR },
          timeoutMs: 60_000,
          check: false,
        });
        notes.push(`qemu check before the network exists: exit ${check.code}: ${check.stdout.trim()}`);
        assert.equal(check.code, 0, check.stderr);
      });
      const e = env;
      if (!e) throw new Error("libvirtd did not start");

      const net = await act("virsh net-start lvhnet (first)", () => startNatNetwork(e));
      assert.equal(net.bridge, BRIDGE);
      const { svc, peer, cli, forward } = await attachForwardNamespaces(e, net);
      const svc2 = await attachServiceNamespace(e, net, {
        ip: SERVICE2_IP,
        suffix: "svc2",
        hostVeth: "lvhsvc2",
      });
      await startTcpServer(e, svc2.ns, { port: 80, label: "svc2" });
      const guest = await defineGuest(e, { name: GUEST, network: net.name });
      const guest2 = await defineGuest(e, { name: GUEST2, network: net.name, mac: "52:54:00:4c:56:12" });
      /** Client, host and hairpin paths to GUEST's forward. */
      const checkForwards = async (when: string) => {
        results.push(`${when}: OK (${await checkForwardPaths(forward, when)})`);
      };
      const checkNoForward = async (when: string) => {
        const error = await checkNoForwardPath(forward, when);
        results.push(`${when}: client -> ${PUBLIC_IP}:8080 refused as expected (${error})`);
      };
      /**
       * Our accepts in libvirt's chains while `domains` run: one for their bridge, whatever their number, ahead of
       * every rule of libvirt's; none once none runs.
       */
      const checkAccepts = async (when: string, domains: string[]) => {
        const rules = await nftChainRules(e, "ip", "libvirt_network", "guest_input");
        const show = rules.map((r: NftRule) => `  ${r.text}`).join("\n");
        const ours = rules.filter((r) => r.text.includes('comment "libvirt-hook-qemu:'));
        assert.equal(ours.length, domains.length > 0 ? 1 : 0, `${when}: accepts in guest_input:\n${show}`);
        for (const r of ours) {
          assert.equal(r.text, `oifname "${BRIDGE}" ct status dnat counter accept comment "${ACCEPT}"`);
        }
        assert.ok(
          rules.slice(0, ours.length).every((r) => ours.includes(r)),
          `${when}: our accepts must come first in guest_input:\n${show}`,
        );
        if (domains.length > 0) {
          assert.ok(
            rules.length > ours.length,
            `${when}: libvirt's rules are missing from guest_input:\n${show}`,
          );
        }
        const ip6 = await nftChainRules(e, "ip6", "libvirt_network", "guest_input");
        assert.ok(
          ip6.every((r) => !r.text.includes("libvirt-hook-qemu")),
          `${when}: no IPv6 forward, so no accept of ours in ip6 guest_input`,
        );
        return rules;
      };
      const ourTable = async () =>
        (await e.exec(["nft", "list", "table", "inet", "libvirt_hook_qemu"], {
          check: false,
          timeoutMs: 30_000,
        }))
          .success;

      let beforeNft = "", beforeIpt = "";
      await t.step("1. before virsh start: the forward is refused; rulesets recorded", async () => {
        beforeNft = stripNft(await nftRuleset(e));
        beforeIpt = await iptablesSave(e);
        rulesets.push({ title: "nft list ruleset before virsh start", text: beforeNft });
        assert.match(beforeNft, /table ip libvirt_network \{/);
        assert.doesNotMatch(beforeNft, /libvirt_hook_qemu|libvirt-hook-qemu/);
        assert.doesNotMatch(beforeIpt, /LVH-|LIBVIRT_/);
        notes.push(`iptables-save before virsh start: ${JSON.stringify(beforeIpt)}`);
        await checkNoForward("before virsh start");
      });

      await t.step("2. virsh start: forwards work; our accept first in guest_input; our table", async () => {
        await act(`virsh start ${GUEST}`, () => startGuest(e, guest.name), (r) => `exit ${r.code}`);
        assert.equal(await domainState(e, GUEST), "running");
        await rec.waitForCall((c) => isCall(c, REC_QEMU, GUEST, "started", "begin"));
        // the recorder runs after our hook: at its `start` call our table and accept are already there
        const atStart = (await rec.calls()).find((c) => isCall(c, REC_QEMU, GUEST, "start", "begin"));
        assert.ok(atStart, "no recorded start call");
        const snap = await Deno.readTextFile(atStart.iptablesFile);
        assert.match(snap, /table inet libvirt_hook_qemu \{/, "our table not in place at start");
        assert.ok(snap.includes(ACCEPT), "our accept not in place at start");
        assert.ok(await ourTable(), "our table is missing");
        await checkAccepts("after virsh start", [GUEST]);
        const ipt = await iptablesSave(e);
        assert.equal(
          ipt,
          beforeIpt,
          `iptables changed (the nftables backend was expected):\n${diff(beforeIpt, ipt)}`,
        );
        rulesets.push({
          title: "nft list ruleset after virsh start (one guest)",
          text: stripNft(await nftRuleset(e)),
        });
        await checkForwards("after virsh start");
      });

      await t.step("3. net-destroy + net-start with the guest running: network hook re-asserts", async () => {
        await act(`virsh net-destroy ${net.name}`, () => destroyNetwork(e, net.name));
        const down = stripNft(await nftRuleset(e));
        notes.push(`net-destroy (guest running) changed nft:\n${diff(rulesets[1]?.text ?? "", down)}`);
        const since = epoch();
        await act(`virsh net-start ${net.name}`, () => startNetwork(e, net.name));
        const startedCall = await rec.waitForCall((c) =>
          isCall(c, REC_NET, net.name, "started", "begin") && c.t >= since
        );
        notes.push(
          `network started call (after our network hook) ${
            Math.round((startedCall.t - since) * 1000)
          } ms after net-start began`,
        );
        // at the recorder's `started` (after our network hook returned) our accept is back in front
        const snap = await Deno.readTextFile(startedCall.iptablesFile);
        const input = /table ip libvirt_network \{[\s\S]*?chain guest_input \{([^}]*)\}/.exec(snap)?.[1] ??
          "";
        assert.ok(
          input.includes(ACCEPT) && input.indexOf(ACCEPT) < input.indexOf("reject"),
          `our accept is not ahead of the reject when our network hook returned:\n${input}`,
        );
        assert.equal(await domainState(e, GUEST), "running");
        // libvirt re-creates the bridge without its ports: put our namespaces back on it
        for (const ns of [svc, peer, svc2]) await ns.reattach();
        await checkAccepts("after net-destroy + net-start", [GUEST]);
        await checkForwards("after net-destroy + net-start");
      });

      await t.step("4. libvirtd restart with the guest running: reconnect re-asserts, once", async () => {
        const since = epoch();
        await act("restart libvirtd (until virsh answers)", () => e.restartDaemon());
        started.pids.push(e.libvirtdPid);
        const reconnect = await rec.waitForCall((c) =>
          isCall(c, REC_QEMU, GUEST, "reconnect", "begin") && c.t >= since
        );
        notes.push(
          `reconnect call (after our hook) ${
            Math.round((reconnect.t - since) * 1000)
          } ms after the restart began`,
        );
        assert.equal(await domainState(e, GUEST), "running");
        await checkAccepts("after libvirtd restart", [GUEST]);
        assert.ok(await ourTable(), "our table is missing");
        await checkForwards("after libvirtd restart");
      });

      await t.step("5. SIGHUP to libvirtd: no hook call; the watcher puts our accept back", async () => {
        // our watcher, as a plain process in the libvirt namespace, and (to show what happened when) nft monitor
        const w = startBackground(e, [`${HOOKS_DIR}/qemu`, "watch", "--poll", "600"], {
          CONFIG_PATH: HOOKS_DIR,
          LIBVIRT_QEMU_RUN_DIR: "/run/libvirt/qemu",
        });
        background.push(w);
        started.pids.push(w.pid);
        const mon = startBackground(e, ["nft", "monitor", "rules"]);
        background.push(mon);
        started.pids.push(mon.pid);
        await waitFor("the watcher to start", () => {
          assert.ok(alive(w.pid), `the watcher exited:\n${w.text()}`);
          return w.text().includes("watching the firewall");
        }, 30_000);
        // Its first look (at once) finds nothing to mend, and it polls only every 600 s: a mend within the next
        // seconds can only come from nft monitor (libvirt re-creates its rules within ~250 ms of SIGHUP).
        await sleep(500);
        const callsBefore = (await rec.calls()).length;
        const linesBefore = mon.lines().length;
        const hup = epoch();
        await act(`kill -HUP libvirtd (${e.libvirtdPid}), watcher running`, () => {
          Deno.kill(e.libvirtdPid, "SIGHUP");
          return Promise.resolve();
        });
        // forwards back within a few seconds
        let last: TcpResult = { ok: false, error: "not tried" };
        let tries = 0;
        while (epoch() - hup < 10) {
          await sleep(100);
          tries++;
          last = await tcpRequest(cli.ns, PUBLIC_IP, 8080, 1_000);
          if (last.ok) break;
        }
        const msBack = Math.round((epoch() - hup) * 1000);
        assert.ok(last.ok, `forward still broken 10 s after SIGHUP: ${JSON.stringify(last)}\n${w.text()}`);
        results.push(
          `after SIGHUP: client -> ${PUBLIC_IP}:8080 works again ${msBack} ms after it (try ${tries})`,
        );
        await sleep(2_500);
        const calls = (await rec.calls()).slice(callsBefore);
        assert.deepEqual(
          calls.map((c) => `${c.hook} ${c.argv.join(" ")}`),
          [],
          "SIGHUP is expected to call no hook",
        );
        const at = (x: number) => `+${Math.round((x - hup) * 1000)} ms`;
        notes.push(
          `watcher log (SIGHUP at ${new Date(hup * 1000).toISOString()}):\n${
            w.lines().map((l) => `  ${l.line}`).join("\n")
          }`,
          `nft monitor rules in the libvirt namespace after SIGHUP (ms after it):\n${
            mon.lines().slice(linesBefore).map((l) => `  ${at(l.t).padStart(9)}  ${l.line}`).join("\n")
          }`,
        );
        const mended = w.lines().find((l) => l.line.includes("mended accepts in libvirt's chains"));
        assert.ok(mended, `the watcher did not say it mended our accepts:\n${w.text()}`);
        assert.match(
          mended.line,
          /after a firewall change: mended/,
          `the watcher mended on its poll, not on nft monitor's event:\n${w.text()}`,
        );
        results.push(`after SIGHUP: the watcher mended ${at(mended.t)} after it: "${mended.line}"`);
        await checkAccepts("after SIGHUP + watcher", [GUEST]);
        await checkForwards("after SIGHUP + watcher");
        for (const [name, p] of [["watcher", w], ["nft monitor", mon]] as const) {
          const status = await p.stop();
          notes.push(`${name} stopped by SIGTERM: ${JSON.stringify(status)}`);
          if (p === w) assert.equal(status.code, 0, `the watcher's exit: ${JSON.stringify(status)}`);
          assert.ok(!alive(p.pid), `${name} is still alive`);
        }
      });

      await t.step("second guest: two forwards live at once (the ruleset printed)", async () => {
        await act(`virsh start ${GUEST2}`, () => startGuest(e, guest2.name), (r) => `exit ${r.code}`);
        await rec.waitForCall((c) => isCall(c, REC_QEMU, GUEST2, "started", "begin"));
        await checkAccepts("two guests running", [GUEST, GUEST2]);
        const two = stripNft(await nftRuleset(e));
        rulesets.push({ title: "nft list ruleset with two guests forwarded", text: two });
        const r2 = await tcpRequest(cli.ns, PUBLIC_IP, 8082);
        assert.ok(r2.ok, `client -> ${PUBLIC_IP}:8082: ${JSON.stringify(r2)}`);
        assert.match(r2.text, svcLine("svc2", CLIENT_IP, SERVICE2_IP));
        results.push(`two guests: client -> ${PUBLIC_IP}:8082 OK ("${r2.text}")`);
        await checkForwards("two guests running");
        await act(`virsh destroy ${GUEST2}`, () => destroyGuest(e, guest2.name), (r) => `exit ${r.code}`);
        await rec.waitForCall((c) => isCall(c, REC_QEMU, GUEST2, "release", "end"));
        await checkAccepts(`after destroy ${GUEST2}`, [GUEST]);
        const r2after = await tcpRequest(cli.ns, PUBLIC_IP, 8082);
        assert.ok(!r2after.ok, `${GUEST2}'s forward must be gone: ${JSON.stringify(r2after)}`);
        await checkForwards(`after destroy ${GUEST2}`);
      });

      await t.step("6. virsh destroy: the rulesets are the ones before start", async () => {
        await act(`virsh destroy ${GUEST}`, () => destroyGuest(e, guest.name), (r) => `exit ${r.code}`);
        const stopped = await rec.waitForCall((c) => isCall(c, REC_QEMU, GUEST, "stopped", "end"));
        assert.doesNotMatch(
          await Deno.readTextFile(stopped.iptablesFile),
          /libvirt_hook_qemu|libvirt-hook-qemu/,
          "rules of ours left after stopped",
        );
        await rec.waitForCall((c) => isCall(c, REC_QEMU, GUEST, "release", "end"));
        const afterNft = stripNft(await nftRuleset(e));
        rulesets.push({ title: "nft list ruleset after virsh destroy", text: afterNft });
        assert.equal(
          afterNft,
          beforeNft,
          `nft ruleset after destroy differs from before start:\n${diff(beforeNft, afterNft)}`,
        );
        const afterIpt = await iptablesSave(e);
        assert.equal(
          afterIpt,
          beforeIpt,
          `iptables-save after destroy differs:\n${diff(beforeIpt, afterIpt)}`,
        );
        assert.ok(!(await ourTable()), "our table is still there");
        await checkAccepts("after virsh destroy", []);
        await checkNoForward("after virsh destroy");
      });
    } catch (err) {
      failed = true;
      throw err;
    } finally {
      for (const p of background) {
        const status = await p.stop().catch((x) => String(x));
        // after a failure, what the watcher (or the monitor) said is part of the evidence
        if (failed) {
          notes.push(`process ${p.pid} stopped in teardown: ${JSON.stringify(status)}:\n${p.text()}`);
        }
      }
      await reportAndTearDown(
        {
          name: "hook_nft_e2e_test",
          install,
          notes,
          results,
          ...recordedCalls(REC_QEMU, REC_NET),
          actions,
          rulesets,
        },
        env,
        rec,
        tmp,
      );
    }

    await t.step("7. everything torn down", () => assertNothingLeft(started));
    console.log(`hook_nft_e2e_test: ${Math.round(performance.now() - t00)} ms`);
  },
});
