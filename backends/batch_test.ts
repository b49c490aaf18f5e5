/** The one place that runs batches: in order, all or nothing, the refused line shown, undone where it can be. */

import { type Batch, batchHeader, nftBatch, runBatches } from "./batch.ts";
import { ApplyError } from "./state.ts";
import assert from "node:assert/strict";
import { recordingRunner } from "../test/util.ts";

const restore = (family: 4 | 6, stdin: string, undo?: Batch["undo"]): Batch => ({
  argv: [family === 4 ? "iptables-restore" : "ip6tables-restore", "--noflush"],
  stdin,
  name: family === 4 ? "iptables-restore" : "ip6tables-restore",
  label: `IPv${family}`,
  ...(undo ? { undo } : {}),
});

Deno.test("runBatches() runs every batch in order, each committed before the next", async () => {
  const runner = recordingRunner();
  const committed: string[] = [];
  const first = { ...restore(4, "*filter\nCOMMIT\n"), committed: () => committed.push("v4") };
  await runBatches(runner, [first, nftBatch("nft", ["add table inet t"])!]);
  assert.deepEqual(runner.calls, [
    { argv: ["iptables-restore", "--noflush"], stdin: "*filter\nCOMMIT\n" },
    { argv: ["nft", "-f", "-"], stdin: "add table inet t\n" },
  ]);
  assert.deepEqual(committed, ["v4"]);
});

Deno.test("runBatches() stops at a refused batch, shows its line, and undoes what was attempted", async (t) => {
  await t.step("every attempted batch with an undo is put back, the refused one too", async () => {
    const runner = recordingRunner((argv, stdin) =>
      argv[0] === "nft" && stdin?.startsWith("add")
        ? { code: 1, stderr: "/dev/stdin:2:1-3: Error: bad\n" }
        : {}
    );
    const back = (family: 4 | 6) => () => Promise.resolve(restore(family, `# back ${family}\n`));
    const nft = {
      ...nftBatch("nft", ["add table inet t", "add x"])!,
      undo: () => Promise.resolve(undefined),
    };
    await assert.rejects(
      runBatches(runner, [restore(4, "v4\n", back(4)), restore(6, "v6\n"), nft, restore(4, "never\n")]),
      (err: Error) => {
        assert.ok(err instanceof ApplyError);
        assert.equal(
          err.message,
          "nft failed: /dev/stdin:2:1-3: Error: bad\n    1  add table inet t\n  > 2  add x",
        );
        return true;
      },
    );
    assert.deepEqual(runner.calls.map((c) => c.stdin), [
      "v4\n",
      "v6\n",
      "add table inet t\nadd x\n",
      "# back 4\n",
    ]);
  });
  await t.step("an undo that fails is said after the refusal, by its label", async () => {
    const runner = recordingRunner((argv) =>
      argv[0] === "ip6tables-restore" ? { code: 2, stderr: "line 1 failed\n" } : {}
    );
    const broken = () => Promise.reject(new Error("iptables-save: not found"));
    await assert.rejects(
      runBatches(runner, [restore(4, "v4\n", broken), restore(6, "v6\n")]),
      {
        name: "ApplyError",
        message: "ip6tables-restore failed: line 1 failed\n  > 1  v6; " +
          "rolling back also failed, rules may be left half-applied: IPv4: iptables-save: not found",
      },
    );
  });
});

Deno.test("nftBatch() is one `nft -f -` transaction, or none for no commands; batchHeader() its command line", () => {
  assert.equal(nftBatch("nft", []), undefined);
  const batch = nftBatch("/usr/sbin/nft", ["flush chain inet t c", "add rule inet t c accept"])!;
  assert.equal(batch.stdin, "flush chain inet t c\nadd rule inet t c accept\n");
  assert.equal(batchHeader(batch), "# /usr/sbin/nft -f -");
});
