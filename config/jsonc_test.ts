import assert from "node:assert/strict";
import type { ParseError } from "jsonc-parser";
import { parseTree, printParseErrorCode } from "./jsonc.ts";

Deno.test("parseTree() reads JSONC (comments, trailing commas) into nodes that know their offsets", () => {
  const text = '{\n  // web server\n  "web1": { "port_map": { "tcp": [80, 443], }, },\n}';
  const errors: ParseError[] = [];
  const root = parseTree(text, errors, { allowTrailingComma: true, disallowComments: false })!;
  assert.deepEqual(errors, []);
  const [key, value] = root.children![0]!.children!;
  assert.equal(key!.value, "web1");
  assert.equal(text.slice(key!.offset, key!.offset + key!.length), '"web1"');
  const ports = value!.children![0]!.children![1]!.children![0]!.children![1]!;
  assert.deepEqual(ports.children!.map((n) => [n.value, text.slice(n.offset, n.offset + n.length)]), [
    [80, "80"],
    [443, "443"],
  ]);
});

Deno.test("parseTree() is tolerant: a broken file still gives a tree, and each error its offset and code", () => {
  const text = '{"a": {"private_ip": "10.0.0.1",, }, "b": 1}';
  const errors: ParseError[] = [];
  const root = parseTree(text, errors, { allowTrailingComma: true, disallowComments: false });
  assert.equal(root?.type, "object");
  assert.deepEqual(root!.children!.map((p) => p.children![0]!.value), ["a", "b"]);
  assert.deepEqual(errors.map((e) => [e.offset, printParseErrorCode(e.error)]), [
    [32, "PropertyNameExpected"],
    [32, "ValueExpected"],
  ]);
});
