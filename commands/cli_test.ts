/** runCli(): who may run a command, which arguments each takes, and a stdout that fails, with fake deps. */

import assert from "node:assert/strict";
import { runCli } from "./cli.ts";
import { domainHash } from "../backends/names.ts";
import { fakeCommandDeps, twoLive } from "../test/commands_deps.ts";

const CONFIG = `{"web1": {"private_ip": "192.168.122.10", "port_map": {"tcp": [[2222, 22]]}}}`;

/** A stdout whose every write fails, as /dev/full's does. */
const FULL = {
  writeSync(): number {
    throw new Error("No space left on device (os error 28)");
  },
};

Deno.test("runCli() refuses an unprivileged user in one line, before anything runs", async (t) => {
  for (
    const args of [
      ["check"],
      ["plan", "web1"],
      ["status", "--json"],
      ["apply", "web1"],
      ["remove", "--all"],
      [
        "reload",
      ],
      ["migrate-legacy"],
      ["doctor", "--json"],
      ["watch"],
    ]
  ) {
    await t.step(args.join(" "), async () => {
      const f = await fakeCommandDeps(CONFIG);
      assert.equal(await runCli(args, f.deps, { uid: 1000 }), 1);
      assert.deepEqual(f.stderr, [
        `needs root: "qemu ${args[0]}" reads and changes the firewall, which only root may; run it as root`,
      ]);
      assert.deepEqual(f.calls, []);
    });
  }
  await t.step("help and the version need no root", async () => {
    const f = await fakeCommandDeps(CONFIG);
    assert.equal(
      await runCli(["help", "status"], f.deps, { uid: 1000, stdout: { writeSync: (p) => p.length } }),
      0,
    );
    assert.deepEqual(f.stderr, []);
  });
});

Deno.test("runCli() refuses arguments and options a command does not take, changing nothing", async (t) => {
  const cases: [string[], string][] = [
    [["remove", "--all", "web1"], "remove takes no domain name with --all (--all removes every domain's)"],
    [["reload", "extra"], "reload takes no arguments (it re-applies every domain with live rules)"],
    [["plan", "web1", "--json"], "plan takes no --json (only status and doctor print JSON)"],
    [["check", "--json"], "check takes no --json (only status and doctor print JSON)"],
    [["apply", "web1", "--json"], "apply takes no --json (only status and doctor print JSON)"],
    [["remove", "web1", "--json"], "remove takes no --json (only status and doctor print JSON)"],
    [["status", "--all"], "status takes no --all"],
    [["doctor", "--dry-run"], "doctor takes no --dry-run"],
    [["migrate-legacy", "web1"], "migrate-legacy takes no arguments"],
    [["watch", "now"], "watch takes no arguments"],
    [["check", "--poll", "3"], "check takes no --poll"],
  ];
  for (const [args, why] of cases) {
    await t.step(args.join(" "), async () => {
      const f = await fakeCommandDeps(CONFIG);
      assert.equal(await runCli(args, f.deps, { uid: 0 }), 2);
      assert.deepEqual(f.stderr, [`${why}. Run with --help for usage.`]);
      assert.deepEqual(f.calls, []);
    });
  }
});

Deno.test("runCli() with stdout full finishes remove --all, then says so on stderr and exits 1", async () => {
  const f = await fakeCommandDeps(
    CONFIG,
    (argv) => argv[0] === "iptables-save" ? { stdout: twoLive(domainHash) } : {},
  );
  assert.equal(await runCli(["remove", "--all"], f.deps, { uid: 0, stdout: FULL }), 1);
  // Both domains' removals ran, one batch each, though the first line of output already failed.
  const restores = f.calls.filter((c) => c.argv[0] === "iptables-restore");
  assert.equal(restores.length, 2);
  assert.deepEqual(
    restores.map((c) => /^-X (\S+)$/m.exec(c.stdin!)?.[1]).sort(),
    [`LVH-${domainHash("web1")}-DNAT`, `LVH-${domainHash("web2")}-DNAT`].sort(),
  );
  assert.deepEqual(f.stderr, [
    'Cannot write the output of "qemu remove --all" to stdout: No space left on device (os error 28)',
  ]);
});

Deno.test("runCli() turns a failure no command caught into one line and exit 1, never a stack trace", async () => {
  const f = await fakeCommandDeps(
    CONFIG,
    (argv) => argv[0]!.endsWith("-save") ? { code: 4, stderr: "Permission denied (you must be root)" } : {},
  );
  const out: string[] = [];
  const stdout = { writeSync: (p: Uint8Array) => (out.push(new TextDecoder().decode(p)), p.length) };
  assert.equal(await runCli(["status", "--json"], f.deps, { uid: 0, stdout }), 1);
  assert.deepEqual(out, []);
  assert.equal(f.stderr.length, 1);
  assert.match(f.stderr[0]!, /^Cannot run "qemu status --json": .*Permission denied \(you must be root\)$/);
});
