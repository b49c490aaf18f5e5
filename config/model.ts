/** The config model's vocabulary: entries, settings, the loaded config and its positioned problems. */

import type { Family, Protocol } from "../system/address.ts";

/** The top-level key for settings that are not about one domain; libvirt forbids "/" in domain names. */
export const SETTINGS_KEY = "/settings";

/** The top-level key editors read for the JSON Schema; a domain entry is never a string, so it cannot clash. */
export const SCHEMA_KEY = "$schema";

/** Firewall backends a user may name in the settings. */
export const BACKENDS = ["auto", "iptables", "nftables"] as const;

/** One problem found in the config. `domains` lists the domains it stops; absent, it stops them all. */
export interface Diagnostic {
  severity: "error" | "warning";
  file: string;
  line: number;
  column: number;
  message: string;
  path: string;
  value?: string;
  domains?: string[];
}

/** Renders a diagnostic as `file:line:column: message (json.path = value)`. */
export function formatDiagnostic(d: Diagnostic): string {
  const where = d.path === "" ? "" : d.value === undefined ? ` (${d.path})` : ` (${d.path} = ${d.value})`;
  const level = d.severity === "warning" ? "warning: " : "";
  return `${d.file}:${d.line}:${d.column}: ${level}${d.message}${where}`;
}

/** A run of ports: `count` public ports from `publicPort` go to as many private ports from `privatePort`. */
export interface PortSpec {
  protocol: Protocol;
  publicPort: number;
  privatePort: number;
  count: number;
  /**
   * `all_ports`: every port (1-65535, each to the same port) but those that other forwards claim on the same
   * public address, per family: the config's other claims, known once every entry of every file is read.
   */
  all?: { except: Partial<Record<Family, [number, number][]>> };
}

/**
 * The addresses of one entry in one family; `publicIp` undefined means the host's default address, `"*"` any
 * local address of this host (ANY_ADDRESS).
 */
export interface Target {
  family: Family;
  /** The guest's address; undefined: to be found (the network's DHCP reservation, or the guest's lease). */
  privateIp?: string;
  publicIp?: string;
  /**
   * Who may use the forwards: this family's addresses, networks and ranges, merged and sorted as nftables keeps
   * them (config/sources.ts); absent: everyone (or sourceSet's members).
   */
  sources?: string[];
  /** Who may use the forwards: the members of our named set (`qemu set`); never together with sources. */
  sourceSet?: string;
}

/** One validated entry of a domain (a domain maps to one entry or a list of them). */
export interface Entry {
  path: string;
  /** The file the entry is in (the config's, or a drop-in's as named in hooks.d/): its problems name it. */
  file?: string;
  interface?: string;
  targets: Target[];
  ports: PortSpec[];
  /** `snat`: the guest's own new outgoing connections leave from each target's public address. */
  snat?: true;
  /** `log`: each new connection to the entry's forwards is logged, rate-limited (see Forward.log). */
  log?: true;
  /** `counters`: each forward's packets and bytes are counted too (see Forward.countTraffic). */
  counters?: true;
  /** Which of the guest's interfaces (its MAC, lower case), where the guest's address is to be found. */
  mac?: string;
  /** Only what arrives on this host interface (`dev`) is forwarded. */
  dev?: string;
  /** What the administrator calls the entry's forwards: shown by status, plan and doctor, carried in our rules. */
  description?: string;
  /** `"enabled": false`: configured, but nothing is installed for it (a start removes what is live of it). */
  enabled?: false;
}

/** A public address that stands for every local address of this host (loopback excluded): `"*"`. */
export const ANY_ADDRESS = "*";

/**
 * One rule of `xml_forwards`: what the XML of the domains it matches may declare. The first rule whose pattern
 * matches a domain's name is that domain's; a domain no rule matches gets the defaults (DEFAULT_XML_RULE).
 */
