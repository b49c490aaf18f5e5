/** Finds the config file and its drop-ins and reads them as bytes, telling where they are not UTF-8. */

import { invalidUtf8 } from "./jsonc_scan.ts";

/** Where the config lives: CONFIG_FILENAME, else CONFIG_PATH/hooks.jsonc, else CONFIG_PATH/hooks.json. */
export function configCandidates(env: (name: string) => string | undefined): string[] {
  const explicit = env("CONFIG_FILENAME");
  if (explicit) return [explicit];
  const dir = (env("CONFIG_PATH") || "/etc/libvirt/hooks").replace(/\/+$/, "") || "/";
  return [`${dir}/hooks.jsonc`, `${dir}/hooks.json`];
}

/** The folder of drop-in files beside the config: every `*.jsonc` and `*.json` in it, read in name order. */
export const DROP_IN_DIR = "hooks.d";

/** One file of the config as read: its text (and where its bytes were not UTF-8), or why it cannot be read. */
export type ConfigFile =
  | { file: string; text: string; invalidUtf8?: number[] }
  | { file: string; error: string };

/**
 * The config as read, once per call: the first of the candidates that exists (or why it cannot be read, or that
 * none does), and the drop-in files of `hooks.d/` beside it, in name order, when there are any.
 */
export type ConfigSource = (ConfigFile | { file: string; missing: true }) & { dropIns?: ConfigFile[] };

const decoder = new TextDecoder();

/**
 * Reads the first config file that exists among `candidates`; synchronously: libvirt waits for the hook. Bytes that
 * are no UTF-8 are kept as U+FFFD with their offsets (`invalidUtf8`), to be reported where they are, never used.
 */
export function readConfigSource(candidates: string[], dropInDir = dropInDirOf(candidates)): ConfigSource {
  const main = readMain(candidates);
  const dropIns = readDropIns(dropInDir);
  return dropIns.length === 0 ? main : { ...main, dropIns };
}

function readMain(candidates: string[]): ConfigSource {
  for (const file of candidates) {
    const read = readConfigFile(file);
    if (read) return read;
  }
  return { file: candidates[0] ?? "hooks.jsonc", missing: true };
}

/** One config file, or undefined where it does not exist. */
function readConfigFile(file: string): ConfigFile | undefined {
  try {
    return decodeConfig(file, Deno.readFileSync(file));
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return undefined;
    return { file, error: `Cannot read the config: ${err instanceof Error ? err.message : String(err)}` };
  }
}

/** Where the drop-in files are: `hooks.d/` in the folder of the config file. */
export function dropInDirOf(candidates: string[]): string {
  const first = candidates[0] ?? "hooks.jsonc";
  const slash = first.lastIndexOf("/");
  return `${slash < 0 ? "." : first.slice(0, slash) || "/"}/${DROP_IN_DIR}`.replace(/^\/\//, "/");
}

/** The drop-in files (`*.jsonc`, `*.json`; not hidden ones) in name order; none where the folder does not exist. */
export function readDropIns(dir: string): ConfigFile[] {
  let names: string[];
  try {
    names = [...Deno.readDirSync(dir)]
      .filter((e) => !e.isDirectory && !e.name.startsWith(".") && /\.jsonc?$/.test(e.name))
      .map((e) => e.name)
      .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  } catch (err) {
    if (err instanceof Deno.errors.NotFound || err instanceof Deno.errors.NotADirectory) return [];
    return [{
      file: dir,
      error: `Cannot read the drop-in folder: ${err instanceof Error ? err.message : String(err)}`,
    }];
  }
  return names.flatMap((name) => readConfigFile(`${dir}/${name}`) ?? []);
}

/** Every file of a config as read: the main one (unless it is missing) and its drop-ins, in order. */
export function configFiles(source: ConfigSource): ConfigFile[] {
  return [...("missing" in source ? [] : [source]), ...(source.dropIns ?? [])];
}

/** The config file's bytes as text, with where they were not UTF-8 (see readConfigSource). */
export function decodeConfig(file: string, bytes: Uint8Array): ConfigFile {
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
  return domain !== "" && configFiles(source).some((f) => "text" in f && f.text.includes(domain));
}
