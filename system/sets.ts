/** The members of our named source sets, kept on disk so they outlive our table and every restart of it. */

import { env } from "./env.ts";

/**
 * Where the members are kept: on /var/lib, not /run, so that they survive reboots as the configuration that names
 * them does. LIBVIRT_HOOK_QEMU_SETS_DIR overrides it (tests).
 */
export const SETS_DIR = "/var/lib/libvirt-hook-qemu/sets";

/** The directory of the sets' files (SETS_DIR unless the environment says otherwise). */
export function setsDir(): string {
  return env("LIBVIRT_HOOK_QEMU_SETS_DIR") || SETS_DIR;
}

/** A set's members as stored, one item a line; none where the set has no file yet. */
export function readMembers(name: string, dir = setsDir()): string[] {
  let text: string;
  try {
    text = Deno.readTextFileSync(`${dir}/${name}`);
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return [];
    throw err;
  }
  return text.split("\n").map((l) => l.trim()).filter((l) => l !== "" && !l.startsWith("#"));
}

/** The names of the sets that have a file. */
export function storedSets(dir = setsDir()): string[] {
  try {
    return [...Deno.readDirSync(dir)].filter((e) => e.isFile && !e.name.startsWith(".")).map((e) => e.name)
      .sort();
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return [];
    throw err;
  }
}

/** Replaces a set's members at once: a file written beside it and renamed over it, so a reader sees old or new. */
export function writeMembers(name: string, members: string[], dir = setsDir()): void {
  Deno.mkdirSync(dir, { recursive: true, mode: 0o755 });
  const tmp = `${dir}/.${name}.${Deno.pid}`;
  Deno.writeTextFileSync(tmp, members.map((m) => `${m}\n`).join(""), { mode: 0o644 });
  Deno.renameSync(tmp, `${dir}/${name}`);
}
