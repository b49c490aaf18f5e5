/** One domain's entries: their fields, addresses, interface and ports, and the claims that must not clash. */

import { type Entry, jsonPath, type PortSpec, type Target, type ValidateOptions } from "./model.ts";
import type { Node } from "jsonc-parser";
import {
  type Address,
  type Family,
  formatNetwork,
  networkOf,
  parseAddress,
  type Protocol,
  PROTOCOLS,
} from "../system/address.ts";
import { kind, type Report } from "./nodes.ts";
import { type Claim, readPortMap, readPortRanges } from "./ports.ts";

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
      "The host address to forward from. Default: the address of the interface with the default route.",
  },
  source_ip: {
    type: "string",
    description: "Only this remote address or network (CIDR) may use the forwards.",
  },
  private_ipv6: { type: "string", description: "The guest's IPv6 address, beside an IPv4 private_ip." },
  public_ipv6: {
    type: "string",
    description: "The host IPv6 address to forward from; default as for public_ip.",
  },
  source_ipv6: {
    type: "string",
    description: "Only this IPv6 address or network may use the IPv6 forwards.",
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
} as const;

export function readDomain(
  domain: string,
  node: Node,
  report: Report,
  claims: Claim[],
  options: ValidateOptions,
): Entry[] | undefined {
  const base = jsonPath("", domain);
  const scoped: Report = (n, p, m, extra = {}) => report(n, p, m, { domains: [domain], ...extra });
  if (node.type === "object") {
    const entry = readEntry(domain, node, base, scoped, claims, options);
    return entry ? [entry] : undefined;
  }
  if (node.type === "array" && (node.children?.length ?? 0) > 0) {
    const entries = (node.children ?? []).map((item, i) => {
      const path = `${base}[${i}]`;
      if (item.type === "object") return readEntry(domain, item, path, scoped, claims, options);
      scoped(item, path, `Expected an entry object, found ${kind(item)}`);
      return undefined;
    });
    return entries.every((e) => e !== undefined) ? entries as Entry[] : undefined;
  }
  const hint = node.type === "array"
    ? "Expected an entry object or a non-empty list of them, found an empty list"
    : `Expected an entry object or a list of them, found ${kind(node)}; ` +
      "is this a config of another tool? libvirt-hook-qemu maps each domain name to its forwards";
  scoped(node, base, hint);
  return undefined;
}

