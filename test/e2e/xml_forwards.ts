/**
 * Issue #14, end to end: forwards written only in the guest's XML (`<metadata>`, namespace
 * `urn:libvirt-hook-qemu:1`), with no config file at all, under a real libvirtd (9.0 with its iptables backend:
 * xml_forwards_e2e_test.ts; 11.3 with its nftables backend: xml_forwards_nft_e2e_test.ts). The scenario is the same for
 * both and lives here, parameterised by the libvirt variant:
 *
 * 1. A DHCP reservation: the network has `<host mac ip/>` for the guest's MAC; the guest's forward has no guest
 *    address. A namespace with that MAC and address serves TCP in the guest's place (the guest has no OS). After
 *    `virsh start` the forward works from a client on the public side, from the host and from another namespace
 *    on the bridge (hairpin); after `virsh destroy` none of them does and the ruleset is the one before start.
 * 2. A real DHCP lease: a second guest without a reservation starts with its forwards waiting (`qemu status`
 *    says so); a namespace with the guest's MAC gets a lease from libvirt's dnsmasq with `dhclient`, and the
 *    watcher (`qemu watch`) applies the forwards. Then the lease moves (DHCPRELEASE, and a new lease of an
 *    address dhclient asks for): the watcher moves the forwards to it.
 * 3. A live change: `virsh metadata --live --config --set` then `qemu apply`: the new port works, the old does not;
 *    `virsh destroy`: nothing of ours is left.
 *
 * The recorder (libvirt_env.ts) runs as `qemu.d/zz-recorder` and `network.d/zz-net-recorder`, after our hooks, and
 * keeps the XML libvirt passed on stdin. Notes printed in the report show libvirt's files as it wrote them.
 */
import assert from "node:assert/strict";
import {
  Actions,
  alive,
  assertNothingLeft,
  type Background,
  BRIDGE_IP,
  checkForwards,
  CLIENT_IP,
  diff,
  epoch,
  type Forward,
  installRecorderScript,
  PEER_IP,
  PUBLIC_IP,
  recordedCalls,
  reportAndTearDown,
  runInstallSh,
  SERVICE_IP,
  startBackground,
  Started,
  svcLine,
} from "./common.ts";
import {
  attachClientNamespace,
  attachServiceNamespace,
  defineGuest,
  destroyGuest,
  domainState,
  type HookRecorder,
  HOOKS_DIR,
  type InstallReport,
  isCall,
  type LibvirtEnv,
  MINIMAL_PATH,
  type NatNetwork,
  readTextOr,
  run,
  type RunResult,
  sleep,
  startGuest,
  startNatNetwork,
  type StartOptions,
  startTcpServer,
  tcpRequest,
  waitFor,
} from "./libvirt_env.ts";

/** Our XML namespace, and the prefix `virsh metadata --key` gives it. */
export const LVH_NS = "urn:libvirt-hook-qemu:1";
export const LVH_KEY = "lvh";

/** The guest with a DHCP reservation (scenario 1) and the one that gets a real lease (scenarios 2 and 3). */
export const RESERVED_GUEST = "lvhxmlres";
export const RESERVED_MAC = "52:54:00:4c:56:30";
export const LEASE_GUEST = "lvhxmllease";
export const LEASE_MAC = "52:54:00:4c:56:31";
/** libvirt's dnsmasq leases from this range; the reservation (SERVICE_IP) and PEER_IP are outside it. */
export const DHCP_START = "192.168.150.100";
export const DHCP_END = "192.168.150.199";
/** The address the lease moves to (dhclient asks for it; the first lease is dnsmasq's choice). */
export const MOVED_IP = "192.168.150.150";
const MOVED_IP_2 = "192.168.150.151";
const BRIDGE = "virbr9";
const NETWORK = "lvhnet";
const DHCLIENT = "/sbin/dhclient";
/** Who the recorders are in qemu.d and network.d (the recorder names calls by its own file name). */
const REC_QEMU = "zz-recorder";
const REC_NET = "zz-net-recorder";
/** Anything of ours in a ruleset (iptables chains, our nft table, our comments). */
const OURS = /LVH-|libvirt_hook_qemu|libvirt-hook-qemu/;

/** What differs between libvirt 9.0 (iptables) and 11.3 (nftables). */
export interface XmlForwardsVariant {
  /** The test's name in the report. */
  name: string;
  libvirt: "9.0" | "11.3";
  install(): Promise<InstallReport & { libvirtVersion: string }>;
  startLibvirt(opts: StartOptions): Promise<LibvirtEnv>;
  /** A recorder whose per-call snapshot shows the firewall of this variant. */
  createRecorder(dir: string): Promise<HookRecorder>;
  /** The whole firewall in the libvirt namespace, normalised so that two snapshots compare (no counters). */
  ruleset(env: LibvirtEnv): Promise<string>;
}

