/**
 * Forwards in a domain's own XML: `<metadata>` under our namespace, shaped like libvirt's `<portForward>` of its
 * passt backend. Read into the same entries as the JSON config's, with problems positioned in the XML (line,
 * column, and the element path) in the JSON config's message style.
 */

import type { Diagnostic, Entry, PortSpec, Target } from "./model.ts";
import type { Claim } from "./ports.ts";
import {
  type Address,
  type Family,
  formatNetwork,
  networkOf,
  parseAddress,
  PROTOCOLS,
} from "../system/address.ts";
import { child, type XmlAttribute, type XmlElement } from "../system/xml.ts";
import { descriptionProblem, interfaceNameProblem } from "./entry.ts";
import { anyAddressClaim } from "./ports.ts";
import { parseSourceItem, type SourceInterval, sourceSetProblem, sourceTexts } from "./sources.ts";

/** Our XML namespace: `virsh metadata <dom> urn:libvirt-hook-qemu:1 --key lvh --set '<forwards>...</forwards>'`. */
export const METADATA_NS = "urn:libvirt-hook-qemu:1";

/** The attributes of a `portForward`, with what they hold (the README and the errors list them). */
export const PORT_FORWARD_ATTRIBUTES = {
  proto: "tcp or udp; required",
  address: 'the public address, or "*" for any local address of this host (default: the host\'s address ' +
    "with the default route, as public_ip)",
  source:
    "who may use the forward: addresses, networks (CIDR) and ranges (first-last), separated by spaces or commas, " +
    "of the forward's family (as source_ip)",
  sourceSet: "who may use the forward: the members of our named set (as source_set; not with source)",
  guest: "the guest's address (default: found from the network's DHCP reservation or lease)",
  mac: "which of the guest's interfaces (default: the first on a libvirt network)",
  snat:
    '"yes": the guest\'s own new outgoing connections leave from address (as snat; the policy must allow it)',
  allPorts:
    '"yes": every tcp and udp port of address goes to the guest (as all_ports; the policy must allow it)',
  dev: "only what arrives on this host interface is forwarded (as dev)",
  description: "what the forward is for, up to 64 printable ASCII characters (as description)",
  enabled: '"no": the forward stays declared but nothing is installed for it (as enabled)',
  log: '"yes": each new connection to the forward is logged in the kernel log, rate-limited (as log)',
  counters: '"yes": the forward\'s packets and bytes are counted too (as counters)',
} as const;

/** The attributes of a `range`. */
export const RANGE_ATTRIBUTES = {
  start: "the first public port; required",
  end: "the last public port (default: start)",
  to: "the guest port that start maps to; the range shifts with it (default: start)",
  exclude: '"yes" removes these ports from the ranges of the portForward',
} as const;

/** A domain's forwards read from its XML: entries, problems, and the public ports they claim. */
export interface MetadataForwards {
  /** Whether the XML has any element of ours. */
  present: boolean;
  entries: Entry[];
  /** Where each entry stands (in the order of `entries`), for the problems the policy finds later. */
  places: EntryPlace[];
  diagnostics: Diagnostic[];
  claims: Claim[];
}

/** Where an entry of the XML stands: its `<portForward>`, its attributes, and the `<range>` of each port run. */
export interface EntryPlace {
  element: Position;
  attributes: Map<string, XmlAttribute>;
  ranges: Map<PortSpec, Position>;
}

/**
 * Reads our forwards from a parsed domain XML (`<domain>`, or libvirt's `<domstatus>` around it); `file` names
 * the XML in problems. `defaultPublicIp`: the host's addresses, to find clashing claims.
 */
