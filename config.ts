/** Reads hooks.jsonc (or the old hooks.json), validates it, and reports problems with file, line and column. */

import type { Node, ParseError } from "jsonc-parser";
import { type Address, type Family, formatNetwork, networkOf, parseAddress } from "./lib/address.ts";
import { cutTooDeep, invalidUtf8, MAX_DEPTH } from "./lib/jsonc_scan.ts";

/** The protocols a forward can use: DNAT by port needs one of these. */
export const PROTOCOLS = ["tcp", "udp"] as const;
/** A forwardable protocol. */
export type Protocol = typeof PROTOCOLS[number];

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
}

/** The addresses of one entry in one family; `publicIp` undefined means the host's default address. */
export interface Target {
  family: Family;
  privateIp: string;
  publicIp?: string;
  source?: string;
}

/** One validated entry of a domain (a domain maps to one entry or a list of them). */
export interface Entry {
  path: string;
  interface?: string;
  targets: Target[];
  ports: PortSpec[];
}

/** Settings that are not about one domain. */
export interface Settings {
  backend: typeof BACKENDS[number];
  /**
   * nftables base chains the administrator hands us (`<family> <table> <chain>`): our accept goes first in each,
   * as in libvirt's chain. Their own gates are never changed unasked.
   */
  acceptIn: string[];
}

/** The families a chain handed to us (`accept_in`) may be of: those whose forward hook sees routed traffic. */
const ACCEPT_IN_FAMILIES = ["ip", "ip6", "inet"];

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
}

/** Where the config lives: CONFIG_FILENAME, else CONFIG_PATH/hooks.jsonc, else CONFIG_PATH/hooks.json. */
export function configCandidates(env: (name: string) => string | undefined): string[] {
  const explicit = env("CONFIG_FILENAME");
  if (explicit) return [explicit];
  const dir = (env("CONFIG_PATH") || "/etc/libvirt/hooks").replace(/\/+$/, "") || "/";
  return [`${dir}/hooks.jsonc`, `${dir}/hooks.json`];
}

type Jsonc = typeof import("./lib/jsonc.ts");
let jsonc: Jsonc | undefined;

/**
 * Loads the JSONC parser (npm:jsonc-parser). It is loaded on demand: as a CommonJS package it brings up Deno's Node
 * compatibility layer, about 17 ms, which a hook call whose config is already validated (see the cache) never pays.
 */
export async function loadParser(): Promise<void> {
  jsonc ??= await import("./lib/jsonc.ts");
}

/** The config file as read, once per call: the first of the candidates that exists, or why it cannot be read. */
export type ConfigSource =
  | { file: string; text: string; invalidUtf8?: number[] }
  | { file: string; error: string }
  | { file: string; missing: true };

const decoder = new TextDecoder();

/**
 * Reads the first config file that exists among `candidates`; synchronously: libvirt waits for the hook. Bytes that
 * are no UTF-8 are kept as U+FFFD with their offsets (`invalidUtf8`), to be reported where they are, never used.
 */
export function readConfigSource(candidates: string[]): ConfigSource {
  for (const file of candidates) {
    try {
      return decodeConfig(file, Deno.readFileSync(file));
    } catch (err) {
      if (err instanceof Deno.errors.NotFound) continue;
      return { file, error: `Cannot read the config: ${err instanceof Error ? err.message : String(err)}` };
    }
  }
  return { file: candidates[0] ?? "hooks.jsonc", missing: true };
}

/** The config file's bytes as text, with where they were not UTF-8 (see readConfigSource). */
export function decodeConfig(file: string, bytes: Uint8Array): ConfigSource {
  // A plain decode is three times faster than a fatal one; a U+FFFD in the text (rare) says to look closer.
  const text = decoder.decode(bytes);
  if (!text.includes("\uFFFD")) return { file, text };
  const invalid = invalidUtf8(bytes);
  return invalid.length === 0 ? { file, text } : { file, text, invalidUtf8: invalid };
}

/**
 * Whether the config's text has a domain's name in it: a hint, before validating, that the domain may have
 * forwards. A name spelled with JSON escapes is missed, and a name inside another one is found: the hint only
 * decides what the hook does while it validates, never what it applies.
 */
