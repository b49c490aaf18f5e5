/** Entry point: libvirt's hook calls and the operator commands, told apart by their arguments. */

import { systemHookDeps } from "./hook/deps.ts";
import { asHookCall, runHook } from "./hook/hook.ts";
import { message, problem } from "./system/report.ts";

/** Runs the program for `args` and returns its exit code. */
export async function main(args: string[]): Promise<number> {
  const call = asHookCall(args);
  // The operator commands load what the hook never needs (node:util among them): only when asked for.
  if (!call) return await (await import("./commands/cli.ts")).runCli(args);
  // libvirt reads the stdout of some hook calls as domain XML: nothing may ever reach it. And a line that cannot be
  // written to stderr (full, closed) must not fail the call: problem() never throws, console.error would.
  const say = (...parts: unknown[]) => problem(parts.map(String).join(" "));
  console.log =
    console.info =
    console.debug =
    console.warn =
    console.error =
      say;
  try {
    return await runHook(call, systemHookDeps());
  } catch (err) {
    problem(`Hook "${call.operation}" for "${call.domain}" failed: ${message(err)}`);
    // Only start may fail: a failing reconnect makes libvirt kill the running guest.
    return call.operation === "start" ? 1 : 0;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
