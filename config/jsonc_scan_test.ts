import assert from "node:assert/strict";
import { cutTooDeep, invalidUtf8, MAX_DEPTH } from "./jsonc_scan.ts";

Deno.test("cutTooDeep() blanks out each top-level value nested too deep, keeping every other offset", async (t) => {
  await t.step("nothing too deep: the text unchanged", () => {
    // The root is the first level: four here.
    const text = '{"a": {"b": [1, [2]]}, "c": "[[[[[["}';
    assert.deepEqual(cutTooDeep(text, 4), { text, tooDeep: [] });
  });
  await t.step("one entry too deep: that entry alone is cut, to a 0 and spaces", () => {
    const text = '{"a": [[[[1]]]],\n "b": [2]}';
    const cut = cutTooDeep(text, 3);
    assert.equal(cut.text, '{"a": 0        ,\n "b": [2]}');
    assert.equal(cut.text.length, text.length);
    assert.deepEqual(cut.tooDeep, [{ key: "a", offset: 8, start: 6, end: 15 }]);
  });
  await t.step("strings and comments are not nesting", () => {
    const text = '{"a": "[[[[[[", // [[[[[[\n "b": /* {{{{{{ */ 1}';
    assert.deepEqual(cutTooDeep(text, 2).tooDeep, []);
  });
  await t.step("the root itself too deep: no key", () => {
    const cut = cutTooDeep("[[[[1]]]]", 2);
    assert.deepEqual(cut.tooDeep.map((d) => d.key), [undefined]);
  });
  await t.step("the default bound: 64 levels pass, 65 do not", () => {
    const nest = (n: number) => `{"a": ${"[".repeat(n - 1)}${"]".repeat(n - 1)}}`;
    assert.equal(MAX_DEPTH, 64);
    assert.deepEqual(cutTooDeep(nest(MAX_DEPTH)).tooDeep, []);
    assert.deepEqual(cutTooDeep(nest(MAX_DEPTH + 1)).tooDeep.map((d) => d.key), ["a"]);
  });
});

Deno.test("invalidUtf8() gives the offset of each replacement character the decoder makes", async (t) => {
  const cases: [string, number[], number[]][] = [
    ["ASCII", [0x61, 0x62], []],
    ["valid two, three and four bytes", [0xc3, 0xa9, 0xe2, 0x82, 0xac, 0xf0, 0x9f, 0x98, 0x80, 0x61], []],
    ["a lone continuation byte", [0x61, 0x80, 0x62], [1]],
    ["a truncated sequence, then ASCII", [0xe2, 0x82, 0x61], [0]],
    ["an overlong form (0xc0) byte by byte", [0xc0, 0xaf], [0, 1]],
    ["a surrogate encoded (ed a0 80)", [0xed, 0xa0, 0x80], [0, 1, 2]],
    ["after an astral character (two UTF-16 units)", [0xf0, 0x9f, 0x98, 0x80, 0xff], [2]],
  ];
  for (const [name, bytes, want] of cases) {
    await t.step(name, () => {
      const data = new Uint8Array(bytes);
      assert.deepEqual(invalidUtf8(data), want);
      // The offsets are where the WHATWG decoder put its U+FFFD.
      const text = new TextDecoder().decode(data);
      assert.deepEqual([...text.matchAll(/\uFFFD/g)].map((m) => m.index), want);
    });
  }
});
