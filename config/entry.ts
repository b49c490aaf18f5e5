/** One domain's entries: their fields, addresses, interface and ports, and the claims that must not clash. */

import {
  ANY_ADDRESS,
  type Entry,
  jsonPath,
  type PortSpec,
  type Target,
  type ValidateOptions,
} from "./model.ts";
import type { Node } from "jsonc-parser";
import { type Address, type Family, parseAddress, PROTOCOLS } from "../system/address.ts";
import { kind, type Report } from "./nodes.ts";
import { applySources, readSources } from "./entry_sources.ts";
import { parseSourceItem } from "./sources.ts";
import { anyAddressClaim, type Claim, type ClaimFn, readPortMap, readPortRanges } from "./ports.ts";

/** The fields of an entry, with what they hold: the validator and the JSON Schema both read this table. */
export const ENTRY_FIELDS = {
  interface: {
    type: "string",
    description: "The guest's bridge; the FORWARD accept matches it as outgoing.",
  },
  private_ip: {
    type: "string",
    description:
      "The guest's address (IPv4 or IPv6). Default: found when the guest starts, from its network's " +
      "DHCP reservation for its MAC, else its DHCP lease.",
  },
  public_ip: {
    type: "string",
    description:
      'The host address to forward from; "*": any local address of this host (loopback excluded). ' +
      "Default: the address of the interface with the default route.",
  },
  source_ip: {
    type: "string",
    description:
      "Who may use the forwards: an address, network (CIDR) or range (first-last), or a list of them, IPv4 and " +
      "IPv6 mixed (each family's items restrict its own forwards; with a list, a family with no item is not " +
      "published). Default: everyone.",
  },
  private_ipv6: { type: "string", description: "The guest's IPv6 address, beside an IPv4 private_ip." },
  public_ipv6: {
    type: "string",
    description: 'The host IPv6 address to forward from (or "*"); default as for public_ip.',
  },
  source_ipv6: {
    type: "string",
    description: "Who may use the IPv6 forwards (as source_ip, IPv6 items only): one item or a list.",
  },
  source_set: {
    type: "string",
    description:
      "Who may use the forwards: the members of a named set of ours, filled with `qemu set add <name> <addr...>` " +
      "(no hook call; kept across starts, stops and reloads). Not together with source_ip.",
  },
  port_map: {
    type: "object",
    description: "Ports by protocol: a number (same port on both sides) or a pair [public, private].",
  },
  port_range: {
    type: "array",
    description:
      "Public ports init_port .. init_port+ports_num-1, forwarded to the same private ports (or, " +
      "with to_port, to the private ports from to_port on).",
  },
  all_ports: {
    type: "boolean",
    description:
      "Every tcp and udp port of public_ip (and public_ipv6) that no other forward claims goes to " +
      "the same port of the guest. Needs an explicit public_ip.",
  },
  snat: {
    type: "boolean",
    description: "The guest's own new outgoing connections (to anywhere but its own network) leave from " +
      "public_ip (and public_ipv6) instead of the host's address: 1:1 NAT. Needs an explicit public_ip.",
  },
  dev: {
    type: "string",
    description: "Only connections that arrive on this host interface are forwarded (as libvirt's " +
      "<portForward dev=...>).",
  },
  description: {
    type: "string",
    description: "What these forwards are for (up to 64 characters): shown by status, plan and doctor, and " +
      "kept in the live rules.",
  },
  enabled: {
    type: "boolean",
    description:
      "false: the entry stays configured but installs nothing (a start removes what is live of it).",
  },
  log: {
    type: "boolean",
    description:
      "Log each new connection to the entry's forwards in the kernel log, at most 10 a minute per " +
      "forward (bursts of 5), prefixed with the domain and the forward (`lvh web1 tcp/2222: `).",
  },
  counters: {
    type: "boolean",
    description:
      "Count the packets and bytes of each forward (both ways, as the host forwards them), shown " +
      "by status and qemu metrics; new connections are counted always. It costs the guest's forwarded " +
      "packets a lookup (nftables) or a rule per forward (iptables), so it is off unless asked for.",
  },
} as const;

/** What readDomain() needs beside the domain's node: how to report, where claims go, and the validator's options. */
export interface DomainReading {
  report: Report;
  /** Every entry's public ports, for the clash check over the whole config (see reportClashes). */
  claims: Claim[];
  options: ValidateOptions;
}