export function configMentions(source: ConfigSource, domain: string): boolean {
  return "text" in source && domain !== "" && source.text.includes(domain);
}

/**
 * Validates the config read from `candidates` (or the `source` read from them already). With `cacheDir`, a
 * validated config is kept there (on /run, a tmpfs) with the code's identity, the file name, the options and the
 * text it came from, and reused as long as none of them changes.
 */
export async function loadConfig(
  candidates: string[],
  options: ValidateOptions = {},
  cacheDir?: string,
  source: ConfigSource = readConfigSource(candidates),
): Promise<Config> {
  const { file } = source;
  if ("missing" in source) return emptyConfig(file, false);
  if ("error" in source) {
    return { ...emptyConfig(file, true), broken: true, diagnostics: [fileProblem(file, source.error)] };
  }
  const invalid = source.invalidUtf8 ?? [];
  const key = cacheDir === undefined ? undefined : cacheKey(file, options, source.text, invalid);
  const cached = key === undefined ? undefined : readCache(cacheDir!, key);
  if (cached) return cached;
  await loadParser();
  const config = parseConfig(source.text, file, options, invalid);
  if (key !== undefined) await writeCache(cacheDir!, key, config);
  return config;
}

/**
 * The config as one domain's start needs it (see loadConfig): the domain's entries, every problem that concerns it,
 * the file's first problems and how many there are. From a cache of its own, one line per domain, so that with a
 * file of 200 000 entries a start reads one line of them (~0.1 s), not the whole validated config (~2 s).
 */
export async function loadConfigFor(
  domain: string,
  candidates: string[],
  { options = {}, cacheDir, source = readConfigSource(candidates) }: {
    options?: ValidateOptions;
    cacheDir?: string | undefined;
    source?: ConfigSource;
  } = {},
): Promise<Config> {
  if (!("text" in source) || cacheDir === undefined) {
    return await loadConfig(candidates, options, cacheDir, source);
  }
  const invalid = source.invalidUtf8 ?? [];
  // The text by its length and a 64-bit digest: the view is read by every start, so it cannot hold 19 MB of key.
  const key = cacheKey(source.file, options, `${source.text.length}:${digest(source.text)}`, invalid);
  const cached = readView(cacheDir, key, domain);
  if (cached) return cached;
  await loadParser();
  const config = parseConfig(source.text, source.file, options, invalid);
  writeView(cacheDir, key, config);
  return config;
}

/** How many of the file's first problems a domain's view keeps, beside its own (see MAX_PRINTED_PROBLEMS). */
const VIEW_FIRST = 40;
/** Domains per shard of a view: a start reads one shard, a file of 200 000 entries makes 200 of them. */
const VIEW_SHARD = 1000;

/**
 * The view cache, a directory: `head` holds the key, the file's facts, its first problems and the problems of
 * several domains or of the whole file; each shard `<n>` one line per domain of its share (by a hash of the name):
 * the name (JSON), a tab, its entries and its own problems. Every problem carries its index, so a view puts them
 * back in the file's order.
 */
function writeView(dir: string, key: string, config: Config): void {
  const indexed = config.diagnostics.map((d, n) => ({ ...d, n }));
  const own = new Map<string, typeof indexed>();
  const shared: typeof indexed = [];
  for (const d of indexed) {
    if (d.domains?.length === 1) {
      const list = own.get(d.domains[0]!) ?? [];
      list.push(d);
      own.set(d.domains[0]!, list);
    } else shared.push(d);
  }
  const shards = Math.min(256, Math.ceil(config.names.size / VIEW_SHARD) || 1);
  const head = {
    key,
    file: config.file,
    exists: config.exists,
    broken: config.broken,
    settings: config.settings,
    count: indexed.length,
    first: indexed.slice(0, VIEW_FIRST),
    shared,
    shards,
  };
  const lines: string[][] = Array.from({ length: shards }, () => []);
  for (const name of config.names) {
    const entry = { entries: config.domains.get(name), own: own.get(name) ?? [] };
    lines[shardOf(name, shards)]!.push(`${JSON.stringify(name)}\t${JSON.stringify(entry)}`);
  }
  const target = viewDir(dir);
  const tmp = `${target}.${Deno.pid}`;
  try {
    Deno.mkdirSync(tmp, { recursive: true, mode: 0o700 });
    lines.forEach((l, n) => Deno.writeTextFileSync(`${tmp}/${n}`, l.join("\n") + "\n"));
    Deno.writeTextFileSync(`${tmp}/head`, JSON.stringify(head));
    // Replaced as a whole; a reader that comes in between finds none, or an old head that does not match.
    Deno.removeSync(target, { recursive: true });
  } catch {
    // Not there yet, or cannot be written: then the rename below says which.
  }
  try {
    Deno.renameSync(tmp, target);
  } catch {
    // A cache that cannot be written only costs the next call a parse.
    try {
      Deno.removeSync(tmp, { recursive: true });
    } catch {
      // Nothing was made.
    }
  }
}

