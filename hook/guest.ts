/**
 * A domain's forwards from both places they may be written (the JSON config, and its own XML's metadata), with the
 * guest's address found where they give none: the network's DHCP reservation for the guest's MAC, else its lease.
 * In hook mode this reads libvirt's state files only: calling libvirt from inside a hook deadlocks.
 */

import type { ClaimSummary, Diagnostic, Entry, Target } from "../config/model.ts";
import { type MetadataForwards, readMetadata } from "../config/metadata.ts";
import { DEFAULT_XML_RULE } from "../config/policy.ts";
import { type Claim, claimSummary, reportClashes } from "../config/ports.ts";
import { type Family, parseAddress } from "../system/address.ts";
import { type Lease, LeaseFileError, readLeases, readNetworkStatus } from "../system/libvirt.ts";
import { attr, child, childrenNamed, parseXml, type XmlElement } from "../system/xml.ts";
import { type GuestInterface, interfacesOf } from "./domain_xml.ts";
import { policyProblems, type PolicyView } from "./xml_policy.ts";

/** The defaults where no policy is given (tests of other things): nothing known of the host's addresses or ports. */
const UNKNOWN_HOST = { rule: DEFAULT_XML_RULE, addresses: undefined, declared: [], listeners: () => [] };

/** Where the guest's address is looked up: libvirt's network status files and dnsmasq's lease records. */
export interface GuestLookup {
  /** A running network's status XML (`/run/libvirt/network/<net>.xml`), if it runs. */
  networkStatus(network: string): string | undefined;
  /**
   * The DHCP leases on a bridge (`/var/lib/libvirt/dnsmasq/<bridge>.status`); throws a LeaseFileError where the
   * file is there but cannot be read.
   */
  leases(bridge: string): Lease[];
  /** Seconds since the epoch (a lease that expired is no address). */
  now(): number;
}

/** libvirt's own files, or the directories a test names. */
export function fileLookup(networkRunDir?: string, dnsmasqDir?: string): GuestLookup {
  return {
    networkStatus: (network) => readNetworkStatus(network, networkRunDir),
    leases: (bridge) => readLeases(bridge, dnsmasqDir),
    now: () => Math.floor(Date.now() / 1000),
  };
}

/** A forward that waits for the guest's lease: the interface it waits on, and the entry it belongs to. */
export interface Waiting {
  domain: string;
  entry: string;
  family: Family;
  mac: string;
  network?: string;
  bridge?: string;
}

/** What a domain's forwards are, once read from both places and with the guest's addresses looked up. */
export interface GuestForwards {
  /** Entries ready to plan: every target has its guest address. */
  entries: Entry[];
  /** Targets whose address is not known yet (no reservation, no lease): applied when the lease appears. */
  waiting: Waiting[];
  /** Problems of the XML's forwards, positioned in it; any error means nothing of the domain is applied. */
  diagnostics: Diagnostic[];
  /** Problems in finding the guest's address that no lease will solve (no such interface). */
  problems: string[];
  /**
   * Lease files that could not be read (each problem names its file): the targets looked up there wait, but
   * their absence proves nothing, so what is live for them must stay.
   */
  leaseProblems: string[];
  /** Whether the XML has forwards of ours. */
  metadata: boolean;
  /** The public ports the XML claims, to be recorded while the guest runs (see hook/claims.ts). */
  claims: ClaimSummary[];
  /** What the start logs beside its result (forwards in the XML that the policy turns off). */
  notes: string[];
}

/** How the domain's XML reaches us: the parsed root, and the name problems give it. */
export interface DomainXml {
  root: XmlElement;
  file: string;
}

/**
 * A domain's forwards: its JSON `entries` and its XML's metadata, their public ports checked against the config's
 * and the other running guests' XML; then every target without a guest address gets one found, or waits for it.
 */
