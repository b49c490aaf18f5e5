/** The one lock every writer takes, so parallel hook calls and operator commands never lose each other's rules. */

/** Where the lock lives: /run is a tmpfs, so a stale lock file never survives a reboot. */
export const LOCK_PATH = "/run/libvirt-hook-qemu.lock";

/** Runs `fn` holding an exclusive flock on `path`; gives up after `timeoutMs`. */
export async function withLock<T>(fn: () => Promise<T>, path = LOCK_PATH, timeoutMs = 30_000): Promise<T> {
  const file = openLockFile(path);
  // AbortSignal.timeout, not setTimeout: the first setTimeout of a Deno process costs ~3.5 ms, this ~0.2 ms.
  const deadline = AbortSignal.timeout(timeoutMs);
  let giveUp = () => {};
  try {
    const timeout = new Promise<never>((_, reject) => {
      giveUp = () =>
        reject(new Error(`Cannot take the lock "${path}": still held by another call after ${timeoutMs} ms`));
      deadline.addEventListener("abort", giveUp, { once: true });
    });
    await Promise.race([file.lock(true), timeout]);
    return await fn();
  } finally {
    deadline.removeEventListener("abort", giveUp);
    // Closing the file releases the lock.
    file.close();
  }
}

/**
 * Opens the lock file, creating it where it is missing. Where it cannot be written (a read-only /run) but exists,
 * it is opened for reading: flock needs no write access, and a removal must still happen under the lock.
 */
function openLockFile(path: string): Deno.FsFile {
  try {
    return Deno.openSync(path, { create: true, write: true });
  } catch (err) {
    try {
      return Deno.openSync(path, { read: true });
    } catch {
      throw new Error(
        `Cannot open the lock file "${path}": ${err instanceof Error ? err.message : String(err)}`,
      );
    }
  }
}