/** Reads one domain's value: an entry object or a non-empty list of them; undefined where any entry failed. */
export function readDomain(domain: string, node: Node, reading: DomainReading): Entry[] | undefined {
  const base = jsonPath("", domain);
  const report: Report = (n, p, m, extra = {}) => reading.report(n, p, m, { domains: [domain], ...extra });
  const at = (path: string): EntryAt => ({ ...reading, domain, path, report });
  if (node.type === "object") {
    const entry = readEntry(node, at(base));
    return entry ? [entry] : undefined;
  }
  if (node.type === "array" && (node.children?.length ?? 0) > 0) {
    const entries = (node.children ?? []).map((item, i) => {
      const path = `${base}[${i}]`;
      if (item.type === "object") return readEntry(item, at(path));
      report(item, path, `Expected an entry object, found ${kind(item)}`);
      return undefined;
    });
    return entries.every((e) => e !== undefined) ? entries as Entry[] : undefined;
  }
  const hint = node.type === "array"
    ? "Expected an entry object or a non-empty list of them, found an empty list"
    : `Expected an entry object or a list of them, found ${kind(node)}; ` +
      "is this a config of another tool? libvirt-hook-qemu maps each domain name to its forwards";
  report(node, base, hint);
  return undefined;
}

/** Where an entry stands and what reading it needs (its domain's report, scoped to the domain). */
interface EntryAt extends DomainReading {
  domain: string;
  path: string;
}

/** What the steps of reading one entry share: EntryAt, the entry's fields by name, and `fail`. */
interface EntryContext extends EntryAt {
  fields: Map<string, Node>;
  /** Reports a problem that stops the entry (`report` alone is for warnings). */
  fail: Report;
}

/** An entry's targets, and which field gave each one's public address where it is not public_ip. */
interface EntryTargets {
  list: Target[];
  publicKey: Map<Target, "public_ipv6">;
}

/**
 * Reads one entry, in the order its problems are reported: its fields, its interface, its targets (the
 * addresses), its ports (port_map, port_range), all_ports and snat; undefined where anything failed.
 */
function readEntry(node: Node, at: EntryAt): Entry | undefined {
  let failed = false;
  const fail: Report = (n, p, m, extra) => {
    failed = true;
    at.report(n, p, m, extra);
  };
  const cx: EntryContext = { ...at, fields: readFields(node, at.path, fail), fail };
  const iface = readInterface(cx);
  const dev = readInterface(cx, "dev");
  const description = readDescription(cx);
  const enabled = readEnabled(cx);
  const targets = readTargets(cx);
  const ports = readPorts(cx, targets);
  const snatNode = claimSnat(cx, targets);
  const log = flagField(cx, "log");
  const counters = flagField(cx, "counters");
  if (!["port_map", "port_range", "all_ports", "snat"].some((k) => cx.fields.has(k))) {
    at.report(node, at.path, "Entry forwards no port: give port_map or port_range", { severity: "warning" });
  }
  if (failed) return undefined;
  return {
    path: at.path,
    ...(iface === undefined ? {} : { interface: iface }),
    targets: targets.list,
    ports,
    ...(snatNode ? { snat: true as const } : {}),
    ...(dev === undefined ? {} : { dev }),
    ...(description === undefined ? {} : { description }),
    ...(enabled ? {} : { enabled: false as const }),
    ...(log ? { log: true as const } : {}),
    ...(counters ? { counters: true as const } : {}),
  };
}

/** `description`: text our rules can carry as a comment in both backends (see descriptionProblem). */
function readDescription(cx: EntryContext): string | undefined {
  const text = stringField(cx, "description");
  const bad = text === undefined ? undefined : descriptionProblem(text);
  if (bad) cx.fail(cx.fields.get("description"), jsonPath(cx.path, "description"), bad);
  return text;
}

/** `enabled`: true unless it is false. */
function readEnabled(cx: EntryContext): boolean {
  const n = cx.fields.get("enabled");
  if (!n) return true;
  if (n.type === "boolean") return n.value !== false;
  cx.fail(n, jsonPath(cx.path, "enabled"), `Expected true or false, found ${kind(n)}`);
  return true;
}

/** The longest description, in characters: with our tag it fits nftables' 128-byte comments. */
export const MAX_DESCRIPTION = 64;

/**
 * Why a text cannot be a description, if it cannot: it goes into rule comments (iptables-restore's quoted words,
 * nft's quoted strings), so no double quote, backslash or control character, and at most MAX_DESCRIPTION
 * characters of ASCII (nft counts bytes).
 */