function readView(dir: string, key: string, domain: string): Config | undefined {
  try {
    type Indexed = Diagnostic & { n: number };
    const head = JSON.parse(Deno.readTextFileSync(`${viewDir(dir)}/head`));
    if (head.key !== key) return undefined;
    const text = Deno.readTextFileSync(`${viewDir(dir)}/${shardOf(domain, head.shards)}`);
    const prefix = `${JSON.stringify(domain)}\t`;
    const at = text.startsWith(prefix) ? 0 : text.indexOf(`\n${prefix}`) + 1;
    const line = at <= 0 && !text.startsWith(prefix)
      ? undefined
      : text.slice(at + prefix.length, text.indexOf("\n", at));
    const mine: { entries?: Entry[]; own: Indexed[] } = line === undefined ? { own: [] } : JSON.parse(line);
    const relevant = [
      ...(head.shared as Indexed[]).filter((d) => !d.domains || d.domains.includes(domain)),
      ...mine.own,
    ];
    const seen = new Set(relevant.map((d) => d.n));
    const diagnostics = [...relevant, ...(head.first as Indexed[]).filter((d) => !seen.has(d.n))]
      .sort((a, b) => a.n - b.n)
      .map(({ n: _, ...d }) => d);
    return {
      file: head.file,
      exists: head.exists,
      broken: head.broken,
      settings: head.settings,
      domains: new Map(mine.entries ? [[domain, mine.entries]] : []),
      names: new Set(line === undefined ? [] : [domain]),
      diagnostics,
      diagnosticCount: head.count,
    };
  } catch {
    return undefined;
  }
}

/** A 64-bit digest of a text: two FNV-1a lanes over its UTF-16 units (~30 ms for 19 MB; no WebCrypto to load). */
function digest(text: string): string {
  let a = 0x811c9dc5, b = 0x01000193 ^ 0x5bd1e995;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193);
    b = Math.imul(b ^ c, 0x5bd1e995) ^ (b >>> 15);
  }
  return (a >>> 0).toString(16).padStart(8, "0") + (b >>> 0).toString(16).padStart(8, "0");
}

/** The shard a domain's line lies in: FNV-1a of its name. */
function shardOf(name: string, shards: number): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193) >>> 0;
  return h % shards;
}

function viewDir(dir: string): string {
  return cacheFile(dir).replace(/config-cache-/, "config-view-").replace(/\.json$/, "");
}

/** The cache file of this copy of the code, so that two installed forms never evict each other's entry. */
function cacheFile(dir: string): string {
  let h = 0;
  for (const c of import.meta.url) h = (Math.imul(h, 31) + c.charCodeAt(0)) >>> 0;
  return `${dir}/config-cache-${h.toString(16)}.json`;
}

function cacheKey(file: string, options: ValidateOptions, text: string, invalid: number[]): string {
  // The code is part of the key: an upgraded hook never trusts what an older one validated.
  let code = import.meta.url;
  for (const path of [new URL(import.meta.url), Deno.execPath()]) {
    try {
      code += `|${Deno.statSync(path).mtime?.getTime()}`;
      break;
    } catch {
      // Not a file here (a compiled binary's embedded sources): the binary itself stands for the code.
    }
  }
  // The whole of it, compared exactly: no hash to collide, and no WebCrypto to load (~1 ms) on the hook's path.
  // Where bytes were not UTF-8 is part of it too: the text alone cannot tell them from a U+FFFD written as such.
  return JSON.stringify([code, file, options, text, invalid]);
}

