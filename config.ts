/** The config model: hooks.jsonc (or the old hooks.json) in, entries and problems with file, line and column out.
 * Its parts are in config/; this is what the hook and the commands load a config with. */

import { cacheKey, digest, readCache, readView, writeCache, writeView } from "./config/cache.ts";
import type { Config, DomainConfig } from "./config/model.ts";
import { type ConfigSource, readConfigSource } from "./config/source.ts";
import { emptyConfig, fileProblem, loadParser, parseConfig } from "./config/validate.ts";
import { type ValidateOptions } from "./config/model.ts";

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

/** Looks a domain up, taking file-wide errors and errors in its own entries into account. */
export function domainConfig(config: Config, domain: string): DomainConfig {
  const errors = config.diagnostics.filter((d) =>
    d.severity === "error" && (d.domains === undefined || d.domains.includes(domain))
  );
  if (errors.length > 0) return { kind: "invalid", errors };
  const entries = config.domains.get(domain);
  return entries ? { kind: "ok", entries } : { kind: "absent" };
}
