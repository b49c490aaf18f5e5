/** `migrate-legacy`: removes the old Python hook's chains. */

import { chainLine, tokenize } from "../backends/backend.ts";
import { runDir, runningXml } from "./live.ts";
import type { HookDeps } from "../hook/deps.ts";
import { install, loadFor, tools } from "../hook/domain.ts";
import { runBatches } from "../rules.ts";
import { message } from "../system/report.ts";
import { runChecked } from "../system/runner.ts";

/** The old hook named its chains `DNAT-<domain>`, `SNAT-<domain>`, `FWD-<domain>`, cut to 28 characters. */
function legacyChains(domain: string) {
  return {
    nat: [`DNAT-${domain}`, `SNAT-${domain}`].map((c) => c.slice(0, 28)),
    filter: [`FWD-${domain}`.slice(0, 28)],
  };
}

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
  const saved = await runChecked(deps.runner, t.save);
  const wanted = new Map<string, Set<string>>([["nat", new Set()], ["filter", new Set()]]);
  for (const d of candidates) {
    const c = legacyChains(d);
    for (const name of c.nat) wanted.get("nat")!.add(name);
    for (const name of c.filter) wanted.get("filter")!.add(name);
  }
  const found = new Map<string, string[]>([["nat", []], ["filter", []]]);
  const jumps = new Map<string, string[]>([["nat", []], ["filter", []]]);
  let table = "";
  for (const line of saved.split("\n")) {
    if (line.startsWith("*")) table = line.slice(1);
    const chain = /^:(\S+) /.exec(line)?.[1];
    if (chain && wanted.get(table)?.has(chain)) found.get(table)!.push(chain);
    if (line.startsWith("-A ")) {
      const words = tokenize(line.slice(3));
      const target = words[words.indexOf("-j") + 1];
      if (target && wanted.get(table)?.has(target)) jumps.get(table)!.push(line.slice(3));
    }
  }
  const total = found.get("nat")!.length + found.get("filter")!.length;
  if (total === 0) {
    console.log("No chains of the old hook are live.");
  } else {
    const batch: string[] = [];
    for (const [tbl, chains] of found) {
      if (chains.length === 0) continue;
      batch.push(`*${tbl}`, ...chains.map((c) => chainLine(c)));
      for (const j of jumps.get(tbl)!) batch.push(`-D ${j}`);
      for (const c of chains) batch.push(`-X ${c}`);
      batch.push("COMMIT");
    }
    console.log(`${dryRun ? "Would remove" : "Removing"} the old hook's chains and the jumps into them:`);
    for (const [tbl, chains] of found) for (const c of chains) console.log(`  ${tbl} chain ${c}`);
    for (const [tbl, js] of jumps) for (const j of js) console.log(`  ${tbl} rule -A ${j}`);
    if (dryRun) return 0;
    try {
      const stdin = batch.join("\n") + "\n";
      await deps.lock(() => runBatches(deps.runner, [{ argv: t.restore, stdin, name: t.restore[0]! }]));
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