function readCache(dir: string, key: string): Config | undefined {
  try {
    const saved = JSON.parse(Deno.readTextFileSync(cacheFile(dir)));
    if (saved.key !== key) return undefined;
    const c = saved.config;
    return { ...c, domains: new Map(c.domains), names: new Set(c.names) };
  } catch {
    return undefined;
  }
}

async function writeCache(dir: string, key: string, config: Config): Promise<void> {
  try {
    await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
    const tmp = `${cacheFile(dir)}.${Deno.pid}`;
    const saved = { key, config: { ...config, domains: [...config.domains], names: [...config.names] } };
    await Deno.writeTextFile(tmp, JSON.stringify(saved));
    await Deno.rename(tmp, cacheFile(dir));
  } catch {
    // A cache that cannot be written only costs the next call a parse.
  }
}

function emptyConfig(file: string, exists: boolean): Config {
  return {
    file,
    exists,
    broken: false,
    domains: new Map(),
    names: new Set(),
    settings: { backend: "auto", acceptIn: [] },
    diagnostics: [],
  };
}

function fileProblem(file: string, message: string): Diagnostic {
  return { severity: "error", file, line: 1, column: 1, message, path: "" };
}

/** Host facts validation may use: the default public address per family, to find clashing claims. */
export interface ValidateOptions {
  defaultPublicIp?: Partial<Record<Family, string>>;
}

/**
 * Parses and validates config text; `file` is used in messages only; `invalidUtf8`: where the file's bytes were
 * not UTF-8 (see readConfigSource). Needs `await loadParser()` first.
 */
export function parseConfig(
  text: string,
  file: string,
  options: ValidateOptions = {},
  invalidUtf8: number[] = [],
): Config {
  if (!jsonc) throw new Error("Cannot parse the config: the parser is not loaded (await loadParser() first)");
  const config = emptyConfig(file, true);
  const errors: ParseError[] = [];
  // Nesting deep enough to exhaust the parser's recursion is cut out first, and stops only the entry that holds it.
  const cut = cutTooDeep(text);
  const root = jsonc.parseTree(cut.text, errors, { allowTrailingComma: true, disallowComments: false });
  const lines = lineStarts(text);
  const at = (offset: number) => position(lines, offset);
  const report = (node: Node | undefined, path: string, message: string, extra: Partial<Diagnostic> = {}) => {
    const { line, column } = at(node?.offset ?? 0);
    const isKey = node?.parent?.type === "property" && node.parent.children?.[0] === node;
    const value = node && !isKey && node.type !== "object" && node.type !== "array" ? show(node) : undefined;
    config.diagnostics.push({
      severity: "error",
      file,
      line,
      column,
      message,
      path,
      ...(value === undefined ? {} : { value }),
      ...extra,
    });
  };

  if (root?.type === "object") {
    for (const prop of root.children ?? []) {
      const key = prop.children?.[0]?.value;
      if (typeof key === "string" && key !== SETTINGS_KEY && key !== SCHEMA_KEY) config.names.add(key);
    }
  }
  const tooDeep = new Set<string>();
  for (const d of cut.tooDeep) {
    const { line, column } = at(d.offset);
    // At the root, or in the settings: every domain depends on it.
    const scoped = d.key !== undefined && d.key !== SETTINGS_KEY;
    if (d.key !== undefined) tooDeep.add(d.key);
    config.diagnostics.push({
      severity: "error",
      file,
      line,
      column,
      message: `Nesting deeper than ${MAX_DEPTH} levels`,
      path: d.key === undefined ? "" : jsonPath("", d.key),
      ...(scoped ? { domains: [d.key!] } : {}),
    });
    if (!scoped) config.broken = true;
  }
  reportInvalidUtf8(invalidUtf8, root, config, at);
  if (errors.length > 0) {
    config.broken = true;
    // A broken file stops the domains it names; when none can be named, it stops them all.
    const domains = config.names.size > 0 ? { domains: [...config.names] } : {};
    const seen = new Set<string>();
    for (const e of errors) {
      const key = `${e.offset} ${e.error}`;
      if (seen.has(key)) continue;
      seen.add(key);
      const { line, column } = at(e.offset);
      config.diagnostics.push({
        severity: "error",
        file,
        line,
        column,
        message: `Cannot parse the config: ${parseErrorText(e.error)}`,
        path: "",
        ...domains,
      });
    }
    return config;
  }
  if (!root) {
    // An empty (or comment-only) file configures nothing.
    return config;
  }
  if (root.type !== "object") {
    config.broken = true;
    if (!cut.tooDeep.some((d) => d.key === undefined)) {
      report(root, "", `Expected an object mapping domain names to entries, found ${kind(root)}`);
    }
    return config;
  }

  const claims: Claim[] = [];
  for (const prop of root.children ?? []) {
    const [keyNode, valueNode] = prop.children ?? [];
    if (!keyNode || !valueNode) continue;
    const key = String(keyNode.value);
    if (tooDeep.has(key)) continue;
    if (key === SCHEMA_KEY && valueNode.type === "string") continue;
    if (key === SETTINGS_KEY) {
      readSettings(valueNode, config, report);
      continue;
    }
    const entries = readDomain(key, valueNode, report, claims, options);
    if (entries) config.domains.set(key, entries);
  }
  reportClashes(claims, report);
  for (const d of config.diagnostics) {
    if (d.severity === "error") { for (const name of d.domains ?? []) config.domains.delete(name); }
  }
  return config;
}

