import assert from "node:assert/strict";
import { functionsOf, MAX_LINES, overBounds, parameterCount, programFunctions } from "./functions.ts";

const ROOT = new URL("..", import.meta.url).pathname;

/** Where both bounds hold with no exception (issue 23): every folder of the program. */
const BOUNDED = ["commands", "hook", "backends", "config", "system", "config.ts", "rules.ts"];

Deno.test("no function in commands/, hook/, backends/, config/, system/, config.ts or rules.ts runs over 100 lines or takes more than three parameters", async (t) => {
  for (const folder of BOUNDED) {
    await t.step(folder, () => {
      const functions = programFunctions(ROOT, [folder]);
      // A folder renamed or emptied would pass with nothing checked.
      assert.ok(functions.length > 0, `the functions of ${folder} were found`);
      assert.deepEqual(overBounds(functions), []);
    });
  }
});

Deno.test("functionsOf() counts a top-level function from its declaration to its closing brace at column 0", () => {
  const text = [
    "/** Two lines. */",
    "export function a(x: number, y = 2): number {",
    "  return x + y;",
    "}",
    "",
    "async function b<T extends { k: (a: T, b: T) => T }>(",
    "  first: T,",
    "  { second, third }: { second: string; third: number },",
    "  ...rest: [number, string][]",
    "): Promise<void> {",
    "  const inner = function (a: 1, b: 2, c: 3, d: 4) {};",
    "}",
  ].join("\n");
  assert.deepEqual(functionsOf("x.ts", text), [
    { file: "x.ts", name: "a", line: 2, lines: 3, parameters: 2 },
    { file: "x.ts", name: "b", line: 6, lines: 7, parameters: 3 },
  ]);
  const long = ["function c(a, b, c, d) {", ...Array(MAX_LINES).fill("  ;"), "}"].join("\n");
  assert.deepEqual(overBounds(functionsOf("y.ts", long)), ["y.ts:1 c: 102 lines, 4 parameters"]);
});

Deno.test("parameterCount() counts the parameters of a signature, not the commas inside their types", async (t) => {
  const cases: [string, number][] = [
    ["() {", 0],
    ["(a: string) {", 1],
    ["(a: string,\n  b: number,\n) {", 2],
    ['(a = "x,y", b: Map<string, [number, number]>, c = {}) {', 3],
    ["(f: (a: number, b: number) => void, g: Record<string, number>) {", 2],
    ["<T, U>(a: T, b: U, c: () => T, d?: U) {", 4],
  ];
  for (const [signature, count] of cases) {
    await t.step(signature.replaceAll("\n", " "), () => assert.equal(parameterCount(signature), count));
  }
});
