/** The one lock every writer takes, so parallel hook calls and operator commands never lose each other's rules. */

/** Where the lock lives: /run is a tmpfs, so a stale lock file never survives a reboot. */
export const LOCK_PATH = "/run/libvirt-hook-qemu.lock";

/** Runs `fn` holding an exclusive flock on `path`; gives up after `timeoutMs`. */
export async function withLock<T>(fn: () => Promise<T>, path = LOCK_PATH, timeoutMs = 30_000): Promise<T> {
  const file = await Deno.open(path, { create: true, write: true });
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new Error(`Cannot take the lock "${path}": still held by another call after ${timeoutMs} ms`),
          ),
        timeoutMs,
      );
    });
    await Promise.race([file.lock(true), timeout]);
    clearTimeout(timer);
    return await fn();
  } finally {
    clearTimeout(timer);
    // Closing the file releases the lock.
    file.close();
  }
}
