/** shellQuote() and qemuCommand(): the commands we suggest work when pasted into a shell. */

import assert from "node:assert/strict";
import { qemuCommand, shellQuote } from "./shell.ts";

Deno.test("shellQuote() leaves plain words alone and single-quotes the rest", async (t) => {
  const cases: [string, string][] = [
    ["web1", "web1"],
    ["db.example-2_x", "db.example-2_x"],
    ["web 1", "'web 1'"],
    ["a'b", `'a'\\''b'`],
    ["$(reboot)", "'$(reboot)'"],
    ["", "''"],
    ["*", "'*'"],
  ];
  for (const [word, quoted] of cases) {
    await t.step(JSON.stringify(word), () => assert.equal(shellQuote(word), quoted));
  }
});

Deno.test("shellQuote() gives back the very word through a real shell", async (t) => {
  for (const word of ["web 1", "a'b", `x"y\\z`, "$HOME", "tab\there", "new\nline", "-n"]) {
    await t.step(JSON.stringify(word), async () => {
      const out = await new Deno.Command("sh", { args: ["-c", `printf %s ${shellQuote(word)}`] }).output();
      assert.equal(new TextDecoder().decode(out.stdout), word);
    });
  }
});

Deno.test("qemuCommand() puts a name that starts with a dash after --", () => {
  assert.equal(qemuCommand("apply", "web 1"), "qemu apply 'web 1'");
  assert.equal(qemuCommand("apply", "-web"), "qemu apply -- -web");
});
