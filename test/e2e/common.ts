/**
 * Helpers shared by the end-to-end tests in test/e2e/: skip checks, the recorder next to our installed hooks,
 * real traffic through a forward, ruleset normalisation, timing of hook-triggering commands, the printed report
 * and the final "nothing we started is left" check.
 */
import assert from "node:assert/strict";
import {
  attachClientNamespace,
  attachServiceNamespace,
  type HookCall,
  type HookRecorder,
  isRoot,
  type LibvirtEnv,
  MINIMAL_PATH,
  type NatNetwork,
  netnsWorks,
  run,
  startTcpServer,
  tcpRequest,
} from "./libvirt_env.ts";

/** The repository root (install.sh lives there). */
export const ROOT = new URL("../../", import.meta.url).pathname;

/** The hook tests' guest, forwarded PUBLIC_IP:8080 -> SERVICE_IP:80. */
export const GUEST = "lvhguest";
/** The guest's address on the bridge: a namespace there serves TCP in its place (the guest has no OS). */
export const SERVICE_IP = "192.168.150.10";
/** Another namespace on the bridge, for the hairpin path. */
export const PEER_IP = "192.168.150.11";
/** The host's public address (the libvirt namespace's side of the client veth). */
export const PUBLIC_IP = "203.0.113.1";
export const CLIENT_IP = "203.0.113.50";
/** The bridge's address (startNatNetwork's default network). */
export const BRIDGE_IP = "192.168.150.1";

// ---------------------------------------------------------------------------------------------------------
// Skipping

/**
 * Why an e2e test cannot run here (undefined: it can). `libvirt` says which libvirt the test installs: "9.0"
 * (installLibvirt(): libvirtd installed, or apt-get) or "11.3" (installLibvirt11(): apt-get, or 11.3 installed).
 */
export async function skipReason(libvirt: "9.0" | "11.3"): Promise<string | undefined> {
  if (Deno.env.get("LVH_E2E") === "0") return "LVH_E2E=0";
  if (Deno.build.os !== "linux") return `not Linux (${Deno.build.os})`;
  if (!isRoot()) return "not root";
  const ns = await netnsWorks().catch((e) => ({ ok: false as const, reason: String(e) }));
  if (!ns.ok) return `ip netns does not work: ${ns.reason}`;
  const sh = (script: string) => run(["sh", "-c", script], { check: false, timeoutMs: 10_000 });
  if (libvirt === "9.0") {
    const haveLibvirtd = await sh("command -v libvirtd");
    const haveApt = await sh("command -v apt-get");
    if (!haveLibvirtd.success && !haveApt.success) return "no libvirtd and no apt-get to install it";
    return undefined;
  }
  const haveApt = await sh("command -v apt-get");
  const have11 = await sh("libvirtd --version | grep -q ' 11\\.3\\.'");
  if (!haveApt.success && !have11.success) {
    return "no apt-get to install libvirt 11.3 (and it is not installed)";
  }
  return undefined;
}

/** skipReason(), printed as `NAME: skipped: REASON` when the test is skipped. */
export async function skipping(name: string, libvirt: "9.0" | "11.3"): Promise<string | undefined> {
  const reason = await skipReason(libvirt);
  if (reason) console.log(`${name}: skipped: ${reason}`);
  return reason;
}

// ---------------------------------------------------------------------------------------------------------
// Processes, time

/** Whether process `pid` is alive (a zombie counts as gone). */
export function alive(pid: number): boolean {
  try {
    return !/\) [ZX] /.test(Deno.readTextFileSync(`/proc/${pid}/stat`));
  } catch {
    return false;
  }
}

/** Now, in epoch seconds (as HookCall.t). */
export const epoch = (): number => (performance.timeOrigin + performance.now()) / 1000;

/** What a test started (namespaces and PIDs), to check at the end that none of it is left. */
export class Started {
  readonly ns: string[] = [];
  readonly pids: number[] = [];

  /** Records the libvirt namespace and its daemons (launcher, virtlogd, libvirtd). */
  libvirt(env: LibvirtEnv): void {
    this.ns.push(env.ns);
    this.pids.push(env.launcherPid, env.virtlogdPid, env.libvirtdPid);
  }
}

