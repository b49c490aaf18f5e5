/** Process helpers for the benchmark: bounded command runs, wall-clock timing, network namespaces. */

/** What one finished command left, with its wall-clock time from spawn to exit. */
export interface RunResult {
  code: number;
  signal: Deno.Signal | null;
  stdout: string;
  stderr: string;
  /** Milliseconds from just before spawn until the process was reaped. */
  ms: number;
  timedOut: boolean;
}

/** Options of {@link run}. */
export interface RunOptions {
  stdin?: string;
  /** SIGKILL after this many milliseconds (default 60 s). */
  timeoutMs?: number;
  cwd?: string;
  env?: Record<string, string>;
}

const decoder = new TextDecoder();
const encoder = new TextEncoder();

/** Runs argv to completion, never longer than its timeout, and measures its wall-clock time. */
export async function run(argv: string[], options: RunOptions = {}): Promise<RunResult> {
  const [program, ...args] = argv;
  if (!program) throw new TypeError("Cannot run an empty command");
  const timeoutMs = options.timeoutMs ?? 60_000;
  const stdinBytes = options.stdin === undefined ? undefined : encoder.encode(options.stdin);
  const command = new Deno.Command(program, {
    args,
    stdin: stdinBytes === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
    ...(options.cwd === undefined ? {} : { cwd: options.cwd }),
    ...(options.env === undefined ? {} : { env: options.env }),
  });
  let timedOut = false;
  const t0 = performance.now();
  const child = command.spawn();
  let t1 = t0;
  const exited = child.status.then((s) => {
    t1 = performance.now();
    return s;
  });
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch {
      // Already gone.
    }
  }, timeoutMs);
  try {
    if (stdinBytes !== undefined) {
      const writer = child.stdin.getWriter();
      await writer.write(stdinBytes).catch(() => {});
      await writer.close().catch(() => {});
    }
    const out = await child.output();
    await exited;
    return {
      code: out.code,
      signal: out.signal,
      stdout: decoder.decode(out.stdout),
      stderr: decoder.decode(out.stderr),
      ms: t1 - t0,
      timedOut,
    };
  } finally {
    clearTimeout(timer);
  }
}

/** Describes a failed run in one line. */
export function describeFailure(argv: string[], r: RunResult): string {
  const why = r.timedOut ? "timed out" : r.signal ? `killed by ${r.signal}` : `exit ${r.code}`;
  const err = r.stderr.trim().split("\n").slice(0, 6).join(" | ");
  return `${argv.join(" ").slice(0, 200)}: ${why}${err ? `: ${err}` : ""}`;
}

/** Runs argv and throws unless it exits 0; returns its stdout. */
export async function runOk(argv: string[], options: RunOptions = {}): Promise<string> {
  const r = await run(argv, options);
  if (r.code !== 0 || r.timedOut) throw new Error(describeFailure(argv, r));
  return r.stdout;
}

/** The minimal environment libvirt gives a hook (plus the config file name). */
export const HOOK_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/** A throw-away network namespace: every firewall command of the benchmark goes through {@link Netns.argv}. */
export class Netns {
  private constructor(readonly name: string) {}

  /** Creates the namespace with lo up, a "public" veth holding the default route and a libvirt-like bridge. */
  static async create(name: string): Promise<Netns> {
    await runOk(["ip", "netns", "add", name], { timeoutMs: 10_000 });
    const ns = new Netns(name);
    try {
      const ip = (...args: string[]) => runOk(["ip", "-n", name, ...args], { timeoutMs: 10_000 });
      await ip("link", "set", "lo", "up");
      await ip("link", "add", "pub0", "type", "veth", "peer", "name", "pub0peer");
      await ip("addr", "add", "203.0.113.1/24", "dev", "pub0");
      await ip("link", "set", "pub0", "up");
      await ip("link", "set", "pub0peer", "up");
      await ip("route", "add", "default", "via", "203.0.113.254");
      await ip("link", "add", "virbr0", "type", "bridge");
      await ip("addr", "add", "192.168.122.1/24", "dev", "virbr0");
      await ip("link", "set", "virbr0", "up");
    } catch (err) {
      await ns.delete();
      throw err;
    }
    return ns;
  }

  /** argv run inside the namespace. */
  argv(argv: string[]): string[] {
    return ["ip", "netns", "exec", this.name, ...argv];
  }

  /**
   * argv run inside the namespace with the minimal environment libvirt gives hooks; `wrapper` (strace, time)
   * goes between the namespace and the environment reset.
   */
  hookArgv(argv: string[], extraEnv: string[] = [], wrapper: string[] = []): string[] {
    return this.argv([...wrapper, "env", "-i", "LC_ALL=C", HOOK_PATH_ENV, ...extraEnv, ...argv]);
  }

  /** Runs argv inside the namespace and throws unless it exits 0. */
  exec(argv: string[], options: RunOptions = {}): Promise<string> {
    return runOk(this.argv(argv), { timeoutMs: 60_000, ...options });
  }

  /** Deletes the namespace (and with it every rule and interface in it); never throws. */
  async delete(): Promise<void> {
    try {
      await run(["ip", "netns", "del", this.name], { timeoutMs: 10_000 });
    } catch {
      // Already gone, or ip is missing: nothing more to do.
    }
  }
}

/**
 * Deletes namespaces an earlier, killed run of the benchmark left (named `<prefix><pid>-...` for a process
 * that no longer exists); returns their names.
 */
export async function deleteStaleNamespaces(prefix: string): Promise<string[]> {
  const list = await run(["ip", "netns", "list"], { timeoutMs: 10_000 });
  const stale: string[] = [];
  for (const line of list.stdout.split("\n")) {
    const name = line.trim().split(" ")[0] ?? "";
    const m = new RegExp(`^${prefix}(\\d+)-[a-z]+$`).exec(name);
    if (!m) continue;
    const alive = await Deno.stat(`/proc/${m[1]}`).then(() => true, () => false);
    if (alive) continue;
    await run(["ip", "netns", "del", name], { timeoutMs: 10_000 });
    stale.push(name);
  }
  return stale;
}

/** The prefix that runs a call under strace, recording every program it starts in `log` (see countSpawned). */
export function traceExec(log: string): string[] {
  return ["strace", "-f", "-qq", "-e", "trace=execve", "-e", "signal=none", "-o", log];
}

/** Counts the processes a traced call spawned from an `strace -f -e trace=execve -o FILE` log. */
export function countSpawned(log: string): { count: number; names: string[] } {
  const lastPath = new Map<number, string>();
  const succeeded = new Map<number, string>();
  let root: number | undefined;
  for (const line of log.split("\n")) {
    const m = /^(\d+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const pid = Number(m[1]);
    const rest = m[2] ?? "";
    const call = /^execve\("([^"]*)"/.exec(rest);
    if (call) {
      root ??= pid;
      lastPath.set(pid, call[1] ?? "");
    }
    const done = call !== null || rest.startsWith("<... execve resumed>");
    if (done && /\)\s*=\s*0\s*$/.test(rest)) succeeded.set(pid, lastPath.get(pid) ?? "?");
  }
  const names: string[] = [];
  for (const [pid, path] of succeeded) {
    if (pid !== root) names.push(path.slice(path.lastIndexOf("/") + 1));
  }
  return { count: names.length, names };
}
