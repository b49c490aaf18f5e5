/** Who may use a forward, as each backend matches it: source items and sets of ours, written and read back. */

import type { Forward } from "./forward.ts";
import { NFT_TABLE } from "./names.ts";
import {
  formatInterval,
  intervalNetworks,
  mergeIntervals,
  parseSourceItem,
  type SourceInterval,
} from "../config/sources.ts";
import type { Family } from "../system/address.ts";

/** The nftables set of ours that holds a source set's members of one family (in our table, flat). */
export function nftSetName(name: string, family: Family): string {
  return `src-${name}-v${family}`;
}

/** The ipset that holds a source set's members of one family, for the iptables backend. */
export function ipsetName(name: string, family: Family): string {
  return `lvh-${name}-v${family}`;
}

/**
 * The iptables matches of a forward's sources, one per DNAT rule it needs: iptables matches one network per
 * `-s`, and a range only with `-m iprange`, so each item is a rule of its own; a set is one `-m set` match.
 * `[""]`: anyone, one rule with no match.
 */
export function iptablesSourceMatches(f: Pick<Forward, "family" | "sources" | "sourceSet">): string[] {
  if (f.sourceSet !== undefined) return [` -m set --match-set ${ipsetName(f.sourceSet, f.family)} src`];
  if (!f.sources?.length) return [""];
  return f.sources.map((s) => (s.includes("-") ? ` -m iprange --src-range ${s}` : ` -s ${s}`));
}

/** The nftables match of a forward's sources (`ip saddr ...` and a space), one rule: "" for anyone. */
export function nftSourceMatch(f: Pick<Forward, "family" | "sources" | "sourceSet">): string {
  const ip = f.family === 4 ? "ip" : "ip6";
  if (f.sourceSet !== undefined) return `${ip} saddr @${nftSetName(f.sourceSet, f.family)} `;
  if (!f.sources?.length) return "";
  // One item as itself (as before lists); more as an anonymous interval set: one lookup per packet.
  return f.sources.length === 1 ? `${ip} saddr ${f.sources[0]} ` : `${ip} saddr { ${f.sources.join(", ")} } `;
}

/** A source as status shows it from the name of a set of ours (nft or ipset), else undefined. */
export function setSource(name: string): string | undefined {
  const m = /^(?:src|lvh)-([A-Za-z0-9_]{1,20})-v[46]$/.exec(name.replace(/^@/, ""));
  return m ? `@${m[1]}` : undefined;
}

/** The names of the sets of ours that `forwards` use, each once. */
export function setsUsed(forwards: Pick<Forward, "sourceSet">[]): string[] {
  return [...new Set(forwards.flatMap((f) => (f.sourceSet === undefined ? [] : [f.sourceSet])))].sort();
}

/** A set's members by family, as its file stores them (merged intervals, see config/sources.ts). */
export function membersByFamily(members: string[]): Record<Family, SourceInterval[]> {
  const items = members.map(parseSourceItem).filter((i): i is SourceInterval => typeof i !== "string");
  const merged = mergeIntervals(items);
  return { 4: merged.filter((i) => i.family === 4), 6: merged.filter((i) => i.family === 6) };
}

/**
 * The nft commands that make the named sets of ours exactly `members(name)`, both families, in our table: declared
 * (idempotent), emptied and filled in the same transaction, so a packet meets the old members or the new.
 */
export function nftSetCommands(names: string[], members: (name: string) => string[]): string[] {
  const t = `inet ${NFT_TABLE}`;
  const out: string[] = [];
  for (const name of names) {
    const byFamily = membersByFamily(members(name));
    for (const family of [4, 6] as const) {
      const set = nftSetName(name, family);
      const type = family === 4 ? "ipv4_addr" : "ipv6_addr";
      out.push(`add set ${t} ${set} { type ${type}; flags interval; }`, `flush set ${t} ${set}`);
      const elements = byFamily[family].map(formatInterval);
      if (elements.length > 0) out.push(`add element ${t} ${set} { ${elements.join(", ")} }`);
    }
  }
  return out;
}

/**
 * The `ipset restore` input that makes the named sets (hash:net, one per family) exactly `members(name)`: filled
 * aside and swapped in, so a packet meets the old members or the new, and rules that use the set keep it.
 */
export function ipsetRestore(names: string[], members: (name: string) => string[]): string {
  const out: string[] = [];
  for (const name of names) {
    const byFamily = membersByFamily(members(name));
    for (const family of [4, 6] as const) {
      const set = ipsetName(name, family), aside = `${set}-t`;
      const type = `hash:net family ${family === 4 ? "inet" : "inet6"}`;
      out.push(`create ${set} ${type} -exist`, `create ${aside} ${type} -exist`, `flush ${aside}`);
      for (const net of byFamily[family].flatMap(intervalNetworks)) out.push(`add ${aside} ${net} -exist`);
      out.push(`swap ${aside} ${set}`, `destroy ${aside}`);
    }
  }
  return out.join("\n") + "\n";
}
