/** Who may use a forward, as each backend matches it: source items and sets of ours, written and read back. */

import type { Forward } from "./forward.ts";
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
