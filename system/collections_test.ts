import assert from "node:assert/strict";
import { unique } from "./collections.ts";

Deno.test("unique() drops repeats and keeps each item where it first stood", async (t) => {
  const cases: [string, unknown[], unknown[]][] = [
    ["nothing", [], []],
    ["no repeats", ["web1", "db"], ["web1", "db"]],
    ["repeats, first order kept", ["b", "a", "b", "c", "a"], ["b", "a", "c"]],
    ["numbers by value, objects by identity", [1, 1, "1"], [1, "1"]],
  ];
  for (const [name, items, want] of cases) await t.step(name, () => assert.deepEqual(unique(items), want));
  const o = { a: 1 };
  assert.deepEqual(unique([o, { a: 1 }, o]), [o, { a: 1 }]);
});
