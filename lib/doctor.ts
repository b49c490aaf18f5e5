/** `doctor`: walks each forward's path, link by link, and says what is OK, what is wrong, and what fixes it. */

import { domainConfig, type Settings } from "../config.ts";
import {
  asLiveForward,
  carriedDomain,
  chainNames,
  describeForward,
  type Forward,
  planForwards,
  ruleComment,
} from "../rules.ts";
import { connectedNetworkOf, type HostFacts, listenerAt, readListeners } from "./host.ts";
import { parseAddress } from "./address.ts";
import { type FirewallState, foreignGates, readState } from "./apply.ts";
import { blockedNote, blockers, type ForeignGate, gateKind, gateName, openingLine } from "./gates.ts";
import { applyDeps, type HookDeps, loadFor, packetOf } from "./hook.ts";
import {
  acceptMisplaced,
  describeBackend,
  forwardsByDomain,
  knownNames,
  runDir,
  runningDomains,
} from "./live.ts";
import { guestInterfaces } from "./domain_xml.ts";
import { LIBVIRT_TABLE, liveAccepts, NFT_TABLE, nftItems } from "./nft.ts";

/** One link of a forward's path: fine, worth knowing, or broken (then with the command that fixes it). */
export interface Finding {
  level: "ok" | "note" | "fail";
  what: string;
  fix?: string;
}

/** What doctor found for one forward of one domain. */
export interface ForwardReport {
  domain: string;
  forward: string;
  findings: Finding[];
}

/** Everything doctor found: the host's links, then each forward's. */
export interface DoctorReport {
  host: Finding[];
  forwards: ForwardReport[];
}

const ok = (what: string): Finding => ({ level: "ok", what });
const note = (what: string): Finding => ({ level: "note", what });
const fail = (what: string, fix?: string): Finding => ({ level: "fail", what, ...(fix ? { fix } : {}) });

/** Runs doctor for one domain (or every configured or live one) and prints the report; 0 when all is well. */
export async function doctor(deps: HookDeps, only: string | undefined, json: boolean): Promise<number> {
  const report = await examine(deps, only);
  const failed = [...report.host, ...report.forwards.flatMap((f) => f.findings)].some((f) =>
    f.level === "fail"
  );
  if (json) {
    console.log(JSON.stringify({ ok: !failed, ...report }, null, 2));
  } else {
    console.log(renderReport(report));
  }
  return failed ? 1 : 0;
}

/** The report as people read it: one line per link, `ok`, `note` or `FAIL`, and the fix under a failure. */
export function renderReport(report: DoctorReport): string {
  const lines: string[] = [];
  const add = (f: Finding) => {
    lines.push(`  ${f.level === "fail" ? "FAIL" : f.level.padEnd(4)}  ${f.what}`);
    if (f.fix) lines.push(`        fix: ${f.fix}`);
  };
  lines.push("host");
  report.host.forEach(add);
  for (const f of report.forwards) {
    lines.push(`${f.domain}: ${f.forward}`);
    f.findings.forEach(add);
  }
  if (report.forwards.length === 0) {
    lines.push("No forward to examine: no configured domain runs, and none is live.");
  }
  const failures =
    [...report.host, ...report.forwards.flatMap((f) => f.findings)].filter((f) => f.level === "fail").length;
  lines.push(failures === 0 ? "All is well." : `${failures} problem(s) found.`);
  return lines.join("\n");
}