export function readMetadata(
  domain: string,
  { root, file }: { root: XmlElement; file: string },
  { defaultPublicIp = {} }: { defaultPublicIp?: Partial<Record<Family, string>> } = {},
): MetadataForwards {
  const dom = root.local === "domstatus" ? child(root, "domain") : root;
  const metadata = dom && child(dom, "metadata");
  const ours = (metadata?.children ?? []).filter((c) => c.uri === METADATA_NS);
  const out: MetadataForwards = {
    present: ours.length > 0,
    entries: [],
    places: [],
    diagnostics: [],
    claims: [],
  };
  const problem: Problem = (at, path, message, value) =>
    out.diagnostics.push(xmlProblem({ file, domain }, { ...at, path }, { message, value }));
  ours.forEach((top, t) => {
    const topPath = ours.length > 1 ? `forwards[${t + 1}]` : "forwards";
    for (const read of readForwards(top, topPath, problem)) {
      out.entries.push(read.entry);
      out.places.push(read.place);
    }
  });
  // Each entry's claims, for the clash rules the JSON config follows (see reportClashes).
  out.entries.forEach((entry, i) => {
    out.claims.push(...entryClaims(entry, out.places[i]!, { domain, file, defaultPublicIp, out }));
  });
  return out;
}

/** A problem of a domain's XML, where it stands: `file:line:column: message (path = value)`. */
export function xmlProblem(
  { file, domain }: { file: string; domain: string },
  at: Position,
  { message, value }: { message: string; value?: string | undefined },
): Diagnostic {
  return {
    severity: "error",
    file,
    line: at.line,
    column: at.column,
    message,
    path: at.path,
    ...(value === undefined ? {} : { value: JSON.stringify(value) }),
    domains: [domain],
  };
}

type Problem = (at: { line: number; column: number }, path: string, message: string, value?: string) => void;

/** One element of ours under `<metadata>`: a `<forwards>`, each of its `<portForward>` read. */
function readForwards(
  top: XmlElement,
  topPath: string,
  problem: Problem,
): { entry: Entry; place: EntryPlace }[] {
  if (top.local !== "forwards") {
    problem(top, top.local, `Unknown element <${top.name}>; ours is <forwards>`);
    return [];
  }
  const items = top.children;
  if (items.length === 0) problem(top, topPath, "<forwards> holds no <portForward>");
  const read: { entry: Entry; place: EntryPlace }[] = [];
  let n = 0;
  for (const el of items) {
    const path = `${topPath}/portForward[${++n}]`;
    if (el.local !== "portForward" || !ourOrNone(el)) {
      problem(el, `${topPath}/${el.local}`, `Unknown element <${el.name}>; <forwards> holds <portForward>`);
      continue;
    }
    const one = readPortForward(el, path, problem);
    if (one) read.push(one);
  }
  return read;
}

/** What entryClaims() needs beside the entry: whose it is, the XML's name, the host's addresses, and `out`. */
interface ClaimContext {
  domain: string;
  file: string;
  defaultPublicIp: Partial<Record<Family, string>>;
  /** Where a clash is reported (the claims' `report`). */
  out: MetadataForwards;
}

/** The public ports an entry of the XML claims, each positioned at its `<range>` or its whole-address flag. */
function entryClaims(
  e: Entry,
  place: EntryPlace,
  { domain, file, defaultPublicIp, out }: ClaimContext,
): Claim[] {
  const claims: Claim[] = [];
  const report = (at: Position): Claim["report"] => (_n, _p, message, extra) =>
    out.diagnostics.push({ ...xmlProblem({ file, domain }, at, { message }), ...extra });
  const whole = (name: "snat" | "allPorts") => {
    const a = place.attributes.get(name)!;
    return { line: a.line, column: a.column, path: `${e.path}/@${name}` };
  };
  // What every claim of a position holds: the domain, where it is, and how a clash there is reported.
  const base = (at: Position) => ({
    domain,
    node: { offset: at.line * 100_000 + at.column } as Claim["node"],
    path: at.path,
    at,
    file,
    report: report(at),
  });
  for (const t of e.targets) {
    const address = t.publicIp === "*"
      ? anyAddressClaim(t.family)
      : t.publicIp ?? defaultPublicIp[t.family] ?? `default IPv${t.family} address`;
    if (e.snat) {
      claims.push({
        ...base(whole("snat")),
        address,
        protocol: "tcp",
        first: 0,
        last: 0,
        snat: { privateIp: t.privateIp ?? `the address found for ${domain}` },
      });
    }
    for (const p of e.ports) {
      if (p.all) {
        claims.push({
          ...base(whole("allPorts")),
          address,
          protocol: p.protocol,
          first: 1,
          last: 65535,
          all: { spec: p, family: t.family },
        });
        continue;
      }
      const at = place.ranges.get(p) ?? { line: 1, column: 1, path: e.path };
      claims.push({
        ...base(at),
        address,
        protocol: p.protocol,
        first: p.publicPort,
        last: p.publicPort + p.count - 1,
      });
    }
  }
  return claims;
}

