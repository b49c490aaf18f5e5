/**
 * End-to-end check of the libvirt 11.3 (bookworm-backports, nftables backend) test environment: libvirtd in a
 * network namespace runs the recorder hook for a network and a guest, creates its nftables tables (and no
 * iptables chains), re-creates its rules on a daemon restart (above a rule we inserted), and everything is torn
 * down afterwards. See test/e2e/FINDINGS-nft.md.
 *
 * installLibvirt11() switches an installed libvirt 9.0 to 11.3 (libvirt_env_test.ts / hook_e2e_test.ts switch
 * back via installLibvirt()). Needs root, working `ip netns`, and apt-get (or libvirt 11.3 installed). Skipped
 * otherwise (with the reason printed), or when LVH_E2E=0.
 */
import assert from "node:assert/strict";
import { assertNothingLeft, skipping, Started } from "./common.ts";
import {
  defineGuest,
  destroyGuest,
  isCall,
  type LibvirtEnv,
  startGuest,
  startNatNetwork,
} from "./libvirt_env.ts";
import {
  createNftRecorder,
  guestInputPosition,
  insertGuestInputAccept,
  installLibvirt11,
  nftRuleset,
  startLibvirt11,
} from "./libvirt11_env.ts";

const reason = await skipping("libvirt11_env_test", "11.3");

Deno.test({
  name: "e2e: libvirt 11.3 (nftables backend) in a namespace: hooks, nft tables, rules re-created on restart",
  ignore: reason !== undefined,
  sanitizeOps: true,
  sanitizeResources: true,
  fn: async (t) => {
    const install = await installLibvirt11();
    console.log(`installLibvirt11: ${JSON.stringify(install)}`);
    assert.match(install.libvirtVersion, /^11\.3\./);
    const rec = await createNftRecorder();
    let env: LibvirtEnv | undefined;
    const started = new Started();
    try {
      env = await startLibvirt11({ hooksDir: rec.hooksDir });
      started.libvirt(env);
      const e = env;

      await t.step("libvirtd 11 runs in our namespace", async () => {
        const v = await e.virsh(["version", "--daemon"]);
        assert.match(v.stdout, /Running against daemon: 11\.3\./);
        const ino = (await Deno.stat(`/run/netns/${e.ns}`)).ino;
        assert.equal(await Deno.readLink(`/proc/${e.libvirtdPid}/ns/net`), `net:[${ino}]`);
      });

      const net = await startNatNetwork(e);
      await t.step("net-start: nft tables, no iptables chains, network hook with <hookData>", async () => {
        const rs = await nftRuleset(e);
        assert.match(rs, /table ip libvirt_network \{/);
        assert.match(rs, /table ip6 libvirt_network \{/);
        assert.match(rs, /chain forward \{\s*type filter hook forward priority filter; policy accept;/);
        assert.match(
          rs,
          /chain guest_input \{\s*oif "virbr9" ip daddr 192\.168\.150\.0\/24 ct state established,related counter packets \d+ bytes \d+ accept\s*oif "virbr9" counter packets \d+ bytes \d+ reject\s*\}/,
        );
        assert.doesNotMatch(rs, /LIBVIRT_/);
        const calls = (await rec.calls()).filter((c) => c.hook === "network");
        assert.deepEqual(calls.map((c) => c.argv.join(" ")), [
          "lvhnet start begin -",
          "lvhnet started begin -",
        ]);
        for (const c of calls) assert.equal(c.stdin1, "<hookData>");
        // at `started` libvirt's table is there, at `start` not yet
        const [start, startedCall] = calls;
        assert.ok(start && startedCall);
        assert.doesNotMatch(await Deno.readTextFile(start.iptablesFile), /libvirt_network/);
        assert.match(await Deno.readTextFile(startedCall.iptablesFile), /table ip libvirt_network/);
      });

      const guest = await defineGuest(e, { network: net.name });
      await t.step("guest start: prepare, start, started (same argv as 9.0)", async () => {
        const t0 = Date.now() / 1000;
        await startGuest(e, guest.name);
        const calls = (await rec.calls()).filter((c) => c.t >= t0 - 0.001);
        assert.deepEqual(calls.map((c) => `${c.hook} ${c.argv.join(" ")}`), [
          "qemu lvhguest prepare begin -",
          "network lvhnet port-created begin -",
          "qemu lvhguest start begin -",
          "qemu lvhguest started begin -",
        ]);
        assert.match(calls[0]?.stdin1 ?? "", /^<domain type='qemu'/);
      });

      await t.step(
        "our guest_input rule: before the reject, moved after it by a daemon restart",
        async () => {
          await insertGuestInputAccept(e, net.bridge);
          assert.equal((await guestInputPosition(e)).position, "before-reject");
          const t0 = Date.now() / 1000;
          await e.restartDaemon();
          started.pids.push(e.libvirtdPid);
          const reconnect = await rec.waitForCall((c) => isCall(c, "qemu", guest.name, "reconnect", "begin"));
          assert.ok(reconnect.t >= t0);
          assert.equal((await guestInputPosition(e)).position, "after-reject");
          // libvirt had re-created its rules before it ran `reconnect`: our rule is already below its reject there
          const snap = await Deno.readTextFile(reconnect.iptablesFile);
          const input = /chain guest_input \{([^}]*)\}/.exec(snap)?.[1] ?? "";
          assert.ok(
            input.indexOf("reject") >= 0 && input.indexOf("reject") < input.indexOf("libvirt-hook-qemu:1"),
          );
        },
      );

      await t.step("guest destroy: stopped, release with a reason", async () => {
        const t0 = Date.now() / 1000;
        await destroyGuest(e, guest.name);
        await rec.waitForCall((c) => isCall(c, "qemu", guest.name, "release", "end") && c.t >= t0);
        const ops = (await rec.calls()).filter((c) => c.hook === "qemu" && c.t >= t0 - 0.001).map((c) =>
          c.argv.slice(1).join(" ")
        );
        assert.deepEqual(ops, ["stopped end -", "release end destroyed"]);
      });
    } finally {
      await env?.stop();
      await rec.remove();
    }

    await t.step("nothing we started is left", () => assertNothingLeft(started));
  },
});
