/** `watch`: puts our rules back after other software rewrote the firewall. */

import { describeForward, describePlan } from "../backends/forward.ts";
import { readState } from "../backends/state.ts";
import { acceptMisplaced, exists, forwardsByDomain, runningDomains, runningXml } from "./live.ts";
import type { HookDeps } from "../hook/deps.ts";
import { applyDeps, forwardsOf, install, loadFor, removedMarker } from "../hook/domain.ts";
import { reassertAccepts } from "../rules.ts";
import { LIBVIRT_DNSMASQ_DIR } from "../system/libvirt.ts";
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
    if (deps.stateDir !== undefined && await exists(removedMarker(deps.stateDir, domain))) continue;
    // The running guest's XML: its metadata as it is now, and its interfaces, whose leases may have come or moved.
    const xml = await runningXml(domain);
    const planned = await forwardsOf(domain, { config, facts, xml, deps }).catch(() => undefined);
    if (planned?.kind !== "ok") continue;
    const want = describePlan(domain, planned).sort().join("\n");
    const have = (live.get(domain) ?? []).map(describeForward).sort().join("\n");
    if (want === have && !acceptMisplaced(state, domain, planned.forwards)) continue;
    const stdin = () => Promise.resolve(xml ?? "");
    if (await install(domain, { ...deps, readStdin: stdin }, "watch") === "installed") {
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
  say(`watching the firewall (nft monitor, and every ${pollSeconds} s) and the DHCP leases`);
  schedule("start", 0);
  const poll = setInterval(() => schedule("poll", 0), pollSeconds * 1000);
  const leases = watchLeases(deps.dnsmasqDir ?? LIBVIRT_DNSMASQ_DIR, () => schedule("a DHCP lease change"));
  stop.signal.addEventListener("abort", () => leases?.close(), { once: true });
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
    leases?.close();
    clearInterval(poll);
    clearTimeout(timer);
    await running;
  }
  say("stopped");
  return 0;
}

/**
 * Watches dnsmasq's lease records: no libvirt event or hook tells when a guest gets or changes its lease, and each
 * change replaces `<bridge>.status` by a rename (a new file), so the directory is watched, not the file.
 * Undefined where the directory is not there (no libvirt network with DHCP ever ran): the poll still looks.
 */
function watchLeases(dir: string, changed: () => void): Deno.FsWatcher | undefined {
  let watcher: Deno.FsWatcher;
  try {
    watcher = Deno.watchFs(dir, { recursive: false });
  } catch {
    return undefined;
  }
  (async () => {
    try {
      for await (const event of watcher) {
        if (event.paths.some((p) => p.endsWith(".status"))) changed();
      }
    } catch {
      // Closed: watch is stopping.
    }
  })();
  return watcher;
}
