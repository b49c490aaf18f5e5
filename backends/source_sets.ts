/** A named source set's live copies (our nftables sets, the ipsets) made equal to its stored members. */

import { type Batch, nftBatch, runBatches } from "./batch.ts";
import { NFT_TABLE } from "./names.ts";
import { ipsetName, ipsetRestore, nftSetCommands, nftSetName } from "./sources.ts";
import type { ApplyDeps } from "./state.ts";
import { readMembers } from "../system/sets.ts";

/**
 * Makes a set's live copies equal to its stored members where they exist (our nftables sets, the ipsets), each
 * program's in one transaction; a set no running forward uses has no live copy and waits for the next start. The
 * places changed ("nftables", "ipset"), none where nothing uses the set.
 */
export async function syncSourceSet(name: string, deps: ApplyDeps): Promise<string[]> {
  const members = () => deps.setMembers?.(name) ?? readMembers(name);
  const batches: Batch[] = [];
  const places: string[] = [];
  const exists = async (argv: string[]) =>
    (await deps.runner.run(argv).catch(() => ({ code: 1 }))).code === 0;
  if (
    deps.nft !== undefined && await exists([deps.nft, "list", "set", "inet", NFT_TABLE, nftSetName(name, 4)])
  ) {
    batches.push(nftBatch(deps.nft, nftSetCommands([name], members))!);
    places.push("nftables");
  }
  const ipset = deps.ipset ?? "ipset";
  if (await exists([ipset, "list", "-n", ipsetName(name, 4)])) {
    batches.push({ argv: [ipset, "restore"], stdin: ipsetRestore([name], members), name: ipset });
    places.push("ipset");
  }
  await runBatches(deps.runner, batches);
  return places;
}
