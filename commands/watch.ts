/** `watch`: puts our rules back after other software rewrote the firewall. */

import { describeForward, describePlan } from "../backends/backend.ts";
import { acceptMisplaced, exists, forwardsByDomain, runningDomains, runningXml } from "./live.ts";
import type { HookDeps } from "../hook/deps.ts";
import {
  applyDeps,
  defaultMoves,
  forwardsOf,
  install,
  loadFor,
  pinFacts,
  pinnedDefaults,
  removedMarker,
  stoppedSince,
} from "../hook/domain.ts";
import { reassertAccepts, syncDomain } from "../rules.ts";
import { LIBVIRT_DNSMASQ_DIR } from "../system/libvirt.ts";
import { message } from "../system/report.ts";
import { readLive } from "../rules.ts";

/** What one look did: the guests it mended, those whose leftovers it removed, and what it has to tell. */
interface Healed {
  mended: string[];
  /** Guests whose `stopped` hook ran, whose rules were still live: removed. */
  residue: string[];
  /** What is wrong and is left as it is (a lease file that cannot be read, a default address that moved). */
  notes: string[];
}

/**
 * Compares what is live with what the config says for every running guest, and mends it: our accepts back in
 * front of libvirt's chains, and a running guest's forwards re-applied when another tool wiped them. It adds
 * nothing for a guest whose `stopped` hook ran (libvirt keeps its status file a while after), and removes what such
 * a guest left live. A forward keeps the default address it took when it was applied, and a lease file that cannot
 * be read changes nothing live: both are told, not mended.
 */
async function heal(deps: HookDeps): Promise<Healed> {
  const healed: Healed = { mended: [], residue: [], notes: [] };
  const { config, facts } = await loadFor({ ...deps, problem: () => {} });
  if (await deps.lock(() => reassertAccepts(applyDeps(deps, config, facts))) > 0) {
    healed.mended.push("accepts in libvirt's chains");
  }
  const running = await runningDomains();
  const state = await readLive(applyDeps(deps));
  const live = forwardsByDomain(state, [...config.names, ...running]);
  for (const domain of live.keys()) {
    if (!stoppedSince(deps.stateDir, domain)) continue;
    // Under the lock, as a start clears the note before it takes the lock to apply.
    const removed = await deps.lock(async () =>
      stoppedSince(deps.stateDir, domain) ? await syncDomain(domain, applyDeps(deps), { forwards: [] }) : []
    );
    if (removed.length > 0) healed.residue.push(domain);
  }
  if (config.broken) return healed;
  for (const domain of running) {
    if (deps.stateDir !== undefined && await exists(removedMarker(deps.stateDir, domain))) continue;
    if (stoppedSince(deps.stateDir, domain)) continue;
    // Planned with the default addresses its forwards took, so a moved default route moves nothing.
    const pinned = pinnedDefaults(deps.stateDir, domain);
    healed.notes.push(...defaultMoves(domain, { facts, pinned }));
    const pinnedFacts = pinFacts(facts, pinned);
    // The running guest's XML: its metadata as it is now, and its interfaces, whose leases may have come or moved.
    const xml = await runningXml(domain);
    const planned = await forwardsOf(domain, { config, facts: pinnedFacts, xml, deps }).catch(() =>
      undefined
    );
    if (planned?.kind !== "ok") continue;
    const want = describePlan(domain, planned).sort().join("\n");
    const have = (live.get(domain) ?? []).map(describeForward).sort().join("\n");
    if (want === have && !acceptMisplaced(state, domain, planned.forwards)) continue;
    if (planned.leaseProblems.length > 0) {
      // A lease file that cannot be read proves no lease gone: what is live stays.
      healed.notes.push(...planned.leaseProblems.map((p) => `${p}; the live forwards of ${domain} are kept`));
      continue;
    }
    const stdin = () => Promise.resolve(xml ?? "");
    const pinnedDeps = { ...deps, readStdin: stdin, facts: () => Promise.resolve(pinnedFacts) };
    if (await install(domain, pinnedDeps, { action: "watch" }) === "installed") healed.mended.push(domain);
  }
  return healed;
}

/** The shortest poll interval `watch` takes, in seconds: each look reads the firewall and runs programs. */
export const MIN_POLL_SECONDS = 2;

/** The longest poll interval `watch` takes, in seconds (a day). */
export const MAX_POLL_SECONDS = 86_400;

/**
 * The least time between the end of one look and the start of the next that events ask for: a flood of events
 * (a lease file replaced thousands of times a second) gets one look a second, not one per event, nor none.
 */
const EVENT_GAP_MS = 1000;

/**
 * Watches the firewall (`nft monitor`, and a slow poll as a safety net) and heals after every change. SIGHUP
 * re-reads the config (every look does); SIGTERM and SIGINT stop it.
 */
