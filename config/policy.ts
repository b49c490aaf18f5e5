/**
 * The administrator's policy for forwards declared in a guest's XML (`"/settings".xml_forwards`) and the addresses
 * that are this host's though no interface holds them (`"/settings".host_addresses`): read from the JSON file,
 * the only file root alone may write, and looked up per domain.
 */

import type { Node } from "jsonc-parser";
import {
  type Address,
  formatNetwork,
  type Network,
  networkOf,
  parseAddress,
  type Protocol,
  PROTOCOLS,
} from "../system/address.ts";
import { jsonPath, SETTINGS_KEY, type XmlRule } from "./model.ts";
import { kind, type Report } from "./nodes.ts";

export type { XmlRule };

/** What a guest's XML may declare where no rule says otherwise: its own addresses, ports the host leaves free. */
export const DEFAULT_XML_RULE: XmlRule = {
  domains: ["*"],
  enabled: true,
  targets: [],
  protocols: [...PROTOCOLS],
  hostPorts: false,
  snat: false,
  allPorts: false,
  anyAddress: false,
};

/** The fields of an `xml_forwards` rule, with what they hold (the README, the schema and the errors list them). */
export const XML_RULE_FIELDS = {
  domains: "domain name patterns this rule is for (* and ?); required",
  enabled: "false: forwards in the XML of these domains are not read (default true)",
  addresses:
    "the public addresses or networks their XML may use (default: any non-loopback address of this host)",
  targets: "addresses or networks their forwards may target beyond the guest's own (default: none)",
  protocols: 'the protocols they may forward (default ["tcp", "udp"])',
  ports: "the public ports they may claim: numbers and [first, last] ranges (default: any)",
  host_ports: "true: they may take a port the host itself listens on (default false)",
  snat: 'true: snat="yes" is allowed (default false)',
  all_ports: 'true: allPorts="yes" is allowed (default false)',
  any_address: 'true: address="*" (every local address of this host, whatever addresses says) is allowed ' +
    "(default false)",
} as const;

/** The rule for a domain: the first whose pattern matches its name, else the defaults. */
export function xmlRuleFor(rules: XmlRule[], domain: string): XmlRule {
  return rules.find((r) => r.domains.some((p) => globMatch(p, domain))) ?? DEFAULT_XML_RULE;
}

/** How a refusal names the setting that would allow it: `"host_ports": true in "/settings".xml_forwards[0]`. */
export function allowedBy(rule: XmlRule, setting: string): string {
  const where = rule.path ?? `a "${SETTINGS_KEY}".xml_forwards rule for this domain`;
  return `allow it with ${setting} in ${where}`;
}

/** Whether a shell-style pattern (`*`, `?`) matches the whole of a name. */
export function globMatch(pattern: string, name: string): boolean {
  const re = pattern.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".");
  return new RegExp(`^${re}$`, "s").test(name);
}

/** Parses an address or a network (CIDR); undefined where it is neither. */
export function parseNetwork(text: string): Network | undefined {
  const [addr = "", prefix, ...more] = text.split("/");
  const parsed = parseAddress(addr);
  if (!parsed || more.length > 0) return undefined;
  const bits = parsed.family === 4 ? 32 : 128;
  if (prefix === undefined) return networkOf(parsed, bits);
  if (!/^[0-9]{1,3}$/.test(prefix) || Number(prefix) > bits) return undefined;
  return networkOf(parsed, Number(prefix));
}

/** Whether an address lies in one of the networks (given as text, see parseNetwork). */
export function inNetworks(addr: Address, networks: string[]): boolean {
  return networks.some((text) => {
    const net = parseNetwork(text);
    return net !== undefined && net.family === addr.family &&
      networkOf(addr, net.prefix).value === net.value;
  });
}

/** Whether an address is a loopback one (127.0.0.0/8, ::1): a forward there takes the host's own services. */
export function isLoopback(addr: Address): boolean {
  return addr.family === 4 ? addr.value >> 24n === 127n : addr.value === 1n;
}

/**
 * Whether an address is this host's: held by one of its interfaces (`addresses`, undefined where unknown: then
 * yes), or in `"/settings".host_addresses`; never a loopback one.
 */
export function isHostAddress(addr: Address, addresses: string[] | undefined, declared: string[]): boolean {
  if (isLoopback(addr)) return false;
  return addresses === undefined || addresses.includes(addr.text) || inNetworks(addr, declared);
}

/** Reads `host_addresses`: a list of addresses and networks, canonical. */
export function readHostAddresses(node: Node, path: string, report: Report): string[] {
  return readNetworks(node, path, report);
}