/** Children in our namespace, or in none (written without the prefix inside our element, by hand in `virsh edit`). */
function ourOrNone(el: XmlElement): boolean {
  return el.uri === METADATA_NS || el.uri === "";
}

/** What the steps of reading one `<portForward>` share: the element, its path, its attributes by name, `fail`. */
interface ForwardContext {
  el: XmlElement;
  path: string;
  named: Map<string, XmlAttribute>;
  /** Reports a problem that stops the portForward. */
  fail: Problem;
}

/** One `<portForward>`: its attributes, its addresses, then its ranges less the excluded ones. */
function readPortForward(
  el: XmlElement,
  path: string,
  problem: Problem,
): { entry: Entry; place: EntryPlace } | undefined {
  let failed = false;
  const fail: Problem = (...args) => {
    failed = true;
    problem(...args);
  };
  const cx: ForwardContext = { el, path, named: readAttributes(el, path, fail), fail };
  const snat = yes(cx, "snat"), allPorts = yes(cx, "allPorts"), log = yes(cx, "log");
  const counters = yes(cx, "counters");
  const proto = readProtocol(cx, { snat, allPorts });
  const { target, pub } = readTarget(cx);
  const mac = readMac(cx);
  const { dev, description, enabled } = readNaming(cx);
  for (const name of ["snat", "allPorts"] as const) {
    if ((name === "snat" ? snat : allPorts) && pub?.text === "*") {
      fail(attribute(cx, name), `${path}/@${name}`, `${name} needs one address, not "*"`, "yes");
    } else if ((name === "snat" ? snat : allPorts) && !pub) {
      const what = name === "snat"
        ? "makes the guest's connections leave from its public address"
        : "takes every port of its public address";
      fail(
        attribute(cx, name),
        `${path}/@${name}`,
        `${name} ${what}, so it needs one given: set address`,
        "yes",
      );
    }
  }
  const ranges = readRanges(el, path, fail);
  if (ranges.length === 0 && !failed && !snat && !allPorts) fail(el, path, "<portForward> holds no <range>");
  if (failed || (!proto && el.children.length > 0)) return undefined;
  const protocol = (proto?.value ?? "tcp") as typeof PROTOCOLS[number];
  const { ports, positions } = portsOf(ranges, { protocol, allPorts });
  if (ports.length === 0 && !snat) {
    problem(el, path, "Every port of this <portForward> is excluded: it forwards nothing");
    return undefined;
  }
  return {
    entry: {
      path,
      targets: [target],
      ports,
      ...(mac ? { mac: mac.value.toLowerCase() } : {}),
      ...(snat ? { snat: true as const } : {}),
      ...(dev === undefined ? {} : { dev }),
      ...(description === undefined ? {} : { description }),
      ...(enabled ? {} : { enabled: false as const }),
      ...(log ? { log: true as const } : {}),
      ...(counters ? { counters: true as const } : {}),
    },
    place: { element: { line: el.line, column: el.column, path }, attributes: cx.named, ranges: positions },
  };
}