export interface XmlRule {
  /** Where the rule is (`"/settings".xml_forwards[0]`), for the messages that name it; absent for the defaults. */
  path?: string;
  /** Domain name patterns: `*` any run of characters, `?` one character. */
  domains: string[];
  /** Whether forwards in the XML are read at all. */
  enabled: boolean;
  /** The public addresses (or networks) it may use; absent: any non-loopback address of this host. */
  addresses?: string[];
  /** Addresses (or networks) it may target beyond the guest's own (a guest with a static address, say). */
  targets: string[];
  protocols: Protocol[];
  /** The public port ranges it may claim; absent: any. */
  ports?: [number, number][];
  /** Whether it may take a port the host itself listens on at that address. */
  hostPorts: boolean;
  /** Whether `snat="yes"` is allowed (the guest's outgoing connections leave from a whole public address). */
  snat: boolean;
  /** Whether `allPorts="yes"` is allowed (every port of a public address). */
  allPorts: boolean;
  /** Whether `address="*"` is allowed: every local address of the host, as if each were given. */
  anyAddress: boolean;
}

/** Settings that are not about one domain. */
export interface Settings {
  backend: typeof BACKENDS[number];
  /**
   * nftables base chains the administrator hands us (`<family> <table> <chain>`): our accept goes first in each,
   * as in libvirt's chain. Their own gates are never changed unasked.
   */
  acceptIn: string[];
  /**
   * Addresses and networks that are this host's though no interface holds them: additional addresses routed to
   * it, a floating address, one that comes later. A public address must be the host's (see config/policy.ts).
   */
  hostAddresses: string[];
  /** What a guest's XML may declare, per domain name pattern (see config/policy.ts); empty: the defaults. */
  xmlForwards: XmlRule[];
}

/**
 * A public port claimed (all_ports: every port of the address), where: in the config, or in a running guest's XML
 * (hook/claims.ts). What a guest's forwards are checked against, beyond its own config entry.
 */
export interface ClaimSummary {
  domain: string;
  file: string;
  path: string;
  line: number;
  column: number;
  address: string;
  protocol: Protocol;
  first: number;
  last: number;
  all?: true;
}

/** The result of loading a config: what is valid, and every problem found. */
export interface Config {
  file: string;
  /** False when no config file exists: then no domain is configured. */
  exists: boolean;
  /** True when the file could not be read or parsed as a whole: nothing in it can be trusted. */
  broken: boolean;
  /** Valid entries by domain; a domain with any error in its entries is absent here. */
  domains: Map<string, Entry[]>;
  /** Every top-level domain key that could be read, valid or not. */
  names: Set<string>;
  settings: Settings;
  diagnostics: Diagnostic[];
  /**
   * How many problems the whole file has, where `diagnostics` holds only some (a config loaded for one domain:
   * those that concern it, and the file's first ones).
   */
  diagnosticCount?: number;
  /**
   * Every public port the config claims, valid entries or not (see ClaimSummary); a config loaded for one domain
   * has them in a file of its own instead, read only for a guest whose XML has forwards (see configClaims).
   */
  claims?: ClaimSummary[];
  claimsFile?: string;
}

/** Appends a key to a JSON path: `a.b`, or `a["odd key"]` where the key is not a plain name. */
export function jsonPath(base: string, key: string): string {
  if (/^[A-Za-z_][A-Za-z0-9_-]*$/.test(key)) return base === "" ? key : `${base}.${key}`;
  return `${base}[${JSON.stringify(key)}]`;
}

/** What the config says about one domain: not there, unusable (with the reasons), or its entries. */
export type DomainConfig =
  | { kind: "absent" }
  | { kind: "invalid"; errors: Diagnostic[] }
  | { kind: "ok"; entries: Entry[] };

/** Host facts validation may use: the default public address per family, to find clashing claims. */
export interface ValidateOptions {
  defaultPublicIp?: Partial<Record<Family, string>>;
  /** The addresses this host's interfaces hold: an explicit public address must be one (or declared). */
  hostAddresses?: string[];
  /** How a public address that is not the host's is reported: an error (default), or a warning (`check`). */
  foreignAddresses?: "warning";
}