function readEntry(
  domain: string,
  node: Node,
  path: string,
  report: Report,
  claims: Claim[],
  options: ValidateOptions,
): Entry | undefined {
  let failed = false;
  const fail: Report = (n, p, m, extra) => {
    failed = true;
    report(n, p, m, extra);
  };
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
  const str = (key: keyof typeof ENTRY_FIELDS): string | undefined => {
    const v = fields.get(key);
    if (!v) return undefined;
    if (v.type === "string") return v.value as string;
    fail(v, jsonPath(path, key), `Expected a string, found ${kind(v)}`);
    return undefined;
  };

  const iface = str("interface");
  const badName = iface === undefined ? undefined : interfaceNameProblem(iface);
  if (badName) {
    fail(fields.get("interface"), jsonPath(path, "interface"), `Not a valid interface name: ${badName}`);
  }

  const address = (
    key: keyof typeof ENTRY_FIELDS,
    want?: Family,
    allowNetwork = false,
  ): Address | undefined => {
    const text = str(key);
    if (text === undefined) return undefined;
    const n = fields.get(key);
    const [addrText = "", prefixText, ...more] = text.split("/");
    const addr = parseAddress(addrText);
    const prefixOk = prefixText === undefined ||
      (allowNetwork && more.length === 0 && /^[0-9]{1,3}$/.test(prefixText) &&
        Number(prefixText) <= (addr?.family === 6 ? 128 : 32));
    if (!addr || !prefixOk) {
      const what = allowNetwork ? "an IP address or network (CIDR)" : "an IP address";
      fail(n, jsonPath(path, key), `Not ${what}`);
      return undefined;
    }
    if (want && addr.family !== want) {
      fail(n, jsonPath(path, key), `Expected an IPv${want} address, found IPv${addr.family}`);
      return undefined;
    }
    if (prefixText === undefined || Number(prefixText) === (addr.family === 4 ? 32 : 128)) return addr;
    // A network is kept in the form iptables prints it: host bits cleared.
    return { ...addr, text: formatNetwork(networkOf(addr, Number(prefixText))) };
  };

  const targets: Target[] = [];
  // Which field gave each target's public address (public_ip, but public_ipv6 for a second, IPv6 target).
  const publicKey = new Map<Target, "public_ipv6">();
  const privateIp = address("private_ip");
  // No private_ip (nor private_ipv6): the guest's address is found when it starts (its DHCP reservation or lease),
  // in the family of public_ip (or source_ip); IPv4 where neither says.
  const found = !fields.has("private_ip") && !fields.has("private_ipv6");
  const foundFamily = found
    ? (["public_ip", "source_ip"] as const).map((k) => fields.get(k))
      .map((v) => v?.type === "string" ? parseAddress(String(v.value).split("/")[0]!) : undefined)
      .find((a) => a !== undefined)?.family ?? 4
    : undefined;
  if (privateIp || foundFamily) {
    const fam = privateIp?.family ?? foundFamily!;
    const privateKey = privateIp ? "private_ip" : "the guest's address";
    const mixed = (key: keyof typeof ENTRY_FIELDS) => {
      const a = address(key, undefined, key === "source_ip");
      if (a && a.family !== fam) {
        fail(
          fields.get(key),
          jsonPath(path, key),
          `Cannot forward between families: ${privateKey} is IPv${fam}, ${key} is IPv${a.family}`,
        );
        return undefined;
      }
      return a;
    };
    const source = mixed("source_ip");
    if (source?.text === "8.8.8.8") {
      report(
        fields.get("source_ip"),
        jsonPath(path, "source_ip"),
        "This is the old example's placeholder: only 8.8.8.8 may use these forwards",
        {
          severity: "warning",
        },
      );
    }
    targets.push(target(fam, privateIp, mixed("public_ip"), source));
  }
  const private6 = address("private_ipv6", 6);
  const public6 = address("public_ipv6", 6);
  const source6 = address("source_ipv6", 6, true);
  if (private6) {
    if (privateIp?.family === 6) {
      fail(
        fields.get("private_ipv6"),
        jsonPath(path, "private_ipv6"),
        "private_ip is IPv6 already; use one of them",
      );
    } else targets.push(target(6, private6, public6, source6));
    if (public6) publicKey.set(targets.at(-1)!, "public_ipv6");
  } else {
    for (const key of ["public_ipv6", "source_ipv6"] as const) {
      if (fields.has(key) && !fields.has("private_ipv6")) {
        fail(fields.get(key), jsonPath(path, key), `${key} needs private_ipv6`);
      }
    }
  }

  const ports: PortSpec[] = [];
  const claim = (
    n: Node,
    p: string,
    protocol: Protocol,
    publicPort: number,
    privatePort: number,
    count = 1,
  ) => {
    ports.push({ protocol, publicPort, privatePort, count });
    for (const t of targets) {
      const addr = t.publicIp ?? options.defaultPublicIp?.[t.family] ?? `default IPv${t.family} address`;
      claims.push({
        report,
        domain,
        node: n,
        path: p,
        address: addr,
        protocol,
        first: publicPort,
        last: publicPort + count - 1,
        ...publicOf(t),
      });
    }
  };
  /** Where a target's explicit public address is given, for the check that it is the host's (see parseConfigs). */
  const publicOf = (t: Target): Pick<Claim, "public"> => {
    const key = publicKey.get(t) ?? "public_ip";
    const n = fields.get(key);
    return t.publicIp === undefined || !n ? {} : { public: { node: n, path: jsonPath(path, key) } };
  };
  readPortMap(fields.get("port_map"), jsonPath(path, "port_map"), fail, report, claim);
  readPortRanges(fields.get("port_range"), jsonPath(path, "port_range"), fail, report, claim);
  /**
   * A flag that takes a whole public address (all_ports, snat): its node where it is true and every target names
   * its public address; a positioned error where it is no boolean, or where an address is left to the default.
   */
  const wholeAddress = (key: "all_ports" | "snat", what: string): Node | undefined => {
    const n = fields.get(key);
    if (!n) return undefined;
    if (n.type !== "boolean") {
      fail(n, jsonPath(path, key), `Expected true or false, found ${kind(n)}`);
      return undefined;
    }
    if (n.value !== true) return undefined;
    const implicit = targets.filter((t) => t.publicIp === undefined);
    if (implicit.length === 0) return n;
    const want = implicit.map((t) => (t.family === 6 && targets.length > 1 ? "public_ipv6" : "public_ip"));
    fail(n, jsonPath(path, key), `${key} ${what}, so it needs one given: set ${want.join(" and ")}`);
    return undefined;
  };
  const allNode = wholeAddress("all_ports", "takes every port of its public address");
  if (allNode) {
    // Each protocol's every port, but those other forwards claim on the address (known once all are read).
    for (const protocol of PROTOCOLS) {
      const spec: PortSpec = { protocol, publicPort: 1, privatePort: 1, count: 65535, all: { except: {} } };
      ports.push(spec);
      for (const t of targets) {
        claims.push({
          report,
          domain,
          node: allNode,
          path: jsonPath(path, "all_ports"),
          address: t.publicIp!,
          protocol,
          first: 1,
          last: 65535,
          all: { spec, family: t.family },
          ...publicOf(t),
        });
      }
    }
  }
  const snatNode = wholeAddress("snat", "makes the guest's connections leave from its public address");
  if (snatNode) {
    for (const t of targets) {
      claims.push({
        report,
        domain,
        node: snatNode,
        path: jsonPath(path, "snat"),
        address: t.publicIp!,
        protocol: "tcp",
        first: 0,
        last: 0,
        snat: { privateIp: t.privateIp ?? `the address found for ${domain}` },
        ...publicOf(t),
      });
    }
  }
  if (!["port_map", "port_range", "all_ports", "snat"].some((k) => fields.has(k))) {
    report(node, path, "Entry forwards no port: give port_map or port_range", { severity: "warning" });
  }
  if (failed) return undefined;
  return {
    path,
    ...(iface === undefined ? {} : { interface: iface }),
    targets,
    ports,
    ...(snatNode ? { snat: true as const } : {}),
  };
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

export function target(family: Family, privateIp?: Address, publicIp?: Address, source?: Address): Target {
  return {
    family,
    ...(privateIp ? { privateIp: privateIp.text } : {}),
    ...(publicIp ? { publicIp: publicIp.text } : {}),
    ...(source ? { source: source.text } : {}),
  };
}
