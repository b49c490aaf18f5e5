/** ok(), note(), fail(): one link of a forward's path; a fix only where one is given. */

import assert from "node:assert/strict";
import { fail, note, ok } from "./doctor_findings.ts";

Deno.test("fail() carries its fix; ok() and note() carry none", async (t) => {
  await t.step(
    "ok",
    () => assert.deepEqual(ok("IPv4 forwarding is on"), { level: "ok", what: "IPv4 forwarding is on" }),
  );
  await t.step(
    "note",
    () => assert.deepEqual(note("no connection yet"), { level: "note", what: "no connection yet" }),
  );
  await t.step("fail with a fix", () => {
    assert.deepEqual(fail("the forward is not live", "qemu apply web1"), {
      level: "fail",
      what: "the forward is not live",
      fix: "qemu apply web1",
    });
  });
  await t.step("fail without one: no empty fix line", () => {
    assert.deepEqual(fail("no bridge leads to it", ""), { level: "fail", what: "no bridge leads to it" });
  });
});