export async function watch(deps: HookDeps, pollSeconds: number): Promise<number> {
  const say = (line: string) => deps.problem(`${new Date().toISOString()} ${line}`);
  // What is wrong and left alone is told once, and told again only after it was fine in between.
  let told = new Set<string>();
  let timer: ReturnType<typeof setTimeout> | undefined;
  let queued = false;
  let lastEnd = 0;
  let running = Promise.resolve();
  const look = async (why: string) => {
    try {
      const { mended, residue, notes } = await heal(deps);
      if (mended.length > 0) {
        say(`after ${why}: mended ${mended.join(", ")}`);
        deps.log(`watch: after ${why}: mended ${mended.join(", ")}`);
      }
      if (residue.length > 0) {
        say(`after ${why}: removed what a stopped guest left live: ${residue.join(", ")}`);
        deps.log(`watch: after ${why}: removed what a stopped guest left live: ${residue.join(", ")}`);
      }
      for (const note of notes) {
        if (told.has(note)) continue;
        say(note);
        deps.log(`watch: ${note}`);
      }
      told = new Set(notes);
    } catch (err) {
      say(`after ${why}: cannot mend: ${message(err)}`);
    }
  };
  // The first event of a burst sets a look; the later ones join it instead of putting it off, so no rate of events
  // keeps the watcher from looking; at most one look waits behind the one under way.
  const schedule = (why: string, delay = 300) => {
    if (timer !== undefined || queued) return;
    timer = setTimeout(() => {
      timer = undefined;
      queued = true;
      running = running.then(async () => {
        queued = false;
        try {
          await look(why);
        } finally {
          lastEnd = Date.now();
        }
      });
    }, Math.max(delay, lastEnd + EVENT_GAP_MS - Date.now()));
  };
  const stop = new AbortController();
  const listeners: [Deno.Signal, () => void][] = [
    ["SIGTERM", () => stop.abort()],
    ["SIGINT", () => stop.abort()],
    // The usual meaning: read the config again. Every look reads it, so this is one look now.
    ["SIGHUP", () => {
      say("SIGHUP: re-reading the config");
      schedule("SIGHUP", 0);
    }],
  ];
  for (const [signal, fn] of listeners) Deno.addSignalListener(signal, fn);
  say(`watching the firewall (nft monitor, and every ${pollSeconds} s) and the DHCP leases`);
  schedule("start", 0);
  const poll = setInterval(() => schedule("poll", 0), pollSeconds * 1000);
  const leases = watchLeases(deps.dnsmasqDir ?? LIBVIRT_DNSMASQ_DIR, () => schedule("a DHCP lease change"));
  stop.signal.addEventListener("abort", () => leases?.close(), { once: true });
  try {
    const nft = findProgram(deps.nft ?? "nft", deps.env("PATH"));
    while (!stop.signal.aborted && nft !== undefined) {
      const monitor = spawnMonitor(nft, stop.signal);
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
    // No nft: the poll alone keeps watch.
    if (!stop.signal.aborted) {
      await new Promise((resolve) => stop.signal.addEventListener("abort", resolve, { once: true }));
    }
  } finally {
    leases?.close();
    clearInterval(poll);
    clearTimeout(timer);
    for (const [signal, fn] of listeners) Deno.removeSignalListener(signal, fn);
    await running;
  }
  say("stopped");
  return 0;
}

/** A program's path: as given where it has a slash, else the first on PATH; undefined where there is none. */
function findProgram(program: string, path = "/usr/sbin:/usr/bin:/sbin:/bin"): string | undefined {
  const candidates = program.includes("/") ? [program] : path.split(":").map((dir) => `${dir}/${program}`);
  for (const c of candidates) {
    try {
      if (Deno.statSync(c).isFile) return c;
    } catch {
      // Not there.
    }
  }
  return undefined;
}

/**
 * Starts `nft monitor rules`, which must not outlive the watcher: it is killed on a clean stop, and started
 * through setpriv(1) with a parent-death signal (prctl PR_SET_PDEATHSIG), so the kernel ends it when the watcher
 * dies any other way (kill -9, a crash) instead of leaving it to PID 1. A quiet monitor would never notice its
 * closed pipe. Where setpriv is missing (util-linux is on every Debian), nft runs as it is.
 */
function spawnMonitor(nft: string, signal: AbortSignal): Deno.ChildProcess {
  const setpriv = findProgram("setpriv");
  const [program, ...args] = setpriv === undefined
    ? [nft, "monitor", "rules"]
    : [setpriv, "--pdeathsig", "TERM", "--", nft, "monitor", "rules"];
  return new Deno.Command(program!, { args, stdout: "piped", stderr: "null", signal }).spawn();
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
