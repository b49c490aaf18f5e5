/** The bash completion (contrib/completion.bash), sourced in a real bash: COMPREPLY for commands, flags, domains. */

import assert from "node:assert/strict";
import { OPTIONS, TAKES } from "../commands/cli.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const opts = { sanitizeOps: false, sanitizeResources: false };

/**
 * Completes `line` (the word under the cursor last) in bash with our completion sourced, the hook a wrapper that
 * runs main.ts from source, and a stand-in `virsh` on PATH that prints `virshOut` after `virshDelay` seconds.
 */
async function complete(line: string[], { virshOut = "", virshDelay = 0 } = {}): Promise<string[]> {
  const dir = await Deno.makeTempDir();
  try {
    const config = `${dir}/hooks.jsonc`;
    await Deno.writeTextFile(
      config,
      `{ "web1": { "private_ip": "192.168.122.10", "port_map": { "tcp": [22] } },\n  "db": {}, // a comment\n}\n`,
    );
    await Deno.mkdir(`${dir}/bin`);
    await Deno.writeTextFile(
      `${dir}/bin/virsh`,
      `#!/bin/sh\n[ "$*" = "list --all --name" ] || exit 1\nsleep ${virshDelay}\nprintf '%s\\n\\n' ${
        virshOut.split(" ").filter(Boolean).map((d) => `'${d}'`).join(" ") || "''"
      }\n`,
    );
    await Deno.writeTextFile(
      `${dir}/qemu`,
      `#!/bin/sh\nCONFIG_FILENAME=${config} exec ${Deno.execPath()} run -A --quiet ${ROOT}main.ts "$@"\n`,
    );
    await Deno.chmod(`${dir}/bin/virsh`, 0o755);
    await Deno.chmod(`${dir}/qemu`, 0o755);
    const words = [`${dir}/qemu`, ...line];
    const script = `source ${ROOT}contrib/completion.bash
COMP_WORDS=(${words.map((w) => `'${w}'`).join(" ")}); COMP_CWORD=${words.length - 1}
_libvirt_hook_qemu; printf '%s\\n' "\${COMPREPLY[@]}"`;
    const out = await new Deno.Command("bash", {
      args: ["--norc", "--noprofile", "-c", script],
      env: { PATH: `${dir}/bin:/usr/bin:/bin`, HOME: dir },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.equal(out.code, 0, stderr);
    assert.equal(stderr, "");
    return new TextDecoder().decode(out.stdout).split("\n").filter(Boolean).sort();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const sorted = (a: string[]) => [...a].sort();

Deno.test(
  "completion.bash completes the commands cli.ts has, and each command's own flags",
  opts,
  async (t) => {
    await t.step("a first word: every command (TAKES in commands/cli.ts) and help", async () => {
      assert.deepEqual(await complete([""]), sorted([...Object.keys(TAKES), "help"]));
      assert.deepEqual(await complete(["re"]), ["reload", "remove"]);
    });
    for (const [command, takes] of Object.entries(TAKES)) {
      await t.step(`${command} --: its own options, --config and --help`, async () => {
        assert.deepEqual(
          await complete([command, "--"]),
          sorted([...takes, "config", "help"].map((o) => `--${o}`)),
        );
      });
    }
    await t.step("every long option of cli.ts is offered somewhere", () => {
      const offered = new Set([...Object.values(TAKES).flat(), "config", "help", "version"]);
      assert.deepEqual(Object.keys(OPTIONS).filter((o) => !offered.has(o)), []);
    });
    await t.step("help <TAB>: the commands", async () => {
      assert.deepEqual(await complete(["help", "d"]), ["doctor"]);
    });
  },
);

Deno.test("completion.bash completes domain names from the config and from virsh", opts, async (t) => {
  await t.step("plan <TAB>: the config's domains and virsh's, once each", async () => {
    assert.deepEqual(await complete(["plan", ""], { virshOut: "web1 vm-virsh" }), ["db", "vm-virsh", "web1"]);
  });
  await t.step("check --domain w<TAB> and status w<TAB>", async () => {
    assert.deepEqual(await complete(["check", "--domain", "w"]), ["web1"]);
    assert.deepEqual(await complete(["status", "w"], { virshOut: "win10" }), ["web1", "win10"]);
  });
  await t.step("a second argument and commands without one get nothing", async () => {
    assert.deepEqual(await complete(["plan", "web1", ""]), []);
    assert.deepEqual(await complete(["reload", ""]), []);
  });
  await t.step("a virsh that hangs is cut off after 2 s: the config's domains still come", async () => {
    const started = Date.now();
    assert.deepEqual(await complete(["apply", ""], { virshOut: "late", virshDelay: 30 }), ["db", "web1"]);
    assert.ok(Date.now() - started < 15_000, `took ${Date.now() - started} ms`);
  });
});