/**
 * Reports each place where the file's bytes were not UTF-8: inside a top-level entry, an error of that entry (a
 * name or an address with a U+FFFD in it is never what was meant; in the settings, of the whole file); between
 * entries (a comment), a warning.
 */
function reportInvalidUtf8(
  offsets: number[],
  root: Node | undefined,
  config: Config,
  at: (offset: number) => { line: number; column: number },
) {
  for (const offset of offsets) {
    const prop = root?.type === "object"
      ? root.children?.find((p) => p.offset <= offset && offset < p.offset + p.length)
      : undefined;
    const key = prop?.children?.[0]?.value;
    const { line, column } = at(offset);
    config.diagnostics.push({
      severity: prop ? "error" : "warning",
      file: config.file,
      line,
      column,
      message: prop
        ? "Not UTF-8: bytes here are no text"
        : "Not UTF-8: bytes here are no text (between entries: ignored)",
      path: typeof key === "string" ? jsonPath("", key) : "",
      ...(typeof key === "string" && key !== SETTINGS_KEY ? { domains: [key] } : {}),
    });
  }
}

type Report = (node: Node | undefined, path: string, message: string, extra?: Partial<Diagnostic>) => void;

function readSettings(node: Node, config: Config, report: Report) {
  const path = jsonPath("", SETTINGS_KEY);
  if (node.type !== "object") return report(node, path, `Expected an object, found ${kind(node)}`);
  for (const prop of node.children ?? []) {
    const [k, v] = prop.children ?? [];
    if (!k || !v) continue;
    const key = String(k.value);
    const here = jsonPath(path, key);
    if (key === "backend") {
      if (typeof v.value === "string" && (BACKENDS as readonly string[]).includes(v.value)) {
        config.settings.backend = v.value as Settings["backend"];
      } else report(v, here, `Expected one of ${BACKENDS.map((b) => `"${b}"`).join(", ")}`);
    } else if (key === "accept_in") {
      readAcceptIn(v, here, config, report);
    } else {
      report(k, here, `Unknown setting "${key}"; known: backend, accept_in`);
    }
  }
}

