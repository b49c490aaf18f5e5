import assert from "node:assert/strict";
import { withLock } from "./lock.ts";

Deno.test("withLock() creates the lock file, runs the function holding it, and returns its value", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/test.lock`;
    assert.equal(await withLock(() => Promise.resolve(42), path), 42);
    assert.ok((await Deno.stat(path)).isFile);
    await assert.rejects(withLock(() => Promise.reject(new Error("inner")), path), /^Error: inner$/);
    // A failed function released the lock: the next call takes it at once.
    assert.equal(await withLock(() => Promise.resolve("again"), path, 1000), "again");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("withLock() lets one holder at a time in: a second call waits for the first to finish", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/test.lock`;
    const steps: string[] = [];
    let release = () => {};
    const held = new Promise<void>((resolve) => release = resolve);
    const first = withLock(async () => {
      steps.push("first in");
      await held;
      steps.push("first out");
    }, path);
    await new Promise((r) => setTimeout(r, 50));
    const second = withLock(() => Promise.resolve(steps.push("second in")), path);
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(steps, ["first in"], "the second waits while the first holds the lock");
    release();
    await Promise.all([first, second]);
    assert.deepEqual(steps, ["first in", "first out", "second in"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("withLock() gives up after its timeout, naming the lock, while another process holds it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/test.lock`;
    // flock(1) holds the lock from another process, as a parallel hook call would.
    const holder = new Deno.Command("flock", { args: [path, "sleep", "5"], stdout: "null", stderr: "null" })
      .spawn();
    try {
      for (let i = 0; i < 50 && !(await Deno.stat(path).then(() => true, () => false)); i++) {
        await new Promise((r) => setTimeout(r, 20));
      }
      await new Promise((r) => setTimeout(r, 100));
      let ran = false;
      await assert.rejects(
        withLock(() => Promise.resolve(ran = true), path, 200),
        new Error(`Cannot take the lock "${path}": still held by another call after 200 ms`),
      );
      assert.equal(ran, false);
    } finally {
      holder.kill();
      await holder.status;
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("withLock() says which lock file it cannot open", async () => {
  const path = `/nonexistent-${Deno.pid}/test.lock`;
  await assert.rejects(withLock(() => Promise.resolve(1), path), (err: Error) => {
    assert.match(err.message, new RegExp(`^Cannot open the lock file "${path}": `));
    return true;
  });
});