/** `<forwards>` as `virsh metadata --set` takes it (no prefix: `--key` gives one); `counted`: counters="yes". */
export function forwardsXml(port: number, { guestPort = 80, counted = false } = {}): string {
  return `<forwards><portForward proto="tcp" address="${PUBLIC_IP}"${counted ? ` counters="yes"` : ""}>` +
    `<range start="${port}" to="${guestPort}"/></portForward></forwards>`;
}

/** The same forwards as a `<metadata>` child of a domain XML we define: prefixed elements in our namespace. */
export function metadataXml(port: number, guestPort = 80): string {
  return `<lvh:forwards xmlns:lvh="${LVH_NS}">
      <lvh:portForward proto="tcp" address="${PUBLIC_IP}">
        <lvh:range start="${port}" to="${guestPort}"/>
      </lvh:portForward>
    </lvh:forwards>`;
}

/** Runs `/etc/libvirt/hooks/qemu ARGS` in the libvirt namespace, with libvirt's minimal environment. */
function hookCommand(env: LibvirtEnv, args: string[]): Promise<RunResult> {
  return env.exec([`${HOOKS_DIR}/qemu`, ...args], {
    clearEnv: true,
    env: { LC_ALL: "C", PATH: MINIMAL_PATH },
    timeoutMs: 60_000,
    check: false,
  });
}

/** The first `<tag ...>...</tag>` of `xml` (or its empty form `<tag .../>`), or "(none)". */
function element(xml: string, tag: string): string {
  const full = new RegExp(`[ \\t]*<${tag}(?:\\s[^>]*)?>[\\s\\S]*?</${tag}>`).exec(xml);
  const empty = new RegExp(`[ \\t]*<${tag}(?:\\s[^>]*)?/>`).exec(xml);
  const first = [full, empty].filter((m) => m !== null).sort((a, b) => a.index - b.index)[0];
  return first?.[0] ?? "(none)";
}

/** Every `<interface ...>...</interface>` of `xml`. */
function interfaces(xml: string): string {
  return [...xml.matchAll(/[ \t]*<interface[\s\S]*?<\/interface>/g)].map((m) => m[0]).join("\n") || "(none)";
}

const indent = (text: string) => text.trimEnd().split("\n").map((l) => `    ${l}`).join("\n");

/** A real DHCP client in namespace `ns` (eth0): one try, no script, private files. */
interface Dhclient {
  ip: string;
  /** How long dhclient took until it had the lease (it then goes to the background). */
  ms: number;
  /** The backgrounded dhclient (from its pid file), killed by stop(). */
  pid: number;
  output: string;
  /** `dhclient -r`: sends DHCPRELEASE and stops the backgrounded dhclient; returns its output. */
  release(): Promise<string>;
  stop(): Promise<void>;
}

/**
 * Runs `dhclient -1` in namespace `ns` until it has a lease (it then goes to the background). No config (so no
 * host name is sent) but `requestAddress` (option 50), and `-sf /bin/true`: it never configures the interface and
 * never touches /etc/resolv.conf; the test sets the leased address itself. Its files are in `dir`.
 */
async function dhclient(ns: string, dir: string, requestAddress?: string): Promise<Dhclient> {
  await Deno.mkdir(dir, { recursive: true });
  const conf = `${dir}/dhclient.conf`, leases = `${dir}/dhclient.leases`, pidFile = `${dir}/dhclient.pid`;
  await Deno.writeTextFile(conf, requestAddress ? `send dhcp-requested-address ${requestAddress};\n` : "");
  const files = ["-sf", "/bin/true", "-cf", conf, "-lf", leases, "-pf", pidFile];
  const dhcp = (args: string[]) =>
    run(["ip", "netns", "exec", ns, DHCLIENT, "-4", ...args, ...files, "eth0"], {
      clearEnv: true,
      env: { LC_ALL: "C", PATH: MINIMAL_PATH },
      timeoutMs: 90_000,
      check: false,
    });
  const r = await dhcp(["-1", "-v"]);
  const output = (r.stderr + r.stdout).trim();
  const pid = Number((await readTextOr(pidFile, "")).trim()) || 0;
  const stop = async () => {
    if (!pid || !alive(pid)) return;
    if (!(await readTextOr(`/proc/${pid}/cmdline`, "")).includes("dhclient")) return;
    Deno.kill(pid, "SIGTERM");
    await waitFor(`dhclient ${pid} to exit`, () => !alive(pid), 10_000).catch(() => {
      if (alive(pid)) Deno.kill(pid, "SIGKILL");
    });
  };
  const release = async () => {
    const rel = await dhcp(["-r", "-v"]);
    await stop();
    return `exit ${rel.code}: ${(rel.stderr + rel.stdout).trim()}`;
  };
  const ip = /bound to (\d+\.\d+\.\d+\.\d+)/.exec(output)?.[1];
  if (!r.success || !ip) {
    await stop();
    throw new Error(`dhclient got no lease (exit ${r.code}, ${r.ms} ms):\n${output}`);
  }
  return { ip, ms: r.ms, pid, output, release, stop };
}