async function examine(deps: HookDeps, only: string | undefined): Promise<DoctorReport> {
  const { config, facts } = await loadFor({ ...deps, problem: () => {} });
  const state = await readState(applyDeps(deps, config));
  const gates = await foreignGates(applyDeps(deps, config), state.nft?.hooks).catch(() => []);
  const running = await runningDomains();
  const live = forwardsByDomain(state, await knownNames(config));
  const host = hostFindings(state, facts, config.settings, gates, await allChains(deps));

  const domains = only !== undefined
    ? [only]
    : [...new Set([...running.filter((d) => domainConfig(config, d).kind === "ok"), ...live.keys()])].sort();
  const forwards: ForwardReport[] = [];
  for (const domain of domains) {
    const found = domainConfig(config, domain);
    if (found.kind !== "ok") {
      forwards.push({
        domain,
        forward: "(no forward)",
        findings: [
          found.kind === "absent"
            ? fail(`"${domain}" is not in ${config.file}`, "add an entry for it (qemu check validates it)")
            : fail(`its entry in ${config.file} has errors`, `qemu check --config ${config.file}`),
        ],
      });
      continue;
    }
    const plan = planForwards(found.entries, facts);
    for (const problem of plan.problems) {
      forwards.push({ domain, forward: "(cannot be planned)", findings: [fail(problem)] });
    }
    const xml = running.includes(domain)
      ? await Deno.readTextFile(`${runDir()}/${domain}.xml`).catch(() => undefined)
      : undefined;
    const liveText = new Set((live.get(domain) ?? []).map(describeForward));
    const counters = await readCounters(deps, domain);
    for (const f of plan.forwards) {
      const text = describeForward(asLiveForward(domain, f));
      forwards.push({
        domain,
        forward: text,
        findings: await forwardFindings(domain, f, {
          acceptIn: config.settings.acceptIn,
          xml,
          facts,
          state,
          gates,
          live: liveText.has(text),
          misplaced: acceptMisplaced(state, domain, [f]),
          counters,
        }),
      });
    }
  }
  return { host, forwards };
}

function readSysctl(path: string): string | undefined {
  try {
    return Deno.readTextFileSync(path).trim();
  } catch {
    return undefined;
  }
}

/** The host's own links: forwarding, libvirt's backend, the other firewall software, and every gate. */
function hostFindings(
  state: FirewallState,
  facts: HostFacts,
  settings: Settings,
  gates: ForeignGate[],
  chains: string[],
): Finding[] {
  const out: Finding[] = [];
  for (
    const [family, path, key] of [
      [4, "/proc/sys/net/ipv4/ip_forward", "net.ipv4.ip_forward"],
      [6, "/proc/sys/net/ipv6/conf/all/forwarding", "net.ipv6.conf.all.forwarding"],
    ] as const
  ) {
    const value = readSysctl(path);
    if (value === "1") out.push(ok(`IPv${family} forwarding is on`));
    else {
      out.push(fail(
        `IPv${family} forwarding is off (${key} = ${
          value ?? "unknown"
        }): the host forwards nothing of that family`,
        `sysctl -w ${key}=1 (and keep it in /etc/sysctl.d/)`,
      ));
    }
  }
  const backend = describeBackend(settings.backend, state);
  out.push(
    backend.startsWith("none:") ? fail(`firewall backend: ${backend}`) : ok(`firewall backend: ${backend}`),
  );
  const others = otherSoftware(state, chains);
  out.push(note(`other firewall software: ${others.length ? others.join(", ") : "none seen"}`));
  for (const family of [4, 6] as const) {
    if (facts.bridgeNetfilter[family]) {
      out.push(note(
        `bridge netfilter is on for IPv${family} (br_netfilter): bridged frames pass the firewall; guests ` +
          "reaching their own forward need hairpin mode on their tap, which start sets",
      ));
    }
  }
  for (const hook of state.nft?.hooks ?? []) {
    const kind = gateKind(hook, settings.acceptIn, NFT_TABLE, LIBVIRT_TABLE);
    const where = `gate ${gateName(hook)} (priority ${hook.prio}, policy ${hook.policy})`;
    if (kind === "iptables") out.push(ok(`${where}: iptables' FORWARD, our accept goes into it`));
    else if (kind === "libvirt") out.push(ok(`${where}: libvirt's, our accept goes into its guest_input`));
    else if (kind === "handed") {
      out.push(ok(`${where}: handed to us (accept_in), our accepts go first in it`));
    } else if (kind === "foreign" && hook.policy === "drop") {
      const gate = gates.find((g) => gateName(g.gate) === gateName(hook));
      out.push(note(
        `${where}: not ours to open; each forward below says whether it lets it through` +
          (gate ? "" : " (its rules could not be read)"),
      ));
    }
  }
  return out;
}

