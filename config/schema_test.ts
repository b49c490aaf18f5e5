/** The shipped JSON Schema is the one the validator's tables produce, and agrees with it on real configs. */

import assert from "node:assert/strict";
import { ENTRY_FIELDS } from "./entry.ts";
import { configSchema } from "./schema.ts";
import { SETTING_NAMES } from "./validate.ts";

Deno.test("hooks.schema.json is generated from the validator's field tables (run `deno task schema`)", async () => {
  const shipped = JSON.parse(await Deno.readTextFile(new URL("../hooks.schema.json", import.meta.url)));
  assert.deepEqual(shipped, configSchema());
});

Deno.test("configSchema() describes every entry field the validator knows, and no other", () => {
  const entry = (configSchema().definitions as { entry: { properties: object } }).entry;
  assert.deepEqual(Object.keys(entry.properties).sort(), Object.keys(ENTRY_FIELDS).sort());
});

Deno.test("the example config references the schema that is installed beside it", async () => {
  const example = await Deno.readTextFile(new URL("../hooks.jsonc", import.meta.url));
  assert.match(example, /"\$schema": "\.\/hooks\.schema\.json"/);
});

Deno.test("configSchema() describes every setting the validator knows, and no other", () => {
  const settings = (configSchema().properties as Record<string, { properties: object }>)["/settings"]!;
  assert.deepEqual(Object.keys(settings.properties).sort(), [...SETTING_NAMES].sort());
});
