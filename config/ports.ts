/** An entry's ports (port_map, port_range) and the public ports every entry claims, which must not clash. */

import { type ClaimSummary, jsonPath, type PortSpec, SETTINGS_KEY } from "./model.ts";
import { isHostAddress, isLoopback } from "./policy.ts";
import type { Node } from "jsonc-parser";
import { type Family, parseAddress, type Protocol, PROTOCOLS } from "../system/address.ts";

import { kind, type Report } from "./nodes.ts";

export interface Claim {
  domain: string;
  node: Node;
  path: string;
  address: string;
  protocol: Protocol;
  first: number;
  last: number;
  /** How to report a problem where the claim is, in its own file. */
  report: Report;
  /** The file the claim is in (set where a config has several files), and where in it. */
  file?: string;
  at?: { line: number; column: number };
  /** An `all_ports` claim: it takes what no other claim on its address takes, so it clashes only with another. */
  all?: { spec: PortSpec; family: Family };
  /** A `snat` claim: the address is the outgoing source of this guest address, which may be one only. */
  snat?: { privateIp: string };
  /** Where the address is given (public_ip), when it is: it must be this host's (see publicAddressProblems). */
  public?: { node: Node; path: string };
}

/** What a claim tells others (see ClaimSummary): where it is, and what it takes; `file` where it has none. */
export function claimSummary(c: Claim, file: string): ClaimSummary {
  return {
    domain: c.domain,
    file: c.file ?? file,
    path: c.path,
    line: c.at?.line ?? 1,
    column: c.at?.column ?? 1,
    address: c.address,
    protocol: c.protocol,
    first: c.first,
    last: c.last,
    ...(c.all ? { all: true as const } : {}),
  };
}

/** Takes the public ports of one run (a port_map item, a port_range) for the entry: its node, its path, its ports. */
export type ClaimFn = (n: Node, path: string, spec: PortSpec) => void;

/** How the port readers report: `fail` stops the entry, `warn` does not; `claim` takes each run read. */
export interface PortReaders {
  fail: Report;
  warn: Report;
  claim: ClaimFn;
}

/** Where a value stands: its node and its JSON path. */
interface Place {
  node: Node | undefined;
  path: string;
}

function protocolOf(name: string, { node, path }: Place, { fail, warn }: Omit<PortReaders, "claim">) {
  if ((PROTOCOLS as readonly string[]).includes(name)) return name as Protocol;
  if (name === "icmp") {
    warn(node, path, "icmp cannot be forwarded by port (the old hook could never apply it); skipped", {
      severity: "warning",
    });
  } else {
    fail(node, path, `Protocol "${name}" cannot be forwarded by port; use tcp or udp`);
  }
  return undefined;
}

/** Reads `port_map`: ports by protocol, each a number or a [public, private] pair. */
export function readPortMap(node: Node | undefined, path: string, readers: PortReaders) {
  const { fail, claim } = readers;
  if (!node) return;
  if (node.type !== "object") return fail(node, path, `Expected an object of protocols, found ${kind(node)}`);
  for (const prop of node.children ?? []) {
    const [k, v] = prop.children ?? [];
    if (!k || !v) continue;
    const name = String(k.value);
    const here = jsonPath(path, name);
    const protocol = protocolOf(name, { node: k, path: here }, readers);
    if (!protocol) continue;
    if (v.type !== "array") {
      fail(v, here, `Expected a list of ports or [public, private] pairs, found ${kind(v)}`);
      continue;
    }
    (v.children ?? []).forEach((item, i) => {
      const at = `${here}[${i}]`;
      if (item.type === "array") {
        const pair = item.children ?? [];
        if (pair.length !== 2) {
          return fail(item, at, `Expected a pair [public, private], found ${pair.length} items`);
        }
        const pub = port(pair[0], `${at}[0]`, fail);
        const priv = port(pair[1], `${at}[1]`, fail);
        if (pub !== undefined && priv !== undefined) {
          claim(item, at, { protocol, publicPort: pub, privatePort: priv, count: 1 });
        }
      } else {
        const p = port(item, at, fail);
        if (p !== undefined) claim(item, at, { protocol, publicPort: p, privatePort: p, count: 1 });
      }
    });
  }
}

