import assert from "node:assert/strict";
import { readConfigSource, trustProblem } from "./source.ts";
import { domainConfig, loadConfig } from "../config.ts";
import { formatDiagnostic } from "./model.ts";

const root = Deno.uid() === 0;
if (!root) {
  console.log("Skipping the config trust tests that hand files to another user: not root (chown needs it)");
}

/** A folder of root's, mode 0755, with hooks.jsonc naming web1 and a hooks.d/ for drop-ins. */
async function configDir(): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "lvh-trust-" });
  await Deno.chmod(dir, 0o755);
  await Deno.mkdir(`${dir}/hooks.d`, { mode: 0o755 });
  await Deno.writeTextFile(
    `${dir}/hooks.jsonc`,
    `{ "web1": { "private_ip": "192.168.122.10", "public_ip": "203.0.113.1", "port_map": { "tcp": [80] } } }\n`,
    { mode: 0o644 },
  );
  return dir;
}

const EVIL =
  `{ "web9": { "private_ip": "192.168.122.19", "public_ip": "203.0.113.1", "port_map": { "tcp": [22] } } }\n`;

Deno.test("trustProblem(): root's file in root's folders is trusted, also under a sticky /tmp", async () => {
  const dir = await configDir();
  try {
    assert.equal(trustProblem(`${dir}/hooks.jsonc`), undefined);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name:
    "trustProblem(): another user's file, a group- or world-writable one, a link into a folder all may write",
  ignore: !root,
  fn: async () => {
    const dir = await configDir();
    const open = await Deno.makeTempDir({ prefix: "lvh-open-" });
    try {
      const file = `${dir}/hooks.d/a.jsonc`;
      await Deno.writeTextFile(file, EVIL, { mode: 0o644 });
      await Deno.chown(file, 65534, 0);
      assert.match(
        trustProblem(file)!,
        /^it is owned by \S+ \(uid 65534\), mode 0644: a config file and every/,
      );
      await Deno.chown(file, 0, 0);
      await Deno.chmod(file, 0o664);
      assert.match(trustProblem(file)!, /^it is writable by its group \(owner root \(uid 0\), mode 0664\)/);
      await Deno.chmod(file, 0o646);
      assert.match(trustProblem(file)!, /^it is writable by every user/);
      await Deno.chmod(file, 0o644);
      await Deno.chmod(`${dir}/hooks.d`, 0o777);
      assert.match(trustProblem(file)!, new RegExp(`^the folder ${dir}/hooks.d is writable by every user`));
      await Deno.chmod(`${dir}/hooks.d`, 0o755);
      // A link to root's own file, in a folder every user may write (and rename in): not trusted.
      await Deno.chmod(open, 0o777);
      await Deno.writeTextFile(`${open}/b.jsonc`, EVIL, { mode: 0o644 });
      await Deno.symlink(`${open}/b.jsonc`, `${dir}/hooks.d/b.jsonc`);
      assert.equal(
        trustProblem(`${dir}/hooks.d/b.jsonc`),
        `it is a link to ${open}/b.jsonc; the folder ${open} is writable by every user (owner root (uid 0), mode ` +
          "0777): a config file and every folder above it must be writable by root alone",
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
      await Deno.remove(open, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "loadConfig(): a file root alone could not have written stops the domains it names, in one line naming it",
  ignore: !root,
  fn: async () => {
    const dir = await configDir();
    const open = await Deno.makeTempDir({ prefix: "lvh-open-" });
    try {
      await Deno.writeTextFile(`${dir}/hooks.d/evil.jsonc`, EVIL.replace("web9", "web1"), { mode: 0o666 });
      await Deno.chown(`${dir}/hooks.d/evil.jsonc`, 65534, 65534);
      await Deno.chmod(`${dir}/hooks.d/evil.jsonc`, 0o666);
      await Deno.chmod(open, 0o777);
      await Deno.writeTextFile(`${open}/late.jsonc`, EVIL.replace("web9", "web8"), { mode: 0o644 });
      await Deno.symlink(`${open}/late.jsonc`, `${dir}/hooks.d/late.jsonc`);
      // A trusted drop-in through a link: its problems name it as it is named in hooks.d/.
      await Deno.writeTextFile(
        `${dir}/ok.jsonc`,
        `{ "web2": { "private_ip": "nope", "port_map": { "tcp": [81] } } }\n`,
        {
          mode: 0o644,
        },
      );
      await Deno.symlink(`${dir}/ok.jsonc`, `${dir}/hooks.d/ok.jsonc`);
      const source = readConfigSource([`${dir}/hooks.jsonc`]);
      const config = await loadConfig([`${dir}/hooks.jsonc`], { source });
      assert.deepEqual(config.diagnostics.map(formatDiagnostic), [
        `${dir}/hooks.d/evil.jsonc:1:1: Not trusted, nothing in it is used: it is owned by ` +
        `${
          config.diagnostics[0]!.message.match(/owned by (.*?) \(uid/)![1]
        } (uid 65534), mode 0666: a config file ` +
        "and every folder above it must be root's, as only root may declare forwards in the config; the domains " +
        "it names do not start (web1)",
        `${dir}/hooks.d/late.jsonc:1:1: Not trusted, nothing in it is used: it is a link to ${open}/late.jsonc; ` +
        `the folder ${open} is writable by every user (owner root (uid 0), mode 0777): a config file and every ` +
        "folder above it must be writable by root alone; the domains it names do not start (web8)",
        `${dir}/hooks.d/ok.jsonc:1:27: Not an IP address (web2.private_ip = "nope")`,
      ]);
      assert.equal(domainConfig(config, "web1").kind, "invalid");
      assert.equal(domainConfig(config, "web8").kind, "invalid");
      // Its names clash with nothing: web1 in hooks.jsonc is stopped by the untrusted file alone, not a duplicate.
      assert.equal(config.diagnostics.filter((d) => d.message.includes("also configured")).length, 0);
    } finally {
      await Deno.remove(dir, { recursive: true });
      await Deno.remove(open, { recursive: true });
    }
  },
});

Deno.test({
  name: "loadConfig(): an untrusted file's settings are not used, and the domains of the trusted ones start",
  ignore: !root,
  fn: async () => {
    const dir = await configDir();
    try {
      await Deno.writeTextFile(
        `${dir}/hooks.d/settings.jsonc`,
        `{ "/settings": { "xml_forwards": [{ "domains": "*", "host_ports": true }] } }\n`,
        { mode: 0o644 },
      );
      await Deno.chmod(`${dir}/hooks.d/settings.jsonc`, 0o664);
      const config = await loadConfig([`${dir}/hooks.jsonc`]);
      assert.deepEqual(config.settings.xmlForwards, []);
      assert.equal(domainConfig(config, "web1").kind, "ok");
      assert.equal(config.diagnostics.length, 1);
      assert.match(
        config.diagnostics[0]!.message,
        /^Not trusted, nothing in it is used: it is writable by its group/,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