/** Reads `accept_in`: a list of `"<family> <table> <chain>"`, each an nftables chain that may be handed to us. */
function readAcceptIn(node: Node, path: string, config: Config, report: Report) {
  if (node.type !== "array") {
    return report(node, path, `Expected a list of "<family> <table> <chain>", found ${kind(node)}`);
  }
  const chains: string[] = [];
  (node.children ?? []).forEach((item, i) => {
    const at = `${path}[${i}]`;
    const words = typeof item.value === "string" ? item.value.trim().split(/\s+/) : [];
    const [family = "", table = "", chain = ""] = words;
    const name = /^[A-Za-z_][A-Za-z0-9_.\-]{0,255}$/;
    if (item.type !== "string" || words.length !== 3 || !name.test(table) || !name.test(chain)) {
      return report(
        item,
        at,
        'Expected "<family> <table> <chain>", as nft names a chain (e.g. "inet filter forward")',
      );
    }
    if (!ACCEPT_IN_FAMILIES.includes(family)) {
      return report(
        item,
        at,
        `Family "${family}" has no forward hook for routed traffic; use ip, ip6 or inet`,
      );
    }
    if (
      table === "libvirt_network" || table === "libvirt_hook_qemu" ||
      (table === "filter" && chain === "FORWARD")
    ) {
      return report(
        item,
        at,
        "This chain is opened for our forwards already (libvirt's, ours, or iptables' FORWARD)",
      );
    }
    chains.push(words.join(" "));
  });
  config.settings.acceptIn = [...new Set(chains)];
}

/** The fields of an entry, with what they hold: the validator and the JSON Schema both read this table. */
export const ENTRY_FIELDS = {
  interface: {
    type: "string",
    description: "The guest's bridge; the FORWARD accept matches it as outgoing.",
  },
  private_ip: { type: "string", description: "The guest's address (IPv4 or IPv6). Required." },
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
    description: "Public ports init_port .. init_port+ports_num-1, forwarded to the same private ports.",
  },
} as const;

/** The fields of a port_range item. */
export const RANGE_FIELDS = {
  init_port: { type: "integer", description: "The first port of the range." },
  ports_num: { type: "integer", description: "How many ports the range holds." },
  protocol: { type: "string", description: "tcp or udp." },
} as const;

interface Claim {
  domain: string;
  node: Node;
  path: string;
  address: string;
  protocol: Protocol;
  first: number;
  last: number;
}

function readDomain(
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
  const privateIp = address("private_ip");
  if (!fields.has("private_ip")) fail(node, path, 'Missing required field "private_ip"');
  if (privateIp) {
    const fam = privateIp.family;
    const mixed = (key: keyof typeof ENTRY_FIELDS) => {
      const a = address(key, undefined, key === "source_ip");
      if (a && a.family !== fam) {
        fail(
          fields.get(key),
          jsonPath(path, key),
          `Cannot forward between families: private_ip is IPv${fam}, ${key} is IPv${a.family}`,
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
        domain,
        node: n,
        path: p,
        address: addr,
        protocol,
        first: publicPort,
        last: publicPort + count - 1,
      });
    }
  };
  readPortMap(fields.get("port_map"), jsonPath(path, "port_map"), fail, report, claim);
  readPortRanges(fields.get("port_range"), jsonPath(path, "port_range"), fail, report, claim);
  if (!fields.has("port_map") && !fields.has("port_range")) {
    report(node, path, "Entry forwards no port: give port_map or port_range", { severity: "warning" });
  }
  if (failed) return undefined;
  return { path, ...(iface === undefined ? {} : { interface: iface }), targets, ports };
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

function target(family: Family, privateIp: Address, publicIp?: Address, source?: Address): Target {
  return {
    family,
    privateIp: privateIp.text,
    ...(publicIp ? { publicIp: publicIp.text } : {}),
    ...(source ? { source: source.text } : {}),
  };
}

type ClaimFn = (
  n: Node,
  path: string,
  protocol: Protocol,
  publicPort: number,
  privatePort: number,
  count?: number,
) => void;

function protocolOf(name: string, node: Node | undefined, path: string, fail: Report, warn: Report) {
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

function readPortMap(node: Node | undefined, path: string, fail: Report, warn: Report, claim: ClaimFn) {
  if (!node) return;
  if (node.type !== "object") return fail(node, path, `Expected an object of protocols, found ${kind(node)}`);
  for (const prop of node.children ?? []) {
    const [k, v] = prop.children ?? [];
    if (!k || !v) continue;
    const name = String(k.value);
    const here = jsonPath(path, name);
    const protocol = protocolOf(name, k, here, fail, warn);
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
        if (pub !== undefined && priv !== undefined) claim(item, at, protocol, pub, priv);
      } else {
        const p = port(item, at, fail);
        if (p !== undefined) claim(item, at, protocol, p, p);
      }
    });
  }
}