export function descriptionProblem(text: string): string | undefined {
  if (text.length === 0) return "A description cannot be empty";
  if (text.length > MAX_DESCRIPTION) {
    return `A description holds at most ${MAX_DESCRIPTION} characters, not ${text.length}`;
  }
  const bad = /[^\x20-\x7e]|["\\]/.exec(text);
  if (bad) {
    return `A description holds printable ASCII without double quotes or backslashes, found ${
      JSON.stringify(bad[0])
    }`;
  }
  return undefined;
}

/** A true/false field's value; a field of another type fails. */
function flagField(cx: EntryContext, key: keyof typeof ENTRY_FIELDS): boolean {
  const v = cx.fields.get(key);
  if (!v) return false;
  if (v.type === "boolean") return v.value === true;
  cx.fail(v, jsonPath(cx.path, key), `Expected true or false, found ${kind(v)}`);
  return false;
}

/** The entry's fields by name: an unknown field or one given twice fails. */
function readFields(node: Node, path: string, fail: Report): Map<string, Node> {
  const fields = new Map<string, Node>();
  for (const prop of node.children ?? []) {
    const [k, v] = prop.children ?? [];
    if (!k || !v) continue;
    const key = String(k.value);
    if (!(key in ENTRY_FIELDS)) {
      const known = Object.keys(ENTRY_FIELDS).join(", ");
      fail(k, jsonPath(path, key), `Unknown field "${key}"; known fields: ${known}`);
      continue;
    }
    if (fields.has(key)) fail(k, jsonPath(path, key), `Field "${key}" is given twice`);
    fields.set(key, v);
  }
  return fields;
}

/** A string field's text; a field of another type fails. */
function stringField(cx: EntryContext, key: keyof typeof ENTRY_FIELDS): string | undefined {
  const v = cx.fields.get(key);
  if (!v) return undefined;
  if (v.type === "string") return v.value as string;
  cx.fail(v, jsonPath(cx.path, key), `Expected a string, found ${kind(v)}`);
  return undefined;
}

/** `interface` (or `dev`): a name the kernel and our rule languages take. */
function readInterface(cx: EntryContext, key: "interface" | "dev" = "interface"): string | undefined {
  const iface = stringField(cx, key);
  const badName = iface === undefined ? undefined : interfaceNameProblem(iface);
  if (badName) cx.fail(cx.fields.get(key), jsonPath(cx.path, key), `Not a valid interface name: ${badName}`);
  return iface;
}

/** An address field (one address, no network: sources are read apart); `family`, the family it must be of. */
function addressField(
  cx: EntryContext,
  key: keyof typeof ENTRY_FIELDS,
  { family, any }: { family?: Family; any?: Family } = {},
): Address | undefined {
  const text = stringField(cx, key);
  if (text === undefined) return undefined;
  // "*": any local address of this host, in the family the entry's other addresses give.
  if (any !== undefined && text === ANY_ADDRESS) return { family: any, text, value: 0n };
  const n = cx.fields.get(key);
  const addr = parseAddress(text);
  if (!addr) {
    cx.fail(n, jsonPath(cx.path, key), "Not an IP address");
    return undefined;
  }
  if (family && addr.family !== family) {
    cx.fail(n, jsonPath(cx.path, key), `Expected an IPv${family} address, found IPv${addr.family}`);
    return undefined;
  }
  return addr;
}

/** The targets: private_ip's (or the found address's) with public_ip and source_ip, then private_ipv6's. */
function readTargets(cx: EntryContext): EntryTargets {
  const targets: EntryTargets = { list: [], publicKey: new Map() };
  const sources = readSources(cx);
  const privateIp = addressField(cx, "private_ip");
  const family = privateIp?.family ?? foundFamily(cx.fields);
  if (family) targets.list.push(firstTarget(cx, family, privateIp));
  const private6 = addressField(cx, "private_ipv6", { family: 6 });
  const public6 = addressField(cx, "public_ipv6", { family: 6, any: 6 });
  if (private6) {
    if (privateIp?.family === 6) {
      cx.fail(
        cx.fields.get("private_ipv6"),
        jsonPath(cx.path, "private_ipv6"),
        "private_ip is IPv6 already; use one of them",
      );
    } else targets.list.push(target(6, { privateIp: private6, publicIp: public6 }));
    if (public6) targets.publicKey.set(targets.list.at(-1)!, "public_ipv6");
  } else {
    for (const key of ["public_ipv6", "source_ipv6"] as const) {
      if (cx.fields.has(key) && !cx.fields.has("private_ipv6")) {
        cx.fail(cx.fields.get(key), jsonPath(cx.path, key), `${key} needs private_ipv6`);
      }
    }
  }
  // Sources last: a target left closed is dropped, and the public address key stays with the one kept.
  const kept = applySources(targets.list, sources, cx);
  const out: EntryTargets = { list: [], publicKey: new Map() };
  targets.list.forEach((t, i) => {
    const k = kept[i];
    if (!k) return;
    out.list.push(k);
    const key = targets.publicKey.get(t);
    if (key) out.publicKey.set(k, key);
  });
  return out;
}

/**
 * With no private_ip (nor private_ipv6), the guest's address is found when it starts (its DHCP reservation or
 * lease), in the family of public_ip (or source_ip); IPv4 where neither says. Undefined where one is given.
 */
function foundFamily(fields: Map<string, Node>): Family | undefined {
  if (fields.has("private_ip") || fields.has("private_ipv6")) return undefined;
  const pub = fields.get("public_ip");
  const fromPublic = pub?.type === "string" ? parseAddress(String(pub.value)) : undefined;
  if (fromPublic) return fromPublic.family;
  // source_ip: its one item's family, or a list's where all its items are of one.
  const source = fields.get("source_ip");
  const texts = source?.type === "string"
    ? [source.value]
    : source?.type === "array"
    ? (source.children ?? []).map((c) => c.value)
    : [];
  const families = new Set(
    texts.map((t) => parseSourceItem(String(t))).map((i) => typeof i === "string" ? 0 : i.family),
  );
  const [only] = families;
  return families.size === 1 && only !== 0 && only !== undefined ? only : 4;
}

/**
 * The first target: the guest's address with public_ip, which must be of its family, as must source_ip where it
 * is one string (the old form: it restricts this target alone; a list speaks for each family, see applySources).
 */
function firstTarget(cx: EntryContext, family: Family, privateIp: Address | undefined): Target {
  const privateKey = privateIp ? "private_ip" : "the guest's address";
  const wrongFamily = (key: string, other: Family) =>
    cx.fail(
      cx.fields.get(key),
      jsonPath(cx.path, key),
      `Cannot forward between families: ${privateKey} is IPv${family}, ${key} is IPv${other}`,
    );
  const pub = addressField(cx, "public_ip", { any: family });
  if (pub && pub.family !== family) wrongFamily("public_ip", pub.family);
  const source = cx.fields.get("source_ip");
  const item = source?.type === "string" ? parseSourceItem(String(source.value)) : undefined;
  if (item && typeof item !== "string" && item.family !== family) wrongFamily("source_ip", item.family);
  if (source?.type === "string" && source.value === "8.8.8.8") {
    cx.report(
      source,
      jsonPath(cx.path, "source_ip"),
      "This is the old example's placeholder: only 8.8.8.8 may use these forwards",
      { severity: "warning" },
    );
  }
  return target(family, { privateIp, publicIp: pub?.family === family ? pub : undefined });
}

/** Where a target's explicit public address is given, for the check that it is the host's (see parseConfigs). */
function publicOf(cx: EntryContext, targets: EntryTargets, t: Target): Pick<Claim, "public"> {
  const key = targets.publicKey.get(t) ?? "public_ip";
  const n = cx.fields.get(key);
  return t.publicIp === undefined || !n ? {} : { public: { node: n, path: jsonPath(cx.path, key) } };
}

/** The entry's ports: port_map's, port_range's, then all_ports'; each claimed on every target's public address. */
function readPorts(cx: EntryContext, targets: EntryTargets): PortSpec[] {
  const ports: PortSpec[] = [];
  const claim: ClaimFn = (n, p, spec) => {
    ports.push(spec);
    for (const t of targets.list) {
      const address = t.publicIp === ANY_ADDRESS
        ? anyAddressClaim(t.family)
        : t.publicIp ?? cx.options.defaultPublicIp?.[t.family] ?? `default IPv${t.family} address`;
      cx.claims.push({
        report: cx.report,
        domain: cx.domain,
        node: n,
        path: p,
        address,
        protocol: spec.protocol,
        first: spec.publicPort,
        last: spec.publicPort + spec.count - 1,
        ...publicOf(cx, targets, t),
      });
    }
  };
  const readers = { fail: cx.fail, warn: cx.report, claim };
  readPortMap(cx.fields.get("port_map"), jsonPath(cx.path, "port_map"), readers);
  readPortRanges(cx.fields.get("port_range"), jsonPath(cx.path, "port_range"), readers);
  const allNode = wholeAddress(cx, targets, "all_ports");
  if (allNode) {
    // Each protocol's every port, but those other forwards claim on the address (known once all are read).
    for (const protocol of PROTOCOLS) {
      const spec: PortSpec = { protocol, publicPort: 1, privatePort: 1, count: 65535, all: { except: {} } };
      ports.push(spec);
      for (const t of targets.list) {
        cx.claims.push({
          report: cx.report,
          domain: cx.domain,
          node: allNode,
          path: jsonPath(cx.path, "all_ports"),
          address: t.publicIp!,
          protocol,
          first: 1,
          last: 65535,
          all: { spec, family: t.family },
          ...publicOf(cx, targets, t),
        });
      }
    }
  }
  return ports;
}

/** `snat`: its node where it is true, each target's public address claimed as its guest address's source. */
function claimSnat(cx: EntryContext, targets: EntryTargets): Node | undefined {
  const snatNode = wholeAddress(cx, targets, "snat");
  if (!snatNode) return undefined;
  for (const t of targets.list) {
    cx.claims.push({
      report: cx.report,
      domain: cx.domain,
      node: snatNode,
      path: jsonPath(cx.path, "snat"),
      address: t.publicIp!,
      protocol: "tcp",
      first: 0,
      last: 0,
      snat: { privateIp: t.privateIp ?? `the address found for ${cx.domain}` },
      ...publicOf(cx, targets, t),
    });
  }
  return snatNode;
}

/** What a flag that takes a whole public address does, as its error says. */
const WHOLE_ADDRESS = {
  all_ports: "takes every port of its public address",
  snat: "makes the guest's connections leave from its public address",
} as const;

/**
 * A flag that takes a whole public address (all_ports, snat): its node where it is true and every target names
 * its public address; a positioned error where it is no boolean, or where an address is left to the default.
 */
function wholeAddress(
  cx: EntryContext,
  targets: EntryTargets,
  key: keyof typeof WHOLE_ADDRESS,
): Node | undefined {
  const n = cx.fields.get(key);
  if (!n) return undefined;
  if (n.type !== "boolean") {
    cx.fail(n, jsonPath(cx.path, key), `Expected true or false, found ${kind(n)}`);
    return undefined;
  }
  if (n.value !== true) return undefined;
  if (targets.list.some((t) => t.publicIp === ANY_ADDRESS)) {
    cx.fail(n, jsonPath(cx.path, key), `${key} ${WHOLE_ADDRESS[key]}, so it needs one address, not "*"`);
    return undefined;
  }
  const implicit = targets.list.filter((t) => t.publicIp === undefined);
  if (implicit.length === 0) return n;
  const want = implicit.map((t) => (t.family === 6 && targets.list.length > 1 ? "public_ipv6" : "public_ip"));
  cx.fail(
    n,
    jsonPath(cx.path, key),
    `${key} ${WHOLE_ADDRESS[key]}, so it needs one given: set ${want.join(" and ")}`,
  );
  return undefined;
}

/**
 * Why a name cannot be a network interface's, as the kernel checks it (dev_valid_name: 1 to 15 bytes, not "." or
 * "..", no "/", ":" or white space) and as our rule languages would misread it (a leading "!" is iptables'
 * negation, a trailing "+" or "*" a wildcard, quotes and backslashes end or escape the rule's words), if it cannot.
 */
export function interfaceNameProblem(name: string): string | undefined {
  const bytes = new TextEncoder().encode(name).length;
  if (bytes < 1 || bytes > 15) return `${bytes} bytes; the kernel allows 1 to 15`;
  if (name === "." || name === "..") return `"${name}" is a directory, not a name`;
  const bad = /[\s/:"'\\\p{Cc}]/u.exec(name);
  if (bad) return `it holds ${JSON.stringify(bad[0])}, which no interface name may hold here`;
  if (name.startsWith("!")) return 'a leading "!" would negate the match';
  if (/[+*]$/.test(name)) return `a trailing "${name.at(-1)}" would match every interface it begins`;
  return undefined;
}

/** The addresses of a target, each where it is given. */
export interface TargetAddresses {
  privateIp?: Address | undefined;
  publicIp?: Address | undefined;
}

/** A target of `family` from its addresses, each kept as its text where it is given. */
export function target(family: Family, { privateIp, publicIp }: TargetAddresses = {}): Target {
  return {
    family,
    ...(privateIp ? { privateIp: privateIp.text } : {}),
    ...(publicIp ? { publicIp: publicIp.text } : {}),
  };
}