/** Why this scenario cannot run here beyond skipReason() (no dhclient), printed like skipping(); or undefined. */
export async function xmlForwardsSkipReason(name: string): Promise<string | undefined> {
  try {
    await Deno.stat(DHCLIENT);
    return undefined;
  } catch {
    const reason = `no ${DHCLIENT} (isc-dhcp-client)`;
    console.log(`${name}: skipped: ${reason}`);
    return reason;
  }
}

/** The scenario (steps 1-3 above) under the variant's libvirt. */
export async function xmlForwardsScenario(t: Deno.TestContext, v: XmlForwardsVariant): Promise<void> {
  const t00 = performance.now();
  const install = await v.install();
  assert.ok(
    install.libvirtVersion.startsWith(v.libvirt === "9.0" ? "9.0." : "11.3."),
    `libvirt ${install.libvirtVersion}`,
  );
  const tmp = await Deno.makeTempDir({ prefix: "lvh-e2e-xml-forwards-" });
  const rec = await v.createRecorder(`${tmp}/recorder`);
  const hooksDir = `${tmp}/etc/libvirt/hooks`;
  let env: LibvirtEnv | undefined;
  const background: Background[] = [];
  let lease: Dhclient | undefined;
  let failed = false;
  const actions = new Actions();
  const { act } = actions;
  const notes: string[] = [];
  const results: string[] = [];
  /** libvirt's files and XML as it wrote them (for whoever reads the report). */
  const seen: string[] = [];
  const rulesets: { title: string; text: string }[] = [];
  const started = new Started();

  try {
    await t.step("install our hooks with install.sh, remove the example config, start libvirtd", async () => {
      await runInstallSh(tmp, notes);
      for (const hook of ["qemu", "network"]) {
        assert.ok((await Deno.stat(`${hooksDir}/${hook}`)).isFile, `install.sh did not install ${hook}`);
      }
      // no config file at all: the forwards come from the guests' XML only
      await Deno.remove(`${hooksDir}/hooks.jsonc`).catch(() => undefined);
      for (const f of ["hooks.jsonc", "hooks.json", "hooks.d"]) {
        await assert.rejects(Deno.stat(`${hooksDir}/${f}`), Deno.errors.NotFound, `${f} is there`);
      }
      for (const [dir, name] of [["qemu.d", REC_QEMU], ["network.d", REC_NET]] as const) {
        await installRecorderScript(rec, "qemu", `${hooksDir}/${dir}/${name}`);
      }
      env = await v.startLibvirt({ hooksDir });
      started.libvirt(env);
    });
    const e = env;
    if (!e) throw new Error("libvirtd did not start");

    const net: NatNetwork = await act(
      `virsh net-start ${NETWORK} (DHCP ${DHCP_START}-${DHCP_END}, ${RESERVED_MAC} reserved ${SERVICE_IP})`,
      () =>
        startNatNetwork(e, {
          name: NETWORK,
          bridge: BRIDGE,
          dhcp: { start: DHCP_START, end: DHCP_END, hosts: [{ mac: RESERVED_MAC, ip: SERVICE_IP }] },
        }),
    );
    const svc = await attachServiceNamespace(e, net, { ip: SERVICE_IP, mac: RESERVED_MAC });
    const peer = await attachServiceNamespace(e, net, { ip: PEER_IP, suffix: "peer", hostVeth: "lvhpeer0" });
    const cli = await attachClientNamespace(e, { hostIp: PUBLIC_IP, clientIp: CLIENT_IP });
    await startTcpServer(e, svc.ns, { port: 80, label: "svc" });
    const forward = (port: number, label: string, serviceIp: string): Forward => ({
      clientNs: cli.ns,
      clientIp: CLIENT_IP,
      publicIp: PUBLIC_IP,
      port,
      hostNs: e.ns,
      peerNs: peer.ns,
      peerIp: PEER_IP,
      bridgeIp: BRIDGE_IP,
      label,
      serviceIp,
    });
    /** The forward to PUBLIC_IP:port works from none of the client, the host and the peer (hairpin). */
    const noForward = async (port: number, when: string) => {
      const got: string[] = [];
      for (const [who, ns] of [["client", cli.ns], ["host", e.ns], ["peer (hairpin)", peer.ns]] as const) {
        const r = await tcpRequest(ns, PUBLIC_IP, port);
        assert.ok(!r.ok, `${when}: ${who} -> ${PUBLIC_IP}:${port} must not work: ${JSON.stringify(r)}`);
        got.push(`${who}: ${r.ok ? "" : r.error}`);
      }
      results.push(`${when}: ${PUBLIC_IP}:${port} refused as expected (${got.join("; ")})`);
    };
    const status = async (when: string) => {
      const r = await hookCommand(e, ["status"]);
      notes.push(`qemu status ${when}: exit ${r.code}\n${indent(r.stdout + r.stderr)}`);
      assert.equal(r.code, 0, `qemu status ${when}: ${r.stderr}`);
      return r.stdout;
    };
    const dumpxml = async (dom: string, inactive = false) =>
      (await e.virsh(["dumpxml", ...(inactive ? ["--inactive"] : []), dom])).stdout;
    const metadataGet = async (dom: string) =>
      (await e.virsh(["metadata", dom, LVH_NS], { check: false })).stdout.trim();

    let before = "";
    await t.step(
      "1a. before start: guest defined, metadata set with virsh metadata; ruleset recorded",
      async () => {
        await defineGuest(e, { name: RESERVED_GUEST, network: net.name, mac: RESERVED_MAC });
        await act(
          `virsh metadata ${RESERVED_GUEST} ${LVH_NS} --key ${LVH_KEY} --set '${
            forwardsXml(8080, { counted: true })
          }' --config`,
          () =>
            e.virsh([
              "metadata",
              RESERVED_GUEST,
              LVH_NS,
              "--key",
              LVH_KEY,
              "--set",
              // Its packets and bytes counted too (counters="yes"): read in 1b.
              forwardsXml(8080, { counted: true }),
              "--config",
            ]),
        );
        const inactive = await dumpxml(RESERVED_GUEST, true);
        seen.push(
          `virsh dumpxml --inactive ${RESERVED_GUEST} after virsh metadata --set --config, its <metadata>:\n${
            indent(element(inactive, "metadata"))
          }`,
          `virsh metadata ${RESERVED_GUEST} ${LVH_NS}:\n${indent(await metadataGet(RESERVED_GUEST))}`,
        );
        assert.match(inactive, new RegExp(`<${LVH_KEY}:forwards xmlns:${LVH_KEY}="${LVH_NS}">`));
        assert.match(inactive, /portForward proto="tcp" address="203\.0\.113\.1"/);
        const netStatus = await readTextOr(`/run/libvirt/network/${net.name}.xml`, "(missing)");
        seen.push(`/run/libvirt/network/${net.name}.xml, its <dhcp>:\n${indent(element(netStatus, "dhcp"))}`);
        assert.ok(
          netStatus.includes(`<host mac='${RESERVED_MAC}' ip='${SERVICE_IP}'/>`),
          `no reservation in the network status:\n${netStatus}`,
        );
        const plan = await hookCommand(e, ["plan", RESERVED_GUEST]);
        notes.push(
          `qemu plan ${RESERVED_GUEST} (defined, not running): exit ${plan.code}\n${
            indent(plan.stdout + plan.stderr)
          }`,
        );
        assert.equal(plan.code, 0, plan.stderr);
        assert.ok(
          plan.stdout.includes(SERVICE_IP),
          `plan does not name the reserved address:\n${plan.stdout}`,
        );
        before = await v.ruleset(e);
        rulesets.push({ title: "before virsh start", text: before });
        assert.doesNotMatch(before, OURS);
        await noForward(8080, "before start");
      },
    );

    await t.step(
      "1b. virsh start: the reserved address is forwarded to from client, host and hairpin",
      async () => {
        const since = epoch();
        await act(
          `virsh start ${RESERVED_GUEST}`,
          () => startGuest(e, RESERVED_GUEST),
          (r) => `exit ${r.code}`,
        );
        assert.equal(await domainState(e, RESERVED_GUEST), "running");
        await rec.waitForCall((c) => isCall(c, REC_QEMU, RESERVED_GUEST, "started", "begin") && c.t >= since);
        const atStart = (await rec.calls()).find((c) =>
          isCall(c, REC_QEMU, RESERVED_GUEST, "start", "begin") && c.t >= since
        );
        assert.ok(atStart, "no recorded start call");
        // the recorder runs after our hook: at its `start` our rules are already in place
        assert.match(await Deno.readTextFile(atStart.iptablesFile), OURS, "our rules not in place at start");
        const stdin = await Deno.readTextFile(atStart.stdinFile);
        seen.push(
          `stdin of the qemu hook at \`${RESERVED_GUEST} start begin -\` (libvirt ${install.libvirtVersion}): ` +
            `first line ${JSON.stringify(atStart.stdin1)}; <metadata>:\n${
              indent(element(stdin, "metadata"))
            }\n` +
            `  and its interface:\n${indent(interfaces(stdin))}`,
        );
        assert.ok(stdin.includes(LVH_NS) && stdin.includes(RESERVED_MAC), `stdin at start:\n${stdin}`);
        const runXml = await readTextOr(`/run/libvirt/qemu/${RESERVED_GUEST}.xml`, "(missing)");
        seen.push(
          `/run/libvirt/qemu/${RESERVED_GUEST}.xml while running: its root ${
            JSON.stringify(/<(?!!|\?)[^>]*>/.exec(runXml)?.[0] ?? "(none)")
          }; its interface:\n${indent(interfaces(runXml))}`,
        );
        const during = await v.ruleset(e);
        rulesets.push({ title: `after virsh start ${RESERVED_GUEST}`, text: during });
        notes.push(`virsh start ${RESERVED_GUEST} changed the ruleset:\n${indent(diff(before, during))}`);
        assert.ok(during.includes(SERVICE_IP), "no rule names the reserved address");
        results.push(`reservation: ${await checkForwards(forward(8080, "svc", SERVICE_IP), "after start")}`);
        const s = await status("with the reserved guest running");
        assert.ok(s.includes(RESERVED_GUEST) && s.includes(SERVICE_IP), `status:\n${s}`);
        assert.doesNotMatch(s, /waiting for a DHCP lease/);
        // The connections the checks made through the forward, counted with their packets and bytes (the host's
        // own connection counts as a connection only: it is not forwarded).
        const counted = /:8080 -> [^\n]*\n {4}(\d+) connections, (\d+) packets, (\d+) bytes\n/.exec(s);
        assert.ok(counted, `status shows no packets and bytes for the counting forward:\n${s}`);
        assert.ok(Number(counted[1]) >= 2 && Number(counted[2]) >= 8, `status:\n${s}`);
      },
    );

    await t.step("1c. virsh destroy: no path works, the ruleset is the one before start", async () => {
      const since = epoch();
      await act(
        `virsh destroy ${RESERVED_GUEST}`,
        () => destroyGuest(e, RESERVED_GUEST),
        (r) => `exit ${r.code}`,
      );
      await rec.waitForCall((c) => isCall(c, REC_QEMU, RESERVED_GUEST, "release", "end") && c.t >= since);
      const after = await v.ruleset(e);
      rulesets.push({ title: `after virsh destroy ${RESERVED_GUEST}`, text: after });
      assert.equal(
        after,
        before,
        `the ruleset after destroy differs from before start:\n${diff(before, after)}`,
      );
      await noForward(8080, "after destroy");
    });

    // Scenarios 2 and 3: a guest without a reservation, its lease from a real DHCP client in a namespace with its MAC
    const dhcpNs = await attachServiceNamespace(e, net, {
      ip: null,
      mac: LEASE_MAC,
      suffix: "dhcp",
      hostVeth: "lvhdhcp0",
    });
    await startTcpServer(e, dhcpNs.ns, { port: 80, label: "leased" });
    const statusFile = `/var/lib/libvirt/dnsmasq/${BRIDGE}.status`;
    let watcher: Background | undefined;

    await t.step("2a. a guest without a reservation starts; its forwards wait for a lease", async () => {
      await defineGuest(e, {
        name: LEASE_GUEST,
        network: net.name,
        mac: LEASE_MAC,
        metadata: metadataXml(8080),
      });
      const inactive = await dumpxml(LEASE_GUEST, true);
      seen.push(
        `virsh dumpxml --inactive ${LEASE_GUEST} (defined with our prefixed <metadata> in its XML), its <metadata>:\n${
          indent(element(inactive, "metadata"))
        }`,
      );
      // the watcher, as a plain process in the libvirt namespace; it polls only every 600 s, so what it applies
      // within this test it applies on an event (a lease change)
      const w = startBackground(e, [`${HOOKS_DIR}/qemu`, "watch", "--poll", "600"]);
      watcher = w;
      background.push(w);
      started.pids.push(w.pid);
      await waitFor("the watcher to start", () => {
        assert.ok(alive(w.pid), `the watcher exited:\n${w.text()}`);
        return w.text().includes("watching the firewall");
      }, 30_000);
      const leases = await readTextOr(statusFile, "(missing)");
      notes.push(`${statusFile} before any lease: ${JSON.stringify(leases)}`);
      assert.ok(!leases.includes(LEASE_MAC), `a lease for ${LEASE_MAC} already:\n${leases}`);
      const since = epoch();
      const r = await act(
        `virsh start ${LEASE_GUEST}`,
        () => startGuest(e, LEASE_GUEST),
        (r) => `exit ${r.code}`,
      );
      assert.equal(r.code, 0);
      assert.equal(await domainState(e, LEASE_GUEST), "running");
      await rec.waitForCall((c) => isCall(c, REC_QEMU, LEASE_GUEST, "started", "begin") && c.t >= since);
      const s = await status("with the lease guest running, no lease yet");
      assert.ok(
        s.includes(`waiting for a DHCP lease (mac ${LEASE_MAC}`),
        `status does not say that the forwards wait:\n${s}`,
      );
      const waiting = await v.ruleset(e);
      notes.push(
        `virsh start ${LEASE_GUEST} (waiting) changed the ruleset:\n${indent(diff(before, waiting))}`,
      );
      await noForward(8080, "lease guest running, no lease yet");
    });

    let leased = "";
    await t.step(
      "2b. dhclient with the guest's MAC gets a lease; the watcher applies the forwards",
      async () => {
        const w = watcher;
        assert.ok(w, "no watcher");
        const linesBefore = w.lines().length;
        const l = await act(
          `dhclient -1 in a namespace with ${LEASE_MAC}`,
          () => dhclient(dhcpNs.ns, `${tmp}/dhclient`),
          (l) => `bound to ${l.ip} after ${l.ms} ms`,
        );
        lease = l;
        leased = l.ip;
        const tLease = epoch();
        if (l.pid) started.pids.push(l.pid);
        seen.push(`dhclient -4 -1 -v -sf /bin/true (exit after the lease: ${l.ms} ms):\n${indent(l.output)}`);
        const last = Number(l.ip.split(".")[3]);
        assert.ok(l.ip.startsWith("192.168.150.") && last >= 100 && last <= 199, `leased ${l.ip}`);
        const leases = await waitFor(`${statusFile} to hold the lease`, async () => {
          const text = await readTextOr(statusFile, "");
          return text.includes(LEASE_MAC) && text.includes(`"${l.ip}"`) ? text : undefined;
        }, 10_000);
        seen.push(`${statusFile} after the lease:\n${indent(leases)}`);
        // dhclient's script is /bin/true: the leased address is ours to set
        await run(["ip", "-n", dhcpNs.ns, "addr", "add", `${l.ip}/${net.prefix}`, "dev", "eth0"]);
        await run(["ip", "-n", dhcpNs.ns, "route", "add", "default", "via", net.address]);
        let tries = 0;
        const ok = await waitFor(
          `the forward to the leased ${l.ip} (watcher log:\n${w.text()})`,
          async () => {
            tries++;
            const r = await tcpRequest(cli.ns, PUBLIC_IP, 8080, 1_000);
            return r.ok ? r : undefined;
          },
          15_000,
          200,
        );
        results.push(
          `lease: client -> ${PUBLIC_IP}:8080 works ${Math.round((epoch() - tLease) * 1000)} ms after ` +
            `dhclient had its lease (try ${tries}): "${ok.text}"`,
        );
        assert.match(ok.text, svcLine("leased", CLIENT_IP, l.ip));
        const mended = w.lines().slice(linesBefore).find((x) =>
          x.line.includes(`mended`) && x.line.includes(LEASE_GUEST)
        );
        assert.ok(mended, `the watcher did not say it applied ${LEASE_GUEST}'s forwards:\n${w.text()}`);
        results.push(
          `lease: the watcher ${Math.round((mended.t - tLease) * 1000)} ms after the lease: "${mended.line}"`,
        );
        assert.match(
          mended.line,
          /DHCP lease/,
          `the watcher applied on something else than the lease:\n${w.text()}`,
        );
        results.push(`lease: ${await checkForwards(forward(8080, "leased", l.ip), "after the lease")}`);
        const s = await status("after the lease");
        assert.doesNotMatch(s, /waiting for a DHCP lease/);
        assert.ok(s.includes(l.ip), `status does not name the leased address:\n${s}`);
        rulesets.push({ title: `${LEASE_GUEST} forwarded to its lease ${l.ip}`, text: await v.ruleset(e) });
      },
    );

    await t.step(
      "2c. the lease moves (release, then a lease of another address): the watcher follows",
      async () => {
        const w = watcher, old = lease;
        assert.ok(w && old, "no watcher or no lease");
        const linesBefore = w.lines().length;
        const moveTo = old.ip === MOVED_IP ? MOVED_IP_2 : MOVED_IP;
        const released = await act(`dhclient -r (release ${old.ip})`, () => old.release());
        notes.push(`dhclient -r: ${released}`);
        const gone = await waitFor(`${statusFile} to lose the lease of ${old.ip}`, async () => {
          const text = await readTextOr(statusFile, "");
          return text.includes(`"${old.ip}"`) ? undefined : text;
        }, 10_000);
        seen.push(`${statusFile} after DHCPRELEASE:\n${indent(gone || '""')}`);
        // what the forward does without a lease is the hook's business: recorded, not asserted
        await sleep(1_500);
        const between = await tcpRequest(cli.ns, PUBLIC_IP, 8080, 1_000);
        notes.push(
          `without a lease (1.5 s after the release): client -> ${PUBLIC_IP}:8080: ${
            JSON.stringify(between)
          }; ` +
            `qemu status:\n${indent((await hookCommand(e, ["status"])).stdout)}`,
        );
        const l = await act(
          `dhclient -1 asking for ${moveTo}`,
          () => dhclient(dhcpNs.ns, `${tmp}/dhclient2`, moveTo),
          (l) => `bound to ${l.ip} after ${l.ms} ms`,
        );
        lease = l;
        const tLease = epoch();
        if (l.pid) started.pids.push(l.pid);
        assert.equal(l.ip, moveTo, `dnsmasq did not give the requested address:\n${l.output}`);
        // dnsmasq runs libvirt's leases helper after its ACK: the status file follows a moment later
        const leases = await waitFor(`${statusFile} to hold the lease of ${moveTo}`, async () => {
          const text = await readTextOr(statusFile, "");
          return text.includes(`"${moveTo}"`) && text.includes(LEASE_MAC) ? text : undefined;
        }, 10_000);
        seen.push(`${statusFile} after the second lease:\n${indent(leases)}`);
        await run(["ip", "-n", dhcpNs.ns, "addr", "flush", "dev", "eth0"]);
        await run(["ip", "-n", dhcpNs.ns, "addr", "add", `${moveTo}/${net.prefix}`, "dev", "eth0"]);
        await run(["ip", "-n", dhcpNs.ns, "route", "add", "default", "via", net.address]);
        const ok = await waitFor(
          `the forward to the new ${moveTo} (watcher log:\n${w.text()})`,
          async () => {
            const r = await tcpRequest(cli.ns, PUBLIC_IP, 8080, 1_000);
            return r.ok && r.text.includes(`-> ${moveTo}:80`) ? r : undefined;
          },
          15_000,
          200,
        );
        results.push(
          `moved lease: client -> ${PUBLIC_IP}:8080 reaches ${moveTo} ${
            Math.round((epoch() - tLease) * 1000)
          } ms after the second lease: "${ok.text}"`,
        );
        const log = w.lines().slice(linesBefore).map((x) => x.line);
        assert.ok(
          log.some((x) => /DHCP lease/.test(x) && x.includes(LEASE_GUEST)),
          `the watcher did not follow the lease:\n${w.text()}`,
        );
        results.push(
          `moved lease: ${await checkForwards(forward(8080, "leased", moveTo), "after the move")}`,
        );
        leased = moveTo;
        const rules = await v.ruleset(e);
        assert.ok(!rules.includes(old.ip), `the old address ${old.ip} is still in the ruleset:\n${rules}`);
        const s = await status("after the lease moved");
        assert.ok(s.includes(moveTo) && !s.includes(old.ip), `status:\n${s}`);
      },
    );

    await t.step(
      "3a. virsh metadata --live --config --set (8081), then qemu apply: 8081 works, 8080 not",
      async () => {
        assert.ok(leased, "no lease");
        // The watcher stops here: it also brings a running guest's forwards in line with its live XML (at its next
        // look, and after any firewall change of others), and what follows must be apply's doing alone.
        const w = watcher;
        watcher = undefined;
        if (w) {
          const st = await w.stop();
          notes.push(`watcher log:\n${indent(w.text())}`);
          assert.equal(st.code, 0, `the watcher's exit: ${JSON.stringify(st)}`);
        }
        await act(
          `virsh metadata ${LEASE_GUEST} ${LVH_NS} --key ${LVH_KEY} --set '${
            forwardsXml(8081)
          }' --live --config`,
          () =>
            e.virsh([
              "metadata",
              LEASE_GUEST,
              LVH_NS,
              "--key",
              LVH_KEY,
              "--set",
              forwardsXml(8081),
              "--live",
              "--config",
            ]),
        );
        const live = await dumpxml(LEASE_GUEST);
        seen.push(
          `virsh dumpxml ${LEASE_GUEST} (running) after virsh metadata --set --live --config, its <metadata>:\n${
            indent(element(live, "metadata"))
          }`,
        );
        assert.match(live, /<(?:\w+:)?range start="8081" to="80"\/>/);
        const runXml = await readTextOr(`/run/libvirt/qemu/${LEASE_GUEST}.xml`, "(missing)");
        assert.match(
          runXml,
          /start="8081"/,
          "virsh metadata --live did not rewrite the running guest's status file",
        );
        seen.push(
          `/run/libvirt/qemu/${LEASE_GUEST}.xml after virsh metadata --live, its <metadata> and interface:\n${
            indent(element(runXml, "metadata"))
          }\n${indent(interfaces(runXml))}`,
        );
        // --live calls no hook, so it changes no rule by itself
        const still = await tcpRequest(cli.ns, PUBLIC_IP, 8080);
        assert.ok(still.ok, `8080 stopped working before apply: ${JSON.stringify(still)}`);
        const r = await act(
          `qemu apply ${LEASE_GUEST}`,
          () => hookCommand(e, ["apply", LEASE_GUEST]),
          (r) => `exit ${r.code}: ${(r.stdout + r.stderr).trim()}`,
        );
        assert.equal(r.code, 0, `qemu apply: ${r.stdout}${r.stderr}`);
        results.push(
          `live change: ${await checkForwards(forward(8081, "leased", leased), "after qemu apply")}`,
        );
        await noForward(8080, "after qemu apply (the old port)");
        const s = await status("after virsh metadata --live + qemu apply");
        assert.ok(s.includes("8081") && !/:8080\b/.test(s), `status:\n${s}`);
      },
    );

    await t.step("3b. virsh destroy: nothing of ours left; dhclient stops", async () => {
      const since = epoch();
      await act(`virsh destroy ${LEASE_GUEST}`, () => destroyGuest(e, LEASE_GUEST), (r) => `exit ${r.code}`);
      await rec.waitForCall((c) => isCall(c, REC_QEMU, LEASE_GUEST, "release", "end") && c.t >= since);
      const after = await v.ruleset(e);
      rulesets.push({ title: `after virsh destroy ${LEASE_GUEST}`, text: after });
      assert.equal(after, before, `the ruleset after destroy differs from before:\n${diff(before, after)}`);
      await noForward(8081, "after destroy");
      await noForward(8080, "after destroy");
      const s = await status("after destroy");
      assert.ok(!s.includes(LEASE_GUEST) && !s.includes(RESERVED_GUEST), `status:\n${s}`);
      // nothing comes back
      await sleep(1_000);
      const later = await v.ruleset(e);
      assert.equal(later, before, `the ruleset changed after destroy:\n${diff(before, later)}`);
      const w = watcher;
      if (w) {
        const st = await w.stop();
        notes.push(`watcher log:\n${indent(w.text())}`);
        assert.equal(st.code, 0, `the watcher's exit: ${JSON.stringify(st)}`);
      }
      await lease?.stop();
      for (const pid of [w?.pid ?? 0, lease?.pid ?? 0]) assert.ok(!pid || !alive(pid), `${pid} still alive`);
    });
  } catch (err) {
    failed = true;
    throw err;
  } finally {
    await lease?.stop().catch(() => undefined);
    for (const p of background) {
      const s = await p.stop().catch((x: unknown) => String(x));
      if (failed) notes.push(`process ${p.pid} stopped in teardown: ${JSON.stringify(s)}:\n${p.text()}`);
    }
    await reportAndTearDown(
      {
        name: v.name,
        install,
        notes: [...notes, "\n--- libvirt's files and XML as it wrote them ---", ...seen],
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
  await t.step("everything torn down", () => assertNothingLeft(started));
  console.log(`${v.name}: ${Math.round(performance.now() - t00)} ms`);
}