/** Every chain of the host as `<family> <table> <chain>`, read with nft (empty where it cannot be). */
async function allChains(deps: HookDeps): Promise<string[]> {
  if (deps.nft === undefined) return [];
  const r = await deps.runner.run([deps.nft, "-j", "list", "chains"]).catch(() => undefined);
  if (!r || r.code !== 0) return [];
  try {
    return nftItems(r.stdout).filter((i) => i.kind === "chain").map((i) =>
      `${i.v.family} ${i.v.table} ${i.v.name}`
    );
  } catch {
    return [];
  }
}

/** The firewall software this host runs besides libvirt and us, as its chains and files show it. */
function otherSoftware(state: FirewallState, chains: string[]): string[] {
  const out: string[] = [];
  const tables = new Set(chains.map((c) => c.split(" ").slice(0, 2).join(" ")));
  const named = (pattern: RegExp) => chains.some((c) => pattern.test(c.split(" ")[2] ?? ""));
  if (state.nft && Object.keys(state.nft.libvirt).length > 0) out.push("libvirt (nftables backend)");
  else if (state.ipt[4]?.libvirt) out.push("libvirt (iptables backend)");
  if (tables.has("inet firewalld")) out.push("firewalld");
  if (named(/^DOCKER/)) out.push("Docker");
  if (named(/^ufw6?-/)) out.push("ufw");
  const policy = state.ipt[4]?.forward?.policy;
  if (policy !== undefined) out.push(`iptables' FORWARD (policy ${policy})`);
  const others = [...tables].filter((t) =>
    !/^(ip|ip6) (filter|nat|mangle|raw|security)$/.test(t) && t !== "inet firewalld" &&
    !t.endsWith(` ${LIBVIRT_TABLE}`) && t !== `inet ${NFT_TABLE}`
  );
  for (const t of others) out.push(`nftables table ${t}`);
  try {
    // Debian's nftables service loads it at boot where it is enabled.
    Deno.statSync("/etc/systemd/system/sysinit.target.wants/nftables.service");
    out.push("/etc/nftables.conf (loaded at boot)");
  } catch {
    // Not loaded at boot.
  }
  return out;
}

interface ForwardContext {
  acceptIn: readonly string[];
  xml: string | undefined;
  facts: HostFacts;
  state: FirewallState;
  gates: ForeignGate[];
  live: boolean;
  misplaced: boolean;
  counters: Map<string, number>;
}

