/** Every command and the lock are bounded in time: what the hook promises libvirt, which waits with no limit. */

import assert from "node:assert/strict";
import { withLock } from "./lock.ts";
import { batchFailure, refusedLine, systemRunner } from "./runner.ts";

Deno.test("systemRunner() kills a command that outlasts its timeout, and says so", async () => {
  const started = performance.now();
  const r = await systemRunner().run(["sleep", "5"], { timeoutMs: 200 });
  assert.equal(r.code, 124);
  assert.match(r.stderr, /timed out after 200 ms/);
  assert.ok(performance.now() - started < 2000);
});

Deno.test("systemRunner() passes stdin and extra variables, and tells a missing program by 127", async () => {
  const runner = systemRunner();
  const r = await runner.run(["sh", "-c", 'cat; echo "$HOME"'], {
    stdin: "xml\n",
    env: { HOME: "/dev/null" },
  });
  assert.deepEqual(r, { code: 0, stdout: "xml\n/dev/null\n", stderr: "" });
  assert.equal((await runner.run(["/nonexistent/program"])).code, 127);
});

Deno.test("systemRunner() tells when a command has its input, while it still runs", async () => {
  const dir = await Deno.makeTempDir();
  try {
    let calls = 0;
    // The command ends only once onInput has run: were onInput called after the command's end, it would time out.
    const r = await systemRunner().run(
      ["sh", "-c", `read line; echo "$line"; while [ ! -e "${dir}/go" ]; do sleep 0.01; done`],
      {
        stdin: "input\n",
        timeoutMs: 5000,
        onInput: () => {
          calls++;
          Deno.writeTextFileSync(`${dir}/go`, "");
        },
      },
    );
    assert.deepEqual(r, { code: 0, stdout: "input\n", stderr: "" });
    assert.equal(calls, 1);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("withLock() waits for the holder, and gives up after its timeout", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/lock`;
  try {
    let release = () => {};
    let entered = () => {};
    const inside = new Promise<void>((r) => (entered = r));
    const held = withLock(() => {
      entered();
      return new Promise<void>((r) => (release = r));
    }, path);
    await inside;
    await assert.rejects(
      withLock(() => Promise.resolve(), path, 200),
      /Cannot take the lock ".*": still held by another call after 200 ms/,
    );
    release();
    await held;
    assert.equal(await withLock(() => Promise.resolve("mine"), path, 200), "mine");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

const BATCH = [
  "*nat",
  ":LVH-0123456789abcdef-DNAT - [0:0]",
  "-A LVH-0123456789abcdef-DNAT -d 203.0.113.1/32 -p tcp -m tcp --dport 2222 -j DNAT --to-destination 192.168.122.10:22",
  "-A LVH-0123456789abcdef-DNAT -j NOSUCHCHAIN",
  "-A PREROUTING -j LVH-0123456789abcdef-DNAT",
  "COMMIT",
  "",
].join("\n");

Deno.test("batchFailure() shows the batch line the program refused, marked, between its neighbours", () => {
  assert.equal(
    batchFailure(
      "iptables-restore",
      { code: 1, stdout: "", stderr: "iptables-restore: line 4 failed\n" },
      BATCH,
    ),
    [
      "iptables-restore failed: iptables-restore: line 4 failed",
      "    2  :LVH-0123456789abcdef-DNAT - [0:0]",
      "    3  -A LVH-0123456789abcdef-DNAT -d 203.0.113.1/32 -p tcp -m tcp --dport 2222 -j DNAT " +
      "--to-destination 192.168.122.10:22",
      "  > 4  -A LVH-0123456789abcdef-DNAT -j NOSUCHCHAIN",
      "    5  -A PREROUTING -j LVH-0123456789abcdef-DNAT",
      "    6  COMMIT",
    ].join("\n"),
  );
  // At the first line there is nothing before it; a line the batch does not have shows nothing.
  const first = batchFailure("nft", { code: 1, stdout: "", stderr: "-:1:1-3: Error: syntax error\n" }, BATCH);
  assert.deepEqual(first.split("\n").slice(1, 2), ["  > 1  *nat"]);
  assert.equal(
    batchFailure("nft", { code: 1, stdout: "", stderr: "-:40:1: Error: x\n" }, BATCH),
    "nft failed: -:40:1: Error: x",
  );
  // No words at all: the exit status.
  assert.equal(batchFailure("nft", { code: 3, stdout: "", stderr: "" }, BATCH), "nft failed: exit 3");
});

Deno.test("refusedLine() reads the line from each program's way of naming it", () => {
  assert.equal(refusedLine("iptables-restore: line 6 failed: No chain/target/match by that name."), 6);
  assert.equal(
    refusedLine("iptables-restore v1.8.9 (nf_tables): Chain 'X' does not exist\nError occurred at line: 6\n"),
    6,
  );
  assert.equal(
    refusedLine("/dev/stdin:3:24-30: Error: Could not process rule: No such file or directory"),
    3,
  );
  assert.equal(refusedLine("iptables-restore: unable to initialize table 'nat'"), undefined);
});

// The programs that refuse for real, in a network namespace of their own (nothing of this machine's firewall is
// touched): each runs where it is installed, and the tests say which are skipped and why.
const unshare = Deno.uid() === 0 && (await systemRunner().run(["unshare", "-n", "true"])).code === 0;
const installed = async (program: string) =>
  unshare && (await systemRunner().run(["unshare", "-n", program, "--version"])).code === 0;
const RESTORES = ["iptables-nft-restore", "iptables-legacy-restore"];
const restores = (await Promise.all(RESTORES.map(async (p) => (await installed(p)) ? [p] : []))).flat();
const nft = await installed("nft");
if (!unshare) console.log("skipping the real iptables-restore and nft refusals: need root and unshare -n");
else {
  for (const p of [...RESTORES.filter((r) => !restores.includes(r)), ...(nft ? [] : ["nft"])]) {
    console.log(`skipping the real refusal of ${p}: it is not installed`);
  }
}

Deno.test({
  name: "batchFailure() on what the real iptables-restore says when it refuses a batch line",
  ignore: restores.length === 0,
  async fn() {
    for (const restore of restores) {
      const r = await systemRunner().run(["unshare", "-n", restore, "--noflush"], { stdin: BATCH });
      assert.notEqual(r.code, 0, restore);
      const text = batchFailure(restore, r, BATCH);
      const marked = text.split("\n").filter((l) => l.startsWith("  > "));
      assert.equal(marked.length, 1, text);
      assert.match(marked[0]!, new RegExp(`^  > ${refusedLine(r.stderr)}  `), text);
      assert.doesNotMatch(text, /Try `/, text);
    }
  },
});

Deno.test({
  name: "batchFailure() on what the real nft says when it refuses a batch line",
  ignore: !nft,
  async fn() {
    const nftBatch =
      "add table inet lvh_test\nadd chain inet lvh_test c\nadd rule inet lvh_test c jump nowhere\n";
    const r = await systemRunner().run(["unshare", "-n", "nft", "-f", "-"], { stdin: nftBatch });
    const text = batchFailure("nft", r, nftBatch);
    assert.match(text, /^nft failed: .*Error: Could not process rule/, text);
    // nft's own echo of the line and its carets give way to the numbered excerpt.
    assert.deepEqual(text.split("\n").slice(1), [
      "    1  add table inet lvh_test",
      "    2  add chain inet lvh_test c",
      "  > 3  add rule inet lvh_test c jump nowhere",
    ]);
  },
});