/** Reads `port_range`: a list of {init_port, ports_num, protocol, to_port?}. */
export function readPortRanges(node: Node | undefined, path: string, readers: PortReaders) {
  const { fail, claim } = readers;
  if (!node) return;
  if (node.type !== "array") return fail(node, path, `Expected a list of ranges, found ${kind(node)}`);
  (node.children ?? []).forEach((item, i) => {
    const at = `${path}[${i}]`;
    if (item.type !== "object") return fail(item, at, `Expected a range object, found ${kind(item)}`);
    const fields = new Map<string, Node>();
    for (const prop of item.children ?? []) {
      const [k, v] = prop.children ?? [];
      if (!k || !v) continue;
      const key = String(k.value);
      if (key in RANGE_FIELDS) fields.set(key, v);
      else {fail(
          k,
          jsonPath(at, key),
          `Unknown field "${key}"; known fields: ${Object.keys(RANGE_FIELDS).join(", ")}`,
        );}
    }
    for (const key of REQUIRED_RANGE_FIELDS) {
      if (!fields.has(key)) fail(item, at, `Missing required field "${key}"`);
    }
    const first = port(fields.get("init_port"), jsonPath(at, "init_port"), fail);
    const numNode = fields.get("ports_num");
    let count: number | undefined;
    if (numNode) {
      if (numNode.type === "number" && Number.isInteger(numNode.value) && numNode.value >= 1) {
        count = numNode.value;
      } else fail(numNode, jsonPath(at, "ports_num"), "Expected a whole number of ports, at least 1");
    }
    const protoNode = fields.get("protocol");
    let protocol: Protocol | undefined;
    if (protoNode) {
      if (protoNode.type !== "string") {
        fail(protoNode, jsonPath(at, "protocol"), `Expected a string, found ${kind(protoNode)}`);
      } else {protocol = protocolOf(
          protoNode.value,
          { node: protoNode, path: jsonPath(at, "protocol") },
          readers,
        );}
    }
    const toNode = fields.get("to_port");
    const to = toNode ? port(toNode, jsonPath(at, "to_port"), fail) : first;
    if (first === undefined || count === undefined || !protocol || to === undefined) return;
    if (first + count - 1 > 65535) {
      return fail(
        numNode,
        jsonPath(at, "ports_num"),
        `Range ${first}-${first + count - 1} runs past port 65535`,
      );
    }
    if (to + count - 1 > 65535) {
      return fail(
        toNode,
        jsonPath(at, "to_port"),
        `The guest's range ${to}-${to + count - 1} runs past port 65535`,
      );
    }
    claim(item, at, { protocol, publicPort: first, privatePort: to, count });
  });
}

function port(node: Node | undefined, path: string, fail: Report): number | undefined {
  if (!node) return undefined;
  if (node.type === "number" && Number.isInteger(node.value) && node.value >= 1 && node.value <= 65535) {
    return node.value;
  }
  fail(
    node,
    path,
    node.type === "number" ? "Port out of range 1-65535" : `Expected a port number, found ${kind(node)}`,
  );
  return undefined;
}

export function reportClashes(claims: Claim[]) {
  fillAllPorts(claims);
  reportWholeAddresses(claims);
  const groups = new Map<string, Claim[]>();
  for (const c of claims) {
    if (c.all || c.snat) continue;
    const key = `${c.protocol} ${c.address}`;
    const group = groups.get(key);
    if (group) group.push(c);
    else groups.set(key, [c]);
  }
  // A forward on every address of a family ("*") takes its ports on each address of that family too.
  for (const [key, wild] of groups) {
    const family = anyAddressFamily(key.slice(key.indexOf(" ") + 1));
    if (family === undefined) continue;
    for (const [other, list] of groups) {
      const [protocol, address = ""] = [
        other.slice(0, other.indexOf(" ")),
        other.slice(other.indexOf(" ") + 1),
      ];
      if (other === key || protocol !== wild[0]!.protocol || !addressOfFamily(address, family)) continue;
      list.push(...wild);
    }
  }
  const reported = new Set<Claim>();
  for (const list of groups.values()) {
    list.sort((a, b) => a.first - b.first || a.node.offset - b.node.offset);
    const clashing = new Set<Claim>();
    const partner = new Map<Claim, Claim>();
    let reach: Claim | undefined;
    for (const c of list) {
      if (reach && c.first <= reach.last) {
        clashing.add(c).add(reach);
        partner.set(c, reach);
        if (!partner.has(reach)) partner.set(reach, c);
      }
      if (!reach || c.last > reach.last) reach = c;
    }
    for (const c of clashing) {
      if (reported.has(c)) continue;
      reported.add(c);
      const other = partner.get(c)!;
      const ports = (x: Claim) => (x.first === x.last ? `${x.first}` : `${x.first}-${x.last}`);
      reportAt(
        c,
        `Public ${c.protocol} port ${ports(c)} on ${c.address} is also claimed by ${where(other, c)} (${
          ports(other)
        })`,
      );
    }
  }
}

/** How a claim names the public address "*" of one family (see anyAddressFamily). */
export function anyAddressClaim(family: Family): string {
  return `any IPv${family} address`;
}

