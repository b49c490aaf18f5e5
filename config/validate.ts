/** Validates the config's text: the file's structure, the settings, and each domain's entries (see entry.ts). */

import type { Node, ParseError } from "jsonc-parser";
import { readDomain } from "./entry.ts";
import { readHostAddresses, readXmlForwards } from "./policy.ts";
import { kind, type Report, show } from "./nodes.ts";
import { type Claim, claimSummary, reportClashes, reportForeignAddresses } from "./ports.ts";
import { cutTooDeep, MAX_DEPTH, type TooDeep } from "./jsonc_scan.ts";
import {
  BACKENDS,
  type Config,
  type Diagnostic,
  jsonPath,
  SCHEMA_KEY,
  type Settings,
  SETTINGS_KEY,
  type ValidateOptions,
} from "./model.ts";

/** The settings `"/settings"` may hold (the schema describes each). */
export const SETTING_NAMES = ["backend", "accept_in", "host_addresses", "xml_forwards"];

/** The families a chain handed to us (`accept_in`) may be of: those whose forward hook sees routed traffic. */
const ACCEPT_IN_FAMILIES = ["ip", "ip6", "inet"];

type Jsonc = typeof import("./jsonc.ts");

let jsonc: Jsonc | undefined;

/**
 * Loads the JSONC parser (npm:jsonc-parser). It is loaded on demand: as a CommonJS package it brings up Deno's Node
 * compatibility layer, about 17 ms, which a hook call whose config is already validated (see the cache) never pays.
 */
export async function loadParser(): Promise<void> {
  jsonc ??= await import("./jsonc.ts");
}

export function emptyConfig(file: string, exists: boolean): Config {
  return {
    file,
    exists,
    broken: false,
    domains: new Map(),
    names: new Set(),
    settings: { backend: "auto", acceptIn: [], hostAddresses: [], xmlForwards: [] },
    diagnostics: [],
  };
}

export function fileProblem(file: string, message: string): Diagnostic {
  return { severity: "error", file, line: 1, column: 1, message, path: "" };
}

/**
 * Parses and validates config text; `file` is used in messages only; `invalidUtf8`: where the file's bytes were
 * not UTF-8 (see readConfigSource). Needs `await loadParser()` first.
 */
export function parseConfig(
  text: string,
  file: string,
  { invalidUtf8 = [], ...options }: ValidateOptions & { invalidUtf8?: number[] | undefined } = {},
): Config {
  return parseConfigs([{ file, text, invalidUtf8 }], options);
}

/** One file's text, as parseConfigs() takes it. */
export interface ConfigText {
  file: string;
  text: string;
  invalidUtf8?: number[] | undefined;
  /** Why someone other than root could have written the file (see trustProblem): nothing in it is used. */
  untrusted?: string | undefined;
}

/** Where a top-level key stands in one of the files, and how to report a problem there. */
interface KeyPlace {
  file: string;
  node: Node;
  report: Report;
  at: (offset: number) => { line: number; column: number };
}

/** What the files of one config share while each is parsed: the public ports claimed, where each key stands. */
interface Shared {
  claims: Claim[];
  domains: Map<string, KeyPlace[]>;
  settings: KeyPlace[];
}

/**
 * Parses and validates a config made of several files (the main one, then its drop-ins in name order) as one:
 * each problem names its own file; a domain may be named in one file only, `"/settings"` may appear once, and a
 * public port claimed in two files clashes as it would in one. Needs `await loadParser()` first.
 */
