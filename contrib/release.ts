/**
 * `deno task release`: the compiled hook for x86_64 and aarch64 Linux, with SHA-256 sums, in dist/.
 * `deno compile --target` needs the runtime (denort) of each target: downloaded where Deno can, else named by
 * DENORT_BIN_X86_64 / DENORT_BIN_AARCH64 (DENORT_BIN for this machine's own architecture).
 */

import { VERSION } from "../commands/cli.ts";

/** The architectures released, with Deno's target triple and the variable that names a denort for each. */
export const TARGETS = {
  x86_64: { triple: "x86_64-unknown-linux-gnu", variable: "DENORT_BIN_X86_64" },
  aarch64: { triple: "aarch64-unknown-linux-gnu", variable: "DENORT_BIN_AARCH64" },
} as const;

/** An architecture that is released. */
export type Arch = keyof typeof TARGETS;

/** One binary to build: its target, its file, and the denort to build it with (absent: Deno downloads one). */
export interface ReleaseBuild {
  arch: Arch;
  triple: string;
  output: string;
  denort?: string;
}

/** What releasePlan() needs: the environment, this machine's architecture, where to write, which architectures. */
export interface PlanOptions {
  env: (name: string) => string | undefined;
  /** This machine's architecture (Deno.build.arch); DENORT_BIN stands for its variable. */
  hostArch: string;
  /** The folder of the binaries (default dist). */
  outDir?: string;
  /** The architectures to build (default both). */
  arches?: readonly Arch[];
  version?: string;
}

/** The builds of a release: one binary per architecture, named with the version. */
export function releasePlan(
  { env, hostArch, outDir = "dist", arches = ["x86_64", "aarch64"], version = VERSION }: PlanOptions,
): ReleaseBuild[] {
  return arches.map((arch) => {
    const { triple, variable } = TARGETS[arch];
    const denort = env(variable) || (arch === hostArch ? env("DENORT_BIN") : undefined);
    return {
      arch,
      triple,
      output: `${outDir}/libvirt-hook-qemu-${version}-${arch}-linux`,
      ...(denort ? { denort } : {}),
    };
  });
}

/** The lines `sha256sum -c` reads: `<hex>  <file name>`, for files in the same folder. */
export async function sha256Sums(files: { name: string; bytes: Uint8Array }[]): Promise<string> {
  const lines = [];
  for (const { name, bytes } of files) {
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>));
    lines.push(`${[...digest].map((b) => b.toString(16).padStart(2, "0")).join("")}  ${name}`);
  }
  return lines.join("\n") + "\n";
}

/** Builds one binary with deno compile; the reason it could not, or undefined. */
async function build(b: ReleaseBuild): Promise<string | undefined> {
  const env: Record<string, string> = { DENO_NO_UPDATE_CHECK: "1" };
  if (b.denort) env.DENORT_BIN = b.denort;
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "compile",
      "--quiet",
      "-P=hook",
      "--v8-flags=--min-semi-space-size=8",
      "--target",
      b.triple,
      "--output",
      b.output,
      "main.ts",
    ],
    env,
    cwd: new URL("..", import.meta.url).pathname,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (out.code === 0) return undefined;
  // The innermost cause says it best (a download refused, a denort of another version): the last "N: " line.
  // Deno colours its errors: the escape sequences go before the lines are read.
  // deno-lint-ignore no-control-regex
  const lines = new TextDecoder().decode(out.stderr).replace(/\x1b\[[0-9;]*m/g, "").split("\n");
  const causes = lines.filter((l) => /^\s+\d+: /.test(l) && !/<unknown>/.test(l)).map((l) =>
    l.replace(/^\s+\d+: /, "")
  );
  const why = causes.at(-1) ?? lines.find((l) => l.startsWith("error")) ?? `exit ${out.code}`;
  const hint = b.denort
    ? `with DENORT_BIN=${b.denort}`
    : `set ${TARGETS[b.arch].variable} to a denort ${Deno.version.deno} for ${b.triple}`;
  return `${b.arch}: deno compile failed (${why}); ${hint}`;
}

if (import.meta.main) {
  const arches = Deno.args.length > 0 ? Deno.args : ["x86_64", "aarch64"];
  const unknown = arches.filter((a) => !(a in TARGETS));
  if (unknown.length > 0) {
    console.error(`Unknown architecture ${unknown.join(", ")}; known: ${Object.keys(TARGETS).join(", ")}`);
    Deno.exit(2);
  }
  const root = new URL("..", import.meta.url).pathname;
  const plan = releasePlan({ env: Deno.env.get, hostArch: Deno.build.arch, arches: arches as Arch[] });
  await Deno.mkdir(`${root}dist`, { recursive: true });
  const failures = (await Promise.all(plan.map(build))).filter((f) => f !== undefined);
  if (failures.length > 0) {
    for (const f of failures) console.error(f);
    Deno.exit(1);
  }
  const files = plan.map((b) => ({
    name: b.output.slice("dist/".length),
    bytes: Deno.readFileSync(`${root}${b.output}`),
  }));
  await Deno.writeTextFile(`${root}dist/SHA256SUMS`, await sha256Sums(files));
  for (const b of plan) console.log(`${b.output} (${b.triple})`);
  console.log("dist/SHA256SUMS");
}
