/** `set`: the members of a named source set (`source_set`), stored on disk and put in its live copies at once. */

import { syncSourceSet } from "../backends/backend.ts";
import { applyDeps } from "../hook/domain.ts";
import type { HookDeps } from "../hook/deps.ts";
import {
  formatInterval,
  mergeIntervals,
  parseSourceItem,
  type SourceInterval,
  sourceSetProblem,
  subtractIntervals,
} from "../config/sources.ts";
import { readMembers, SETS_DIR, storedSets, writeMembers } from "../system/sets.ts";
import { type Entry, jsonPath } from "../config/model.ts";

/** What `qemu set` was asked: add or del members, or list one set (or, without a name, every set). */
export interface SetRequest {
  action: string;
  name?: string | undefined;
  items: string[];
}

/** Where the sets' members are kept for these deps (SETS_DIR unless LIBVIRT_HOOK_QEMU_SETS_DIR says). */
export function setsDirOf(deps: Pick<HookDeps, "env">): string {
  return deps.env("LIBVIRT_HOOK_QEMU_SETS_DIR") || SETS_DIR;
}

/** Runs `qemu set add|del|list`; exit 0, 1 where a change failed, 2 for a request that cannot be one. */
export async function setCommand(deps: HookDeps, { action, name, items }: SetRequest): Promise<number> {
  const dir = setsDirOf(deps);
  if (!["add", "del", "list"].includes(action)) {
    deps.problem(`set takes add, del or list, not "${action}". Run with --help for usage.`);
    return 2;
  }
  if (action === "list" && name === undefined) {
    for (const set of storedSets(dir)) console.log(`${set}: ${readMembers(set, dir).length} item(s)`);
    return 0;
  }
  const bad = name === undefined ? "set needs a set name" : sourceSetProblem(name);
  if (bad !== undefined) {
    deps.problem(`${bad}${name === undefined ? "" : ` (set name = "${name}")`}. Run with --help for usage.`);
    return 2;
  }
  if (action === "list") {
    if (items.length > 0) return usage(deps, "set list takes a set name only");
    for (const m of readMembers(name!, dir)) console.log(m);
    return 0;
  }
  const parsed = parseItems(deps, items);
  if (parsed === undefined) return 2;
  return await change(deps, { name: name!, dir, add: action === "add", parsed });
}

/** The items given, each a problem line where it is none (all said at once); undefined where any failed. */
function parseItems(deps: HookDeps, items: string[]): SourceInterval[] | undefined {
  if (items.length === 0) {
    usage(deps, "set add and set del need at least one address, network or range");
    return undefined;
  }
  const out: SourceInterval[] = [];
  let failed = false;
  items.forEach((text, i) => {
    const item = parseSourceItem(text);
    if (typeof item === "string") {
      deps.problem(`argument ${i + 3}: ${item} (item = "${text}")`);
      failed = true;
    } else out.push(item);
  });
  return failed ? undefined : out;
}

/** Under our lock: the new members stored (renamed over the old), then every live copy replaced in one go. */
async function change(
  deps: HookDeps,
  { name, dir, add, parsed }: { name: string; dir: string; add: boolean; parsed: SourceInterval[] },
): Promise<number> {
  return await deps.lock(async () => {
    const have = readMembers(name, dir).map(parseSourceItem).filter((i): i is SourceInterval =>
      typeof i !== "string"
    );
    const next = (add ? mergeIntervals([...have, ...parsed]) : subtractIntervals(have, parsed)).map(
      formatInterval,
    );
    writeMembers(name, next, dir);
    const places = await syncSourceSet(name, { ...applyDeps(deps), setMembers: (n) => readMembers(n, dir) })
      .catch((err) => {
        deps.problem(`Cannot update the live set "${name}": ${err instanceof Error ? err.message : err}`);
        return undefined;
      });
    if (places === undefined) return 1;
    const where = places.length > 0
      ? `live in ${places.join(" and ")}`
      : "no running forward uses it: it is put in place when one starts";
    console.log(`Set "${name}": ${next.length} item(s), ${where}`);
    return 0;
  });
}

function usage(deps: HookDeps, why: string): number {
  deps.problem(`${why}. Run with --help for usage.`);
  return 2;
}

/**
 * What `check` says of the sets the config's entries use: one that has no members yet, whose forwards admit no
 * one until `qemu set add` fills it (one line per set and domain).
 */
export function emptySetWarnings(domains: Map<string, Entry[]>, dir: string): string[] {
  const out: string[] = [];
  for (const [domain, entries] of domains) {
    const names = new Set(entries.flatMap((e) => e.targets.flatMap((t) => t.sourceSet ?? [])));
    for (const name of names) {
      if (readMembers(name, dir).length > 0) continue;
      out.push(
        `${jsonPath("", domain)}: source_set "${name}" has no members yet: its forwards admit no one until ` +
          `"qemu set add ${name} <address...>"`,
      );
    }
  }
  return out;
}
