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

/**
 * One file of the config as read: its text (and where its bytes were not UTF-8), or why it cannot be read.
 * `untrusted`: why a user other than root could have written it (see trustProblem): its domains do not start.
 */
export type ConfigFile =
  | { file: string; text: string; invalidUtf8?: number[]; untrusted?: string }
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
    const read = decodeConfig(file, Deno.readFileSync(file));
    const untrusted = trustProblem(file);
    return untrusted === undefined ? read : { ...read, untrusted };
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

/**
 * Why a config file is not one that root alone could have written, if it is not (as sshd's StrictModes checks):
 * the file, and every directory above it, must be owned by root (or by whoever runs this, for tests and `check`
 * as a user) and writable by no group and no other user, followed through symlinks (the link's own folder and
 * the file it leads to). A directory writable by all but sticky and root's (/tmp) is allowed above: no one else
 * can rename or remove what root owns in it.
 */
export function trustProblem(file: string): string | undefined {
  const me = Deno.uid() ?? 0;
  let real: string, folder: string;
  try {
    real = Deno.realPathSync(file);
    folder = Deno.realPathSync(file.includes("/") ? file.slice(0, file.lastIndexOf("/")) || "/" : ".");
  } catch {
    return undefined; // Gone since it was read: nothing of it is used.
  }
  const through = real === `${folder}/${file.slice(file.lastIndexOf("/") + 1)}`.replace(/^\/\//, "/")
    ? ""
    : `it is a link to ${real}; `;
  const paths = [...new Set([real, ...ancestors(real), ...ancestors(`${folder}/x`)])];
  for (const path of paths) {
    let info: Deno.FileInfo;
    try {
      info = Deno.statSync(path);
    } catch {
      continue;
    }
    const mode = (info.mode ?? 0) & 0o7777;
    const owner = info.uid ?? 0;
    const sticky = info.isDirectory && (mode & 0o1000) !== 0 && owner === 0 && path !== real;
    const what = path === real ? "it" : `the folder ${path}`;
    if (owner !== 0 && owner !== me) {
      return `${through}${what} is owned by ${userName(owner)}, mode ${octal(mode)}: a config file ` +
        "and every folder above it must be root's, as only root may declare forwards in the config";
    }
    if ((mode & 0o022) !== 0 && !sticky) {
      return `${through}${what} is writable by ${(mode & 0o002) !== 0 ? "every user" : "its group"} ` +
        `(owner ${userName(owner)}, mode ${octal(mode)}): a config file and every folder above it must be ` +
        "writable by root alone";
    }
  }
  return undefined;
}

/** The folders above a path, nearest first, up to /. */
function ancestors(path: string): string[] {
  const out: string[] = [];
  for (let at = path.lastIndexOf("/"); at > 0; at = path.lastIndexOf("/", at - 1)) {
    out.push(path.slice(0, at));
  }
  out.push("/");
  return out;
}

function octal(mode: number): string {
  return `0${mode.toString(8).padStart(3, "0")}`;
}

/** A user's name from /etc/passwd, with the number; the number alone where it has none. */
function userName(uid: number): string {
  try {
    for (const line of Deno.readTextFileSync("/etc/passwd").split("\n")) {
      const [name, , id] = line.split(":");
      if (id === String(uid) && name) return `${name} (uid ${uid})`;
    }
  } catch {
    // No passwd to read: the number says it.
  }
  return `uid ${uid}`;
}
