import assert from "node:assert/strict";
import { kind, show } from "./nodes.ts";
import { parseTree } from "./jsonc.ts";

const node = (text: string) => parseTree(text)!;

Deno.test("kind() names a JSON value's type as a problem says it", async (t) => {
  const cases: [string, string][] = [
    ["{}", "an object"],
    ["[1]", "a list"],
    ['"x"', "a string"],
    ["8080", "a number"],
    ["true", "a boolean"],
    ["null", "null"],
  ];
  for (const [text, want] of cases) await t.step(text, () => assert.equal(kind(node(text)), want));
});

Deno.test("show() quotes a value as JSON, cut to 60 characters", () => {
  assert.equal(show(node('"10.0.0.1"')), '"10.0.0.1"');
  assert.equal(show(node("80")), "80");
  assert.equal(show(node("false")), "false");
  const long = `"${"a".repeat(100)}"`;
  assert.equal(show(node(long)), `"${"a".repeat(56)}...`);
  assert.equal(show(node(long)).length, 60);
});
