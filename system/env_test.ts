import assert from "node:assert/strict";
import { env, onPath, STATE_DIR } from "./env.ts";

Deno.test("env() reads a variable, and one that is not set is undefined", () => {
  const name = `LVH_ENV_TEST_${Deno.pid}`;
  assert.equal(env(name), undefined);
  Deno.env.set(name, "value with spaces");
  try {
    assert.equal(env(name), "value with spaces");
  } finally {
    Deno.env.delete(name);
  }
  assert.equal(env(name), undefined);
});

Deno.test("onPath() finds an executable file in the first directory of PATH that has it", async (t) => {
  const dir = await Deno.makeTempDir();
  try {
    for (const sub of ["a", "b", "c"]) await Deno.mkdir(`${dir}/${sub}`);
    await Deno.writeTextFile(`${dir}/a/tool`, "not executable");
    await Deno.chmod(`${dir}/a/tool`, 0o644);
    await Deno.mkdir(`${dir}/b/tool`);
    await Deno.writeTextFile(`${dir}/c/tool`, "#!/bin/sh\n");
    await Deno.chmod(`${dir}/c/tool`, 0o755);
    await Deno.writeTextFile(`${dir}/a/other`, "#!/bin/sh\n");
    await Deno.chmod(`${dir}/a/other`, 0o700);
    const path = `${dir}/missing::${dir}/a:${dir}/b:${dir}/c`;
    await t.step("a non-executable file and a directory of that name are passed over", () => {
      assert.equal(onPath("tool", path), `${dir}/c/tool`);
    });
    await t.step("the first directory that has it wins", () => {
      assert.equal(onPath("other", `${path}:${dir}/c`), `${dir}/a/other`);
    });
    await t.step("not on the path, an empty path, no path: undefined", () => {
      assert.equal(onPath("absent", path), undefined);
      assert.equal(onPath("tool", ""), undefined);
      assert.equal(onPath("tool", undefined), undefined);
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("STATE_DIR is ours on /run, a tmpfs that a reboot empties", () => {
  assert.equal(STATE_DIR, "/run/libvirt-hook-qemu");
});
