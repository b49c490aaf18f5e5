import assert from "node:assert/strict";
import { readMembers, storedSets, writeMembers } from "./sets.ts";

Deno.test("writeMembers() replaces a set's file at once; readMembers() and storedSets() read it back", async () => {
  const dir = `${await Deno.makeTempDir()}/sets`;
  assert.deepEqual(readMembers("office", dir), []);
  assert.deepEqual(storedSets(dir), []);
  writeMembers("office", ["198.51.100.0/24", "2001:db8::/32"], dir);
  writeMembers("lab", [], dir);
  assert.deepEqual(readMembers("office", dir), ["198.51.100.0/24", "2001:db8::/32"]);
  // Nothing left beside it: the file written aside was renamed over the set's.
  assert.deepEqual(storedSets(dir), ["lab", "office"]);
  await Deno.remove(dir, { recursive: true });
});