/** The attributes of a `<portForward>` by name; one not ours fails (namespace declarations are skipped). */
function readAttributes(el: XmlElement, path: string, fail: Problem): Map<string, XmlAttribute> {
  const named = new Map<string, XmlAttribute>();
  for (const a of el.attributes) {
    if (a.name === "xmlns" || a.name.startsWith("xmlns:")) continue;
    if (a.uri !== "" || !(a.name in PORT_FORWARD_ATTRIBUTES)) {
      fail(
        a,
        `${path}/@${a.name}`,
        `Unknown attribute "${a.name}"; known: ${Object.keys(PORT_FORWARD_ATTRIBUTES).join(", ")}`,
      );
      continue;
    }
    named.set(a.name, a);
  }
  return named;
}

/** An attribute that was given (the caller knows it was). */
function attribute(cx: ForwardContext, name: string): XmlAttribute {
  return cx.named.get(name)!;
}

/** A yes/no flag: true where it is "yes"; anything but "yes" or "no" fails. */
function yes(cx: ForwardContext, name: "snat" | "allPorts" | "log" | "counters"): boolean {
  const a = cx.named.get(name);
  if (!a || a.value === "no") return false;
  if (a.value === "yes") return true;
  cx.fail(a, `${cx.path}/@${name}`, 'Expected "yes" or "no"', a.value);
  return false;
}

/** `proto`: tcp or udp; required where there are ranges, or where neither whole-address flag is set. */
function readProtocol(
  cx: ForwardContext,
  flags: { snat: boolean; allPorts: boolean },
): XmlAttribute | undefined {
  const proto = cx.named.get("proto");
  if (!proto) {
    if (cx.el.children.length > 0 || !(flags.snat || flags.allPorts)) {
      cx.fail(cx.el, cx.path, 'Missing required attribute "proto" (tcp or udp)');
    }
  } else if (!(PROTOCOLS as readonly string[]).includes(proto.value)) {
    cx.fail(
      proto,
      `${cx.path}/@proto`,
      `Protocol "${proto.value}" cannot be forwarded by port; use tcp or udp`,
      proto.value,
    );
  }
  return proto;
}

/** An address attribute; `network`: whether a network (CIDR) may be given, kept with its host bits cleared. */
function xmlAddress(
  cx: ForwardContext,
  name: "address" | "guest",
  network = false,
): Address | undefined {
  const a = cx.named.get(name);
  if (!a) return undefined;
  // "*" (any local address), of the family the forward's other addresses give (see readTarget).
  if (name === "address" && a.value === "*") return { family: 0 as Family, text: "*", value: 0n };
  const [text = "", prefix, ...more] = a.value.split("/");
  const parsed = parseAddress(text);
  const prefixOk = prefix === undefined ||
    (network && more.length === 0 && /^[0-9]{1,3}$/.test(prefix) &&
      Number(prefix) <= (parsed?.family === 6 ? 128 : 32));
  if (!parsed || !prefixOk) {
    cx.fail(
      a,
      `${cx.path}/@${name}`,
      `Not ${network ? "an IP address or network (CIDR)" : "an IP address"}`,
      a.value,
    );
    return undefined;
  }
  if (prefix === undefined || Number(prefix) === (parsed.family === 4 ? 32 : 128)) return parsed;
  return { ...parsed, text: formatNetwork(networkOf(parsed, Number(prefix))) };
}

/** The target: address, source and guest, all of the first one's family (IPv4 where none is given). */
function readTarget(cx: ForwardContext): { target: Target; pub: Address | undefined } {
  const pub = xmlAddress(cx, "address"), sources = xmlSources(cx), guest = xmlAddress(cx, "guest");
  const any = pub?.text === "*";
  const given = [["address", any ? undefined : pub], ["guest", guest], ["source", sources?.[0]]] as const;
  const family: Family = given.find(([, a]) => a)?.[1]?.family ?? 4;
  if (pub && any) pub.family = family;
  for (const [name, a] of given) {
    const wrong = name === "source" ? sources?.find((i) => i.family !== family) : a;
    if (wrong && wrong.family !== family) {
      const first = given.find(([, x]) => x)!;
      cx.fail(
        attribute(cx, name),
        `${cx.path}/@${name}`,
        `Cannot forward between families: ${first[0]} is IPv${family}, ${name} ${
          name === "source" ? "has" : "is"
        } IPv${wrong.family}`,
        attribute(cx, name).value,
      );
    }
  }
  const set = xmlSourceSet(cx, sources !== undefined);
  const target: Target = {
    family,
    ...(guest ? { privateIp: guest.text } : {}),
    ...(pub ? { publicIp: pub.text } : {}),
    ...(sources ? { sources: sourceTexts(sources, family) } : {}),
    ...(set ? { sourceSet: set } : {}),
  };
  return { target, pub };
}