export function parseConfigs(texts: ConfigText[], options: ValidateOptions = {}): Config {
  if (!jsonc) throw new Error("Cannot parse the config: the parser is not loaded (await loadParser() first)");
  const shared: Shared = { claims: [], domains: new Map(), settings: [] };
  const configs = texts.map((t) => parseOne(t, options, shared));
  texts.forEach((t, i) => {
    if (t.untrusted !== undefined) distrust(configs[i]!, t.untrusted, shared);
  });
  // Each clash is reported where its claim is, in its own file: every claim carries its file's report.
  reportClashes(shared.claims);
  const settingsFile = configs.find((_, i) => shared.settings.some((p) => p.file === texts[i]!.file));
  reportForeignAddresses(shared.claims, {
    addresses: options.hostAddresses,
    declared: settingsFile?.settings.hostAddresses ?? [],
    ...(options.foreignAddresses ? { severity: options.foreignAddresses } : {}),
  });
  const elsewhere = (here: KeyPlace, places: KeyPlace[]) =>
    places.filter((p) => p.file !== here.file).map((p) => {
      const { line, column } = p.at(p.node.offset);
      return `${p.file}:${line}:${column}`;
    }).join(", ");
  for (const [domain, places] of shared.domains) {
    if (new Set(places.map((p) => p.file)).size < 2) continue;
    for (const p of places) {
      p.report(
        p.node,
        jsonPath("", domain),
        `Domain "${domain}" is also configured in ${elsewhere(p, places)}; ` +
          "a domain may be named in one file only",
        { domains: [domain] },
      );
    }
  }
  if (shared.settings.length > 1) {
    for (const p of shared.settings) {
      p.report(
        p.node,
        jsonPath("", SETTINGS_KEY),
        `Settings are also given in ${
          elsewhere(p, shared.settings)
        }; "${SETTINGS_KEY}" may appear in one file only`,
      );
    }
  }
  const config = configs[0] ?? emptyConfig(texts[0]?.file ?? "hooks.jsonc", true);
  for (const other of configs.slice(1)) {
    for (const [domain, entries] of other.domains) {
      if (!config.domains.has(domain)) config.domains.set(domain, entries);
    }
    for (const name of other.names) config.names.add(name);
    config.diagnostics.push(...other.diagnostics);
    config.broken ||= other.broken;
  }
  if (settingsFile) config.settings = settingsFile.settings;
  for (const d of config.diagnostics) {
    if (d.severity === "error") { for (const name of d.domains ?? []) config.domains.delete(name); }
  }
  // The public ports every file claims, for the forwards in a guest's XML to be checked against (hook/guest.ts).
  config.claims = shared.claims.filter((c) => !c.snat).map((c) => claimSummary(c, config.file));
  return config;
}

/**
 * Takes nothing from a file that someone other than root could have written: its domains do not start (one line
 * says why), its settings and claims are not used, and its names clash with no other file's.
 */
function distrust(config: Config, why: string, shared: Shared) {
  const names = [...config.names];
  config.domains.clear();
  config.settings = emptyConfig(config.file, true).settings;
  config.diagnostics = [{
    ...fileProblem(
      config.file,
      `Not trusted, nothing in it is used: ${why}${
        names.length === 0 ? "" : `; the domains it names do not start (${names.join(", ")})`
      }`,
    ),
    domains: names,
  }];
  config.broken = false;
  shared.claims = shared.claims.filter((c) => c.file !== config.file);
  shared.settings = shared.settings.filter((p) => p.file !== config.file);
  for (const [name, places] of shared.domains) {
    shared.domains.set(name, places.filter((p) => p.file !== config.file));
  }
}

/** One file as parseOne() reads it: its config so far, where an offset stands, and how to report at a node. */
interface FileContext {
  config: Config;
  at: (offset: number) => { line: number; column: number };
  report: Report;
}

/** Parses one file of the config into a config of its own (see parseConfigs), recording what the files share. */
function parseOne(source: ConfigText, options: ValidateOptions, shared: Shared): Config {
  const config = emptyConfig(source.file, true);
  const errors: ParseError[] = [];
  // Nesting deep enough to exhaust the parser's recursion is cut out first, and stops only the entry that holds it.
  const cut = cutTooDeep(source.text);
  const root = jsonc!.parseTree(cut.text, errors, { allowTrailingComma: true, disallowComments: false });
  const file = fileContext(config, source.text);
  if (root?.type === "object") collectNames(root, config);
  const tooDeep = reportTooDeep(file, cut.tooDeep);
  reportInvalidUtf8(file, source.invalidUtf8 ?? [], root);
  if (errors.length > 0) {
    reportParseErrors(file, errors);
    return config;
  }
  if (!root) {
    // An empty (or comment-only) file configures nothing.
    return config;
  }
  if (root.type !== "object") {
    config.broken = true;
    if (!cut.tooDeep.some((d) => d.key === undefined)) {
      file.report(root, "", `Expected an object mapping domain names to entries, found ${kind(root)}`);
    }
    return config;
  }
  readKeys(file, root, { tooDeep, options, shared });
  return config;
}

/** A file's context: positions from its text's line starts, and a report that adds a problem to its config. */
function fileContext(config: Config, text: string): FileContext {
  const lines = lineStarts(text);
  const at = (offset: number) => position(lines, offset);
  const report = (node: Node | undefined, path: string, message: string, extra: Partial<Diagnostic> = {}) => {
    const { line, column } = at(node?.offset ?? 0);
    const isKey = node?.parent?.type === "property" && node.parent.children?.[0] === node;
    const value = node && !isKey && node.type !== "object" && node.type !== "array" ? show(node) : undefined;
    config.diagnostics.push({
      severity: "error",
      file: config.file,
      line,
      column,
      message,
      path,
      ...(value === undefined ? {} : { value }),
      ...extra,
    });
  };
  return { config, at, report };
}

