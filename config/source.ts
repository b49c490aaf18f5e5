/** Finds the config file and reads it as bytes, telling where they are not UTF-8. */

import { invalidUtf8 } from "./jsonc_scan.ts";

/** Where the config lives: CONFIG_FILENAME, else CONFIG_PATH/hooks.jsonc, else CONFIG_PATH/hooks.json. */
export function configCandidates(env: (name: string) => string | undefined): string[] {
  const explicit = env("CONFIG_FILENAME");
  if (explicit) return [explicit];
  const dir = (env("CONFIG_PATH") || "/etc/libvirt/hooks").replace(/\/+$/, "") || "/";
  return [`${dir}/hooks.jsonc`, `${dir}/hooks.json`];
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