async function forwardFindings(domain: string, f: Forward, c: ForwardContext): Promise<Finding[]> {
  const out: Finding[] = [];
  const net = connectedNetworkOf(c.facts.connected, parseAddress(f.privateIp)!);
  const bridge = f.interface ?? net?.device;
  // The guest, its tap, and where its address lies.
  if (c.xml === undefined) {
    out.push(fail(`"${domain}" is not running`, `virsh start ${domain}`));
  } else {
    const taps = guestInterfaces(c.xml);
    const onBridge = taps.filter((t) => bridgeOf(t.device) === bridge);
    out.push(
      onBridge.length > 0
        ? ok(`guest running; tap ${onBridge.map((t) => t.device).join(", ")} on bridge ${bridge}`)
        : fail(
          `guest running, but none of its taps (${
            taps.map((t) => t.device).join(", ") || "none"
          }) is a port ` +
            `of bridge ${bridge ?? "(unknown)"}`,
          "virsh destroy and start the guest after its network is up (libvirt re-attaches taps only then)",
        ),
    );
  }
  if (!net) {
    out.push(fail(
      `${f.privateIp} is in no network of this host: no bridge leads to it`,
      "set private_ip to the guest's address on its libvirt network",
    ));
  } else if (f.interface !== undefined && net.device !== f.interface) {
    out.push(fail(`${f.privateIp} lies on ${net.device}, not on interface ${f.interface} as configured`));
  } else {
    out.push(ok(`${f.privateIp} is in the network of ${net.device}`));
  }
  out.push(await neighbour(f.privateIp, bridge));
  // The public side.
  const local = localAddresses();
  if (local && !local.has(f.publicIp)) {
    out.push(fail(
      `public_ip ${f.publicIp} is not an address of this host: nothing will arrive there`,
      `ip address add ${f.publicIp}/${f.family === 4 ? 32 : 128} dev <public interface>, or fix public_ip`,
    ));
  } else out.push(ok(`public address ${f.publicIp} is on this host`));
  const listener = listenerAt(
    readListeners(),
    f.protocol,
    parseAddress(f.publicIp)!,
    f.publicPort,
    f.publicPort + f.count - 1,
  );
  if (listener) {
    out.push(note(
      `the host itself listens on ${f.protocol} ${listener.address}:${listener.port}: the forward takes that port ` +
        "from the host on this address",
    ));
  }
  // Our rules.
  if (!c.live) {
    out.push(fail("the forward is not live", `qemu apply ${domain}   (or restart the guest)`));
  } else if (c.misplaced) {
    out.push(fail(
      "the forward is live, but our accept is missing from iptables' FORWARD or sits below other rules",
      `qemu reload`,
    ));
  } else out.push(ok("the live rules are the plan"));
  // The gates.
  const packet = packetOf(f, c.facts.connected);
  const libvirt = c.state.nft?.libvirt[f.family];
  if (libvirt) {
    const accepts = c.state.nft ? liveAccepts(c.state.nft).get(carriedDomain(domain)) : undefined;
    out.push(
      bridge !== undefined && accepts?.[f.family].includes(bridge)
        ? ok(`libvirt's ${f.family === 4 ? "ip" : "ip6"} ${LIBVIRT_TABLE} guest_input holds our accept`)
        : fail(
          `libvirt's ${LIBVIRT_TABLE} guest_input has no accept of ours: its reject drops this forward`,
          "qemu reload",
        ),
    );
  }
  for (const [gate, rules] of Object.entries(c.state.nft?.handed ?? {})) {
    if (!c.acceptIn.includes(gate)) continue;
    const mine = rules.some((r) => r.comment === `${ruleComment(domain)}:accept`);
    out.push(
      mine
        ? ok(`${gate}, handed to us, holds our accept`)
        : fail(`${gate} is handed to us but holds no accept of ours`, "qemu reload"),
    );
  }
  for (const b of blockers(c.gates, packet)) {
    out.push(fail(
      `${blockedNote(b)} (priority ${b.gate.prio}): ${b.passage.why}`,
      `${openingLine(b.gate)}   or, to let us keep an accept there: "/settings": {"accept_in": ["${
        gateName(b.gate)
      }"]}`,
    ));
  }
  // What the counters say, where our rules count (iptables).
  const dnat = c.counters.get(`dnat ${f.protocol} ${f.publicPort}`);
  const accepted = c.counters.get(`fwd ${f.protocol} ${f.publicPort}`);
  if (dnat !== undefined) {
    if (dnat === 0) out.push(note("no connection has arrived yet (the DNAT counter is 0)"));
    else if (accepted === 0) {
      out.push(
        fail(`${dnat} packet(s) arrived and were translated, but none was accepted on the way to the guest`),
      );
    } else {out.push(
        ok(`${dnat} packet(s) arrived and were translated${accepted ? `, ${accepted} accepted` : ""}`),
      );}
  }
  // The guest's end.
  if (f.protocol === "tcp" && c.xml !== undefined) out.push(await guestListens(f.privateIp, f.privatePort));
  if (c.facts.bridgeNetfilter[f.family] && c.xml !== undefined) {
    for (const t of guestInterfaces(c.xml).filter((t) => bridgeOf(t.device) === bridge)) {
      const mode = readSysctl(`/sys/class/net/${t.device}/brport/hairpin_mode`);
      if (mode !== "1") {
        out.push(fail(
          `bridge netfilter is on and tap ${t.device} is not in hairpin mode: the guest cannot reach its own forward`,
          `echo 1 > /sys/class/net/${t.device}/brport/hairpin_mode   (start does it)`,
        ));
      }
    }
  }
  const publicDevice = deviceOf(f.publicIp);
  const rp = publicDevice && readSysctl(`/proc/sys/net/ipv4/conf/${publicDevice}/rp_filter`);
  if (f.family === 4 && rp) {
    out.push(
      note(`reverse-path filter on ${publicDevice}: ${rp === "1" ? "strict" : rp === "2" ? "loose" : "off"}`),
    );
  }
  return out;
}

