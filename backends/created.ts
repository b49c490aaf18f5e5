/** The iptables-nft tables and built-in chains our jumps created, remembered so that they go when unused. */

import { JUMP_CHAINS, type RuleLines } from "./iptables.ts";
import type { Live } from "./iptables_live.ts";
import { CHAIN_PREFIX, GATE_CHAIN } from "./names.ts";
import type { Family } from "../system/address.ts";

/**
 * Where we remember the built-in chains and tables of iptables-nft that a batch of ours created (`<family>
 * <table> [<chain>]`, one a line): iptables-nft makes a built-in chain when a rule first goes into it, and leaves it
 * when the rule goes. The last removal that leaves one empty deletes it again, so a host with no iptables rules
 * before our forwards has none after them. Only what we made is ever deleted, and only while nothing else uses it.
 */
const CREATED = "created-chains";

/** The file of CREATED for this network namespace: what a lab's host (or a container) made is its own. */
function createdFile(dir: string): string {
  let ns = "";
  try {
    ns = `-${Deno.statSync("/proc/self/ns/net").ino}`;
  } catch {
    // One namespace as far as we can tell.
  }
  return `${dir}/${CREATED}${ns}`;
}

/** What of iptables-nft a start's jumps create in one family, from what `list chains` showed (`live.tables`). */
export function createdBy(rules: RuleLines, family: Family, live: Live | undefined): string[] {
  if (!live?.tables) return [];
  const out: string[] = [];
  for (const j of rules.jumps) {
    // A jump into our gate needs the gate's rule in FORWARD (see GATE_CHAIN).
    const chain = j.chain === GATE_CHAIN ? "FORWARD" : j.chain;
    if (!live.tables[j.table]) out.push(`${family} ${j.table}`);
    if (live.tables[j.table]?.[chain] === undefined) out.push(`${family} ${j.table} ${chain}`);
  }
  return out;
}

/** The built-in chains iptables-nft makes with each of its tables. */
const BUILTIN: Record<string, string[]> = {
  filter: ["INPUT", "FORWARD", "OUTPUT"],
  nat: ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
};

/** The listings a removal adds so that the tables we created are known whole: their built-in chains. */
export function createdListings(created: string[]): string[] {
  const listed = new Set(JUMP_CHAINS.map(([t, c]) => `${t} ${c}`));
  return created.flatMap((entry) => {
    const [f, table = "", chain] = entry.split(" ");
    if (chain !== undefined) return [];
    return (BUILTIN[table] ?? []).filter((c) => !listed.has(`${table} ${c}`)).map((c) =>
      `list chain ${f === "6" ? "ip6" : "ip"} ${table} ${c}`
    );
  });
}

/**
 * The nft commands that delete what we created and a removal leaves empty (`created`: remembered; `mine`: the
 * domain's chains and jumps, about to go), and the entries to keep remembering: those still used by another of our
 * domains. What other software uses now is forgotten: it is as much its as ours. Only a chain known empty (listed,
 * no rule but this domain's jumps, policy accept) is ever deleted; nft refuses to delete one with rules anyway.
 */
export function uncreated(
  created: string[],
  state: { ipt: Record<Family, Live | undefined> },
  mine: Record<Family, Live>,
): { commands: string[]; keep: string[] } {
  const commands: string[] = [], keep: string[] = [];
  const tables = new Set(created.filter((e) => e.split(" ").length === 2));
  for (const entry of created) {
    const [f, table = "", chain] = entry.split(" ");
    const family: Family = f === "6" ? 6 : 4;
    const nftFamily = family === 4 ? "ip" : "ip6";
    const live = state.ipt[family];
    const chains = live?.tables?.[table];
    if (!chains) continue;
    // Unused: a built-in chain, policy accept, listed, with no rule left once this domain's jumps go.
    const state_ = (c: string) => {
      const others = live?.othersIn?.[`${table} ${c}`];
      if (others === undefined || chains[c] !== "accept" || others.foreign > 0) return "others";
      return others.ours > 0 ? "ours" : "unused";
    };
    if (chain !== undefined) {
      if (tables.has(`${f} ${table}`) || chains[chain] === undefined) continue;
      const use = state_(chain);
      if (use === "unused") commands.push(`delete chain ${nftFamily} ${table} ${chain}`);
      else if (use === "ours") keep.push(entry);
      continue;
    }
    const going = new Set(mine[family].chains.filter((c) => c.table === table).map((c) => c.chain));
    const left = Object.keys(chains).filter((c) => !going.has(c));
    const uses = left.map((c) => (c.startsWith(CHAIN_PREFIX) ? "ours" : state_(c)));
    if (uses.every((u) => u === "unused")) {
      for (const c of left) commands.push(`delete chain ${nftFamily} ${table} ${c}`);
      commands.push(`delete table ${nftFamily} ${table}`);
    } else if (!uses.includes("others")) keep.push(entry);
  }
  return { commands, keep };
}

export function readCreated(dir: string): string[] {
  try {
    return Deno.readTextFileSync(createdFile(dir)).split("\n").filter(Boolean);
  } catch {
    return [];
  }
}

export function writeCreated(dir: string, entries: string[]): void {
  try {
    if (entries.length === 0) Deno.removeSync(createdFile(dir));
    else Deno.writeTextFileSync(createdFile(dir), entries.join("\n") + "\n");
  } catch {
    // Only tidiness: an empty built-in chain left behind lets everything through, as if it were not there.
  }
}

export function recordCreated(dir: string, entries: string[]): void {
  if (entries.length === 0) return;
  try {
    Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch {
    // Written below, or not at all.
  }
  writeCreated(dir, [...new Set([...readCreated(dir), ...entries])]);
}
