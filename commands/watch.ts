/** `watch`: puts our rules back after other software rewrote the firewall. */

import { describeForward, describePlan } from "../backends/forward.ts";
import { readState } from "../backends/state.ts";
import { acceptMisplaced, exists, forwardsByDomain, runDir, runningDomains } from "./live.ts";
import { domainConfig } from "../config.ts";
import type { HookDeps } from "../hook/deps.ts";
import { applyDeps, install, loadFor, removedMarker } from "../hook/domain.ts";
import { planForwards, reassertAccepts } from "../rules.ts";
import { message } from "../system/report.ts";

/**
 * Compares what is live with what the config says for every running guest, and mends it: our accepts back in
 * front of libvirt's chains, and a running guest's forwards re-applied when another tool wiped them.
 * Returns what it mended.
 */
async function heal(deps: HookDeps): Promise<string[]> {
  const mended: string[] = [];
  const { config, facts } = await loadFor({ ...deps, problem: () => {} });
  if (await deps.lock(() => reassertAccepts(applyDeps(deps, config, facts))) > 0) {
    mended.push("accepts in libvirt's chains");
  }
  if (config.broken) return mended;
  const running = await runningDomains();
  const state = await readState(applyDeps(deps));
  const live = forwardsByDomain(state, [...config.names, ...running]);
  for (const domain of running) {
    const found = domainConfig(config, domain);
    if (found.kind !== "ok") continue;
    if (deps.stateDir !== undefined && await exists(removedMarker(deps.stateDir, domain))) continue;
    const planned = planForwards(found.entries, facts);
    if (planned.problems.length > 0) continue;
    const want = describePlan(domain, planned).sort().join("\n");
    const have = (live.get(domain) ?? []).map(describeForward).sort().join("\n");
    if (want === have && !acceptMisplaced(state, domain, planned.forwards)) continue;
    const xml = await Deno.readTextFile(`${runDir()}/${domain}.xml`).catch(() => "");
    if (await install(domain, { ...deps, readStdin: () => Promise.resolve(xml) }, "watch") === "installed") {
      mended.push(domain);
    }
  }
  return mended;
}

/** Watches the firewall (`nft monitor`, and a slow poll as a safety net) and heals after every change. */
export async function watch(deps: HookDeps, pollSeconds: number): Promise<number> {
  const say = (line: string) => deps.problem(`${new Date().toISOString()} ${line}`);
  let timer: ReturnType<typeof setTimeout> | undefined;
  let running = Promise.resolve();
  const schedule = (why: string, delay = 300) => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      running = running.then(async () => {
        try {
          const mended = await heal(deps);
          if (mended.length > 0) {
            say(`after ${why}: mended ${mended.join(", ")}`);
            deps.log(`watch: after ${why}: mended ${mended.join(", ")}`);
          }
        } catch (err) {
          say(`after ${why}: cannot mend: ${message(err)}`);
        }
      });
    }, delay);
  };
  const stop = new AbortController();
  for (const signal of ["SIGTERM", "SIGINT"] as const) Deno.addSignalListener(signal, () => stop.abort());
  say(`watching the firewall (nft monitor, and every ${pollSeconds} s)`);
  schedule("start", 0);
  const poll = setInterval(() => schedule("poll", 0), pollSeconds * 1000);
  try {
    while (!stop.signal.aborted) {
      let monitor: Deno.ChildProcess;
      try {
        monitor = new Deno.Command(deps.nft ?? "nft", {
          args: ["monitor", "rules"],
          stdout: "piped",
          stderr: "null",
          signal: stop.signal,
        })
          .spawn();
      } catch {
        // No nft: the poll alone keeps watch.
        await new Promise((resolve) => stop.signal.addEventListener("abort", resolve, { once: true }));
        break;
      }
      const lines = monitor.stdout.pipeThrough(new TextDecoderStream());
      for await (const chunk of lines) {
        // Our own rules changing is our own doing; anything else may have moved or wiped ours.
        if (chunk.split("\n").some((l) => l.trim() !== "" && !l.includes("libvirt-hook-qemu"))) {
          schedule("a firewall change");
        }
      }
      await monitor.status;
      if (!stop.signal.aborted) await new Promise((r) => setTimeout(r, 1000));
    }
  } finally {
    clearInterval(poll);
    clearTimeout(timer);
    await running;
  }
  say("stopped");
  return 0;
}