/** The domain names a file's top level holds (the settings and the schema's key are none). */
function collectNames(root: Node, config: Config) {
  for (const prop of root.children ?? []) {
    const key = prop.children?.[0]?.value;
    if (typeof key === "string" && key !== SETTINGS_KEY && key !== SCHEMA_KEY) config.names.add(key);
  }
}

/** Reports each place nested too deep: it stops its domain, or the whole file at the root or in the settings. */
function reportTooDeep({ config, at }: FileContext, places: TooDeep[]): Set<string> {
  const tooDeep = new Set<string>();
  for (const d of places) {
    const { line, column } = at(d.offset);
    // At the root, or in the settings: every domain depends on it.
    const scoped = d.key !== undefined && d.key !== SETTINGS_KEY;
    if (d.key !== undefined) tooDeep.add(d.key);
    config.diagnostics.push({
      severity: "error",
      file: config.file,
      line,
      column,
      message: `Nesting deeper than ${MAX_DEPTH} levels`,
      path: d.key === undefined ? "" : jsonPath("", d.key),
      ...(scoped ? { domains: [d.key!] } : {}),
    });
    if (!scoped) config.broken = true;
  }
  return tooDeep;
}

/** Reports the parser's errors, each once: a broken file stops the domains it names, or all where it names none. */
function reportParseErrors({ config, at }: FileContext, errors: ParseError[]) {
  config.broken = true;
  const domains = config.names.size > 0 ? { domains: [...config.names] } : {};
  const seen = new Set<string>();
  for (const e of errors) {
    const key = `${e.offset} ${e.error}`;
    if (seen.has(key)) continue;
    seen.add(key);
    const { line, column } = at(e.offset);
    config.diagnostics.push({
      severity: "error",
      file: config.file,
      line,
      column,
      message: `Cannot parse the config: ${parseErrorText(e.error)}`,
      path: "",
      ...domains,
    });
  }
}

/** What readKeys() needs beside the file: the keys nested too deep (skipped), the options, what files share. */
interface KeyReading {
  tooDeep: Set<string>;
  options: ValidateOptions;
  shared: Shared;
}

/** Reads a file's top-level keys: the settings, and each domain's entries; records where each key stands. */
function readKeys({ config, at, report }: FileContext, root: Node, { tooDeep, options, shared }: KeyReading) {
  const file = config.file;
  const claims: Claim[] = [];
  for (const prop of root.children ?? []) {
    const [keyNode, valueNode] = prop.children ?? [];
    if (!keyNode || !valueNode) continue;
    const key = String(keyNode.value);
    if (key !== SCHEMA_KEY) {
      const place = { file, node: keyNode, report, at };
      if (key === SETTINGS_KEY) shared.settings.push(place);
      else shared.domains.set(key, [...shared.domains.get(key) ?? [], place]);
    }
    if (tooDeep.has(key)) continue;
    if (key === SCHEMA_KEY && valueNode.type === "string") continue;
    if (key === SETTINGS_KEY) {
      readSettings(valueNode, config, report);
      continue;
    }
    const entries = readDomain(key, valueNode, { report, claims, options });
    if (entries) config.domains.set(key, entries.map((e) => ({ ...e, file })));
  }
  // Clashes are found over every file's claims together (see parseConfigs); each is reported in its own file.
  shared.claims.push(...claims.map((c) => ({ ...c, file, at: at(c.node.offset) })));
}

/**
 * Reports each place where the file's bytes were not UTF-8: inside a top-level entry, an error of that entry (a
 * name or an address with a U+FFFD in it is never what was meant; in the settings, of the whole file); between
 * entries (a comment), a warning.
 */
function reportInvalidUtf8({ config, at }: FileContext, offsets: number[], root: Node | undefined) {
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
      const chains = readAcceptIn(v, here, report);
      if (chains) config.settings.acceptIn = chains;
    } else if (key === "host_addresses") {
      config.settings.hostAddresses = readHostAddresses(v, here, report);
    } else if (key === "xml_forwards") {
      config.settings.xmlForwards = readXmlForwards(v, here, report);
    } else {
      report(k, here, `Unknown setting "${key}"; known: ${SETTING_NAMES.join(", ")}`);
    }
  }
}

/** Reads `accept_in`: a list of `"<family> <table> <chain>"`, each an nftables chain that may be handed to us. */
function readAcceptIn(node: Node, path: string, report: Report): string[] | undefined {
  if (node.type !== "array") {
    report(node, path, `Expected a list of "<family> <table> <chain>", found ${kind(node)}`);
    return undefined;
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
  return [...new Set(chains)];
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
