/** apply(): refuses a guest that does not run; a guest with nothing to apply is told how to remove its forwards. */

import assert from "node:assert/strict";
import { apply } from "./apply.ts";
import { fakeCommandDeps } from "../test/commands_deps.ts";

const CONFIG = `{"web1": {"private_ip": "192.168.122.10", "port_map": {"tcp": [[2222, 22]]}}}`;

Deno.test("apply() refuses a guest that does not run, running nothing", async () => {
  const f = await fakeCommandDeps(CONFIG);
  assert.equal(await apply("web1", f.deps), 1);
  assert.deepEqual(f.calls, []);
  assert.match(
    f.stderr[0]!,
    /^Cannot apply forwards for "web1": it is not running \(.*\/web1\.xml does not exist\)/,
  );
});

Deno.test("apply() of a running guest with no forwards names the remove command, quoted for a shell", async (t) => {
  const run = Deno.env.get("LIBVIRT_QEMU_RUN_DIR")!;
  const cases: [string, string][] = [["db", "qemu remove db"], ["a'b c", `qemu remove 'a'\\''b c'`]];
  for (const [domain, command] of cases) {
    await t.step(domain, async () => {
      await Deno.writeTextFile(
        `${run}/${domain}.xml`,
        `<domstatus><domain><name>x</name></domain></domstatus>`,
      );
      try {
        const f = await fakeCommandDeps(CONFIG);
        assert.equal(await apply(domain, f.deps), 1);
        assert.equal(f.stderr.length, 1);
        assert.ok(
          f.stderr[0]!.endsWith(`its XML holds no forwards; to remove its forwards, use: ${command}`),
          f.stderr[0],
        );
      } finally {
        await Deno.remove(`${run}/${domain}.xml`);
      }
    });
  }
});
