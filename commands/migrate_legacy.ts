/** `migrate-legacy`: removes the old Python hook's chains. */

import { legacyRules } from "../backends/backend.ts";
import { runDir, runningXml } from "./live.ts";
import type { HookDeps } from "../hook/deps.ts";
import { install, loadFor, tools } from "../hook/domain.ts";
import { runBatches } from "../rules.ts";
import { message } from "../system/report.ts";
import { runChecked } from "../system/runner.ts";

export async function migrateLegacy(
  deps: HookDeps,
  { dryRun = false }: { dryRun?: boolean } = {},
): Promise<number> {
  const { config } = await loadFor({ ...deps, problem: () => {} });
  let running: string[] = [];
  try {
    running = [...Deno.readDirSync(runDir())].filter((e) => e.name.endsWith(".xml")).map((e) =>
      e.name.slice(0, -4)
    );
  } catch {
    // libvirt is not running here: only the config's domains are candidates.
  }
  const candidates = new Set([...config.names, ...running]);
  const t = tools(deps)[4];
  const { chains: found, jumps, batch } = legacyRules(await runChecked(deps.runner, t.save), candidates);
  const total = found.get("nat")!.length + found.get("filter")!.length;
  if (total === 0) {
    console.log("No chains of the old hook are live.");
  } else {
    console.log(`${dryRun ? "Would remove" : "Removing"} the old hook's chains and the jumps into them:`);
    for (const [tbl, chains] of found) for (const c of chains) console.log(`  ${tbl} chain ${c}`);
    for (const [tbl, js] of jumps) for (const j of js) console.log(`  ${tbl} rule -A ${j}`);
    if (dryRun) return 0;
    try {
      await deps.lock(() =>
        runBatches(deps.runner, [{ argv: t.restore, stdin: batch, name: t.restore[0]! }])
      );
    } catch (err) {
      deps.problem(`Cannot remove the old hook's rules: ${message(err)}; nothing was changed`);
      return 1;
    }
    deps.log(`migrate-legacy: removed ${total} chain(s) of the old hook`);
  }
  let failed = 0;
  for (const domain of running) {
    const xml = await runningXml(domain) ?? "";
    const result = await install(
      domain,
      { ...deps, readStdin: () => Promise.resolve(xml) },
      { action: "migrate-legacy" },
    );
    if (result === "installed") console.log(`Applied the forwards of running guest "${domain}"`);
    if (result === "failed") failed++;
  }
  return failed ? 1 : 0;
}
