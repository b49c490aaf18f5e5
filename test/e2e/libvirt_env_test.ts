/**
 * End-to-end check of the libvirt test environment itself: a real libvirtd 9.0 in a network namespace runs the
 * recorder hook for a guest start and destroy, and everything is torn down afterwards.
 *
 * Needs root, working `ip netns`, and libvirt installed or apt-get (installLibvirt installs it). Skipped
 * otherwise (with the reason printed), or when LVH_E2E=0.
 */
import assert from "node:assert/strict";
import { assertNothingLeft, skipping, Started } from "./common.ts";
import {
  attachClientNamespace,
  attachServiceNamespace,
  defineGuest,
  destroyGuest,
  HookRecorder,
  installLibvirt,
  isCall,
  type LibvirtEnv,
  run,
  startGuest,
  startLibvirt,
  startNatNetwork,
  startTcpServer,
  tcpRequest,
} from "./libvirt_env.ts";

const reason = await skipping("libvirt_env_test", "9.0");

async function hooksListing(): Promise<string> {
  const r = await run(["sh", "-c", "ls -la --time-style=+ /etc/libvirt/hooks 2>&1 || true"], {
    check: false,
  });
  // The parent's line goes: its link count changes when installing libvirt adds directories beside hooks/.
  return r.stdout.replace(/^total .*\n/m, "").replace(/^.* \.\.\n/m, "");
}

Deno.test({
  name: "e2e: real libvirtd in a namespace runs the recorder hook for guest start and destroy",
  ignore: reason !== undefined,
  sanitizeOps: true,
  sanitizeResources: true,
  fn: async (t) => {
    const install = await installLibvirt();
    console.log(`installLibvirt: ${JSON.stringify(install)}`);
    const hooksBefore = await hooksListing();
    const rec = await HookRecorder.create();
    let env: LibvirtEnv | undefined;
    const started = new Started();
    try {
      env = await startLibvirt({ hooksDir: rec.hooksDir });
      started.libvirt(env);
      assert.ok(env.libvirtdPid > 0 && env.virtlogdPid > 0 && env.launcherPid > 0);
      const e = env;

      await t.step("virsh answers and libvirtd runs in our namespace", async () => {
        const v = await e.virsh(["version"]);
        assert.match(v.stdout, /libvirt 9\.|Running hypervisor/);
        const link = await Deno.readLink(`/proc/${e.libvirtdPid}/ns/net`);
        const ino = (await Deno.stat(`/run/netns/${e.ns}`)).ino;
        assert.equal(link, `net:[${ino}]`);
      });

      const net = await startNatNetwork(e);
      await t.step("network is up inside the namespace with libvirt's rules", async () => {
        const link = await e.exec(["ip", "-br", "addr", "show", "dev", net.bridge]);
        assert.match(link.stdout, /192\.168\.150\.1\/24/);
        const rules = await e.exec(["iptables-save", "-t", "filter"]);
        assert.match(rules.stdout, /-A LIBVIRT_FWI -o virbr9 -j REJECT/);
        const calls = await rec.calls();
        assert.ok(calls.some((c) => isCall(c, "network", "lvhnet", "start", "begin")));
        assert.ok(calls.some((c) => isCall(c, "network", "lvhnet", "started", "begin")));
      });

      await t.step("service and client namespaces are wired", async () => {
        const svc = await attachServiceNamespace(e, net);
        const cli = await attachClientNamespace(e);
        await startTcpServer(e, svc.ns, { port: 80, label: "svc" });
        // from the libvirt namespace (the host) straight to the service on the bridge
        const direct = await tcpRequest(e.ns, svc.ip, 80);
        assert.ok(direct.ok, `host -> service: ${JSON.stringify(direct)}`);
        assert.match(direct.text, /^svc 192\.168\.150\.1:\d+ -> 192\.168\.150\.10:80$/);
        // from the client, forwarded: libvirt's LIBVIRT_FWI rejects new connections into the network
        const fwd = await tcpRequest(cli.ns, svc.ip, 80);
        assert.ok(
          !fwd.ok && /ConnectionRefused/.test(fwd.error),
          `client -> service: ${JSON.stringify(fwd)}`,
        );
      });

      const guest = await defineGuest(e, { network: net.name });
      await t.step("guest start runs prepare, start, started", async () => {
        const t0 = Date.now() / 1000;
        await startGuest(e, guest.name);
        assert.equal((await e.virsh(["domstate", guest.name])).stdout.trim(), "running");
        const calls = (await rec.calls()).filter((c) => c.hook === "qemu" && c.t >= t0 - 0.001);
        const ops = calls.map((c) => c.argv.slice(1).join(" "));
        assert.deepEqual(ops, ["prepare begin -", "start begin -", "started begin -"]);
        for (const c of calls) {
          assert.equal(c.argv[0], guest.name);
          assert.equal(c.cwd, "/");
          assert.equal(c.initEnv["LC_ALL"], "C");
          assert.equal(c.initEnv["HOME"], undefined);
        }
        assert.match(calls[0]?.stdin1 ?? "", /^<domain type='qemu'/);
      });

      await t.step("guest destroy runs stopped, release", async () => {
        const t0 = Date.now() / 1000;
        await destroyGuest(e, guest.name);
        await rec.waitForCall((c) => isCall(c, "qemu", guest.name, "release", "end"), 10_000);
        const ops = (await rec.calls())
          .filter((c) => c.hook === "qemu" && c.t >= t0 - 0.001)
          .map((c) => c.argv.slice(1).join(" "));
        assert.deepEqual(ops, ["stopped end -", "release end -"]);
      });
    } finally {
      await env?.stop();
      await rec.remove();
    }

    await t.step("nothing we started is left", async () => {
      await assertNothingLeft(started);
      for (const ns of started.ns) {
        assert.ok(!(await Deno.stat(`/run/lvh-e2e/${ns}`).then(() => true, () => false)));
      }
      assert.equal(await hooksListing(), hooksBefore, "/etc/libvirt/hooks was not restored");
    });
  },
});
