/**
 * Every operator command as an unprivileged user (nobody, through setpriv): one line on stderr that says it needs
 * root, a non-zero exit, never a stack trace, and nothing on stdout (so no partial JSON either).
 */

import assert from "node:assert/strict";

const ROOT = new URL("..", import.meta.url).pathname;
const MAIN = `${ROOT}main.ts`;
const NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"];

/** Why this machine cannot run the test (not root, no setpriv, sources nobody cannot read), or undefined. */
async function cannotSwitch(): Promise<string | undefined> {
  if (Deno.uid() !== 0) return "not root: cannot switch to the user nobody";
  try {
    const r = await new Deno.Command(NOBODY[0]!, { args: [...NOBODY.slice(1), "test", "-r", MAIN] }).output();
    return r.code === 0 ? undefined : `nobody cannot read ${MAIN} (or setpriv refused)`;
  } catch {
    return "no setpriv (util-linux) here";
  }
}

const why = await cannotSwitch();
if (why !== undefined) console.log(`unprivileged_test.ts: skipped: ${why}`);

/** Each command with the arguments an operator would give it. */
const COMMANDS = [
  ["check"],
  ["check", "--domain", "web1"],
  ["plan", "web1"],
  ["status"],
  ["status", "--json"],
  ["status", "web1", "--json"],
  ["apply", "web1"],
  ["remove", "web1"],
  ["remove", "--all"],
  ["reload"],
  ["migrate-legacy"],
  ["migrate-legacy", "--dry-run"],
  ["doctor"],
  ["doctor", "--json"],
  ["doctor", "web1", "--json"],
  ["watch", "--poll", "2"],
  ["set", "add", "office", "198.51.100.0/24"],
  ["set", "list", "office"],
];

Deno.test({
  name: "runCli() as an unprivileged user: every command exits 1 with one line, needs root, no stack trace",
  ignore: why !== undefined,
  async fn(t) {
    // nobody reads neither root's module cache nor its config: both copied where it can.
    const dir = await Deno.makeTempDir();
    try {
      await Deno.chmod(dir, 0o755);
      const info = JSON.parse(
        new TextDecoder().decode(
          (await new Deno.Command(Deno.execPath(), { args: ["info", "--json"] }).output())
            .stdout,
        ),
      );
      const cache = `${dir}/deno`;
      await Deno.mkdir(cache);
      const copied = await new Deno.Command("cp", { args: ["-r", `${info.denoDir}/npm`, cache] }).output();
      assert.equal(copied.code, 0, new TextDecoder().decode(copied.stderr));
      await new Deno.Command("chmod", { args: ["-R", "a+rX", dir] }).output();
      const config = `${dir}/hooks.jsonc`;
      await Deno.writeTextFile(
        config,
        `{"web1": {"private_ip": "192.168.122.10", "port_map": {"tcp": [[2222, 22]]}}}\n`,
      );
      await Deno.chmod(config, 0o644);
      for (const args of COMMANDS) {
        await t.step(`qemu ${args.join(" ")}`, async () => {
          const out = await new Deno.Command(NOBODY[0]!, {
            args: [...NOBODY.slice(1), Deno.execPath(), "run", "-A", "--cached-only", MAIN, ...args],
            env: { DENO_DIR: cache, HOME: dir, CONFIG_FILENAME: config, NO_COLOR: "1" },
            clearEnv: true,
            stdin: "null",
          }).output();
          const stdout = new TextDecoder().decode(out.stdout);
          const stderr = new TextDecoder().decode(out.stderr);
          assert.equal(out.code, 1, stderr);
          assert.doesNotMatch(stderr, /\n\s+at |Uncaught|error: /);
          assert.deepEqual(stderr.split("\n"), [
            `needs root: "qemu ${
              args[0]
            }" reads and changes the firewall, which only root may; run it as root`,
            "",
          ]);
          // --json: valid JSON or nothing at all; nothing here, as for every other command.
          assert.equal(stdout, "");
        });
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
