/** `reload`: brings every running domain's forwards in line with the config. */

import { domainLabel } from "../backends/backend.ts";
import { liveByDomain, runningXml } from "./live.ts";
import type { HookDeps } from "../hook/deps.ts";
import { applyDeps, resync } from "../hook/domain.ts";
import { reassertAccepts } from "../rules.ts";
import { message } from "../system/report.ts";

export async function reload(deps: HookDeps): Promise<number> {
  const live = await liveByDomain(deps);
  let failed = 0;
  for (const domain of live.keys()) {
    // The running guest's XML: the forwards in its metadata, and its interfaces' addresses.
    const xml = await runningXml(domain) ?? "";
    if (await resync(domain, { ...deps, readStdin: () => Promise.resolve(xml) }, "reload")) {
      console.log(`Reloaded "${domainLabel(domain)}"`);
    } else failed++;
  }
  if (live.size === 0) console.log("No forwards are live; nothing to reload.");
  try {
    const facts = await deps.facts();
    const count = await deps.lock(() => reassertAccepts(applyDeps(deps, undefined, facts)));
    if (count > 0) console.log("Put our accepts back in front of libvirt's nftables chains");
  } catch (err) {
    deps.problem(`Cannot re-assert our accepts in libvirt's chains: ${message(err)}`);
    failed++;
  }
  return failed ? 1 : 0;
}
