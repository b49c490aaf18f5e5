/**
 * Issue #4: our hook, installed by install.sh, run by a real libvirtd 9.0 (in a network namespace, see
 * libvirt_env.ts) for a guest's whole life: start, daemon restart, network restart, destroy, and a start the
 * config refuses. Checks real traffic through libvirt's own rules and the rulesets before, during and after.
 *
 * Besides our hook (`/etc/libvirt/hooks/qemu`), the recorder (libvirt_env.ts) is installed as
 * `/etc/libvirt/hooks/qemu.d/zz-recorder` and as the network hook: libvirt runs qemu.d scripts after `qemu`, so
 * each recorded qemu call marks the moment our hook had finished, and shows libvirt's calls with their times.
 *
 * Needs root, working `ip netns`, and libvirt installed or apt-get. Skipped otherwise (with the reason printed),
 * or when LVH_E2E=0.
 */
import assert from "node:assert/strict";
import {
  Actions,
  assertNothingLeft,
  attachForwardNamespaces,
  checkForwards,
  checkNoForward,
  diff,
  epoch,
  GUEST,
  installRecorderScript,
  iptablesSave,
  PUBLIC_IP,
  reportAndTearDown,
  runInstallSh,
  SERVICE_IP,
  skipping,
  Started,
} from "./common.ts";
import {
  defineGuest,
  destroyGuest,
  destroyNetwork,
  domainState,
  HookRecorder,
  HOOKS_DIR,
  installLibvirt,
  isCall,
  type LibvirtEnv,
  startGuest,
  startLibvirt,
  startNatNetwork,
  startNetwork,
} from "./libvirt_env.ts";

const BAD = "badguest";
const HOOKS_JSONC = `${HOOKS_DIR}/hooks.jsonc`;
/** The recorder's name in qemu.d: the recorder names calls by its own file name. */
const RECORDER = "zz-recorder";

const CONFIG = `// hook_e2e_test.ts
{
  "${GUEST}": {
    "interface": "virbr9",
    "private_ip": "${SERVICE_IP}",
    "public_ip": "${PUBLIC_IP}",
    "port_map": { "tcp": [[8080, 80]] }
  },
  "${BAD}": { "private_ip": "192.168.150.300", "port_map": { "tcp": [[8081, 80]] } }
}
`;

const reason = await skipping("hook_e2e_test", "9.0");

/** 1-based line:column of the first occurrence of `needle` in `text`. */
function position(text: string, needle: string): string {
  const at = text.indexOf(needle);
  assert.ok(at >= 0, `${needle} not in the config`);
  const before = text.slice(0, at).split("\n");
  return `${before.length}:${(before.at(-1) ?? "").length + 1}`;
}

function environOf(pid: number): Record<string, string> {
  const out: Record<string, string> = {};
  for (const kv of Deno.readTextFileSync(`/proc/${pid}/environ`).split("\0")) {
    const eq = kv.indexOf("=");
    if (eq > 0) out[kv.slice(0, eq)] = kv.slice(eq + 1);
  }
  return out;
}