export function guestForwards(
  domain: string,
  { entries, claims = [], recorded = [], xml, lookup, defaultPublicIp = {}, policy }: {
    entries: Entry[];
    /** The public ports the config claims, every domain's (see configClaims). */
    claims?: ClaimSummary[];
    /** The public ports the other running guests' XML claims (see hook/claims.ts). */
    recorded?: ClaimSummary[];
    xml?: DomainXml | undefined;
    lookup: GuestLookup;
    defaultPublicIp?: Partial<Record<Family, string>>;
    /** What the XML may ask for (see hook/xml_policy.ts); absent: the defaults, with the host unknown. */
    policy?: PolicyView;
  },
): GuestForwards {
  const view = policy ?? { ...UNKNOWN_HOST, defaultPublicIp };
  const { md, notes } = xmlForwards(domain, xml, { view, defaultPublicIp });
  const out: GuestForwards = {
    entries: [],
    waiting: [],
    // The same array as the XML's problems: its claims report their clashes into it (see checkClashes).
    diagnostics: md.diagnostics,
    problems: [],
    leaseProblems: [],
    metadata: md.present,
    claims: md.claims.map((c) => claimSummary(c, xml!.file)),
    notes,
  };
  if (md.diagnostics.length === 0 && (md.present || recorded.length > 0)) {
    checkClashes(domain, md, { claims, recorded, diagnostics: out.diagnostics });
  }
  if (hasError(out.diagnostics)) return out;
  const nicOf = nicFinder(xml);
  if (md.present) {
    // The XML's author is whoever may edit this guest: what it asks for is checked before anything is planned.
    out.diagnostics.push(...xmlPolicyProblems(domain, md, { view, file: xml!.file, nicOf, lookup }));
    if (hasError(out.diagnostics)) return out;
  }
  // The config's entries first, then the XML's: each says where its address could be given instead. An entry
  // switched off is not looked up: it installs nothing, and waits for nothing.
  for (const entry of entries) {
    if (entry.enabled === false) out.notes.push(switchedOff(entry, '"enabled": false'));
    else addressEntry(domain, entry, { nicOf, lookup, field: "private_ip", out });
  }
  for (const entry of md.entries) {
    if (entry.enabled === false) out.notes.push(switchedOff(entry, 'enabled="no"'));
    else addressEntry(domain, entry, { nicOf, lookup, field: "guest", out });
  }
  return out;
}

/** The note an entry switched off gets: where it is, what it is called, and that nothing is installed for it. */
export function switchedOff(entry: Entry, how: string): string {
  const named = entry.description === undefined ? "" : ` "${entry.description}"`;
  return `${entry.path}${named} is switched off (${how}): nothing is installed for it`;
}

/** The XML's forwards, unless the policy turns them off (then none, and a note that says so). */
function xmlForwards(
  domain: string,
  xml: DomainXml | undefined,
  { view, defaultPublicIp }: { view: PolicyView; defaultPublicIp: Partial<Record<Family, string>> },
): { md: MetadataForwards; notes: string[] } {
  const none: MetadataForwards = { present: false, entries: [], places: [], diagnostics: [], claims: [] };
  const md = xml ? readMetadata(domain, xml, { defaultPublicIp }) : none;
  if (md.present && !view.rule.enabled) {
    return {
      md: none,
      notes: [`its XML's forwards are off (${view.rule.path ?? "xml_forwards"}: "enabled": false); ignored`],
    };
  }
  return { md, notes: [] };
}

/**
 * The XML's ports and the guest's own entries' against the config's (every domain's) and the other running guests'
 * XML: each problem reported where this guest's claim is (in its XML, or in the config file), into `diagnostics`.
 */
function checkClashes(
  domain: string,
  md: MetadataForwards,
  { claims, recorded, diagnostics }: {
    claims: ClaimSummary[];
    recorded: ClaimSummary[];
    diagnostics: Diagnostic[];
  },
): void {
  const report = (c: ClaimSummary): Claim["report"] => (_n, path, message, extra) =>
    diagnostics.push({
      severity: "error",
      file: c.file,
      line: c.line,
      column: c.column,
      message,
      path,
      domains: [domain],
      ...extra,
    });
  const own = claims.filter((c) => c.domain === domain);
  const others = md.present ? claims.filter((c) => c.domain !== domain) : [];
  reportClashes([
    ...own.map((c) => asClaim(c, report(c))),
    ...md.claims,
    ...[...others, ...recorded].map((c) => asClaim(c)),
  ]);
}

