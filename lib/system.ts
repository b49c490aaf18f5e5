/** The real world behind HookDeps: environment, stdin, processes, /proc and /sys, the lock and syslog. */

import { drivesNfTables } from "./apply.ts";
import type { HookDeps } from "./hook.ts";
import { readHostFacts, readListeners } from "./host.ts";
import { withLock } from "./lock.ts";
import { systemRunner } from "./runner.ts";

/** Our directory on /run (a tmpfs, root's only): the validated config's cache and the busy-ruleset hint.
 * LIBVIRT_HOOK_QEMU_STATE_DIR overrides it (tests; libvirt never sets it). */
export const STATE_DIR = "/run/libvirt-hook-qemu";

/** The syslog tag of every line we log. */
export const LOG_TAG = "libvirt-hook-qemu";

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

const encoder = new TextEncoder();

/**
 * Writes one line to stderr, synchronously, so it is out before any exit. Never throws: with stderr unwritable
 * (full, closed by its reader) the line is lost, and the call goes on; a throw here would turn reconnect's or
 * stopped's exit status into a failure, and libvirt kills a running guest whose reconnect fails.
 */
export function problem(line: string): void {
  try {
    const bytes = encoder.encode(`${line}\n`);
    for (let done = 0; done < bytes.length;) done += Deno.stderr.writeSync(bytes.subarray(done));
  } catch {
    // Nowhere to say it.
  }
}

/** Sends one line to syslog through logger(1), without waiting for it; losing a log line never fails the hook. */
export function log(line: string): void {
  try {
    const child = new Deno.Command("logger", {
      args: ["-t", LOG_TAG, "-p", "daemon.info", "--", line],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).spawn();
    child.unref();
    child.status.catch(() => {});
  } catch {
    // No logger on this host: nothing to log to.
  }
}

async function setHairpin(device: string): Promise<void> {
  if (!/^[^/\0]+$/.test(device) || device === "." || device === "..") {
    throw new TypeError(`Not a device name: "${device}"`);
  }
  const path = `/sys/class/net/${device}/brport/hairpin_mode`;
  try {
    if ((await Deno.readTextFile(path)).trim() === "1") return;
  } catch (err) {
    // Not a bridge port (macvtap, direct): hairpin mode does not apply.
    if (err instanceof Deno.errors.NotFound) return;
    throw err;
  }
  await Deno.writeTextFile(path, "1");
}

/** The hook's dependencies on this machine. */
export function systemHookDeps(): HookDeps {
  return {
    env,
    readStdin,
    runner: systemRunner(),
    problem,
    facts: readHostFacts,
    lock: (fn) => withLock(fn),
    setHairpin,
    listeners: readListeners,
    log,
    nft: "nft",
    stateDir: env("LIBVIRT_HOOK_QEMU_STATE_DIR") || STATE_DIR,
    // Tests only (libvirt never sets it): where the lab keeps network status files.
    ...(env("LIBVIRT_NETWORK_RUN_DIR") ? { networkRunDir: env("LIBVIRT_NETWORK_RUN_DIR")! } : {}),
    nfTables: (tools) => drivesNfTables(tools, env("PATH")),
  };
}
