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
 * new connections (its DNAT rule, or its map element, which sees each connection's first packet only).
 */
export interface Counters {
  connections: number;
  /**
   * Absent where not counted, which is today everywhere: no rule of ours sees every packet of one forward (one
   * accept serves all of a domain's forwards, so that no packet walks a rule per forward).
   */
  packets?: number;
  bytes?: number;
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
