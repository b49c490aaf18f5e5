/** The old Python hook's iptables chains: found in what is live, and the batch that removes them. */

import { chainLine, tokenize } from "./iptables_live.ts";

/** The old hook named its chains `DNAT-<domain>`, `SNAT-<domain>`, `FWD-<domain>`, cut to 28 characters. */
function legacyChains(domain: string): Record<"nat" | "filter", string[]> {
  return {
    nat: [`DNAT-${domain}`, `SNAT-${domain}`].map((c) => c.slice(0, 28)),
    filter: [`FWD-${domain}`.slice(0, 28)],
  };
}

/** What of the old hook is live: its chains and the jumps into them, by table, and the batch that removes them. */
export interface LegacyRules {
  /** Its chains, by table (`nat`, `filter`). */
  chains: Map<string, string[]>;
  /** The jumps into them, by table, as `iptables-save` shows them without the `-A `. */
  jumps: Map<string, string[]>;
  /** The iptables-restore input that deletes the jumps and the chains (empty when there is nothing). */
  batch: string;
}

/** Finds the old hook's chains of `domains` (and the jumps into them) in `iptables-save` output. */
export function legacyRules(saved: string, domains: Iterable<string>): LegacyRules {
  const wanted = new Map<string, Set<string>>([["nat", new Set()], ["filter", new Set()]]);
  for (const d of domains) {
    const c = legacyChains(d);
    for (const name of c.nat) wanted.get("nat")!.add(name);
    for (const name of c.filter) wanted.get("filter")!.add(name);
  }
  const chains = new Map<string, string[]>([["nat", []], ["filter", []]]);
  const jumps = new Map<string, string[]>([["nat", []], ["filter", []]]);
  let table = "";
  for (const line of saved.split("\n")) {
    if (line.startsWith("*")) table = line.slice(1);
    const chain = /^:(\S+) /.exec(line)?.[1];
    if (chain && wanted.get(table)?.has(chain)) chains.get(table)!.push(chain);
    if (line.startsWith("-A ")) {
      const words = tokenize(line.slice(3));
      const target = words[words.indexOf("-j") + 1];
      if (target && wanted.get(table)?.has(target)) jumps.get(table)!.push(line.slice(3));
    }
  }
  const batch: string[] = [];
  for (const [tbl, names] of chains) {
    if (names.length === 0) continue;
    // Declaring a chain flushes it: its rules go with it, whatever they are.
    batch.push(`*${tbl}`, ...names.map((c) => chainLine(c)));
    for (const j of jumps.get(tbl)!) batch.push(`-D ${j}`);
    for (const c of names) batch.push(`-X ${c}`);
    batch.push("COMMIT");
  }
  return { chains, jumps, batch: batch.length === 0 ? "" : batch.join("\n") + "\n" };
}
