/**
 * Issue #14 end to end, under a real libvirtd (9.0 with its iptables backend, or 11.3 with its nftables backend;
 * the two test files call guestXmlScenario): a guest's forwards in its own XML, and **no config file at all**.
 *
 * 1. A network with a DHCP reservation (`<host mac ip>`), a guest with only metadata: its forward works from a
 *    client, from the host and from another guest on the bridge (hairpin), and is gone at `virsh destroy`.
 * 2. A guest without a reservation: it starts, its forward waits (`status` says so); a real DHCP client
 *    (isc-dhcp-client's dhclient, in a namespace on the bridge with the guest's MAC) gets a lease from libvirt's
 *    dnsmasq, and our watcher applies the forward when the lease appears.
 * 3. `virsh metadata --live` then `qemu apply`: the running guest's forward changes, without a restart.
 *
 * The guests have no OS: namespaces on the bridge serve TCP in their place (the reserved one with the reserved
 * address, the DHCP one with what its lease gave).
 */
import assert from "node:assert/strict";
import {
  Actions,
  alive,
  assertNothingLeft,
  attachForwardNamespaces,
  BRIDGE_IP,
  checkForwards,
  checkNoForward,
  CLIENT_IP,
  diff,
  iptablesSave,
  PUBLIC_IP,
  reportAndTearDown,
  runInstallSh,
  SERVICE_IP,
  Started,
  stripNft,
  svcLine,
} from "./common.ts";
import {
  defineGuest,
  destroyGuest,
  domainState,
  HookRecorder,
  HOOKS_DIR,
  type LibvirtEnv,
  MINIMAL_PATH,
  run,
  sleep,
  startGuest,
  startNatNetwork,
  startTcpServer,
  tcpRequest,
  waitFor,
} from "./libvirt_env.ts";

/** Our namespace, and forwards as `virsh metadata --set` takes them (libvirt puts them in the namespace). */
const NS = "urn:libvirt-hook-qemu:1";
const forwards = (port: number) =>
  `<forwards><portForward proto="tcp" address="${PUBLIC_IP}"><range start="${port}" to="80"/></portForward></forwards>`;
/** The same, as written in a domain's XML for `virsh define`. */
const metadata = (port: number) =>
  `<lvh:forwards xmlns:lvh="${NS}"><lvh:portForward proto="tcp" address="${PUBLIC_IP}">` +
  `<lvh:range start="${port}" to="80"/></lvh:portForward></lvh:forwards>`;

const RESERVED = { name: "lvhguest", mac: "52:54:00:4c:56:10" };
const LEASED = { name: "lvhdhcp", mac: "52:54:00:4c:56:20" };
const BRIDGE = "virbr9";

export interface Variant {
  /** "9.0" or "11.3": the test's name and its report. */
  libvirt: string;
  install(): Promise<unknown>;
  start(hooksDir: string): Promise<LibvirtEnv>;
  /** Everything of the firewall in the libvirt namespace, to compare before and after. */
  ruleset(env: LibvirtEnv): Promise<string>;
  /** Our live rules, for the report. */
  ours(env: LibvirtEnv): Promise<string>;
}

