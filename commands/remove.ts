/** `remove`: removes a domain's forwards (or all of ours) by hand, whatever the config says. */

import { domainLabel } from "../backends/backend.ts";
import { liveByDomain } from "./live.ts";
import type { HookDeps } from "../hook/deps.ts";
import { remove, removedMarker } from "../hook/domain.ts";

/**
 * Removes a domain's forwards at an administrator's request, and notes that on /run, so that the watcher does not
 * put back the forwards of a running guest on purpose taken away; apply or the next start clears the note.
 */
export async function removeByHand(domain: string, deps: HookDeps): Promise<boolean> {
  if (!(await remove(domain, deps, "remove"))) return false;
  if (deps.stateDir !== undefined) {
    await Deno.mkdir(deps.stateDir, { recursive: true, mode: 0o700 }).catch(() => {});
    await Deno.writeTextFile(removedMarker(deps.stateDir, domain), `${domain}\n`).catch(() => {});
  }
  return true;
}

export async function removeAll(deps: HookDeps): Promise<number> {
  const live = await liveByDomain(deps);
  let failed = 0;
  for (const domain of live.keys()) {
    if (await removeByHand(domain, deps)) console.log(`Removed the forwards of "${domainLabel(domain)}"`);
    else failed++;
  }
  if (live.size === 0) console.log("No forwards are live.");
  return failed ? 1 : 0;
}
