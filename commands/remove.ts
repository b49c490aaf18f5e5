/** `remove`: removes a domain's forwards (or all of ours) by hand, whatever the config says. */

import { domainHash, domainLabel } from "../backends/backend.ts";
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

/**
 * `remove <domain>`: removes what is live for it and says what it did; a domain with nothing live is said so
 * (still noted for the watcher: the administrator wants none of its forwards back).
 */
export async function removeOne(domain: string, deps: HookDeps): Promise<number> {
  // Read before: the removal itself tells nothing of what it found. Where the read fails, remove says why.
  const live = await liveByDomain(deps).catch(() => undefined);
  if (!(await removeByHand(domain, deps))) return 1;
  // By hash: a long name is known in our comments by its hash only.
  const wasLive = live === undefined || [...live.keys()].some((d) => domainHash(d) === domainHash(domain));
  console.log(
    wasLive
      ? `Removed the forwards of "${domainLabel(domain)}"`
      : `No forwards of "${domainLabel(domain)}" are live: nothing to remove`,
  );
  return 0;
}

/**
 * `remove --all`: removes every domain's live forwards, one domain after another; one that fails does not stop
 * the others.
 */
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
