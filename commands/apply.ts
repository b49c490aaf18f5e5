/** `apply`: installs a domain's forwards by hand, as a start would. */

import { runDir } from "./live.ts";
import { configCandidates, dropInDirOf } from "../config/source.ts";
import type { HookDeps } from "../hook/deps.ts";
import { install, type InstallSeen } from "../hook/domain.ts";
import { waitingNote } from "../hook/guest.ts";
import { qemuCommand } from "../system/shell.ts";

export async function apply(domain: string, deps: HookDeps): Promise<number> {
  const xmlPath = `${runDir()}/${domain}.xml`;
  let xml: string;
  try {
    xml = await Deno.readTextFile(xmlPath);
  } catch {
    deps.problem(
      `Cannot apply forwards for "${domain}": it is not running (${xmlPath} does not exist), so nothing would remove them; they are applied when it starts`,
    );
    return 1;
  }
  const seen: InstallSeen = {};
  const result = await install(domain, { ...deps, readStdin: () => Promise.resolve(xml) }, {
    action: "apply",
    seen,
  });
  if (result === "absent") {
    const candidates = configCandidates(deps.env);
    const file = `${candidates.join(" or ")} nor in ${dropInDirOf(candidates)}/`;
    deps.problem(
      `"${domain}" is not in ${file}, and its XML holds no forwards; to remove its forwards, use: ${
        qemuCommand("remove", domain)
      }`,
    );
  } else if (result === "installed") {
    console.log(`Applied the forwards of "${domain}"`);
    // Those still without the guest's address: the watcher applies them when its lease comes (or apply, again).
    for (const w of seen.waiting ?? []) console.log(`  ${w.entry}: ${waitingNote(w)}`);
  }
  return result === "installed" ? 0 : 1;
}
