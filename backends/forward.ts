/** A forward: planned (fully resolved) or read back from a live rule, and how people read one. */

import type { Family, Protocol } from "../system/address.ts";

/** One port forward, fully resolved: nothing in it depends on the host any more. */
export interface Forward {
  family: Family;
  protocol: Protocol;
  publicIp: string;
  publicPort: number;
  privateIp: string;
  privatePort: number;
  /**
   * How many consecutive ports (a port_range): publicPort + i goes to privatePort + i (the same ports, or a range
   * shifted with `to_port`).
   */
  count: number;
  /**
   * `all_ports` (1-65535 to the same ports): the ports of publicIp that other forwards take, left to them (the
   * domain's chain returns them before this forward's rule, which comes last in it).
   */
  except?: [number, number][];
  /**
   * Only these addresses, networks and ranges (`first-last`) may use the forward: of its family, sorted and
   * merged as nftables lists an interval set (config/sources.ts).
   */
  sources?: string[];
  /** Only the members of this set of ours may use the forward (`qemu set`); never together with sources. */
  sourceSet?: string;
  /** The guest's bridge: where our accept in libvirt's nftables chain matches, and hairpin mode is set. */
  interface?: string;
  /** Sources masqueraded when they reach the forward through the public address (hairpin). */
  hairpinFrom: string;
  /** `log`: each new connection is logged (kernel log), at most LOG_RATE, prefixed with logPrefix(). */
  log?: true;
  /**
   * `counters`: its packets and bytes are counted too, both ways, as the host forwards them (see Counters), by a
   * rule or set element per forward that only the connections our DNAT labelled reach.
   */
  countTraffic?: true;
  /** Only what arrives on this host interface. */
  dev?: string;
  /** The entry's description, carried in a comment of the forward's rule. */
  description?: string;
}

/** How many new connections per forward are logged: a burst, then a steady rate (iptables' and nft's words). */
export const LOG_RATE = {
  iptables: "--limit 10/min --limit-burst 5",
  nft: "limit rate 10/minute burst 5 packets",
};

/**
 * The kernel log prefix of a forward's new connections: `lvh <domain> <proto>/<port>: `, at most 29 characters
 * (iptables' LOG allows 29), the domain's name cut to fit and anything but letters, digits, `.`, `_` and `-`
 * turned into `_`, so that it needs no quoting in either rule language.
 */
export function logPrefix(domain: string, f: Pick<Forward, "protocol" | "publicPort">): string {
  const tail = ` ${f.protocol}/${f.publicPort}: `;
  const name = domain.replace(/[^A-Za-z0-9._-]/g, "_").slice(0, 29 - "lvh ".length - tail.length);
  return `lvh ${name}${tail}`;
}

/**
 * The public ports whose traffic a counting forward counts (see Forward.countTraffic), as `[first, last]` runs:
 * its own, less what other forwards take where it has all_ports (their traffic is theirs).
 */
export function countedPorts(f: Pick<Forward, "publicPort" | "count" | "except">): [number, number][] {
  const out: [number, number][] = [];
  let next = f.publicPort;
  const last = f.publicPort + f.count - 1;
  for (const [a, b] of [...(f.except ?? [])].sort((x, y) => x[0] - y[0])) {
    if (a > next) out.push([next, Math.min(a - 1, last)]);
    next = Math.max(next, b + 1);
  }
  if (next <= last) out.push([next, last]);
  return out;
}

/** The public address that stands for every local address of the host (loopback excluded). */
export const ANY_PUBLIC = "*";

/** Outbound 1:1 NAT (`snat`): the guest's new connections to anywhere but `network` leave from `publicIp`. */
export interface Snat {
  family: Family;
  privateIp: string;
  publicIp: string;
  /** The guest's own network (its connected network, or the address alone): what is never translated. */
  network: string;
}

/** A forward as read back from a live DNAT rule, for status. */
export interface LiveForward {
  domain: string;
  family: Family;
  protocol: string;
  publicIp: string;
  publicPorts: string;
  privateIp: string;
  privatePorts: string;
  /** Who may use it: its sources joined by ", ", or `@<set>` for a set of ours; absent: everyone. */
  source?: string;
  /** Only what arrives on this host interface. */
  dev?: string;
  /** The description its rule carries. */
  description?: string;
  /** An outbound 1:1 NAT (read back from a SNAT rule), not a forward of ports. */
  outbound?: true;
  /** What went through it, where the read asked for counters (status, metrics; see Counters). */
  counters?: Counters;
}