/** Whether any of the problems is an error (then nothing of the domain is applied). */
function hasError(diagnostics: Diagnostic[]): boolean {
  return diagnostics.some((d) => d.severity === "error");
}

/** The interface an entry's address is found on: the one with its MAC, else the first on a libvirt network. */
function nicFinder(xml: DomainXml | undefined): (entry: Entry) => GuestInterface | undefined {
  const nics = xml ? interfacesOf(xml.root) : [];
  return (entry) =>
    entry.mac === undefined
      ? nics.find((n) => n.network !== undefined)
      : nics.find((n) => n.mac === entry.mac);
}

/** What the XML asks for that its policy refuses, the guest's own addresses (as found now) allowed. */
function xmlPolicyProblems(
  domain: string,
  md: MetadataForwards,
  { view, file, nicOf, lookup }: {
    view: PolicyView;
    file: string;
    nicOf: (entry: Entry) => GuestInterface | undefined;
    lookup: GuestLookup;
  },
): Diagnostic[] {
  const own = (entry: Entry, t: Target) => {
    const nic = nicOf(entry);
    const found = nic?.mac === undefined
      ? {}
      : findAddress(domain, { ...nic, mac: nic.mac }, { family: t.family, lookup });
    return found.address === undefined ? [] : [found.address];
  };
  return policyProblems(domain, md, { view, file, own });
}

/**
 * One entry into `out`: ready to plan where every target has its guest address or gets one found (the
 * reservation, a lease); a target whose address is not known yet waits for its lease; an entry whose interface
 * the guest does not have is a problem (`field`: where the entry could give the address instead).
 */
function addressEntry(
  domain: string,
  entry: Entry,
  { nicOf, lookup, field, out }: {
    nicOf: (entry: Entry) => GuestInterface | undefined;
    lookup: GuestLookup;
    field: "guest" | "private_ip";
    out: GuestForwards;
  },
): void {
  if (entry.targets.every((t) => t.privateIp !== undefined)) {
    out.entries.push(entry);
    return;
  }
  const nic = nicOf(entry);
  const mac = nic?.mac;
  if (nic === undefined || mac === undefined) {
    out.problems.push(
      entry.mac === undefined
        ? `${entry.path}: the guest has no interface on a libvirt network to find its address on; give it as ${field}`
        : `${entry.path}: the guest has no interface with MAC ${entry.mac}`,
    );
    return;
  }
  const targets: Target[] = [];
  let bridge = nic.bridge;
  for (const t of entry.targets) {
    if (t.privateIp !== undefined) {
      targets.push(t);
      continue;
    }
    const found = findAddress(domain, { ...nic, mac }, { family: t.family, lookup });
    bridge ??= found.bridge;
    if (found.unreadable && !out.leaseProblems.includes(found.unreadable)) {
      out.leaseProblems.push(found.unreadable);
    }
    if (found.address) targets.push({ ...t, privateIp: found.address });
    else {
      out.waiting.push({
        domain,
        entry: entry.path,
        family: t.family,
        mac,
        ...(nic.network ? { network: nic.network } : {}),
        ...(bridge ? { bridge } : {}),
      });
    }
  }
  if (targets.length === 0) return;
  out.entries.push({
    ...entry,
    targets,
    ...(entry.interface === undefined && bridge !== undefined ? { interface: bridge } : {}),
  });
}

/** What `status` and the log say of a waiting forward. */
export function waitingNote(w: Waiting): string {
  return `waiting for a DHCP lease (mac ${w.mac}${w.family === 6 ? ", IPv6" : ""}${
    w.network ? `, network ${w.network}` : ""
  })`;
}