/** `dev`, `description` and `enabled`, checked as the JSON config's fields are. */
function readNaming(cx: ForwardContext): { dev?: string; description?: string; enabled: boolean } {
  const dev = cx.named.get("dev"),
    description = cx.named.get("description"),
    enabled = cx.named.get("enabled");
  const badDev = dev && interfaceNameProblem(dev.value);
  if (badDev) cx.fail(dev, `${cx.path}/@dev`, `Not a valid interface name: ${badDev}`, dev.value);
  const badText = description && descriptionProblem(description.value);
  if (badText) cx.fail(description, `${cx.path}/@description`, badText, description.value);
  if (enabled && enabled.value !== "yes" && enabled.value !== "no") {
    cx.fail(enabled, `${cx.path}/@enabled`, 'Expected "yes" or "no"', enabled.value);
  }
  return {
    ...(dev ? { dev: dev.value } : {}),
    ...(description ? { description: description.value } : {}),
    enabled: enabled?.value !== "no",
  };
}

/** `source`: its items (spaces or commas between them), each checked; undefined where it is absent or fails. */
function xmlSources(cx: ForwardContext): SourceInterval[] | undefined {
  const a = cx.named.get("source");
  if (!a) return undefined;
  const texts = a.value.split(/[\s,]+/).filter((t) => t !== "");
  if (texts.length === 0) {
    cx.fail(a, `${cx.path}/@source`, "Expected at least one address, network or range", a.value);
    return undefined;
  }
  const items: SourceInterval[] = [];
  for (const text of texts) {
    const item = parseSourceItem(text);
    if (typeof item === "string") {
      cx.fail(a, `${cx.path}/@source`, `${item} (item "${text}")`, a.value);
      return undefined;
    }
    items.push(item);
  }
  return items;
}

/** `sourceSet`: a set name, never beside `source`. */
function xmlSourceSet(cx: ForwardContext, withSources: boolean): string | undefined {
  const a = cx.named.get("sourceSet");
  if (!a) return undefined;
  const problem = sourceSetProblem(a.value) ??
    (withSources ? "Give sourceSet or source, not both: add those addresses to the set" : undefined);
  if (problem) cx.fail(a, `${cx.path}/@sourceSet`, problem, a.value);
  return problem ? undefined : a.value;
}

/** `mac`: six hex pairs. */
function readMac(cx: ForwardContext): XmlAttribute | undefined {
  const mac = cx.named.get("mac");
  if (mac && !/^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/i.test(mac.value)) {
    cx.fail(mac, `${cx.path}/@mac`, "Not a MAC address (six hex pairs, as 52:54:00:12:34:56)", mac.value);
  }
  return mac;
}

/** The ports of a portForward: allPorts' every port per protocol, then each range less the excluded ones. */
function portsOf(
  ranges: Range[],
  { protocol, allPorts }: { protocol: typeof PROTOCOLS[number]; allPorts: boolean },
): { ports: PortSpec[]; positions: Map<PortSpec, Position> } {
  const ports: PortSpec[] = [];
  const positions = new Map<PortSpec, Position>();
  if (allPorts) {
    // Each protocol's every port, but those other forwards claim on the address (see reportClashes).
    for (const protocol of PROTOCOLS) {
      ports.push({ protocol, publicPort: 1, privatePort: 1, count: 65535, all: { except: {} } });
    }
  }
  const excluded = ranges.filter((r) => r.exclude);
  for (const r of ranges.filter((r) => !r.exclude)) {
    for (const [first, last] of subtract([r.start, r.end], excluded.map((x) => [x.start, x.end]))) {
      const spec = {
        protocol,
        publicPort: first,
        privatePort: r.to + (first - r.start),
        count: last - first + 1,
      };
      ports.push(spec);
      positions.set(spec, r.at);
    }
  }
  return { ports, positions };
}

