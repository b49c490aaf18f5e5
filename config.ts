/** The config model: hooks.jsonc (or the old hooks.json) and hooks.d/ in, entries and positioned problems out.
 * Its parts are in config/; this is what the hook and the commands load a config with. */

import { cacheKey, digest, readCache, readView, writeCache, writeView } from "./config/cache.ts";
import type { ClaimSummary, Config, Diagnostic, DomainConfig } from "./config/model.ts";
import { configFiles, type ConfigSource, readConfigSource } from "./config/source.ts";
import { type ConfigText, emptyConfig, fileProblem, loadParser, parseConfigs } from "./config/validate.ts";
import { type ValidateOptions } from "./config/model.ts";

/** How loadConfig() and loadConfigFor() read and validate. */
export interface LoadOptions {
  /** What validating takes (the host's addresses, how foreign addresses count). */
  options?: ValidateOptions;
  /** Where a validated config is cached (on /run); absent: no cache. */
  cacheDir?: string | undefined;
  /** The files read already (see readConfigSource); absent: read from the candidates. */
  source?: ConfigSource | undefined;
}

/**
 * Validates the config read from `candidates` (or the `source` read from them already): the main file and its
 * drop-ins. With `cacheDir`, a validated config is kept there (on /run, a tmpfs) with the code's identity, the
 * files' names, the options and the texts it came from, and reused as long as none of them changes (a drop-in
 * added, changed or removed included).
 */
export async function loadConfig(
  candidates: string[],
  { options = {}, cacheDir, source = readConfigSource(candidates) }: LoadOptions = {},
): Promise<Config> {
  const read = readable(source);
  if (!Array.isArray(read)) return read;
  const key = cacheDir === undefined ? undefined : keyOf(source, read, { options, text: (t) => t });
  const cached = key === undefined ? undefined : readCache(cacheDir!, key);
  if (cached) return cached;
  await loadParser();
  const config = named(parseConfigs(read, options), source);
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
  { options = {}, cacheDir, source = readConfigSource(candidates) }: LoadOptions = {},
): Promise<Config> {
  const read = readable(source);
  if (!Array.isArray(read) || cacheDir === undefined) {
    return await loadConfig(candidates, { options, cacheDir, source });
  }
  // The texts by their length and a 64-bit digest: the view is read by every start, so it cannot hold 19 MB of key.
  const key = keyOf(source, read, { options, text: (t) => `${t.length}:${digest(t)}` });
  const cached = readView(cacheDir, key, domain);
  if (cached) return cached;
  await loadParser();
  const config = named(parseConfigs(read, options), source);
  writeView(cacheDir, key, config);
  return config;
}

/** The files of a config, all read; or, where none exists or one cannot be read, the config that says so. */
function readable(source: ConfigSource): ConfigText[] | Config {
  const files = configFiles(source);
  if (files.length === 0) return emptyConfig(source.file, false);
  const texts: ConfigText[] = [];
  const unreadable: Diagnostic[] = [];
  for (const f of files) {
    if ("error" in f) unreadable.push(fileProblem(f.file, f.error));
    else texts.push(f);
  }
  return unreadable.length > 0
    ? { ...emptyConfig(source.file, true), broken: true, diagnostics: unreadable }
    : texts;
}

/** The cache key of a config's files (see cacheKey); a single file's is what it always was. */
function keyOf(
  source: ConfigSource,
  texts: ConfigText[],
  { options, text }: { options: ValidateOptions; text: (t: string) => string },
) {
  const [only] = texts;
  if (texts.length === 1 && only && !source.dropIns && only.untrusted === undefined) {
    return cacheKey({ file: only.file, text: text(only.text), invalidUtf8: only.invalidUtf8 ?? [] }, options);
  }
  const all = JSON.stringify(
    texts.map((t) => [t.file, text(t.text), t.invalidUtf8 ?? [], t.untrusted ?? ""]),
  );
  return cacheKey({ file: source.file, text: all, invalidUtf8: [] }, options);
}

/** A config made of several files is named by its main file, or by its drop-in folder where that is all there is. */
function named(config: Config, source: ConfigSource): Config {
  const first = source.dropIns?.[0];
  if ("missing" in source && first) config.file = first.file.slice(0, first.file.lastIndexOf("/") + 1);
  else config.file = source.file;
  return config;
}

/** Looks a domain up, taking file-wide errors and errors in its own entries into account. */
export function domainConfig(config: Config, domain: string): DomainConfig {
  const errors = config.diagnostics.filter((d) =>
    d.severity === "error" && (d.domains === undefined || d.domains.includes(domain))
  );
  if (errors.length > 0) return { kind: "invalid", errors };
  const entries = config.domains.get(domain);
  return entries ? { kind: "ok", entries } : { kind: "absent" };
}

/**
 * The public ports the whole config claims (see ClaimSummary): held by a config loaded whole, read from the view's
 * file for one loaded for a domain (the view is replaced whole, by rename, so the file matches the view read).
 */
export function configClaims(config: Config): ClaimSummary[] {
  if (config.claims) return config.claims;
  if (config.claimsFile === undefined) return [];
  try {
    return JSON.parse(Deno.readTextFileSync(config.claimsFile));
  } catch {
    return [];
  }
}