Deno.test({
  name:
    "e2e #4: our installed hook under a real libvirtd: forwards live, survive restarts, vanish on destroy",
  ignore: reason !== undefined,
  sanitizeOps: true,
  sanitizeResources: true,
  fn: async (t) => {
    const t00 = performance.now();
    const install = await installLibvirt();
    const tmp = await Deno.makeTempDir({ prefix: "lvh-e2e-hook-" });
    const rec = await HookRecorder.create(`${tmp}/recorder`);
    const hooksDir = `${tmp}/etc/libvirt/hooks`;
    let env: LibvirtEnv | undefined;
    const actions = new Actions();
    const { act } = actions;
    const rules: { title: string; text: string }[] = [];
    const notes: string[] = [];
    const started = new Started();

    try {
      await t.step("1. install our hook with install.sh and start libvirtd with it", async () => {
        await runInstallSh(tmp, notes);
        assert.ok((await Deno.stat(`${hooksDir}/qemu`)).isFile);
        await Deno.writeTextFile(`${hooksDir}/hooks.jsonc`, CONFIG);
        // the recorder runs after our hook (qemu.d scripts come after qemu) and as the network hook
        await installRecorderScript(rec, "qemu", `${hooksDir}/qemu.d/${RECORDER}`);
        await installRecorderScript(rec, "network", `${hooksDir}/network`);

        env = await startLibvirt({ hooksDir });
        started.libvirt(env);
        const daemonEnv = environOf(env.libvirtdPid);
        assert.equal(daemonEnv["HOME"], undefined, `libvirtd has HOME: ${JSON.stringify(daemonEnv)}`);
        assert.deepEqual(Object.keys(daemonEnv).sort(), ["LC_ALL", "PATH"]);
        notes.push(`libvirtd ${env.libvirtdPid} environment: ${JSON.stringify(daemonEnv)}`);
      });
      const e = env;
      if (!e) throw new Error("libvirtd did not start");

      const net = await startNatNetwork(e);
      const { svc, peer, forward } = await attachForwardNamespaces(e, net);
      const guest = await defineGuest(e, { name: GUEST, network: net.name });
      await defineGuest(e, { name: BAD, network: net.name, mac: "52:54:00:4c:56:11" });
      /** The three paths to the forward (client, host, hairpin). */
      const forwardsWork = async (when: string) => {
        notes.push(`${when}: ${await checkForwards(forward, when)}`);
      };
      const noForward = async (when: string) => {
        notes.push(`${when}: client -> ${PUBLIC_IP}:8080: ${await checkNoForward(forward, when)}`);
      };

      let before4 = "", before6 = "", during4 = "";
      await t.step("2. network, guest and namespaces ready; ruleset before start recorded", async () => {
        before4 = await iptablesSave(e);
        before6 = await iptablesSave(e, 6);
        rules.push({ title: "before virsh start", text: before4 });
        assert.ok(!before4.includes("LVH-"));
        await noForward("before start");
      });

      await t.step(
        "3. virsh start: forwards work for the client, the host and the bridge (hairpin)",
        async () => {
          await act(`virsh start ${GUEST}`, () => startGuest(e, guest.name), (r) => `exit ${r.code}`);
          assert.equal(await domainState(e, GUEST), "running");
          const started = await rec.waitForCall((c) => isCall(c, RECORDER, GUEST, "started", "begin"));
          assert.equal(started.cwd, "/");
          assert.equal(started.initEnv["HOME"], undefined);
          assert.equal(started.initEnv["LC_ALL"], "C");
          // the recorder runs after our hook: at its `start` call our rules are already there
          const atStart = (await rec.calls()).find((c) => isCall(c, RECORDER, GUEST, "start", "begin"));
          assert.ok(atStart);
          assert.match(await Deno.readTextFile(atStart.iptablesFile), /LVH-/, "rules not in place at start");
          during4 = await iptablesSave(e);
          rules.push({ title: "during (after virsh start)", text: during4 });
          // Our gate on top of FORWARD, ahead of libvirt's chains; the guest's jump in it.
          assert.match(
            during4,
            /^-A FORWARD -m connlabel --label "127" -j LVH-FORWARD\n-A FORWARD -j LIBVIRT_FWX$/m,
          );
          assert.match(
            during4,
            /^-A LVH-FORWARD -m comment --comment "libvirt-hook-qemu:1:lvhguest" -j LVH-\S+-FWD$/m,
          );
          await forwardsWork("after start");
        },
      );

      await t.step(
        "4. libvirtd restart with the guest running: reconnect keeps the rules, once",
        async () => {
          const since = epoch();
          await act("restart libvirtd (until virsh answers)", () => e.restartDaemon());
          started.pids.push(e.libvirtdPid);
          const reconnect = await rec.waitForCall((c) =>
            isCall(c, RECORDER, GUEST, "reconnect", "begin") && c.t >= since
          );
          notes.push(
            `reconnect call done ${Math.round((reconnect.t - since) * 1000)} ms after the restart began`,
          );
          assert.equal(reconnect.initEnv["HOME"], undefined);
          assert.equal(environOf(e.libvirtdPid)["HOME"], undefined);
          assert.equal(await domainState(e, GUEST), "running");
          const after = await iptablesSave(e);
          assert.equal(after, during4, `rules changed by the restart:\n${diff(during4, after)}`);
          await forwardsWork("after libvirtd restart");
        },
      );

      await t.step("5. net-destroy + net-start with the guest running", async () => {
        await act(`virsh net-destroy ${net.name}`, () => destroyNetwork(e, net.name));
        const down = await iptablesSave(e);
        rules.push({ title: "after net-destroy (guest running)", text: down });
        notes.push(`net-destroy changed (vs during):\n${diff(during4, down)}`);
        await act(`virsh net-start ${net.name}`, () => startNetwork(e, net.name));
        const up = await iptablesSave(e);
        notes.push(`net-destroy + net-start changed (vs during):\n${diff(during4, up)}`);
        assert.equal(await domainState(e, GUEST), "running");
        // libvirt re-creates the bridge without its ports: put our namespaces back on it
        await svc.reattach();
        await peer.reattach();
        await forwardsWork("after net-destroy + net-start");
        assert.equal(up, during4, `rules differ after the network restart:\n${diff(during4, up)}`);
      });

      await t.step("6. virsh destroy: our rules are gone, the ruleset is the one before start", async () => {
        await act(`virsh destroy ${GUEST}`, () => destroyGuest(e, guest.name), (r) => `exit ${r.code}`);
        const stopped = await rec.waitForCall((c) => isCall(c, RECORDER, GUEST, "stopped", "end"));
        assert.doesNotMatch(
          await Deno.readTextFile(stopped.iptablesFile),
          /LVH-/,
          "rules left after stopped",
        );
        await rec.waitForCall((c) => isCall(c, RECORDER, GUEST, "release", "end"));
        const after4 = await iptablesSave(e);
        rules.push({ title: "after virsh destroy", text: after4 });
        assert.equal(
          after4,
          before4,
          `ruleset after destroy differs from before start:\n${diff(before4, after4)}`,
        );
        assert.equal(await iptablesSave(e, 6), before6);
        await noForward("after destroy");
      });

      await t.step("7. virsh start of a guest with a bad config entry fails with our message", async () => {
        const r = await act(
          `virsh start ${BAD}`,
          () => startGuest(e, BAD, { check: false }),
          (r) => `exit ${r.code}`,
        );
        notes.push(`virsh start ${BAD}: exit ${r.code}\n${r.stderr.trim()}`);
        assert.equal(r.success, false);
        const where = `${HOOKS_JSONC}:${position(CONFIG, '"192.168.150.300"')}`;
        assert.ok(
          r.stderr.includes(`${where}: Not an IP address (${BAD}.private_ip = "192.168.150.300")`),
          `stderr: ${r.stderr}`,
        );
        assert.match(r.stderr, /Cannot apply forwards for "badguest"/);
        assert.equal(await domainState(e, BAD), "shut off");
        await rec.waitForCall((c) => isCall(c, RECORDER, BAD, "release", "end"));
        const after = await iptablesSave(e);
        assert.equal(after, before4, `a refused start changed the rules:\n${diff(before4, after)}`);
      });
    } finally {
      // the report: hook calls (recorded after our hook returned) with times relative to the command
      await reportAndTearDown(
        {
          name: "hook_e2e_test",
          install,
          notes,
          callsTitle: "hook-triggering steps and the hook calls libvirt made (ms after the command began)",
          actions,
          describe: (c) =>
            `${c.hook} ${c.argv.join(" ")}` +
            (c.hook === RECORDER ? "  (recorded after our qemu hook returned)" : ""),
          rulesets: rules.map((r) => ({ title: `iptables-save ${r.title}`, text: r.text })),
        },
        env,
        rec,
        tmp,
      );
    }

    await t.step("8. everything torn down", () => assertNothingLeft(started));
    console.log(`hook_e2e_test: ${Math.round(performance.now() - t00)} ms`);
  },
});
