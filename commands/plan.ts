/** `plan`: the rules a domain's start would write, without writing them. */

import { guestXml } from "./live.ts";
import { domainConfig } from "../config.ts";
import { formatDiagnostic } from "../config/model.ts";
import type { HookDeps } from "../hook/deps.ts";
import { applyDeps, forwardsOf, loadFor } from "../hook/domain.ts";
import { waitingNote } from "../hook/guest.ts";
import { batchHeader, startBatches } from "../rules.ts";
import { message } from "../system/report.ts";

export async function plan(domain: string, deps: HookDeps): Promise<number> {
  const { config, facts } = await loadFor({ ...deps, problem: () => {} });
  const invalid = domainConfig(config, domain);
  if (invalid.kind === "invalid") {
    for (const d of invalid.errors) deps.problem(formatDiagnostic(d));
    return 1;
  }
  const xml = await guestXml(deps, domain);
  const found = await forwardsOf(domain, { config, facts, xml, deps });
  if (found.kind === "invalid") {
    for (const line of found.lines) deps.problem(line);
    deps.problem(`Cannot plan the forwards of "${domain}": ${found.why}`);
    return 1;
  }
  if (found.kind === "absent") {
    deps.problem(
      `"${domain}" is not in ${config.file} nor in its hooks.d/, and ${
        xml === undefined ? "no guest of that name is defined here" : "its XML holds no forwards"
      }: start installs nothing for it`,
    );
    return 0;
  }
  const { forwards, snats } = found;
  // Entries switched off, and forwards still without the guest's address: comments, in either batch language.
  for (const n of found.notes) console.log(`# ${n}`);
  for (const w of found.waiting) console.log(`# ${w.entry}: ${waitingNote(w)}; applied when it comes`);
  // The very batches a start would run now: read and composed by the same function as the start's.
  let batches;
  try {
    batches = await startBatches(domain, applyDeps(deps, config, facts), { forwards, snats });
  } catch (err) {
    deps.problem(`Cannot plan the forwards of "${domain}": ${message(err)}`);
    return 1;
  }
  for (const batch of batches) {
    // What the batch holds, in its program's terms: the rules iptables-restore adds, or nft's commands.
    const lines = batch.stdin.split("\n").filter((l) => l !== "");
    const count = batch.name === "nft"
      ? `${lines.length} command(s)`
      : `${lines.filter((l) => /^-[AI] /.test(l)).length} rule(s)`;
    console.log(`${batchHeader(batch)}: ${count} for ${JSON.stringify(domain)}`);
    console.log(batch.stdin.trimEnd());
  }
  return 0;
}
