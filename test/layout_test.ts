import assert from "node:assert/strict";
import {
  BACKEND_INTERFACE,
  BATCH_RUNNER,
  batchRunners,
  byLayer,
  circles,
  importGraph,
  layerOf,
  pastInterface,
  runsBatch,
  sourceFiles,
  upward,
} from "./layout.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const edges = importGraph(ROOT);

Deno.test("every source file is in a layer, and every import points down the layers or within one", () => {
  assert.ok(sourceFiles(ROOT).length > 30, "the sources were found");
  assert.ok(edges.length > 100, "their imports were found");
  assert.deepEqual(edges.filter((e) => layerOf(e.to) < 0).map((e) => `${e.from} -> ${e.to}`), []);
  assert.deepEqual(upward(edges).map((e) => `${e.from} -> ${e.to}`), []);
});

Deno.test("no file imports itself back through others", () => {
  assert.deepEqual(circles(edges), []);
});

Deno.test("the layer rules catch an import that runs back up, and a circle", () => {
  const back = [...edges, { from: "system/runner.ts", to: "hook/hook.ts", dynamic: true }];
  assert.deepEqual(upward(back).map((e) => e.from), ["system/runner.ts"]);
  const loop = [{ from: "a.ts", to: "b.ts", dynamic: false }, { from: "b.ts", to: "a.ts", dynamic: false }];
  assert.deepEqual(circles(loop), [["a.ts", "b.ts"]]);
  assert.match(byLayer(edges).at(-1)!, /^system\/\s+-> (system\/ \(\d+\)|nothing)$/);
});

Deno.test("the hook's path loads no operator command: main.ts reaches commands/ only by import()", () => {
  const reach = new Set<string>(["main.ts"]);
  for (let grew = true; grew;) {
    grew = false;
    for (const e of edges) {
      if (!e.dynamic && reach.has(e.from) && !reach.has(e.to)) grew = reach.add(e.to) !== undefined;
    }
  }
  assert.deepEqual([...reach].filter((f) => f.startsWith("commands/")), []);
  assert.ok(reach.has("rules.ts") && reach.has("config.ts"), "the hook loads both models");
});

Deno.test(`commands/ and hook/ import of backends/ nothing but the interface, ${BACKEND_INTERFACE}`, () => {
  assert.ok(
    edges.some((e) => e.from.startsWith("commands/") && e.to === BACKEND_INTERFACE),
    "commands use it",
  );
  assert.ok(edges.some((e) => e.from.startsWith("hook/") && e.to === BACKEND_INTERFACE), "the hook uses it");
  assert.deepEqual(pastInterface(edges).map((e) => `${e.from} -> ${e.to}`), []);
  const past = [{ from: "commands/status.ts", to: "backends/nftables_live.ts", dynamic: false }];
  assert.deepEqual(pastInterface(past).map((e) => e.to), ["backends/nftables_live.ts"]);
});

Deno.test("runsBatch() finds every call that runs iptables-restore or nft -f; one module alone has one", async (t) => {
  await t.step("the calls that run a batch, and those that only read", () => {
    const cases: [string, boolean][] = [
      ["await deps.runner.run(deps.tools[family].restore, { stdin: text });", true],
      ['await deps.runner.run([deps.nft!, "-f", "-"], { stdin });', true],
      ["await runner.run(batch.argv, { stdin: batch.stdin });", true],
      ['runChecked(deps.runner, t.restore, { stdin: batch.join("\\n") });', true],
      ['new Deno.Command("iptables-restore", { args: ["--noflush"] });', true],
      ["await deps.runner.run(deps.tools[family].save);", false],
      ['await runner.run([nft, "-j", "-i"], { stdin: commands.join("\\n") });', false],
      ["const restore = deps.tools[family].restore; // built, not run", false],
    ];
    for (const [text, runs] of cases) assert.equal(runsBatch(text), runs, text);
  });
  await t.step(`of the program's files, ${BATCH_RUNNER} alone`, () => {
    assert.deepEqual(batchRunners(ROOT), [BATCH_RUNNER]);
  });
});
