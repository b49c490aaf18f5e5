/** `status`: the live forwards by domain, and what stops them. */

import {
  blockedNote,
  blockers,
  type Counters,
  describeForward,
  describePlan,
  domainLabel,
  foreignGates,
  gateName,
  openingLine,
} from "../backends/backend.ts";
import {
  describeBackend,
  forwardsByDomain,
  hostListener,
  knownNames,
  livePacket,
  runningDomains,
  runningXml,
} from "./live.ts";
import type { HookDeps } from "../hook/deps.ts";
import { applyDeps, defaultMoves, forwardsOf, loadFor, pinFacts, pinnedDefaults } from "../hook/domain.ts";
import { waitingNote } from "../hook/guest.ts";
import { readListeners } from "../system/host.ts";
import { readLive } from "../rules.ts";

/** What `status` shows: every domain, or `only` one (by name or `#<hash>`); as text, or as JSON. */
export interface StatusOptions {
  only?: string | undefined;
  json?: boolean;
}

export async function status(deps: HookDeps, { only, json = false }: StatusOptions = {}): Promise<number> {
  const { config, facts } = await loadFor({ ...deps, problem: () => {} });
  // One read of the firewall serves both the forwards and the backend line.
  const state = await readLive(applyDeps(deps, config), { counters: true });
  const live = forwardsByDomain(state, await knownNames(config));
  const listeners = readListeners();
  const gates = await foreignGates(applyDeps(deps, config), state.nft?.hooks);
  const backend = describeBackend(config.settings.backend, state);
  const report = [];
  // A running guest shows up with nothing live too, where its forwards wait for its lease.
  const running = new Set(await runningDomains());
  const shown = [...new Set([...live.keys(), ...running])].sort((a, b) => a.localeCompare(b));
  for (const domain of shown) {
    if (only !== undefined && domain !== only && domainLabel(domain) !== only) continue;
    const forwards = live.get(domain) ?? [];
    // What the config and the running guest's XML say now (its metadata, and the addresses found for it).
    const xml = running.has(domain) ? await runningXml(domain) : undefined;
    // Planned with the default addresses its forwards took when they were applied: they stay on them.
    const pinned = running.has(domain) ? pinnedDefaults(deps.stateDir, domain) : {};
    const found = await forwardsOf(domain, { config, facts: pinFacts(facts, pinned), xml, deps })
      .catch(() => undefined);
    const waiting = found?.kind === "ok" ? found.waiting.map(waitingNote) : [];
    if (forwards.length === 0 && waiting.length === 0) continue;
    const planned = new Set(found?.kind === "ok" ? describePlan(domain, found) : []);
    const moved = defaultMoves(domainLabel(domain), { facts, pinned });
    // A lease file that cannot be read tells nothing of the forwards it would give: those live are not judged.
    const leaseProblems = found?.kind === "ok" ? found.leaseProblems : [];
    report.push({
      domain: domainLabel(domain),
      running: running.has(domain),
      inConfig: found?.kind !== "absent",
      ...(waiting.length ? { waiting } : {}),
      ...(moved.length ? { defaultMoved: moved } : {}),
      ...(leaseProblems.length ? { leaseProblems } : {}),
      forwards: forwards.map((f) => {
        // An outbound NAT takes no port and passes no gate of ours: nothing to note.
        const taken = f.outbound ? undefined : hostListener(f, listeners);
        const blocked = f.outbound ? [] : blockers(gates, livePacket(f, facts.connected)).map(blockedNote);
        return {
          forward: describeForward(f),
          ...(f.description === undefined ? {} : { description: f.description }),
          explained: planned.has(describeForward(f)) || leaseProblems.length > 0,
          ...(taken ? { takenFromHost: taken } : {}),
          ...(blocked.length ? { blocked } : {}),
          ...(f.counters ? { counters: f.counters } : {}),
        };
      }),
    });
  }
  if (json) {
    console.log(JSON.stringify({ backend, domains: report }, null, 2));
    return 0;
  }
  console.log(`Firewall backend: ${backend}`);
  // Only the gates that stop some of what is shown, each with what would let our forwards through.
  const stopping = new Set(report.flatMap((d) => d.forwards.flatMap((f) => f.blocked ?? [])));
  for (const g of gates) {
    if (![...stopping].some((note) => note.endsWith(` by ${gateName(g.gate)}`))) continue;
    console.log(
      `Gate not ours to open: ${gateName(g.gate)} (priority ${g.gate.prio}, policy ${g.gate.policy}); ` +
        `let our forwards through with "${openingLine(g.gate)}" or "/settings": {"accept_in": ["${
          gateName(g.gate)
        }"]}`,
    );
  }
  if (report.length === 0) {
    console.log(only === undefined ? "No forwards are live." : `No forwards are live for "${only}".`);
  }
  for (const d of report) {
    const notes = [
      d.running ? "running" : "not running",
      ...(d.inConfig ? [] : [d.running ? "not in the config nor in its XML" : "not in the config"]),
    ];
    console.log(`${d.domain} (${notes.join(", ")})`);
    for (const line of [...d.defaultMoved ?? [], ...d.leaseProblems ?? [], ...d.waiting ?? []]) {
      console.log(`  ${line}`);
    }
    for (const f of d.forwards) {
      const notes = [
        ...(f.explained ? [] : ["not explained by the config"]),
        ...(f.takenFromHost ? [`takes from the host a port it listens on (${f.takenFromHost})`] : []),
        ...(f.blocked ?? []),
      ];
      console.log(`  ${f.forward}${notes.length ? `   <- ${notes.join("; ")}` : ""}`);
      // Its own line, where they were read: the forward's line stays as it always was.
      if (f.counters) console.log(`    ${countersText(f.counters)}`);
    }
  }
  return 0;
}

/** A forward's counters as status shows them: `3 connections, 40 packets, 2400 bytes` (nftables: connections). */
export function countersText(c: Counters): string {
  const parts = [`${c.connections} connection${c.connections === 1 ? "" : "s"}`];
  if (c.packets !== undefined) parts.push(`${c.packets} packets`);
  if (c.bytes !== undefined) parts.push(`${c.bytes} bytes`);
  return parts.join(", ");
}
