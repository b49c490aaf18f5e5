/** `doctor`'s findings about one forward, link by link: the public address, our rules, the gates on its way,
 * the guest's bridge, its neighbour entry, whether it listens, and the packets our rules counted. */

import {
  blockedNote,
  blockers,
  chainNames,
  type FirewallState,
  type ForeignGate,
  type Forward,
  gateName,
  LIBVIRT_TABLE,
  openingLine,
  ruleComment,
} from "../backends/backend.ts";
import type { HookDeps } from "../hook/deps.ts";
import { guestInterfaces } from "../hook/domain_xml.ts";
import { libvirtAccepts } from "../rules.ts";
import { packetOf } from "../hook/warnings.ts";
import { inNetworks } from "../config/policy.ts";
import { parseAddress, publicAddress } from "../system/address.ts";
import { loadXml } from "../system/xml.ts";
import { connectedNetworkOf, type HostFacts, listenerAt, readListeners } from "../system/host.ts";
import { fail, type Finding, note, ok } from "./doctor_findings.ts";
import { readSysctl } from "./doctor_host.ts";
import { qemuCommand, shellQuote } from "../system/shell.ts";

interface ForwardContext {
  acceptIn: readonly string[];
  xml: string | undefined;
  facts: HostFacts;
  /** `"/settings".host_addresses`: addresses that are this host's though no interface holds them. */
  hostAddresses: string[];
  state: FirewallState;
  gates: ForeignGate[];
  live: boolean;
  misplaced: boolean;
  counters: Map<string, number>;
  /** The connections through the forward that conntrack holds, and how many of them no reply came for. */
  flows?: Flows | undefined;
}

/** Connections through one forward, as conntrack lists them (see readFlows). */
export interface Flows {
  total: number;
  /** Those that got no packet back from the guest (conntrack's `[UNREPLIED]`). */
  unreplied: number;
}

/**
 * Every link of one forward's path, in the order a packet meets them: the guest and its bridge, the public side,
 * our rules, the gates, what the counters and conntrack saw, and the guest's end.
 */
export async function forwardFindings(domain: string, f: Forward, c: ForwardContext): Promise<Finding[]> {
  await loadXml();
  const net = connectedNetworkOf(c.facts.connected, parseAddress(f.privateIp)!);
  const path: ForwardPath = { domain, f, c, net, bridge: f.interface ?? net?.device };
  return [
    ...await guestSide(path),
    ...publicSide(path),
    ourRules(path),
    ...gatesOnTheWay(path),
    ...counted(path),
    ...replies(path),
    ...await guestEnd(path),
  ];
}

/** One forward as its links are examined: its domain, the forward, what is known, and where its guest lies. */
interface ForwardPath {
  domain: string;
  f: Forward;
  c: ForwardContext;
  /** The network of this host the guest's address lies in. */
  net: ReturnType<typeof connectedNetworkOf>;
  /** The bridge the guest's tap must be a port of: the configured interface, or its network's. */
  bridge: string | undefined;
}

