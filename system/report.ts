/** The one error funnel: a line for the person (stderr, never throwing), a line for syslog, an error's text. */

/** The syslog tag of every line we log. */
export const LOG_TAG = "libvirt-hook-qemu";

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

/** The message of any thrown value. */
export function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** Where a call's lines go: HookDeps has both, pointing at problem() and log() (tests record them). */
export interface Outlet {
  /** A line for the person who ran us (stderr). */
  problem(line: string): void;
  /** A line for syslog: what changed, and what failed to. */
  log(line: string): void;
}

/** One failure of an action on a domain, as failed() reports it. */
export interface Failure {
  /** libvirt's operation or the command's name: start, reconnect, reload, ... */
  action: string;
  domain: string;
  /** What could not be done, for the person: `Cannot apply forwards for "web1"`. */
  headline: string;
  /** Why: a thrown value or a reason. */
  why: unknown;
  /** What syslog says happened (default "failed"). */
  outcome?: string;
}

/**
 * The funnel every failure of the hook and the commands goes through: `<headline>: <why>` for the person and
 * `<action> <domain>: <outcome>: <why>` in syslog. Returns why, as text.
 */
export function failed(out: Outlet, f: Failure): string {
  const why = message(f.why);
  out.problem(`${f.headline}: ${why}`);
  out.log(`${f.action} ${f.domain}: ${f.outcome ?? "failed"}: ${why}`);
  return why;
}
