/** The validated config's cache on /run: whole, and as per-domain views read by shard (a start reads one). */

import type { Config, Diagnostic, Entry } from "./model.ts";
import type { ValidateOptions } from "./model.ts";

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
export function writeView(dir: string, key: string, config: Config): void {
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
    Deno.writeTextFileSync(`${tmp}/claims`, JSON.stringify(config.claims ?? []));
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

export function readView(dir: string, key: string, domain: string): Config | undefined {
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
      claimsFile: `${viewDir(dir)}/claims`,
    };
  } catch {
    return undefined;
  }
}

/** A 64-bit digest of a text: two FNV-1a lanes over its UTF-16 units (~30 ms for 19 MB; no WebCrypto to load). */
export function digest(text: string): string {
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

/** What a cache key is made of: the config's file (or the name of its files), its text, and where it was not UTF-8. */
export interface CacheInput {
  file: string;
  text: string;
  invalidUtf8: number[];
}

/** The key a validated config is saved under: the code, the file, the validator's options, the text. */
export function cacheKey({ file, text, invalidUtf8: invalid }: CacheInput, options: ValidateOptions): string {
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

export function readCache(dir: string, key: string): Config | undefined {
  try {
    const saved = JSON.parse(Deno.readTextFileSync(cacheFile(dir)));
    if (saved.key !== key) return undefined;
    const c = saved.config;
    return { ...c, domains: new Map(c.domains), names: new Set(c.names) };
  } catch {
    return undefined;
  }
}

export async function writeCache(dir: string, key: string, config: Config): Promise<void> {
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