function readPortRanges(node: Node | undefined, path: string, fail: Report, warn: Report, claim: ClaimFn) {
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
    for (const key of Object.keys(RANGE_FIELDS)) {
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
      } else protocol = protocolOf(protoNode.value, protoNode, jsonPath(at, "protocol"), fail, warn);
    }
    if (first === undefined || count === undefined || !protocol) return;
    if (first + count - 1 > 65535) {
      return fail(
        numNode,
        jsonPath(at, "ports_num"),
        `Range ${first}-${first + count - 1} runs past port 65535`,
      );
    }
    claim(item, at, protocol, first, first, count);
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

function reportClashes(claims: Claim[], report: Report) {
  const groups = new Map<string, Claim[]>();
  for (const c of claims) {
    const key = `${c.protocol} ${c.address}`;
    const group = groups.get(key);
    if (group) group.push(c);
    else groups.set(key, [c]);
  }
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
      const other = partner.get(c)!;
      const ports = (x: Claim) => (x.first === x.last ? `${x.first}` : `${x.first}-${x.last}`);
      report(
        c.node,
        c.path,
        `Public ${c.protocol} port ${ports(c)} on ${c.address} is also claimed by ${other.path} (${
          ports(other)
        })`,
        { domains: [c.domain] },
      );
    }
  }
}

/** Appends a key to a JSON path: `a.b`, or `a["odd key"]` where the key is not a plain name. */
export function jsonPath(base: string, key: string): string {
  if (/^[A-Za-z_][A-Za-z0-9_-]*$/.test(key)) return base === "" ? key : `${base}.${key}`;
  return `${base}[${JSON.stringify(key)}]`;
}

function kind(node: Node): string {
  switch (node.type) {
    case "object":
      return "an object";
    case "array":
      return "a list";
    case "string":
      return "a string";
    case "number":
      return "a number";
    case "boolean":
      return "a boolean";
    default:
      return "null";
  }
}

function show(node: Node): string {
  const text = JSON.stringify(node.value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}

function parseErrorText(code: number): string {
  const name = jsonc!.printParseErrorCode(code);
  const words: Record<string, string> = {
    InvalidSymbol: "unexpected character",
    InvalidNumberFormat: "malformed number",
    PropertyNameExpected: "expected a quoted property name",
    ValueExpected: "expected a value",
    ColonExpected: "expected ':'",
    CommaExpected: "expected ','",
    CloseBraceExpected: "expected '}'",
    CloseBracketExpected: "expected ']'",
    EndOfFileExpected: "unexpected text after the end",
    InvalidCommentToken: "malformed comment",
    UnexpectedEndOfComment: "unterminated comment",
    UnexpectedEndOfString: "unterminated string",
    UnexpectedEndOfNumber: "unterminated number",
    InvalidUnicode: "malformed unicode escape",
    InvalidEscapeCharacter: "malformed escape",
    InvalidCharacter: "invalid character in string",
  };
  return words[name] ?? name;
}

function lineStarts(text: string): number[] {
  const starts = [0];
  for (let i = 0; i < text.length; i++) if (text.charCodeAt(i) === 10) starts.push(i + 1);
  return starts;
}

function position(starts: number[], offset: number): { line: number; column: number } {
  let lo = 0, hi = starts.length - 1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if ((starts[mid] ?? 0) <= offset) lo = mid;
    else hi = mid - 1;
  }
  return { line: lo + 1, column: offset - (starts[lo] ?? 0) + 1 };
}

/** What the config says about one domain: not there, unusable (with the reasons), or its entries. */
export type DomainConfig =
  | { kind: "absent" }
  | { kind: "invalid"; errors: Diagnostic[] }
  | { kind: "ok"; entries: Entry[] };

/** Looks a domain up, taking file-wide errors and errors in its own entries into account. */
export function domainConfig(config: Config, domain: string): DomainConfig {
  const errors = config.diagnostics.filter((d) =>
    d.severity === "error" && (d.domains === undefined || d.domains.includes(domain))
  );
  if (errors.length > 0) return { kind: "invalid", errors };
  const entries = config.domains.get(domain);
  return entries ? { kind: "ok", entries } : { kind: "absent" };
}