/** A claim of the config as the XML's claims are checked against it: an all_ports claim takes every port. */
function asClaim(c: ClaimSummary, report: Claim["report"] = () => {}): Claim {
  return {
    domain: c.domain,
    node: { offset: 0 } as Claim["node"],
    path: c.path,
    file: c.file,
    address: c.address,
    protocol: c.protocol,
    first: c.all ? 1 : c.first,
    last: c.all ? 65535 : c.last,
    report,
  };
}

/** A network's DHCP reservations and its bridge, from its status file. */
interface NetworkFacts {
  bridge?: string;
  hosts: { family: Family; ip: string; mac?: string; name?: string; id?: string }[];
}

function networkFacts(text: string | undefined): NetworkFacts {
  if (text === undefined) return { hosts: [] };
  let root: XmlElement;
  try {
    root = parseXml(text);
  } catch {
    return { hosts: [] };
  }
  const net = root.local === "networkstatus" ? child(root, "network") : root;
  if (!net) return { hosts: [] };
  const bridge = attr(child(net, "bridge") ?? net, "name");
  const hosts: NetworkFacts["hosts"] = [];
  for (const ip of childrenNamed(net, "ip")) {
    const dhcp = child(ip, "dhcp");
    for (const h of dhcp ? childrenNamed(dhcp, "host") : []) {
      const address = parseAddress(attr(h, "ip") ?? "");
      if (!address) continue;
      const mac = attr(h, "mac")?.toLowerCase(), name = attr(h, "name"), id = attr(h, "id");
      hosts.push({
        family: address.family,
        ip: address.text,
        ...(mac ? { mac } : {}),
        ...(name ? { name } : {}),
        ...(id ? { id } : {}),
      });
    }
  }
  return { ...(bridge ? { bridge } : {}), hosts };
}

/**
 * The guest's address on one interface: the network's reservation (IPv4: for its MAC; IPv6: for the domain's name,
 * or a DUID made of its MAC), else its newest unexpired lease. Also the bridge, where the interface did not say,
 * and the problem of a lease file that cannot be read (`unreadable`).
 */
export function findAddress(
  domain: string,
  nic: GuestInterface & { mac: string },
  { family, lookup }: { family: Family; lookup: GuestLookup },
): { address?: string; via?: "reservation" | "lease"; bridge?: string; unreadable?: string } {
  const facts = nic.network === undefined ? { hosts: [] } : networkFacts(lookup.networkStatus(nic.network));
  const bridge = nic.bridge ?? facts.bridge;
  const mine = (x: { mac?: string; name?: string; id?: string; clientId?: string; hostname?: string }) =>
    x.mac === nic.mac ||
    (family === 6 && (x.name === domain || duidHasMac(x.id ?? x.clientId, nic.mac)));
  const reserved = facts.hosts.find((h) => h.family === family && mine(h));
  const withBridge = bridge === undefined ? {} : { bridge };
  if (reserved) return { address: reserved.ip, via: "reservation", ...withBridge };
  if (bridge === undefined) return {};
  const now = lookup.now();
  let leases: Lease[];
  try {
    leases = lookup.leases(bridge);
  } catch (err) {
    if (!(err instanceof LeaseFileError)) throw err;
    return { ...withBridge, unreadable: err.message };
  }
  const lease = leases
    .filter((l) =>
      parseAddress(l.address)?.family === family && mine(l) && (l.expiry === 0 || l.expiry > now)
    )
    .sort((a, b) => (b.expiry || Infinity) - (a.expiry || Infinity))[0];
  return lease ? { address: parseAddress(lease.address)!.text, via: "lease", ...withBridge } : withBridge;
}

/** Whether a DUID (hex bytes, `:`-separated) ends in a MAC: DUID-LL and DUID-LLT carry the link-layer address. */
function duidHasMac(duid: string | undefined, mac: string): boolean {
  if (!duid) return false;
  const bytes = duid.toLowerCase().split(":").map((b) => b.padStart(2, "0"));
  return bytes.length > 6 && bytes.slice(-6).join(":") === mac;
}