/** The guest, its tap on the bridge, the network its address lies in, and its neighbour entry. */
async function guestSide({ domain, f, c, net, bridge }: ForwardPath): Promise<Finding[]> {
  const out: Finding[] = [];
  if (c.xml === undefined) {
    out.push(fail(`"${domain}" is not running`, `virsh start ${shellQuote(domain)}`));
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
  return out;
}

/** The public address (this host's, or declared so) and whether the host itself listens on the forward's port. */
function publicSide({ f, c }: ForwardPath): Finding[] {
  const out: Finding[] = [];
  const publicIp = publicAddress(f.publicIp, f.family)!;
  if (publicIp.text === "*") {
    out.push(
      ok(`public address *: every IPv${f.family} address of this host but loopback's, whichever it has now`),
    );
  } else if (c.facts.addresses?.includes(publicIp.text) === false) {
    out.push(
      inNetworks(publicIp, c.hostAddresses)
        ? note(
          `public address ${f.publicIp} is no interface's here; host_addresses declares it this host's ` +
            "(routed to it, or floating): the host's and the guests' own connections to it reach the guest too",
        )
        : fail(
          `public address ${f.publicIp} is not an address of this host: the forward captures the host's and the ` +
            "guests' own connections to it, and nothing from outside arrives unless it is routed here",
          `ip address add ${f.publicIp}/${f.family === 4 ? 32 : 128} dev <public interface>, or list it in ` +
            `"/settings".host_addresses if it is routed here, then qemu reload`,
        ),
    );
  } else out.push(ok(`public address ${f.publicIp} is on this host`));
  const listener = listenerAt(readListeners(), {
    protocol: f.protocol,
    address: publicIp,
    first: f.publicPort,
    last: f.publicPort + f.count - 1,
  });
  if (listener) {
    out.push(note(
      `the host itself listens on ${f.protocol} ${listener.address}:${listener.port}: the forward takes that port ` +
        `from the host on ${publicIp.text === "*" ? "every address but loopback's" : "this address"}`,
    ));
  }
  return out;
}

/** Whether our rules are live as planned, our accept in its place. */
function ourRules({ domain, c }: ForwardPath): Finding {
  if (!c.live) {
    return fail("the forward is not live", `${qemuCommand("apply", domain)}   (or restart the guest)`);
  }
  if (c.misplaced) {
    return fail(
      "the forward is live, but our accept is missing from iptables' FORWARD or sits below other rules",
      `qemu reload`,
    );
  }
  return ok("the live rules are the plan");
}

/** The gates on the way: libvirt's guest_input, the chains handed to us, and other software's that drop it. */
function gatesOnTheWay({ domain, f, c, bridge }: ForwardPath): Finding[] {
  const out: Finding[] = [];
  const packet = packetOf(f, c.facts.connected);
  const libvirt = c.state.nft?.libvirt[f.family];
  if (libvirt) {
    const accepts = libvirtAccepts(c.state, domain);
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
  return out;
}

/**
 * What the counters say, where our rules count (iptables): nothing arrived, or it arrived and was dropped before
 * our gate (seen where the forward counts its packets).
 */
function counted({ f, c }: ForwardPath): Finding[] {
  const dnat = c.counters.get(`dnat ${f.protocol} ${f.publicPort}`);
  const accepted = c.counters.get(`fwd ${f.protocol} ${f.publicPort}`);
  if (dnat === undefined) return [];
  if (dnat === 0) return [note("no connection has arrived yet (the DNAT counter is 0)")];
  if (accepted === 0) {
    return [
      fail(
        `${dnat} connection(s) arrived and were translated, but none reached our accept on the way to the guest`,
      ),
    ];
  }
  return [
    ok(
      `${dnat} connection(s) arrived and were translated${
        accepted ? `, ${accepted} packet(s) forwarded` : ""
      }`,
    ),
  ];
}

/** Whether the guest answers the connections that conntrack saw reach it. */
function replies({ f, c, bridge }: ForwardPath): Finding[] {
  if (!c.flows || c.flows.total === 0) return [];
  // Packets arrive and are translated, and nothing comes back: the guest drops them past our rules, or its
  // answers leave by another way (no route back through this host). Counters and a probe from the host see none of it.
  if (c.flows.unreplied === c.flows.total) {
    return [fail(
      `${c.flows.total} connection(s) arrived and were translated to the guest, but no reply came back: the guest ` +
        "drops them, or has no route back to the client (its default route does not lead through this host)",
      `inside the guest: ip route get <client address> must leave through ${
        bridge ?? "its bridge"
      }'s address, ` +
        `and its firewall must accept ${f.protocol} port ${f.privatePort}`,
    )];
  }
  return [
    ok(`${c.flows.total - c.flows.unreplied} of ${c.flows.total} connection(s) got replies from the guest`),
  ];
}

/** The guest's end: whether it listens, its taps' hairpin mode under bridge netfilter, the reverse-path filter. */
async function guestEnd({ f, c, bridge }: ForwardPath): Promise<Finding[]> {
  const out: Finding[] = [];
  // An all_ports forward names no port the guest must listen on.
  if (f.protocol === "tcp" && c.xml !== undefined && !f.except) {
    out.push(await guestListens(f.privateIp, f.privatePort));
  }
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
    // Silence is no all-clear: a client's connections through the forward get no answer either.
    return fail(
      `no answer from ${where} within 2 s: something in the guest (its firewall) drops connections to it, or it is ` +
        "still booting",
      "open the port in the guest's firewall (inside it: nft list ruleset, or iptables -S), or wait for it to boot",
    );
  }
}

/**
 * The connections to a forward's public address and port that conntrack holds, and how many got no reply;
 * undefined where conntrack is not installed or cannot list them.
 */
export async function readFlows(
  deps: Pick<HookDeps, "runner" | "conntrack">,
  f: Pick<Forward, "protocol" | "publicIp" | "publicPort" | "family">,
): Promise<Flows | undefined> {
  const conntrack = deps.conntrack?.();
  if (conntrack === undefined) return undefined;
  const r = await deps.runner.run([
    conntrack,
    "-L",
    "-f",
    f.family === 4 ? "ipv4" : "ipv6",
    "-p",
    f.protocol,
    // "*": any address; the port and the DNAT of the listing still narrow it to this forward's flows.
    ...(f.publicIp === "*" ? [] : ["--orig-dst", f.publicIp]),
    "--dport",
    String(f.publicPort),
  ], { timeoutMs: 5000 }).catch(() => undefined);
  if (!r || r.code !== 0) return undefined;
  const lines = r.stdout.split("\n").filter((l) => l.trim() !== "");
  return { total: lines.length, unreplied: lines.filter((l) => l.includes("[UNREPLIED]")).length };
}

/**
 * Our rules' packet counters (iptables-save -c), by `dnat|fwd <protocol> <public port>`: telling "nothing
 * arrives" from "arrives, but is dropped on the way". `fwd`: the domain's counting chain (a forward with
 * `"counters": true`), which only what passed FORWARD up to our gate reaches. The nftables backend is not read.
 */
export async function readCounters(deps: HookDeps, domain: string): Promise<Map<string, number>> {
  const out = new Map<string, number>();
  const { dnat, cnt: fwd } = chainNames(domain);
  for (const save of ["iptables-save", "ip6tables-save"]) {
    const r = await deps.runner.run([save, "-c"]).catch(() => undefined);
    if (!r || r.code !== 0) continue;
    for (const line of r.stdout.split("\n")) {
      const m = /^\[(\d+):\d+\] -A (\S+) (.*)$/.exec(line);
      if (!m) continue;
      const [, packets, chain, spec] = m;
      // A "log" forward's LOG rule matches (rate-limited) the DNAT rule's packets too: not counted twice.
      if (/ -j LOG /.test(` ${spec} `)) continue;
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