/** A list of addresses and networks (CIDR), each canonical: an address where the prefix takes it whole. */
function readNetworks(node: Node, path: string, report: Report): string[] {
  if (node.type !== "array") {
    report(node, path, `Expected a list of addresses or networks (CIDR), found ${kind(node)}`);
    return [];
  }
  const out: string[] = [];
  (node.children ?? []).forEach((item, i) => {
    const net = typeof item.value === "string" ? parseNetwork(item.value) : undefined;
    if (item.type !== "string" || !net) {
      return report(item, `${path}[${i}]`, "Not an IP address or network (CIDR)");
    }
    out.push(
      net.prefix === (net.family === 4 ? 32 : 128) ? formatNetwork(net).split("/")[0]! : formatNetwork(net),
    );
  });
  return out;
}

/** Reads `xml_forwards`: false (off for every domain), true (the defaults), or a list of rules. */
export function readXmlForwards(node: Node, path: string, report: Report): XmlRule[] {
  if (node.type === "boolean") {
    return node.value === true ? [] : [{ ...DEFAULT_XML_RULE, path, enabled: false }];
  }
  if (node.type !== "array") {
    report(node, path, `Expected true, false or a list of rules, found ${kind(node)}`);
    return [];
  }
  const rules: XmlRule[] = [];
  (node.children ?? []).forEach((item, i) => {
    const rule = readRule(item, `${path}[${i}]`, report);
    if (rule) rules.push(rule);
  });
  return rules;
}

function readRule(node: Node, path: string, report: Report): XmlRule | undefined {
  if (node.type !== "object") {
    report(node, path, `Expected an object (a rule), found ${kind(node)}`);
    return undefined;
  }
  const rule: XmlRule = { ...DEFAULT_XML_RULE, path, domains: [] };
  let ok = true;
  const fail: Report = (...args) => {
    ok = false;
    report(...args);
  };
  const flag = (v: Node, here: string): boolean => {
    if (v.type === "boolean") return v.value === true;
    fail(v, here, `Expected true or false, found ${kind(v)}`);
    return false;
  };
  let named = false;
  for (const prop of node.children ?? []) {
    const [k, v] = prop.children ?? [];
    if (!k || !v) continue;
    const key = String(k.value);
    const here = jsonPath(path, key);
    switch (key) {
      case "domains": {
        named = true;
        const list = v.type === "string" ? [v] : v.type === "array" ? v.children ?? [] : [];
        if (list.length === 0 || list.some((p) => p.type !== "string" || p.value === "")) {
          fail(v, here, "Expected a domain name pattern or a list of them (* and ? match any characters)");
        } else rule.domains = list.map((p) => String(p.value));
        break;
      }
      case "enabled":
        rule.enabled = flag(v, here);
        break;
      case "host_ports":
        rule.hostPorts = flag(v, here);
        break;
      case "snat":
        rule.snat = flag(v, here);
        break;
      case "all_ports":
        rule.allPorts = flag(v, here);
        break;
      case "any_address":
        rule.anyAddress = flag(v, here);
        break;
      case "addresses":
        rule.addresses = readNetworks(v, here, fail);
        break;
      case "targets":
        rule.targets = readNetworks(v, here, fail);
        break;
      case "protocols": {
        const list = v.type === "array" ? v.children ?? [] : [];
        if (v.type !== "array" || list.some((p) => !(PROTOCOLS as readonly unknown[]).includes(p.value))) {
          fail(v, here, 'Expected a list of protocols ("tcp", "udp")');
        } else rule.protocols = list.map((p) => p.value as Protocol);
        break;
      }
      case "ports":
        rule.ports = readPortRanges(v, here, fail);
        break;
      default:
        fail(
          k,
          here,
          `Unknown field "${key}" of an xml_forwards rule; known: ${Object.keys(XML_RULE_FIELDS).join(", ")}`,
        );
    }
  }
  if (!named) fail(node, path, 'A rule needs "domains": the domain name patterns it is for');
  return ok ? rule : undefined;
}

function readPortRanges(node: Node, path: string, fail: Report): [number, number][] {
  const port = (n: Node | undefined) =>
    n?.type === "number" && Number.isInteger(n.value) && n.value >= 1 && n.value <= 65535
      ? n.value as number
      : 0;
  if (node.type !== "array") {
    fail(node, path, `Expected a list of ports and [first, last] ranges, found ${kind(node)}`);
    return [];
  }
  const out: [number, number][] = [];
  (node.children ?? []).forEach((item, i) => {
    const pair = item.type === "array" ? item.children ?? [] : [item];
    const first = port(pair[0]), last = port(pair.length === 2 ? pair[1] : pair[0]);
    if (pair.length > 2 || first === 0 || last === 0 || last < first) {
      return fail(item, `${path}[${i}]`, "Expected a port (1-65535) or a range [first, last]");
    }
    out.push([first, last]);
  });
  return out;
}

/** Whether every port of a run is within the ranges a rule allows (absent: all). */
export function portsAllowed(rule: XmlRule, first: number, last: number): boolean {
  return rule.ports === undefined || rule.ports.some(([a, b]) => a <= first && last <= b);
}
