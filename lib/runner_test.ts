/** Every command and the lock are bounded in time: what the hook promises libvirt, which waits with no limit. */

import assert from "node:assert/strict";
import { withLock } from "./lock.ts";
import { systemRunner } from "./runner.ts";

Deno.test("systemRunner() kills a command that outlasts its timeout, and says so", async () => {
  const started = performance.now();
  const r = await systemRunner().run(["sleep", "5"], { timeoutMs: 200 });
  assert.equal(r.code, 124);
  assert.match(r.stderr, /timed out after 200 ms/);
  assert.ok(performance.now() - started < 2000);
});

Deno.test("systemRunner() passes stdin and extra variables, and tells a missing program by 127", async () => {
  const runner = systemRunner();
  const r = await runner.run(["sh", "-c", 'cat; echo "$HOME"'], {
    stdin: "xml\n",
    env: { HOME: "/dev/null" },
  });
  assert.deepEqual(r, { code: 0, stdout: "xml\n/dev/null\n", stderr: "" });
  assert.equal((await runner.run(["/nonexistent/program"])).code, 127);
});

Deno.test("systemRunner() tells when a command has its input, while it still runs", async () => {
  const dir = await Deno.makeTempDir();
  try {
    let calls = 0;
    // The command ends only once onInput has run: were onInput called after the command's end, it would time out.
    const r = await systemRunner().run(
      ["sh", "-c", `read line; echo "$line"; while [ ! -e "${dir}/go" ]; do sleep 0.01; done`],
      {
        stdin: "input\n",
        timeoutMs: 5000,
        onInput: () => {
          calls++;
          Deno.writeTextFileSync(`${dir}/go`, "");
        },
      },
    );
    assert.deepEqual(r, { code: 0, stdout: "input\n", stderr: "" });
    assert.equal(calls, 1);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("withLock() waits for the holder, and gives up after its timeout", async () => {
  const dir = await Deno.makeTempDir();
  const path = `${dir}/lock`;
  try {
    let release = () => {};
    let entered = () => {};
    const inside = new Promise<void>((r) => (entered = r));
    const held = withLock(() => {
      entered();
      return new Promise<void>((r) => (release = r));
    }, path);
    await inside;
    await assert.rejects(
      withLock(() => Promise.resolve(), path, 200),
      /Cannot take the lock ".*": still held by another call after 200 ms/,
    );
    release();
    await held;
    assert.equal(await withLock(() => Promise.resolve("mine"), path, 200), "mine");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
