/** setCommand(): a named source set's members, stored and put into its live copies at once. */

import assert from "node:assert/strict";
import { emptySetWarnings, setCommand } from "./set.ts";
import { captureStdout, fakeCommandDeps } from "../test/commands_deps.ts";

/** Fake deps whose sets live in a scratch directory; `ipsetLive`: whether the set's ipset exists. */
async function setDeps(ipsetLive: boolean) {
  const f = await fakeCommandDeps(
    "{}",
    (argv) => (argv[0] === "ipset" && argv[1] === "list" && !ipsetLive ? { code: 1 } : {}),
  );
  const dir = await Deno.makeTempDir();
  const base = f.deps.env;
  f.deps.env = (name) => (name === "LIBVIRT_HOOK_QEMU_SETS_DIR" ? dir : base(name));
  return { ...f, dir };
}

Deno.test("setCommand() adds members merged, stores them, and swaps them into the live ipsets in one restore", async () => {
  const f = await setDeps(true);
  const { value, stdout } = await captureStdout(() =>
    setCommand(f.deps, {
      action: "add",
      name: "office",
      items: ["198.51.100.0/25", "198.51.100.128/25", "2001:db8::1-2001:db8::3"],
    })
  );
  assert.deepEqual([value, f.stderr], [0, []]);
  assert.deepEqual(stdout, ['Set "office": 2 item(s), live in ipset']);
  assert.equal(await Deno.readTextFile(`${f.dir}/office`), "198.51.100.0/24\n2001:db8::1-2001:db8::3\n");
  const restore = f.calls.find((c) => c.argv.join(" ") === "ipset restore");
  assert.equal(
    restore?.stdin,
    [
      "create lvh-office-v4 hash:net family inet -exist",
      "create lvh-office-v4-t hash:net family inet -exist",
      "flush lvh-office-v4-t",
      "add lvh-office-v4-t 198.51.100.0/24 -exist",
      "swap lvh-office-v4-t lvh-office-v4",
      "destroy lvh-office-v4-t",
      "create lvh-office-v6 hash:net family inet6 -exist",
      "create lvh-office-v6-t hash:net family inet6 -exist",
      "flush lvh-office-v6-t",
      // An ipset of networks takes no IPv6 range: the range as the networks that cover exactly it.
      "add lvh-office-v6-t 2001:db8::1 -exist",
      "add lvh-office-v6-t 2001:db8::2/127 -exist",
      "swap lvh-office-v6-t lvh-office-v6",
      "destroy lvh-office-v6-t",
      "",
    ].join("\n"),
  );
});

Deno.test("setCommand() removes members, splitting a network, and only stores where nothing uses the set", async () => {
  const f = await setDeps(false);
  await Deno.writeTextFile(`${f.dir}/office`, "198.51.100.0/24\n");
  const { value, stdout } = await captureStdout(() =>
    setCommand(f.deps, { action: "del", name: "office", items: ["198.51.100.0/25", "198.51.100.200"] })
  );
  assert.equal(value, 0);
  assert.deepEqual(stdout, [
    'Set "office": 2 item(s), no running forward uses it: it is put in place when one starts',
  ]);
  assert.equal(
    await Deno.readTextFile(`${f.dir}/office`),
    "198.51.100.128-198.51.100.199\n198.51.100.201-198.51.100.255\n",
  );
  assert.equal(f.calls.some((c) => c.argv.join(" ") === "ipset restore"), false);
  const list = await captureStdout(() => setCommand(f.deps, { action: "list", name: "office", items: [] }));
  assert.deepEqual(list.stdout, ["198.51.100.128-198.51.100.199", "198.51.100.201-198.51.100.255"]);
});

Deno.test("setCommand() refuses a bad item or name with one line each, and changes nothing", async (t) => {
  const cases: [string, string | undefined, string[], string[]][] = [
    ["add", "office", ["198.51.100.0/24", "10.0.0.300", "10.0.0.9-10.0.0.1"], [
      'argument 4: Not an IP address, network (CIDR) or range (first-last) (item = "10.0.0.300")',
      'argument 5: The range\'s first address is after its last (item = "10.0.0.9-10.0.0.1")',
    ]],
    ["add", "my office", ["10.0.0.1"], [
      'A set name is 1 to 20 letters, digits or underscores (set name = "my office"). Run with --help for usage.',
    ]],
    ["add", "office", [], [
      "set add and set del need at least one address, network or range. Run with --help for usage.",
    ]],
    ["flush", "office", [], ['set takes add, del or list, not "flush". Run with --help for usage.']],
  ];
  for (const [action, name, items, want] of cases) {
    await t.step(`${action} ${name} ${items.join(" ")}`, async () => {
      const f = await setDeps(true);
      const { value } = await captureStdout(() => setCommand(f.deps, { action, name, items }));
      assert.deepEqual([value, f.stderr], [2, want]);
      assert.deepEqual([...Deno.readDirSync(f.dir)], []);
      assert.deepEqual(f.calls, []);
    });
  }
});

Deno.test("emptySetWarnings() names each domain's source_set that has no members yet, and no other", async () => {
  const f = await setDeps(false);
  await Deno.writeTextFile(`${f.dir}/office`, "198.51.100.0/24\n");
  const entry = (sourceSet: string) => ({
    path: "x",
    targets: [{ family: 4 as const, sourceSet }, { family: 6 as const, sourceSet }],
    ports: [],
  });
  assert.deepEqual(
    emptySetWarnings(new Map([["web1", [entry("office")]], ["web2", [entry("lab")]]]), f.dir),
    ['web2: source_set "lab" has no members yet: its forwards admit no one until "qemu set add lab <address...>"'],
  );
});
