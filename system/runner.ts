/** Runs external commands: argument arrays only, every run bounded by a timeout. */

/** What a finished command left: its exit code and its output. */
export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Options for one command run. */
export interface RunOptions {
  stdin?: string;
  timeoutMs?: number;
  /** Variables set for this command, on top of the hook's own environment. */
  env?: Record<string, string>;
  /**
   * Called once all of the command's stdin is written (end of file follows). Writing is done by the event loop, so
   * a caller that has CPU work to overlap with the command waits for this first, else the command waits for it.
   */
  onInput?: () => void;
}

/** Runs commands; tests replace it with a recording fake. */
export interface Runner {
  run(argv: string[], options?: RunOptions): Promise<CommandResult>;
}

/** The default bound for one command: libvirt waits for the hook with no timeout of its own. */
export const DEFAULT_TIMEOUT_MS = 20_000;

/** A runner that starts real processes with Deno.Command and kills them when they outlast their timeout. */
export function systemRunner(defaultTimeoutMs = DEFAULT_TIMEOUT_MS): Runner {
  return {
    async run(argv, options = {}) {
      const [program, ...args] = argv;
      if (!program) throw new TypeError("Cannot run an empty command");
      const timeoutMs = options.timeoutMs ?? defaultTimeoutMs;
      let child: Deno.ChildProcess;
      try {
        child = new Deno.Command(program, {
          args,
          stdin: options.stdin === undefined ? "null" : "piped",
          ...(options.env === undefined ? {} : { env: options.env }),
          stdout: "piped",
          stderr: "piped",
        }).spawn();
      } catch (err) {
        const why = err instanceof Deno.errors.NotFound ? "not found" : String(err);
        return { code: 127, stdout: "", stderr: `${program}: ${why}` };
      }
      // AbortSignal.timeout, not setTimeout: the first setTimeout of a Deno process costs ~3.5 ms, this ~0.2 ms.
      const deadline = AbortSignal.timeout(timeoutMs);
      const kill = () => {
        try {
          child.kill("SIGKILL");
        } catch {
          // Already gone.
        }
      };
      deadline.addEventListener("abort", kill, { once: true });
      try {
        if (options.stdin !== undefined) {
          const writer = child.stdin.getWriter();
          // A command that exits early closes its stdin; its exit code tells the story.
          await writer.write(new TextEncoder().encode(options.stdin)).catch(() => {});
          // The command has its input now; closing it (end of file) can wait for the caller's next await.
          options.onInput?.();
          await writer.close().catch(() => {});
        } else options.onInput?.();
        const out = await child.output();
        const decoder = new TextDecoder();
        const stderr = decoder.decode(out.stderr);
        if (out.signal === "SIGKILL") {
          return {
            code: 124,
            stdout: decoder.decode(out.stdout),
            stderr: `${stderr}timed out after ${timeoutMs} ms`,
          };
        }
        return { code: out.code, stdout: decoder.decode(out.stdout), stderr };
      } finally {
        deadline.removeEventListener("abort", kill);
      }
    },
  };
}

/** A command that exited non-zero; its message names the command and carries its stderr. */
export class CommandError extends Error {
  /** The failed command's result. */
  readonly result: CommandResult;
  constructor(argv: string[], result: CommandResult) {
    super(`${argv[0]} exited with ${result.code}: ${oneLine(result.stderr) || "no message"}`);
    this.name = "CommandError";
    this.result = result;
  }
}

/** Runs a command and throws CommandError unless it exits 0. */
export async function runChecked(runner: Runner, argv: string[], options?: RunOptions): Promise<string> {
  const result = await runner.run(argv, options);
  if (result.code !== 0) throw new CommandError(argv, result);
  return result.stdout;
}

/** Joins a multi-line message into one line, so every problem stays one line on stderr. */
export function oneLine(text: string): string {
  return text.trim().split("\n").map((l) => l.trim()).filter(Boolean).join("; ");
}

/** How many batch lines a failure shows on each side of the one refused. */
const CONTEXT_LINES = 2;

/** The batch line a program's stderr names as refused: iptables-restore's two forms and nft's `file:line:`. */
export function refusedLine(stderr: string): number | undefined {
  const found = /\bline (\d+) failed/.exec(stderr) ?? /Error occurred at line: (\d+)/.exec(stderr) ??
    /^(?:\/dev\/stdin|-):(\d+):/m.exec(stderr);
  return found ? Number(found[1]) : undefined;
}

/**
 * The failure of a program given a batch on stdin (iptables-restore, nft -f -): `<program> failed: <its words>`,
 * then, where it names the line it refused, that line of the batch (marked `>`) and its neighbours, numbered as
 * the program counts them.
 */
export function batchFailure(program: string, result: CommandResult, batch = ""): string {
  const lines = batch.split("\n");
  const at = refusedLine(result.stderr);
  const shown = at !== undefined && at >= 1 && at <= lines.length;
  // Its own echo of the batch line (nft's, with a row of carets) gives way to ours; so does iptables' usage hint.
  const words = result.stderr.split("\n").map((l) => l.trim()).filter((l) =>
    l !== "" && !l.startsWith("Try `") && !(shown && (/^\^+$/.test(l) || lines.includes(l)))
  ).join("; ");
  const head = `${program} failed: ${words || `exit ${result.code}`}`;
  if (!shown) return head;
  const first = Math.max(1, at - CONTEXT_LINES), last = Math.min(lines.length, at + CONTEXT_LINES);
  const width = String(last).length;
  const context: string[] = [];
  for (let n = first; n <= last; n++) {
    if (n === lines.length && lines[n - 1] === "") break;
    context.push(`${n === at ? "  >" : "   "} ${String(n).padStart(width)}  ${lines[n - 1]}`);
  }
  return [head, ...context].join("\n");
}