/**
 * A forward's counters since its rules were last written (a start re-writes them, and they count from 0 again):
 * new connections (its DNAT rule, or its map element, which sees each connection's first packet only), and where
 * the forward asks for them (`counters`, see Forward.countTraffic) the packets and bytes, both ways, of its
 * connections the host forwards (clients outside, and guests through the hairpin; not the host's own).
 */
export interface Counters {
  connections: number;
  /** Absent where the forward does not count them: one accept serves all forwards, which counts none. */
  packets?: number;
  bytes?: number;
}

/** What one counter of a counting forward saw (see Forward.countTraffic): its ports, packets and bytes. */
export interface Traffic {
  domain: string;
  family: Family;
  protocol: string;
  /** The forward's public address, or `*`. */
  publicIp: string;
  /** The run of public ports the counter is for: a forward's, or part of one (all_ports). */
  first: number;
  last: number;
  packets: number;
  bytes: number;
}

/** Adds a counter's packets and bytes to the live forward whose public address and ports it counts. */
export function addTraffic(forwards: LiveForward[], t: Traffic): void {
  const f = forwards.find((f) =>
    f.domain === t.domain && !f.outbound && f.family === t.family && f.protocol === t.protocol &&
    f.publicIp === t.publicIp && within(f.publicPorts, t.first, t.last)
  );
  if (!f) return;
  const c = f.counters ?? { connections: 0 };
  f.counters = { ...c, packets: (c.packets ?? 0) + t.packets, bytes: (c.bytes ?? 0) + t.bytes };
}

/** Whether the ports `first`-`last` are among `ports` (`<port>` or `<first>-<last>`). */
function within(ports: string, first: number, last: number): boolean {
  const [a = NaN, b = a] = ports.split("-").map(Number);
  return first >= a && last <= b;
}

/**
 * Renders a forward as `proto public:port -> private:port [from source] [on dev] ["description"]`, the same for
 * live and planned ones; `*` (any local address) shows as `*` in IPv4 and `[*]` in IPv6.
 */
export function describeForward(f: LiveForward): string {
  if (f.outbound) return `snat ${f.privateIp} -> ${f.publicIp} (outgoing connections)`;
  const host = (ip: string) => (f.family === 6 ? `[${ip}]` : ip);
  const from = f.source === undefined ? "" : ` from ${f.source}`;
  const on = f.dev === undefined ? "" : ` on ${f.dev}`;
  const named = f.description === undefined ? "" : ` "${f.description}"`;
  return `${f.protocol} ${host(f.publicIp)}:${f.publicPorts} -> ${
    host(f.privateIp)
  }:${f.privatePorts}${from}${on}${named}`;
}

/** The live form of a planned forward, so planned and live ones compare as text. */
export function asLiveForward(domain: string, f: Forward): LiveForward {
  const ports = (p: number) => (f.count === 1 ? `${p}` : `${p}-${p + f.count - 1}`);
  return {
    domain,
    family: f.family,
    protocol: f.protocol,
    publicIp: f.publicIp,
    publicPorts: ports(f.publicPort),
    privateIp: f.privateIp,
    privatePorts: ports(f.privatePort),
    ...(sourceText(f) === undefined ? {} : { source: sourceText(f)! }),
    ...(f.dev === undefined ? {} : { dev: f.dev }),
    ...(f.description === undefined ? {} : { description: f.description }),
  };
}

/** Who may use a forward as status shows it (see LiveForward.source). */
export function sourceText(f: Pick<Forward, "sources" | "sourceSet">): string | undefined {
  if (f.sourceSet !== undefined) return `@${f.sourceSet}`;
  return f.sources?.join(", ");
}

/** The live form of a planned outbound NAT (see asLiveForward). */
export function asLiveSnat(domain: string, s: Snat): LiveForward {
  return {
    domain,
    family: s.family,
    protocol: "all",
    publicIp: s.publicIp,
    publicPorts: "",
    privateIp: s.privateIp,
    privatePorts: "",
    outbound: true,
  };
}

/** A domain's plan as status, doctor and the watcher compare it with what is live: one line per forward and NAT. */
export function describePlan(domain: string, plan: { forwards: Forward[]; snats: Snat[] }): string[] {
  return [
    ...plan.forwards.map((f) => describeForward(asLiveForward(domain, f))),
    ...plan.snats.map((s) => describeForward(asLiveSnat(domain, s))),
  ];
}