/** The family of a claim's address that is "*" (see anyAddressClaim); undefined for any other. */
function anyAddressFamily(address: string): Family | undefined {
  const m = /^any IPv([46]) address$/.exec(address);
  return m ? (m[1] === "4" ? 4 : 6) : undefined;
}

/** Whether a claim's address (an address, or the default one's stand-in) is of `family`. */
function addressOfFamily(address: string, family: Family): boolean {
  const a = parseAddress(address);
  return a ? a.family === family : address === `default IPv${family} address`;
}

/** The fields of a port_range item. */
export const RANGE_FIELDS = {
  init_port: { type: "integer", description: "The first port of the range." },
  ports_num: { type: "integer", description: "How many ports the range holds." },
  protocol: { type: "string", description: "tcp or udp." },
  to_port: {
    type: "integer",
    description:
      "The guest's first port: init_port goes to to_port, the next port to to_port + 1, and so on " +
      "(default: init_port, the same ports).",
  },
} as const;

/** The fields every port_range item must have (to_port is optional). */
export const REQUIRED_RANGE_FIELDS = ["init_port", "ports_num", "protocol"] as const;

/** Gives each `all_ports` claim the ports that other claims take on its address and protocol, merged in order. */
function fillAllPorts(claims: Claim[]) {
  for (const c of claims) {
    if (!c.all) continue;
    // A forward on "*" of the family takes its port on this address too.
    const any = anyAddressClaim(c.all.family);
    const taken = claims
      .filter((o) =>
        !o.all && !o.snat && (o.address === c.address || o.address === any) && o.protocol === c.protocol
      )
      .map((o) => [o.first, o.last] as [number, number])
      .sort((a, b) => a[0] - b[0]);
    const merged: [number, number][] = [];
    for (const [first, last] of taken) {
      const prev = merged.at(-1);
      if (prev && first <= prev[1] + 1) prev[1] = Math.max(prev[1], last);
      else merged.push([first, last]);
    }
    c.all.spec.all!.except[c.all.family] = merged;
  }
}

/**
 * The claims that take a whole public address, each reported where another takes it too: two `all_ports` on one
 * address and protocol (which would get the ports?), or one address as the outgoing source (snat) of two guests.
 */
function reportWholeAddresses(claims: Claim[]) {
  const whole = claims.filter((c) => c.all || c.snat);
  for (const c of whole) {
    const other = whole.find((o) =>
      o !== c && o.address === c.address &&
      (c.all ? o.all && o.protocol === c.protocol : o.snat && o.snat.privateIp !== c.snat!.privateIp)
    );
    if (!other) continue;
    reportAt(
      c,
      c.all
        ? `Every ${c.protocol} port of ${c.address} is also claimed by ${where(other, c)} (all_ports)`
        : `${c.address} is also the outgoing address of ${other.snat!.privateIp} (${where(other, c)}); ` +
          "one public address can be the source of one guest address only",
    );
  }
}

/**
 * Reports each explicit public address that is not this host's, once, where it is given: a forward there would
 * capture the host's and the guests' own connections to that address. `addresses`: the host's (undefined where
 * unknown: then nothing is said); `declared`: `"/settings".host_addresses`.
 */
export function reportForeignAddresses(
  claims: Claim[],
  { addresses, declared, severity = "error" }: {
    addresses: string[] | undefined;
    declared: string[];
    /** "warning" for `check`: whether the file is valid stays a property of the file, not of this host. */
    severity?: "error" | "warning";
  },
) {
  if (addresses === undefined) return;
  const seen = new Set<Node>();
  for (const c of claims) {
    if (!c.public || seen.has(c.public.node)) continue;
    seen.add(c.public.node);
    const addr = parseAddress(c.address);
    if (!addr || isHostAddress(addr, addresses, declared)) continue;
    c.report(
      c.public.node,
      c.public.path,
      (isLoopback(addr)
        ? `${c.address} is a loopback address: a forward there would take the host's own services on it`
        : `${c.address} is not an address of this host: its forward would capture the host's and the guests' ` +
          `own connections to ${c.address}; if it is routed to this host (or comes up later), ` +
          `list it in "${SETTINGS_KEY}".host_addresses`) +
        (severity === "warning" ? `; a start of "${c.domain}" refuses it here` : ""),
      { domains: [c.domain], severity },
    );
  }
}

/** Reports a problem of a claim's domain where the claim is, in its own file (see parseConfigs). */
function reportAt(c: Claim, message: string) {
  c.report(c.node, c.path, message, { domains: [c.domain] });
}

/** Where another claim is, as a claim's problem names it: its path, and its file where that is another. */
function where(other: Claim, c: Claim): string {
  return `${other.path}${other.file !== c.file ? ` in ${other.file}` : ""}`;
}