function bridgeOf(device: string): string | undefined {
  try {
    const master = Deno.readLinkSync(`/sys/class/net/${device}/master`);
    return master.slice(master.lastIndexOf("/") + 1);
  } catch {
    return undefined;
  }
}

function localAddresses(): Set<string> | undefined {
  try {
    return new Set(Deno.networkInterfaces().map((i) => parseAddress(i.address)?.text ?? i.address));
  } catch {
    return undefined;
  }
}

function deviceOf(address: string): string | undefined {
  try {
    const text = parseAddress(address)?.text;
    return Deno.networkInterfaces().find((i) => (parseAddress(i.address)?.text ?? i.address) === text)?.name;
  } catch {
    return undefined;
  }
}

/** The guest address's neighbour entry on its bridge: an address nothing answers for cannot be reached. */
async function neighbour(address: string, bridge: string | undefined): Promise<Finding> {
  const out = await new Deno.Command("ip", {
    args: ["-j", "neigh", "show", "to", address, ...(bridge ? ["dev", bridge] : [])],
    stdout: "piped",
    stderr: "null",
    signal: AbortSignal.timeout(5000),
  }).output().catch(() => undefined);
  if (!out?.success) return note("the neighbour table could not be read");
  let entries: { state?: string[] }[] = [];
  try {
    entries = JSON.parse(new TextDecoder().decode(out.stdout) || "[]");
  } catch {
    return note("the neighbour table could not be read");
  }
  const state = entries[0]?.state?.join(",");
  if (state === undefined) return note(`no neighbour entry for ${address} yet (no traffic to it lately)`);
  if (/FAILED|INCOMPLETE/.test(state)) {
    return fail(
      `${address} does not answer on ${bridge ?? "its bridge"} (neighbour ${state})`,
      "check the guest's address (inside it: ip address), or its DHCP reservation",
    );
  }
  return ok(`${address} answers on ${bridge ?? "its bridge"} (neighbour ${state})`);
}

/** Whether something in the guest accepts connections on the forward's port, tried from the host. */
async function guestListens(address: string, port: number): Promise<Finding> {
  const where = `${address.includes(":") ? `[${address}]` : address}:${port}`;
  try {
    const conn = await Deno.connect({ hostname: address, port, signal: AbortSignal.timeout(2000) });
    conn.close();
    return ok(`the guest accepts connections on ${where}`);
  } catch (err) {
    if (err instanceof Deno.errors.ConnectionRefused) {
      return fail(
        `nothing in the guest listens on ${where} (connection refused)`,
        "start the service in the guest, or forward to the port it listens on",
      );
    }
    return note(`no answer from ${where} within 2 s (a firewall inside the guest, or it is still booting)`);
  }
}

/**
 * Our rules' packet counters (iptables-save -c), by `dnat|fwd <protocol> <public port>`: telling "nothing
 * arrives" from "arrives, but is dropped on the way". The nftables backend keeps no counters of its own.
 */
async function readCounters(deps: HookDeps, domain: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  const { dnat, fwd } = chainNames(domain);
  for (const save of ["iptables-save", "ip6tables-save"]) {
    const r = await deps.runner.run([save, "-c"]).catch(() => undefined);
    if (!r || r.code !== 0) continue;
    for (const line of r.stdout.split("\n")) {
      const m = /^\[(\d+):\d+\] -A (\S+) (.*)$/.exec(line);
      if (!m) continue;
      const [, packets, chain, spec] = m;
      const protocol = / -p (\w+)/.exec(` ${spec}`)?.[1];
      const port = chain === dnat
        ? /--dport (\d+)/.exec(spec!)?.[1]
        : chain === fwd
        ? /--ctorigdstport (\d+)/.exec(spec!)?.[1]
        : undefined;
      if (!protocol || !port) continue;
      const key = `${chain === dnat ? "dnat" : "fwd"} ${protocol} ${port}`;
      out.set(key, (out.get(key) ?? 0) + Number(packets));
    }
  }
  return out;
}