/** No namespace or process of `started` is left, and no libvirtd answers. */
export async function assertNothingLeft(started: Started): Promise<void> {
  const list = await run(["ip", "netns", "list"], { timeoutMs: 10_000 });
  for (const ns of started.ns) assert.ok(!list.stdout.includes(ns), `namespace left: ${list.stdout}`);
  for (const pid of started.pids) assert.ok(!alive(pid), `process ${pid} is still alive`);
  const daemon = await run(["virsh", "-c", "qemu:///system", "version"], {
    check: false,
    timeoutMs: 10_000,
  });
  assert.ok(!daemon.success, "a libvirtd still answers");
}

/** A long-running process in the libvirt namespace, its output collected line by line with the time. */
export interface Background {
  pid: number;
  /** Output lines (stderr and stdout, stdout prefixed), each with the epoch seconds it arrived. */
  lines(): { t: number; line: string }[];
  text(): string;
  /** SIGTERM by PID (SIGKILL after 10 s); resolves when it has exited and its output is read. */
  stop(): Promise<Deno.CommandStatus>;
}

export function startBackground(
  env: LibvirtEnv,
  argv: string[],
  vars: Record<string, string> = {},
): Background {
  const child = new Deno.Command("ip", {
    args: ["netns", "exec", env.ns, ...argv],
    clearEnv: true,
    env: { LC_ALL: "C", PATH: MINIMAL_PATH, ...vars },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const got: { t: number; line: string }[] = [];
  const collect = async (stream: ReadableStream<Uint8Array>, tag: string) => {
    let rest = "";
    for await (const chunk of stream.pipeThrough(new TextDecoderStream())) {
      const parts = (rest + chunk).split("\n");
      rest = parts.pop() ?? "";
      for (const line of parts) if (line !== "") got.push({ t: epoch(), line: tag + line });
    }
    if (rest !== "") got.push({ t: epoch(), line: tag + rest });
  };
  const readers = Promise.all([collect(child.stdout, "stdout: "), collect(child.stderr, "")]);
  let status: Promise<Deno.CommandStatus> | undefined;
  return {
    pid: child.pid,
    lines: () => [...got],
    text: () => got.map((g) => g.line).join("\n"),
    stop: () => {
      status ??= (async () => {
        // `ip netns exec` and the source form's sh wrapper exec: this PID is the program itself
        try {
          Deno.kill(child.pid, "SIGTERM");
        } catch {
          // already gone
        }
        const killer = setTimeout(() => {
          try {
            Deno.kill(child.pid, "SIGKILL");
          } catch {
            // gone
          }
        }, 10_000);
        try {
          const s = await child.status;
          await readers;
          return s;
        } finally {
          clearTimeout(killer);
        }
      })();
      return status;
    },
  };
}

// ---------------------------------------------------------------------------------------------------------
// Installing our hooks and the recorder

/** Runs install.sh with DESTDIR `destdir`; it must install the source form. Its output goes to `notes`. */
export async function runInstallSh(destdir: string, notes: string[]): Promise<void> {
  const inst = await run(["bash", `${ROOT}install.sh`], { env: { DESTDIR: destdir }, timeoutMs: 300_000 });
  notes.push(`install.sh (${inst.ms} ms): ${inst.stdout.trim().replace(/\n/g, " | ")}`);
  assert.match(inst.stdout, /source form/);
}

/** Copies the recorder's `script` to `dest` (creating its directory), executable. */
export async function installRecorderScript(
  rec: HookRecorder,
  script: "qemu" | "network",
  dest: string,
): Promise<void> {
  await Deno.mkdir(dest.slice(0, dest.lastIndexOf("/")), { recursive: true });
  await Deno.copyFile(`${rec.hooksDir}/${script}`, dest);
  await Deno.chmod(dest, 0o755);
}

// ---------------------------------------------------------------------------------------------------------
// Rulesets

/** iptables-save output without comments and counters. */
export function normaliseIptablesSave(text: string): string {
  return text
    .split("\n")
    .filter((l) => l !== "" && !l.startsWith("#"))
    .map((l) => l.replace(/^(:\S+ \S+) \[\d+:\d+\]$/, "$1").replace(/^\[\d+:\d+\] /, ""))
    .join("\n") + "\n";
}

/** iptables-save (or ip6tables-save) in the libvirt namespace, without comments and counters. */
export async function iptablesSave(env: LibvirtEnv, family: 4 | 6 = 4): Promise<string> {
  const r = await env.exec([family === 4 ? "iptables-save" : "ip6tables-save"], { timeoutMs: 30_000 });
  return normaliseIptablesSave(r.stdout);
}

/** `nft list ruleset` without counter values and handles, so two rulesets compare by content and order. */
export function stripNft(text: string): string {
  return text
    .split("\n")
    .map((l) => l.replace(/counter packets \d+ bytes \d+/g, "counter").replace(/\s+# handle \d+$/, ""))
    .filter((l) => l.trim() !== "")
    .join("\n") + "\n";
}

/** Lines only in a, only in b (a multiset difference, enough to name what changed). */
export function diff(a: string, b: string): string {
  const left = a.split("\n"), right = b.split("\n");
  const minus = left.filter((l) => !right.includes(l)).map((l) => `- ${l}`);
  const plus = right.filter((l) => !left.includes(l)).map((l) => `+ ${l}`);
  const moved = left.join("\n") !== right.join("\n") && minus.length === 0 && plus.length === 0;
  return [...minus, ...plus, ...(moved ? ["(same lines, different order)"] : [])].join("\n") || "(none)";
}

// ---------------------------------------------------------------------------------------------------------
// Traffic

const escapeDots = (ip: string) => ip.replace(/\./g, "\\.");

/** What startTcpServer's server `label` answers to a connection from `from` to `to`:80. */
export function svcLine(label: string, from: string, to: string): RegExp {
  return new RegExp(`^${label} ${escapeDots(from)}:\\d+ -> ${escapeDots(to)}:80$`);
}

/** The paths to one forward PUBLIC_IP:PORT -> SERVICE_IP:80 (server `label`). */
export interface Forward {
  /** The client namespace (public side), its address and the host's public address. */
  clientNs: string;
  clientIp: string;
  publicIp: string;
  port: number;
  /** The libvirt namespace (the host). */
  hostNs: string;
  /** A namespace on the bridge next to the service (hairpin), its address and the bridge's. */
  peerNs: string;
  peerIp: string;
  bridgeIp: string;
  label: string;
  serviceIp: string;
}

/**
 * The three paths to the forward: from the client (the service must see the client's address), from the host,
 * and from the peer on the bridge (hairpin, masqueraded to the bridge address). Returns what each saw.
 */
export async function checkForwards(f: Forward, when: string): Promise<string> {
  const viaClient = await tcpRequest(f.clientNs, f.publicIp, f.port);
  assert.ok(viaClient.ok, `${when}: client -> ${f.publicIp}:${f.port}: ${JSON.stringify(viaClient)}`);
  assert.match(
    viaClient.text,
    svcLine(f.label, f.clientIp, f.serviceIp),
    `${when}: the service must see the client's address`,
  );
  const viaHost = await tcpRequest(f.hostNs, f.publicIp, f.port);
  assert.ok(viaHost.ok, `${when}: host -> ${f.publicIp}:${f.port}: ${JSON.stringify(viaHost)}`);
  const viaPeer = await tcpRequest(f.peerNs, f.publicIp, f.port);
  assert.ok(
    viaPeer.ok,
    `${when}: ${f.peerIp} (hairpin) -> ${f.publicIp}:${f.port}: ${JSON.stringify(viaPeer)}`,
  );
  // masqueraded to the bridge address, so the answer goes back through the host (conntrack un-NATs it)
  assert.match(viaPeer.text, svcLine(f.label, f.bridgeIp, f.serviceIp), `${when}: hairpin source`);
  return `client sees "${viaClient.text}"; host sees "${viaHost.text}"; hairpin sees "${viaPeer.text}"`;
}

/**
 * The namespaces for GUEST's forward PUBLIC_IP:8080 -> SERVICE_IP:80: the service (server "svc" on port 80) and
 * a peer (hairpin) on the bridge, a client on the public side.
 */
export async function attachForwardNamespaces(e: LibvirtEnv, net: NatNetwork) {
  const svc = await attachServiceNamespace(e, net, { ip: SERVICE_IP });
  const peer = await attachServiceNamespace(e, net, {
    ip: PEER_IP,
    suffix: "peer",
    hostVeth: "lvhpeer0",
  });
  const cli = await attachClientNamespace(e, { hostIp: PUBLIC_IP, clientIp: CLIENT_IP });
  await startTcpServer(e, svc.ns, { port: 80, label: "svc" });
  const forward: Forward = {
    clientNs: cli.ns,
    clientIp: CLIENT_IP,
    publicIp: PUBLIC_IP,
    port: 8080,
    hostNs: e.ns,
    peerNs: peer.ns,
    peerIp: PEER_IP,
    bridgeIp: BRIDGE_IP,
    label: "svc",
    serviceIp: SERVICE_IP,
  };
  return { svc, peer, cli, forward };
}

/** The forward must not work from the client; returns the client's error. */
export async function checkNoForward(f: Forward, when: string): Promise<string> {
  const r = await tcpRequest(f.clientNs, f.publicIp, f.port);
  assert.ok(!r.ok, `${when}: the forward must not work: ${JSON.stringify(r)}`);
  return r.ok ? "" : r.error;
}

// ---------------------------------------------------------------------------------------------------------
// Hook-triggering commands and the report

export interface Action {
  what: string;
  /** Epoch seconds when the command began. */
  t0: number;
  ms: number;
  result: string;
}

/** The hook-triggering commands of a test, with when each began, how long it took and how it ended. */
export class Actions {
  readonly list: Action[] = [];

  /** Runs one hook-triggering command, recording when it began and how long it took. */
  act = async <T>(what: string, fn: () => Promise<T>, show: (r: T) => string = () => "ok"): Promise<T> => {
    const a: Action = { what, t0: epoch(), ms: 0, result: "" };
    this.list.push(a);
    const p0 = performance.now();
    try {
      const r = await fn();
      a.result = show(r);
      return r;
    } catch (e) {
      a.result = `THREW ${e instanceof Error ? e.message.split("\n")[0] : String(e)}`;
      throw e;
    } finally {
      a.ms = Math.round(performance.now() - p0);
    }
  };

  /** Each command, then the hook calls made until the next began (ms after it began), as `describe` names them. */
  lines(calls: HookCall[], describe: (c: HookCall) => string): string[] {
    const out: string[] = [];
    for (const [i, a] of this.list.entries()) {
      out.push(`${a.what}: ${a.ms} ms (${a.result})`);
      const next = this.list[i + 1]?.t0 ?? Infinity;
      for (const c of calls.filter((c) => c.t >= a.t0 && c.t < next)) {
        out.push(`  +${String(Math.round((c.t - a.t0) * 1000)).padStart(5)} ms  ${describe(c)}`);
      }
    }
    return out;
  }
}

export interface Report {
  /** The test's name, in the report's title. */
  name: string;
  install: unknown;
  notes: string[];
  /** Printed under "results (real traffic)" when given. */
  results?: string[];
  /** The title of the section with the commands and hook calls. */
  callsTitle: string;
  actions: Actions;
  /** One hook call as the report shows it (after the time). */
  describe: (c: HookCall) => string;
  rulesets: { title: string; text: string }[];
}

/**
 * How a report names the hook calls when the recorders run as `qemu.d/<recQemu>` and `network.d/<recNet>`, after
 * our hooks: each call by the hook it was made to.
 */
export function recordedCalls(recQemu: string, recNet: string): Pick<Report, "callsTitle" | "describe"> {
  return {
    callsTitle:
      "hook-triggering steps and the hook calls libvirt made (ms after the command began; recorded " +
      "after our qemu/network hook returned)",
    describe: (c) =>
      `${c.hook === recQemu ? "qemu" : c.hook === recNet ? "network" : c.hook} ${c.argv.join(" ")}`,
  };
}

/**
 * Prints the report (notes, results, hook-triggering commands with the hook calls the recorder saw, harness
 * timings, rulesets), then stops libvirtd, removes the recorder and `tmp`.
 */
export async function reportAndTearDown(
  r: Report,
  env: LibvirtEnv | undefined,
  rec: HookRecorder,
  tmp: string,
): Promise<void> {
  const calls: HookCall[] = await rec.calls().catch(() => []);
  const out: string[] = [`\n===== ${r.name} report (libvirt install: ${JSON.stringify(r.install)}) =====`];
  out.push(...r.notes);
  if (r.results) out.push("\n--- results (real traffic) ---", ...r.results);
  out.push(`\n--- ${r.callsTitle} ---`);
  out.push(...r.actions.lines(calls, r.describe));
  out.push("\n--- harness timings ---");
  for (const tm of env?.timings ?? []) out.push(`${tm.step}: ${tm.ms} ms`);
  for (const rs of r.rulesets) out.push(`\n--- ${rs.title} ---\n${rs.text.trimEnd()}`);
  console.log(out.join("\n"));
  await env?.stop();
  await rec.remove();
  await Deno.remove(tmp, { recursive: true }).catch(() => undefined);
}
