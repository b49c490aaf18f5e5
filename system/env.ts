/** The process's surroundings: environment variables, stdin, and our directory on /run. */

/** Our directory on /run (a tmpfs, root's only): the validated config's cache and the busy-ruleset hint.
 * LIBVIRT_HOOK_QEMU_STATE_DIR overrides it (tests; libvirt never sets it). */
export const STATE_DIR = "/run/libvirt-hook-qemu";

/** Reads an environment variable, treating a denied permission as unset. */
export function env(name: string): string | undefined {
  try {
    return Deno.env.get(name);
  } catch {
    return undefined;
  }
}

let stdinText: string | undefined;

/**
 * Reads all of stdin once; later calls get the same text. Synchronously: libvirt writes the XML and closes the
 * pipe, and a plain read loop costs a tenth of what bringing up web streams does (~3 ms) for a few kilobytes.
 */
export function readStdin(): Promise<string> {
  if (stdinText === undefined) {
    const decoder = new TextDecoder();
    const buffer = new Uint8Array(64 * 1024);
    let text = "";
    try {
      for (let n = Deno.stdin.readSync(buffer); n !== null && n > 0; n = Deno.stdin.readSync(buffer)) {
        text += decoder.decode(buffer.subarray(0, n), { stream: true });
      }
    } catch {
      // No stdin (closed, or not readable): no XML.
    }
    stdinText = text + decoder.decode();
  }
  return Promise.resolve(stdinText);
}

/**
 * Where a program is on `path` (a PATH value), found with a few stat calls instead of a process (~0.02 ms each);
 * undefined where no directory of it has the program.
 */
export function onPath(program: string, path: string | undefined): string | undefined {
  for (const dir of (path ?? "").split(":")) {
    if (dir === "") continue;
    try {
      const info = Deno.statSync(`${dir}/${program}`);
      if (info.isFile && ((info.mode ?? 0o111) & 0o111) !== 0) return `${dir}/${program}`;
    } catch {
      // Not there (or not readable): the next directory.
    }
  }
  return undefined;
}
