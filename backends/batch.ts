/**
 * Batches as data, and the one place that runs them: a program, its input, and how to put back what it changed.
 * What `plan` prints and what a start runs are the same values (see rules.ts startBatches).
 */

import { ApplyError } from "./state.ts";
import { batchFailure, type Runner } from "../system/runner.ts";
import { message } from "../system/report.ts";

/** One transaction on the firewall: one program run with one input (iptables-restore --noflush, nft -f -). */
export interface Batch {
  /** The program and its arguments. */
  argv: string[];
  /** What it reads on stdin: the whole change, applied atomically by the program. */
  stdin: string;
  /** The program's name in a failure (`iptables-restore failed: ...`). */
  name: string;
  /** What a failure to undo it is said as (`IPv4`). */
  label?: string;
  /**
   * Where a later batch fails (or this one, which may have committed part of its input: iptables-restore commits
   * each table on its own): the batch that puts back what this one changed, read from what is live then;
   * undefined when there is nothing to put back. Absent: this batch is not undone.
   */
  undo?: () => Promise<Batch | undefined>;
  /** Called once this batch is committed (a record of what it created, see created.ts). */
  committed?: () => void;
}

/** The header `plan` prints above a batch: the command line that runs it. */
export function batchHeader(batch: Batch): string {
  return `# ${batch.argv.join(" ")}`;
}

/**
 * Runs `batches` in order, all or nothing: where one is refused, every batch attempted so far that can be undone
 * is put back, and an ApplyError says the refused line in its context (batchFailure) and any undo that failed.
 */
export async function runBatches(runner: Runner, batches: Batch[]): Promise<void> {
  const attempted: Batch[] = [];
  for (const batch of batches) {
    attempted.push(batch);
    const result = await runner.run(batch.argv, { stdin: batch.stdin });
    if (result.code !== 0) {
      const why = batchFailure(batch.name, result, batch.stdin);
      const undone = await undo(runner, attempted);
      throw new ApplyError(undone ? `${why}; ${undone}` : why);
    }
    batch.committed?.();
  }
}

/** Puts back what `attempted` changed, in order; what could not be put back, said, or undefined. */
async function undo(runner: Runner, attempted: Batch[]): Promise<string | undefined> {
  const problems: string[] = [];
  for (const batch of attempted) {
    if (!batch.undo) continue;
    try {
      const back = await batch.undo();
      if (back === undefined) continue;
      const result = await runner.run(back.argv, { stdin: back.stdin });
      if (result.code !== 0) throw new Error(batchFailure(back.name, result, back.stdin));
    } catch (err) {
      problems.push(`${batch.label ?? batch.name}: ${message(err)}`);
    }
  }
  return problems.length
    ? `rolling back also failed, rules may be left half-applied: ${problems.join("; ")}`
    : undefined;
}

/** The batch that runs `commands` in one `nft -f -` transaction; undefined when there are none. */
export function nftBatch(nft: string, commands: string[]): Batch | undefined {
  if (commands.length === 0) return undefined;
  return { argv: [nft, "-f", "-"], stdin: commands.join("\n") + "\n", name: "nft" };
}