/** Where an element or attribute stands: its line, column and path. */
export interface Position {
  line: number;
  column: number;
  path: string;
}

interface Range {
  start: number;
  end: number;
  to: number;
  exclude: boolean;
  at: Position;
}

/** The `<range>` children: each checked, in order. */
function readRanges(el: XmlElement, path: string, fail: Problem): Range[] {
  const out: Range[] = [];
  let n = 0;
  for (const r of el.children) {
    if (r.local !== "range" || !ourOrNone(r)) {
      fail(r, `${path}/${r.local}`, `Unknown element <${r.name}>; <portForward> holds <range>`);
      continue;
    }
    const here = `${path}/range[${++n}]`;
    let bad = false;
    const named = new Map<string, XmlAttribute>();
    for (const a of r.attributes) {
      if (a.name === "xmlns" || a.name.startsWith("xmlns:")) continue;
      if (a.uri !== "" || !(a.name in RANGE_ATTRIBUTES)) {
        bad = true;
        fail(
          a,
          `${here}/@${a.name}`,
          `Unknown attribute "${a.name}"; known: ${Object.keys(RANGE_ATTRIBUTES).join(", ")}`,
        );
      } else named.set(a.name, a);
    }
    const port = (name: "start" | "end" | "to"): number | undefined => {
      const a = named.get(name);
      if (!a) return undefined;
      const value = /^[0-9]{1,5}$/.test(a.value.trim()) ? Number(a.value.trim()) : NaN;
      if (value >= 1 && value <= 65535) return value;
      bad = true;
      fail(
        a,
        `${here}/@${name}`,
        Number.isNaN(value) ? "Expected a port number" : "Port out of range 1-65535",
        a.value,
      );
      return undefined;
    };
    const start = port("start"), end = port("end"), to = port("to");
    if (!named.has("start")) {
      bad = true;
      fail(r, here, 'Missing required attribute "start"');
    }
    const ex = named.get("exclude");
    if (ex && ex.value !== "yes" && ex.value !== "no") {
      bad = true;
      fail(ex, `${here}/@exclude`, 'Expected "yes" or "no"', ex.value);
    }
    const exclude = ex?.value === "yes";
    if (exclude && named.has("to")) {
      bad = true;
      fail(
        named.get("to")!,
        `${here}/@to`,
        "An excluded range goes nowhere: drop to",
        named.get("to")!.value,
      );
    }
    if (bad || start === undefined) continue;
    const last = end ?? start;
    if (last < start) {
      fail(
        named.get("end")!,
        `${here}/@end`,
        `The range ends (${last}) before it starts (${start})`,
        String(last),
      );
      continue;
    }
    const base = to ?? start;
    if (base + (last - start) > 65535) {
      fail(
        named.get("to")!,
        `${here}/@to`,
        `The guest's range ${base}-${base + last - start} runs past port 65535`,
        String(base),
      );
      continue;
    }
    out.push({ start, end: last, to: base, exclude, at: { line: r.line, column: r.column, path: here } });
  }
  return out;
}

/** A run of ports less the excluded runs: what is left, in order. */
function subtract(run: [number, number], excluded: [number, number][]): [number, number][] {
  let left: [number, number][] = [run];
  for (const [a, b] of excluded) {
    left = left.flatMap(([x, y]): [number, number][] => {
      if (b < x || a > y) return [[x, y]];
      return [
        ...(a > x ? [[x, a - 1] as [number, number]] : []),
        ...(b < y ? [[b + 1, y] as [number, number]] : []),
      ];
    });
  }
  return left;
}
