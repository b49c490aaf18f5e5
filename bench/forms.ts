/** The ways the benchmark runs the hook (installed by install.sh, deno run from source) and probes run alike. */

import { join } from "node:path";
import { describeFailure, run, runOk } from "./proc.ts";

/** Which way of running the hook. */
export type FormId = "installed" | "source";

/** One way of running the hook, and programs of our own run exactly the same way. */
export interface Form {
  id: FormId;
  label: string;
  /** argv of the hook, before its four arguments. */
  hook: string[];
  /** argv of an empty program run the same way: the runtime's own startup. */
  empty: string[];
  /**
   * argv of a program with source `code` run the same way as the hook (same binary, flags, config and module
   * cache); `{main}` in the code is the import specifier of the hook's main.ts. Undefined when not possible.
   */
  probe(name: string, code: string): Promise<string[] | undefined>;
}

const EMPTY = "// Empty program: what the runtime costs by itself.\n";

/** Installs the hook under `workdir/root` with install.sh (compiled form when possible) and describes the forms. */
export async function prepareForms(
  which: FormId[],
  repo: string,
  workdir: string,
  say: (line: string) => void,
  created: string[],
): Promise<{ forms: Form[]; kind: string }> {
  const forms: Form[] = [];
  let kind = "not installed";
  const benchDir = join(repo, ".bench");
  await Deno.mkdir(benchDir, { recursive: true });
  const writeBenchFile = async (name: string, code: string) => {
    const file = join(benchDir, `probe-${name}.ts`);
    await Deno.writeTextFile(file, code.replaceAll("{main}", "../main.ts"));
    if (!created.includes(file)) created.push(file);
    return file;
  };
  if (which.includes("installed")) {
    const root = join(workdir, "root");
    say(`install.sh with DESTDIR=${root}`);
    const r = await run([join(repo, "install.sh")], {
      env: { ...Deno.env.toObject(), DESTDIR: root },
      cwd: workdir,
      timeoutMs: 300_000,
    });
    if (r.code !== 0 || r.timedOut) {
      throw new Error(`install.sh failed: ${describeFailure(["install.sh"], r)}`);
    }
    const hooks = join(root, "etc/libvirt/hooks");
    const hook = join(hooks, "qemu");
    let probe: Form["probe"];
    let label: string;
    if (/compiled form/.test(r.stdout)) {
      kind = "compiled";
      label = "installed (compiled form)";
      // A compiled probe is built with the flags install.sh uses for the hook.
      probe = async (name, code) => {
        const output = join(workdir, `probe-${name}`);
        await runOk([
          Deno.execPath(),
          "compile",
          "--quiet",
          "-P=hook",
          "--config",
          join(repo, "deno.json"),
          "--output",
          output,
          await writeBenchFile(name, code),
        ], { cwd: repo, timeoutMs: 300_000, env: { ...Deno.env.toObject(), DENO_NO_UPDATE_CHECK: "1" } });
        return [output];
      };
    } else {
      kind = "source";
      label = "installed (source form)";
      // A probe runs through a copy of the installed wrapper, beside the bundle it runs, with the same flags.
      const wrapper = await Deno.readTextFile(hook);
      const target = '"$d/bundle/main.js"';
      if (!wrapper.includes(target)) {
        throw new Error(`Cannot find ${target} in the installed wrapper ${hook}`);
      }
      probe = async (name, code) => {
        // The bundle runs without deno.json: a bare npm name does not resolve there.
        if (/import "[^.{]/.test(code) && !/import "node:/.test(code)) return undefined;
        const src = join(hooks, "libvirt-hook-qemu", "bundle", `bench-probe-${name}.js`);
        await Deno.writeTextFile(src, code.replaceAll("{main}", "./main.js"));
        const argv0 = join(hooks, `bench-probe-${name}`);
        await Deno.writeTextFile(argv0, wrapper.replace(target, `"$d/bundle/bench-probe-${name}.js"`));
        await Deno.chmod(argv0, 0o755);
        return [argv0];
      };
    }
    const empty = await probe("empty", EMPTY);
    if (!empty) throw new Error("Cannot build the empty program for the installed form");
    forms.push({ id: "installed", label, hook: [hook], empty, probe });
  }
  if (which.includes("source")) {
    const probe: Form["probe"] = async (name, code) => [
      Deno.execPath(),
      "run",
      "-A",
      await writeBenchFile(name, code),
    ];
    forms.push({
      id: "source",
      label: "deno run -A main.ts",
      hook: [Deno.execPath(), "run", "-A", join(repo, "main.ts")],
      empty: (await probe("empty", EMPTY))!,
      probe,
    });
  }
  return { forms, kind };
}