/** A long-running process in the libvirt namespace (the watcher), its output kept. */
function background(env: LibvirtEnv, argv: string[]) {
  const child = new Deno.Command("ip", {
    args: ["netns", "exec", env.ns, ...argv],
    clearEnv: true,
    env: { LC_ALL: "C", PATH: MINIMAL_PATH },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let text = "";
  const read = async (s: ReadableStream<Uint8Array>) => {
    for await (const chunk of s.pipeThrough(new TextDecoderStream())) text += chunk;
  };
  const reading = Promise.all([read(child.stdout), read(child.stderr)]);
  return {
    pid: child.pid,
    text: () => text,
    async stop() {
      try {
        Deno.kill(child.pid, "SIGTERM");
      } catch {
        // gone already
      }
      const status = await child.status;
      await reading;
      return status;
    },
  };
}

/** Runs the scenario under one libvirt variant. */
export async function guestXmlScenario(t: Deno.TestContext, v: Variant): Promise<void> {
  const t00 = performance.now();
  const install = await v.install();
  const tmp = await Deno.makeTempDir({ prefix: "lvh-e2e-guest-xml-" });
  const rec = await HookRecorder.create(`${tmp}/recorder`);
  const hooksDir = `${tmp}/etc/libvirt/hooks`;
  let env: LibvirtEnv | undefined;
  const actions = new Actions();
  const { act } = actions;
  const notes: string[] = [];
  const results: string[] = [];
  const rulesets: { title: string; text: string }[] = [];
  const started = new Started();
  let watcher: ReturnType<typeof background> | undefined;
  let dhclientPid = 0;
  try {
    await t.step(
      "install our hooks with install.sh, remove the example config: no config file at all",
      async () => {
        await runInstallSh(tmp, notes);
        await Deno.remove(`${hooksDir}/hooks.jsonc`);
        const left = [...Deno.readDirSync(hooksDir)].map((e) => e.name).filter((n) => /\.json/.test(n));
        assert.deepEqual(left.filter((n) => n !== "hooks.schema.json"), [], "a config file is left");
        env = await v.start(hooksDir);
        started.libvirt(env);
      },
    );
    const e = env;
    if (!e) throw new Error("libvirtd did not start");
    const qemu = (args: string[], check = true) =>
      e.exec([`${HOOKS_DIR}/qemu`, ...args], {
        env: { LC_ALL: "C", PATH: MINIMAL_PATH },
        timeoutMs: 60_000,
        check,
      });

    const net = await act("virsh net-start lvhnet (DHCP, one reservation)", () =>
      startNatNetwork(e, {
        dhcp: {
          start: "192.168.150.100",
          end: "192.168.150.200",
          hosts: [{ mac: RESERVED.mac, ip: SERVICE_IP }],
        },
      }));
    assert.equal(net.bridge, BRIDGE);
    const { forward, cli } = await attachForwardNamespaces(e, net);
    await defineGuest(e, { ...RESERVED, network: net.name, metadata: metadata(8080) });
    await defineGuest(e, { ...LEASED, network: net.name, metadata: metadata(8090) });
    const before = await v.ruleset(e);
    rulesets.push({ title: "before any start", text: before });

    await t.step(
      "1. a reservation, metadata only: the forward works from a client, the host, a guest",
      async () => {
        const xml = await e.virsh(["dumpxml", RESERVED.name]);
        const meta = /<metadata>[\s\S]*<\/metadata>/.exec(xml.stdout)?.[0] ?? "";
        notes.push(`virsh dumpxml ${RESERVED.name}, its metadata:\n${meta}`);
        assert.match(meta, /urn:libvirt-hook-qemu:1/);
        await checkNoForward(forward, "before start");
        const r = await act(
          `virsh start ${RESERVED.name}`,
          () => startGuest(e, RESERVED.name),
          (r) => `exit ${r.code}`,
        );
        assert.equal(r.code, 0, r.stderr);
        assert.equal(await domainState(e, RESERVED.name), "running");
        results.push(`after start: ${await checkForwards(forward, "after start")}`);
        const status = await qemu(["status", RESERVED.name]);
        notes.push(`qemu status ${RESERVED.name}:\n${status.stdout.trimEnd()}`);
        assert.match(status.stdout, new RegExp(`tcp ${PUBLIC_IP}:8080 -> ${SERVICE_IP}:80\\n`));
        assert.doesNotMatch(status.stdout, /not explained/);
        const plan = await qemu(["plan", RESERVED.name]);
        notes.push(`qemu plan ${RESERVED.name}:\n${plan.stdout.trimEnd()}`);
        assert.match(plan.stdout, new RegExp(SERVICE_IP.replace(/\./g, "\\.")));
        const check = await qemu(["check", "--domain", RESERVED.name]);
        assert.equal(check.stdout, `${RESERVED.name}: OK, 1 forward(s) from its XML\n`);
        rulesets.push({ title: `ours, ${RESERVED.name} running`, text: await v.ours(e) });
      },
    );

    await t.step("2. virsh destroy: the forward is gone, the firewall is as before", async () => {
      await act(`virsh destroy ${RESERVED.name}`, () => destroyGuest(e, RESERVED.name));
      await waitFor("the firewall as before", async () => (await v.ruleset(e)) === before, 10_000).catch(
        async () => assert.fail(`not as before:\n${diff(before, await v.ruleset(e))}`),
      );
      results.push(`after destroy: client refused (${await checkNoForward(forward, "after destroy")})`);
      for (const [ns, what] of [[e.ns, "host"], [forward.peerNs, "peer"]] as const) {
        const r = await tcpRequest(ns, PUBLIC_IP, 8080);
        assert.ok(!r.ok, `after destroy, from the ${what}: ${JSON.stringify(r)}`);
      }
    });

    await t.step("3. no reservation: the guest starts, its forward waits for its lease", async () => {
      watcher = background(e, [`${HOOKS_DIR}/qemu`, "watch", "--poll", "600"]);
      started.pids.push(watcher.pid);
      await waitFor("the watcher to start", () => watcher!.text().includes("watching the firewall"), 30_000);
      const r = await act(
        `virsh start ${LEASED.name}`,
        () => startGuest(e, LEASED.name),
        (r) => `exit ${r.code}`,
      );
      assert.equal(r.code, 0, r.stderr);
      const status = await qemu(["status", LEASED.name]);
      notes.push(`qemu status ${LEASED.name} before its lease:\n${status.stdout.trimEnd()}`);
      assert.match(
        status.stdout,
        new RegExp(
          `${LEASED.name} \\(running\\)\\n  waiting for a DHCP lease \\(mac ${LEASED.mac}, network lvhnet\\)`,
        ),
      );
      const plan = await qemu(["plan", LEASED.name]);
      assert.match(plan.stdout, /^# forwards\/portForward\[1\]: waiting for a DHCP lease/m);
      assert.ok(!(await tcpRequest(cli.ns, PUBLIC_IP, 8090)).ok, "no forward before the lease");
    });

    let leased = "";
    await t.step(
      "4. a real DHCP exchange with libvirt's dnsmasq: the watcher applies the forward",
      async () => {
        // The guest's place on the bridge: a namespace with its MAC, whose dhclient asks libvirt's dnsmasq.
        const ns = await e.addNamespace("dhcp");
        await run([
          "ip",
          "-n",
          e.ns,
          "link",
          "add",
          "lvhdhcp0",
          "type",
          "veth",
          "peer",
          "name",
          "eth0",
          "netns",
          ns,
        ]);
        await run(["ip", "-n", ns, "link", "set", "eth0", "address", LEASED.mac]);
        await run(["ip", "-n", ns, "link", "set", "eth0", "up"]);
        await run(["ip", "-n", ns, "link", "set", "lo", "up"]);
        await run(["ip", "-n", e.ns, "link", "set", "lvhdhcp0", "master", BRIDGE]);
        await run(["ip", "-n", e.ns, "link", "set", "lvhdhcp0", "up"]);
        const t0 = performance.now();
        // -sf /bin/true: dhclient configures nothing (and never writes /etc/resolv.conf); we set what it got.
        const dh = await run([
          "ip",
          "netns",
          "exec",
          ns,
          "dhclient",
          "-1",
          "-v",
          "-sf",
          "/bin/true",
          "-pf",
          `${tmp}/dhclient.pid`,
          "-lf",
          `${tmp}/dhclient.leases`,
          "eth0",
        ], { timeoutMs: 60_000, check: false });
        dhclientPid = Number((await Deno.readTextFile(`${tmp}/dhclient.pid`).catch(() => "0")).trim());
        assert.equal(dh.code, 0, `dhclient: ${dh.stderr}`);
        leased = /fixed-address ([0-9.]+);/.exec(await Deno.readTextFile(`${tmp}/dhclient.leases`))?.[1] ??
          "";
        notes.push(`dhclient got ${leased} in ${Math.round(performance.now() - t0)} ms`);
        assert.match(leased, /^192\.168\.150\.(1\d\d|200)$/, "a lease from the range");
        // libvirt's lease helper (dnsmasq's dhcp-script) records it once dnsmasq has answered.
        const file = `/var/lib/libvirt/dnsmasq/${BRIDGE}.status`;
        const status = await waitFor(
          "the lease in libvirt's records",
          async () => {
            const text = await Deno.readTextFile(file).catch(() => "");
            return text.includes(leased) && text.includes(LEASED.mac) ? text : undefined;
          },
          20_000,
          100,
        ).catch(async (err) => {
          throw new Error(`${err}\n${file}: ${await Deno.readTextFile(file).catch(String)}\n${dh.stderr}`);
        });
        notes.push(
          `${file}, ${Math.round(performance.now() - t0)} ms after dhclient began:\n${status.trimEnd()}`,
        );
        await run(["ip", "-n", ns, "address", "add", `${leased}/24`, "dev", "eth0"]);
        await run(["ip", "-n", ns, "route", "add", "default", "via", BRIDGE_IP]);
        await startTcpServer(e, ns, { port: 80, label: "dhcp" });
        const t1 = performance.now();
        let last = await tcpRequest(cli.ns, PUBLIC_IP, 8090, 1_000);
        while (!last.ok && performance.now() - t1 < 20_000) {
          await sleep(250);
          last = await tcpRequest(cli.ns, PUBLIC_IP, 8090, 1_000);
        }
        assert.ok(last.ok, `no forward 20 s after the lease: ${JSON.stringify(last)}\n${watcher?.text()}`);
        assert.match(last.text, svcLine("dhcp", CLIENT_IP, leased));
        results.push(
          `the lease came: forward live ${Math.round(performance.now() - t1)} ms later ("${last.text}")`,
        );
        assert.match(watcher!.text(), new RegExp(`after a DHCP lease change: mended ${LEASED.name}`));
        // The watcher stops here: what follows must be apply's doing alone (the watcher would also follow the
        // live XML, at its next look).
        const w = watcher!;
        watcher = undefined;
        const exit = await w.stop();
        notes.push(`watcher output:\n${w.text().trimEnd()}`);
        assert.equal(exit.code, 0);
        const after = await qemu(["status", LEASED.name]);
        notes.push(`qemu status ${LEASED.name} after its lease:\n${after.stdout.trimEnd()}`);
        assert.match(after.stdout, new RegExp(`tcp ${PUBLIC_IP}:8090 -> ${leased}:80\\n`));
      },
    );

    await t.step(
      "5. virsh metadata --live, then qemu apply: the new forward, without a restart",
      async () => {
        await e.virsh(["metadata", LEASED.name, NS, "--key", "lvh", "--set", forwards(8091), "--live"]);
        const live = await Deno.readTextFile(`/run/libvirt/qemu/${LEASED.name}.xml`);
        notes.push(
          `/run/libvirt/qemu/${LEASED.name}.xml, its metadata after virsh metadata --live:\n${
            /<metadata>[\s\S]*?<\/metadata>/.exec(live)?.[0] ?? "(none)"
          }`,
        );
        // virsh metadata --live calls no hook: nothing changes until apply.
        assert.ok((await tcpRequest(cli.ns, PUBLIC_IP, 8090)).ok, "8090 still works before apply");
        assert.ok(!(await tcpRequest(cli.ns, PUBLIC_IP, 8091)).ok, "8091 is no forward before apply");
        const r = await act(`qemu apply ${LEASED.name}`, () => qemu(["apply", LEASED.name]));
        assert.equal(r.code, 0, r.stderr);
        const now = await tcpRequest(cli.ns, PUBLIC_IP, 8091);
        assert.ok(now.ok, JSON.stringify(now));
        assert.match(now.text, svcLine("dhcp", CLIENT_IP, leased));
        assert.ok(!(await tcpRequest(cli.ns, PUBLIC_IP, 8090)).ok, "the old forward is gone");
        results.push(`after virsh metadata --live + apply: 8091 works ("${now.text}"), 8090 refused`);
        rulesets.push({ title: `ours, ${LEASED.name} running after apply`, text: await v.ours(e) });
      },
    );

    await t.step("6. virsh destroy: nothing of ours is left", async () => {
      await act(`virsh destroy ${LEASED.name}`, () => destroyGuest(e, LEASED.name));
      await waitFor("the firewall as before", async () => (await v.ruleset(e)) === before, 10_000).catch(
        async () => assert.fail(`not as before:\n${diff(before, await v.ruleset(e))}`),
      );
      assert.ok(!(await tcpRequest(cli.ns, PUBLIC_IP, 8091)).ok);
    });
  } finally {
    if (watcher) await watcher.stop();
    if (dhclientPid > 0 && alive(dhclientPid)) Deno.kill(dhclientPid, "SIGTERM");
    await reportAndTearDown(
      {
        name: `guest XML under libvirt ${v.libvirt}`,
        install,
        notes,
        results,
        callsTitle: "hook-triggering steps",
        actions,
        describe: (c) => `${c.hook} ${c.argv.join(" ")}`,
        rulesets,
      },
      env,
      rec,
      tmp,
    );
  }
  await t.step("7. everything torn down", () => assertNothingLeft(started));
  console.log(`guest XML e2e (libvirt ${v.libvirt}): ${Math.round(performance.now() - t00)} ms`);
}

/** The rulesets of the libvirt namespace: iptables in both families, and nftables. */
export async function allRules(env: LibvirtEnv): Promise<string> {
  const nft = await env.exec(["nft", "list", "ruleset"], { check: false, timeoutMs: 30_000 });
  return `${await iptablesSave(env)}${await iptablesSave(env, 6)}${stripNft(nft.stdout)}`;
}
