/** `metrics`: the forwards' counters as a Prometheus text exposition (node_exporter's textfile collector, scraping). */

import { domainLabel, type LiveForward } from "../backends/backend.ts";
import { forwardsByDomain, knownNames } from "./live.ts";
import type { HookDeps } from "../hook/deps.ts";
import { applyDeps, loadFor } from "../hook/domain.ts";
import { readLive } from "../rules.ts";

/** The metrics, each with its HELP line; a forward's value is absent where its backend does not count it. */
const METRICS: { name: string; help: string; value: (f: LiveForward) => number | undefined }[] = [
  {
    name: "libvirt_hook_qemu_forward_connections_total",
    help: "New connections through the port forward since its rules were last written.",
    value: (f) => f.counters?.connections,
  },
  {
    name: "libvirt_hook_qemu_forward_packets_total",
    help:
      "Packets of the forward's connections, both directions, as the host forwards them, since its rules " +
      "were last written (forwards with counters on).",
    value: (f) => f.counters?.packets,
  },
  {
    name: "libvirt_hook_qemu_forward_bytes_total",
    help: "Bytes of the forward's connections, both directions, as the host forwards them, since its rules " +
      "were last written (forwards with counters on).",
    value: (f) => f.counters?.bytes,
  },
];

/** Prints the exposition of every live forward's counters; 0. */
export async function metrics(deps: HookDeps): Promise<number> {
  const { config } = await loadFor({ ...deps, problem: () => {} });
  const state = await readLive(applyDeps(deps, config), { counters: true });
  const live = forwardsByDomain(state, await knownNames(config));
  const forwards = [...live].sort(([a], [b]) => a.localeCompare(b)).flatMap(([domain, list]) =>
    list.map((f) => ({ ...f, domain }))
  );
  // One write: a scraper or the textfile collector never sees half of it.
  const text = exposition(forwards);
  if (text !== "") console.log(text.slice(0, -1));
  return 0;
}

/**
 * The Prometheus text exposition (format 0.0.4) of the forwards' counters: per metric a HELP and a TYPE line, then
 * one sample per forward that has the value, labelled domain, proto, public_ip, public_port and target
 * (`<address>:<ports>`); outbound NATs have no counters. "" where no forward has any.
 */
export function exposition(forwards: LiveForward[]): string {
  const out: string[] = [];
  for (const m of METRICS) {
    const samples = forwards.flatMap((f) => {
      const value = f.outbound ? undefined : m.value(f);
      if (value === undefined) return [];
      const target = f.family === 6
        ? `[${f.privateIp}]:${f.privatePorts}`
        : `${f.privateIp}:${f.privatePorts}`;
      const labels = [
        ["domain", domainLabel(f.domain)],
        ["proto", f.protocol],
        ["public_ip", f.publicIp],
        ["public_port", f.publicPorts],
        ["target", target],
        ...(f.source === undefined ? [] : [["source", f.source]]),
      ].map(([k, v]) => `${k}="${escapeLabel(v!)}"`).join(",");
      return [`${m.name}{${labels}} ${value}`];
    });
    if (samples.length === 0) continue;
    out.push(`# HELP ${m.name} ${m.help}`, `# TYPE ${m.name} counter`, ...samples);
  }
  return out.length === 0 ? "" : out.join("\n") + "\n";
}

/** A label value as the text format wants it: backslash, double quote and newline escaped. */
function escapeLabel(value: string): string {
  return value.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n");
}
