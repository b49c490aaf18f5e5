/** Black-box tests of the operator commands and install.sh: spawn the program, check stdout, stderr and exit code. */

import assert from "node:assert/strict";
import { canRunLab, createLab, LAB_ADDR as A } from "./lab.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const MAIN = `${ROOT}main.ts`;
const can = await canRunLab();
/** Every config file these tests write lives here, removed when the tests end. */
const SCRATCH = await Deno.makeTempDir();
globalThis.addEventListener("unload", () => Deno.removeSync(SCRATCH, { recursive: true }));
const opts = { sanitizeOps: false, sanitizeResources: false };

async function run(argv: string[], env: Record<string, string> = {}, stdin?: string) {
  const child = new Deno.Command(argv[0]!, {
    args: argv.slice(1),
    env,
    stdin: stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  if (stdin !== undefined) {
    const w = child.stdin.getWriter();
    await w.write(new TextEncoder().encode(stdin));
    await w.close();
  }
  const out = await child.output();
  const d = new TextDecoder();
  return { code: out.code, stdout: d.decode(out.stdout), stderr: d.decode(out.stderr) };
}

const cli = (args: string[], env: Record<string, string> = {}) =>
  run([Deno.execPath(), "run", "-A", MAIN, ...args], env);

/** The program from source inside namespace `ns` (a lab's host), as an operator or libvirt would run it there. */
const cliIn = (ns: string, args: string[], env: Record<string, string> = {}, stdin?: string) =>
  run(["ip", "netns", "exec", ns, Deno.execPath(), "run", "-A", MAIN, ...args], env, stdin);

async function tempConfig(text: string): Promise<string> {
  const file = await Deno.makeTempFile({ dir: SCRATCH, suffix: ".jsonc" });
  await Deno.writeTextFile(file, text);
  return file;
}

Deno.test("--version and --help go to stdout with exit 0; a bad command is a usage error", async () => {
  const v = await cli(["--version"]);
  assert.deepEqual([v.code, v.stdout.trim(), v.stderr], [0, "libvirt-hook-qemu 0.2.0", ""]);
  const h = await cli(["help", "status"]);
  assert.equal(h.code, 0);
  assert.match(h.stdout, /^Usage: qemu status \[domain\] \[--json\]/);
  const bad = await cli(["frobnicate"]);
  assert.deepEqual([bad.code, bad.stdout], [2, ""]);
  assert.equal(bad.stderr, 'Unknown command "frobnicate". Run with --help for usage.\n');
});

Deno.test("check prints every problem on stderr as file:line:column and exits 1", async () => {
  const file = await tempConfig(`{
  "web1": { "private_ip": "192.168.122.10", "port_map": { "tcp": [[2222, 22]] }, "sorce_ip": "1.2.3.4" },
  "web2": { "private_ip": "192.168.122.300", "port_map": { "tcp": [[2222, 22]] } },
}`);
  const r = await cli(["check", "--config", file]);
  assert.equal(r.code, 1);
  assert.equal(r.stdout, "");
  const lines = r.stderr.trimEnd().split("\n");
  assert.deepEqual(lines.slice(0, 2), [
    `${file}:2:82: Unknown field "sorce_ip"; known fields: interface, private_ip, public_ip, source_ip, private_ipv6, ` +
    "public_ipv6, source_ipv6, source_set, port_map, port_range, all_ports, snat, dev, description, enabled, log, counters (web1.sorce_ip)",
    `${file}:3:27: Not an IP address (web2.private_ip = "192.168.122.300")`,
  ]);
  assert.equal(lines.at(-1), `${file}: 2 error(s); the domains they name will not start`);
});

Deno.test("check accepts the shipped example and every real legacy config that should pass", async () => {
  for (
    const file of [
      `${ROOT}hooks.jsonc`,
      `${ROOT}test/fixtures/legacy/08-stridsberg-documented-trailing-comma.json`,
    ]
  ) {
    const r = await cli(["check", "--config", file]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /: OK, 1 domain\(s\)/);
  }
});

Deno.test({
  name: "plan prints exactly what start applies; status reads it back; apply refuses a stopped guest",
  ignore: !can.ok,
  ...opts,
  async fn() {
    const lab = await createLab();
    const dir = await Deno.makeTempDir();
    try {
      // An IPTABLES_BINARY whose restore records its input, so we see exactly what start applied.
      for (const fam of ["iptables", "ip6tables"]) {
        await Deno.writeTextFile(`${dir}/${fam}-save`, `#!/bin/sh\nexec /usr/sbin/${fam}-save "$@"\n`);
        await Deno.writeTextFile(
          `${dir}/${fam}-restore`,
          `#!/bin/sh\ntee -a ${dir}/${fam}.applied | /usr/sbin/${fam}-restore "$@"\n`,
        );
        await Deno.chmod(`${dir}/${fam}-save`, 0o755);
        await Deno.chmod(`${dir}/${fam}-restore`, 0o755);
      }
      const config = await tempConfig(
        `{"web1": {"private_ip": "${A.g1v4}", "private_ipv6": "${A.g1v6}", "source_ip": "${A.client4b}",
          "port_map": {"tcp": [[2222, 22]]}}}`,
      );
      const env = { CONFIG_FILENAME: config, IPTABLES_BINARY: `${dir}/iptables`, LIBVIRT_QEMU_RUN_DIR: dir };
      const inHost = (args: string[], stdin?: string) => cliIn(lab.ns.host, args, env, stdin);

      const plan = await inHost(["plan", "web1"]);
      assert.equal(plan.code, 0, plan.stderr);
      const start = await inHost(["web1", "start", "begin", "-"], "<domain/>");
      assert.equal(start.code, 0, start.stderr);
      const applied = (await Deno.readTextFile(`${dir}/iptables.applied`)) +
        (await Deno.readTextFile(`${dir}/ip6tables.applied`));
      assert.equal(plan.stdout.split("\n").filter((l) => !l.startsWith("#")).join("\n"), applied);

      const status = await inHost(["status"]);
      assert.equal(status.code, 0, status.stderr);
      assert.equal(
        status.stdout,
        [
          'Firewall backend: iptables (setting "auto"; libvirt uses iptables)',
          "web1 (not running)",
          // Each with its counters: nothing has connected yet.
          `  tcp ${A.hostPub4}:2222 -> ${A.g1v4}:22 from ${A.client4b}`,
          "    0 connections",
          `  tcp [${A.hostPub6}]:2222 -> [${A.g1v6}]:22`,
          "    0 connections",
          "",
        ].join("\n"),
      );
      const json = JSON.parse((await inHost(["status", "--json"])).stdout);
      assert.equal(json.domains[0].forwards[0].explained, true);

      // The config changes under a live guest: status flags what it no longer explains.
      await Deno.writeTextFile(config, `{}`);
      assert.match(
        (await inHost(["status"])).stdout,
        /\nweb1 \(not running, not in the config\)\n.*<- not explained by the config/,
      );

      const refused = await inHost(["apply", "web1"]);
      assert.equal(refused.code, 1);
      assert.match(refused.stderr, /^Cannot apply forwards for "web1": it is not running/);

      const removed = await inHost(["remove", "web1"]);
      assert.equal(removed.code, 0, removed.stderr);
      assert.match((await inHost(["status"])).stdout, /\nNo forwards are live\.\n$/);
    } finally {
      await lab.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "migrate-legacy removes exactly the old hook's chains and jumps, then applies ours for running guests",
  ignore: !can.ok,
  ...opts,
  async fn() {
    const lab = await createLab();
    const dir = await Deno.makeTempDir();
    try {
      const before = await lab.ruleset(4);
      // What the old Python hook leaves for a running guest "web1".
      const legacy = [
        "*nat",
        ":DNAT-web1 - [0:0]",
        ":SNAT-web1 - [0:0]",
        `-A PREROUTING -d ${A.hostPub4}/32 -j DNAT-web1`,
        `-A OUTPUT -d ${A.hostPub4}/32 -j DNAT-web1`,
        `-A POSTROUTING -s ${A.g1v4}/32 -d ${A.g1v4}/32 -j SNAT-web1`,
        `-A DNAT-web1 -d ${A.hostPub4}/32 -p tcp -m tcp --dport 2222 -j DNAT --to-destination ${A.g1v4}:22`,
        `-A SNAT-web1 -s ${A.g1v4}/32 -d ${A.g1v4}/32 -p tcp -m tcp --dport 22 -j MASQUERADE`,
        "COMMIT",
        "*filter",
        ":FWD-web1 - [0:0]",
        `-I FORWARD -d ${A.g1v4}/32 -j FWD-web1`,
        `-A FWD-web1 -d ${A.g1v4}/32 -p tcp -m tcp --dport 22 -j ACCEPT`,
        "COMMIT",
        "",
      ].join("\n");
      const load = await lab.exec(lab.ns.host, ["iptables-restore", "--noflush"], { stdin: legacy });
      assert.equal(load.code, 0, load.stderr);
      await Deno.writeTextFile(`${dir}/web1.xml`, "<domain><name>web1</name></domain>");
      const config = await tempConfig(
        `{"web1": {"private_ip": "${A.g1v4}", "port_map": {"tcp": [[2222, 22]]}}}`,
      );
      const env = { CONFIG_FILENAME: config, LIBVIRT_QEMU_RUN_DIR: dir };
      const r = await cliIn(lab.ns.host, ["migrate-legacy"], env);
      assert.equal(r.code, 0, r.stderr);
      assert.match(
        r.stdout,
        /^Removing the old hook's chains and the jumps into them:\n {2}nat chain DNAT-web1\n {2}nat chain SNAT-web1\n {2}filter chain FWD-web1\n/,
      );
      assert.match(r.stdout, /Applied the forwards of running guest "web1"\n$/);
      const after = await lab.ruleset(4);
      assert.doesNotMatch(after, /DNAT-web1|SNAT-web1|FWD-web1/);
      await lab.serve(lab.ns.g1, "tcp", 22, "g1");
      assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 2222), `g1 ${A.client4}`);
      await cliIn(lab.ns.host, ["remove", "web1"], env);
      assert.equal(await lab.ruleset(4), before);
    } finally {
      await lab.close();
      await Deno.remove(dir, { recursive: true });
    }
  },
});

const LIBVIRT_ENV = { LC_ALL: "C", PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" };

Deno.test({
  name:
    "install.sh installs into DESTDIR, twice harmlessly, keeps configs, refuses a foreign hook, uninstalls",
  ignore: Deno.uid() !== 0,
  ...opts,
  async fn(t) {
    const dest = await Deno.makeTempDir();
    const hooks = `${dest}/etc/libvirt/hooks`;
    const install = (...args: string[]) =>
      run(["bash", `${ROOT}install.sh`, ...args], { ...Deno.env.toObject(), DESTDIR: dest });
    try {
      await t.step(
        "first install: the hook, the example config, the schema; says which form and what next",
        async () => {
          const r = await install();
          assert.equal(r.code, 0, r.stderr);
          assert.match(r.stdout, /Installed \/etc\/libvirt\/hooks\/qemu \((compiled|source) form/);
          assert.match(r.stdout, /Next: restart libvirtd once/);
          assert.ok((await Deno.stat(`${hooks}/qemu`)).mode! & 0o100);
          assert.equal(
            await Deno.readTextFile(`${hooks}/hooks.jsonc`),
            await Deno.readTextFile(`${ROOT}hooks.jsonc`),
          );
        },
      );
      await t.step("the installed hook runs with libvirt's minimal environment, from /", async () => {
        const child = await run([
          "/usr/bin/env",
          "-i",
          ...Object.entries(LIBVIRT_ENV).map(([k, v]) => `${k}=${v}`),
          `${hooks}/qemu`,
          "--version",
        ]);
        assert.deepEqual([child.code, child.stdout.trim()], [0, "libvirt-hook-qemu 0.2.0"]);
        // It finds its own files without starting a process (no readlink, no dirname on this PATH) ...
        const bare = await run(["/usr/bin/env", "-i", "PATH=/nonexistent", `${hooks}/qemu`, "--version"]);
        assert.deepEqual([bare.code, bare.stdout.trim()], [0, "libvirt-hook-qemu 0.2.0"], bare.stderr);
        // ... and through a symbolic link from elsewhere too.
        const link = `${dest}/elsewhere-qemu`;
        await Deno.symlink(`${hooks}/qemu`, link);
        const linked = await run([
          "/usr/bin/env",
          "-i",
          ...Object.entries(LIBVIRT_ENV).map(([k, v]) => `${k}=${v}`),
          link,
          "--version",
        ]);
        assert.deepEqual([linked.code, linked.stdout.trim()], [0, "libvirt-hook-qemu 0.2.0"], linked.stderr);
      });
      await t.step(
        "the same program is the network hook; --watcher adds a unit that systemd accepts",
        async () => {
          const net = await run(
            [`${hooks}/network`, "default", "started", "begin", "-"],
            LIBVIRT_ENV,
            "<hookData><network/></hookData>",
          );
          assert.deepEqual([net.code, net.stdout], [0, ""]);
          const r = await install("--watcher");
          assert.equal(r.code, 0, r.stderr);
          const unit = await Deno.readTextFile(`${dest}/etc/systemd/system/libvirt-hook-qemu-watch.service`);
          assert.match(unit, /^ExecStart=\/etc\/libvirt\/hooks\/qemu watch$/m);
          // systemd-analyze resolves ExecStart on this machine, where the hook lies under DESTDIR.
          const local = `${dest}/libvirt-hook-qemu-watch.service`;
          await Deno.writeTextFile(local, unit.replace("/etc/libvirt/hooks/qemu", `${hooks}/qemu`));
          const verify = await run(["systemd-analyze", "verify", local]).catch(() => undefined);
          if (verify === undefined) {
            console.log("systemd-analyze is not installed: the unit file is not verified here");
          } else assert.equal(verify.code, 0, verify.stderr);
        },
      );
      await t.step("a second install keeps the user's edited config and needs no restart", async () => {
        await Deno.writeTextFile(
          `${hooks}/hooks.jsonc`,
          `{"mine": {"private_ip": "10.0.0.1", "port_map": {"tcp": [1]}}}`,
        );
        const r = await install();
        assert.equal(r.code, 0, r.stderr);
        assert.match(r.stdout, /Updated in place/);
        assert.match(await Deno.readTextFile(`${hooks}/hooks.jsonc`), /"mine"/);
      });
      await t.step("an old hooks.json with errors is checked before anything is activated", async () => {
        await Deno.remove(`${hooks}/hooks.jsonc`);
        await Deno.copyFile(
          `${ROOT}test/fixtures/legacy/14-foreign-tobima-hook-nat.json`,
          `${hooks}/hooks.json`,
        );
        const before = await Deno.readFile(`${hooks}/qemu`);
        const r = await install();
        assert.equal(r.code, 1);
        assert.match(r.stderr, /hooks\.json:2:14: Expected an entry object.*another tool/);
        assert.match(r.stderr, /Nothing was installed/);
        assert.deepEqual(await Deno.readFile(`${hooks}/qemu`), before);
        await Deno.copyFile(
          `${ROOT}test/fixtures/legacy/09-regunakyle-no-trailing-comma.json`,
          `${hooks}/hooks.json`,
        );
        assert.equal((await install()).code, 0);
        assert.equal(
          await exists(`${hooks}/hooks.jsonc`),
          false,
          "no example config beside an existing hooks.json",
        );
      });
      await t.step("uninstall removes what install put there and keeps the config", async () => {
        const r = await install("--uninstall");
        assert.equal(r.code, 0, r.stderr);
        assert.equal(await exists(`${hooks}/qemu`), false);
        assert.equal(await exists(`${hooks}/libvirt-hook-qemu`), false);
        assert.equal(await exists(`${hooks}/hooks.json`), true);
      });
      await t.step(
        "a foreign qemu hook is left alone: refused, or installed beside it in qemu.d",
        async () => {
          await Deno.writeTextFile(`${hooks}/qemu`, "#!/bin/sh\n# someone else's hook\n");
          const r = await install();
          assert.equal(r.code, 1);
          assert.match(r.stderr, /qemu exists and is not ours; it was left untouched/);
          assert.equal(await Deno.readTextFile(`${hooks}/qemu`), "#!/bin/sh\n# someone else's hook\n");
          const d = await install("--qemu-d");
          assert.equal(d.code, 0, d.stderr);
          const child = await run([
            "/usr/bin/env",
            "-i",
            ...Object.entries(LIBVIRT_ENV).map(([k, v]) => `${k}=${v}`),
            `${hooks}/qemu.d/libvirt-hook-qemu`,
            "--version",
          ]);
          assert.equal(child.code, 0, child.stderr);
          assert.equal(await Deno.readTextFile(`${hooks}/qemu`), "#!/bin/sh\n# someone else's hook\n");
          assert.equal((await install("--uninstall")).code, 0);
          assert.equal(await exists(`${hooks}/qemu.d/libvirt-hook-qemu`), false);
        },
      );
    } finally {
      await Deno.remove(dest, { recursive: true });
    }
  },
});

Deno.test({
  name: "the installed hook, called as libvirt calls it, applies real rules in a namespace",
  ignore: !can.ok,
  ...opts,
  async fn() {
    const dest = await Deno.makeTempDir();
    const lab = await createLab();
    try {
      const r = await run(["bash", `${ROOT}install.sh`], { ...Deno.env.toObject(), DESTDIR: dest });
      assert.equal(r.code, 0, r.stderr);
      const hooks = `${dest}/etc/libvirt/hooks`;
      await Deno.writeTextFile(
        `${hooks}/hooks.jsonc`,
        `{"web1": {"private_ip": "${A.g1v4}", "port_map": {"tcp": [[2222, 22]]}}}`,
      );
      await lab.serve(lab.ns.g1, "tcp", 22, "g1");
      // CONFIG_PATH stands in for /etc/libvirt/hooks, since the hook is installed under DESTDIR.
      const env = { ...LIBVIRT_ENV, CONFIG_PATH: hooks };
      const start = await lab.exec(lab.ns.host, [`${hooks}/qemu`, "web1", "start", "begin", "-"], {
        clearEnv: true,
        env,
        cwd: "/",
        stdin: "<domain/>",
        timeoutMs: 30_000,
      });
      assert.deepEqual([start.code, start.stdout, start.stderr], [0, "", ""]);
      assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 2222), `g1 ${A.client4}`);
      const stop = await lab.exec(lab.ns.host, [`${hooks}/qemu`, "web1", "stopped", "end", "-"], {
        clearEnv: true,
        env,
        cwd: "/",
        stdin: "<domain/>",
      });
      assert.deepEqual([stop.code, stop.stdout, stop.stderr], [0, "", ""]);
      assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 2222, { timeoutMs: 800 }), null);
    } finally {
      await lab.close();
      await Deno.remove(dest, { recursive: true });
    }
  },
});

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch {
    return false;
  }
}

Deno.test({
  name: "install.sh --compiled builds the single binary where deno compile can get its runtime (DENORT_BIN)",
  ignore: !Deno.env.get("DENORT_BIN"),
  ...opts,
  async fn() {
    const dest = await Deno.makeTempDir();
    try {
      const r = await run(["bash", `${ROOT}install.sh`, "--compiled"], {
        ...Deno.env.toObject(),
        DESTDIR: dest,
      });
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /\(compiled form: one self-contained binary\)/);
      const v = await run(["/usr/bin/env", "-i", "LC_ALL=C", `${dest}/etc/libvirt/hooks/qemu`, "--version"]);
      assert.deepEqual([v.code, v.stdout.trim()], [0, "libvirt-hook-qemu 0.2.0"]);
    } finally {
      await Deno.remove(dest, { recursive: true });
    }
  },
});
if (!Deno.env.get("DENORT_BIN")) {
  console.log(
    "Skipping the compiled-binary install test: DENORT_BIN is not set (deno compile cannot download denort here)",
  );
}

Deno.test({
  name: "check warns about what validates but will not work on this host",
  ignore: !can.ok,
  ...opts,
  async fn() {
    const lab = await createLab();
    try {
      await lab.serve(lab.ns.host, "tcp", 2222, "host-ssh");
      const config = await tempConfig(`{
  "a": { "interface": "virbr0", "private_ip": "10.9.9.9", "public_ip": "${A.hostPub4}", "port_map": { "tcp": [[2222, 22]] } },
  "b": { "private_ip": "${A.g2v4}", "public_ip": "198.51.100.77", "port_map": { "tcp": [[2223, 22]] } },
  "c": { "interface": "virbr9", "private_ip": "${A.g2v4}", "port_map": { "tcp": [[2224, 22]] } },
}`);
      const r = await cliIn(lab.ns.host, ["check", "--config", config]);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(r.stderr.trimEnd().split("\n"), [
        `${config}:3:55: warning: 198.51.100.77 is not an address of this host: its forward would capture the ` +
        "host's and the guests' own connections to 198.51.100.77; if it is routed to this host (or comes up " +
        `later), list it in "/settings".host_addresses; a start of "b" refuses it here (b.public_ip = "198.51.100.77")`,
        `${config}: warning: a: private_ip 10.9.9.9 is outside the networks of interface virbr0`,
        `${config}: warning: a: public tcp port 2222 is one the host itself listens on; the forward takes it away from the host`,
        `${config}: warning: c: interface virbr9 does not exist on this host (is its libvirt network started?); ` +
        "the forwards accept only what leaves through it",
      ]);
      assert.match(r.stdout, /: OK, 3 domain\(s\); firewall backend: iptables/);
    } finally {
      await lab.close();
    }
  },
});

Deno.test({
  name: "check warns when all_ports takes the host's main address, and names a port of the host it takes",
  ignore: !can.ok,
  ...opts,
  async fn() {
    const lab = await createLab();
    try {
      await lab.serve(lab.ns.host, "tcp", 2200, "host-ssh");
      const config = await tempConfig(`{
  "d": { "private_ip": "${A.g2v4}", "public_ip": "${A.hostPub4}", "all_ports": true },
  "e": { "private_ip": "${A.g1v4}", "public_ip": "${A.hostPub4}", "port_map": { "tcp": [[2222, 22]] } },
}`);
      const r = await cliIn(lab.ns.host, ["check", "--config", config]);
      assert.equal(r.code, 0, r.stderr);
      assert.deepEqual(r.stderr.trimEnd().split("\n"), [
        `${config}: warning: d: all_ports on ${A.hostPub4}, the host's main address: every port of the host's own ` +
        "services there (sshd among them) goes to the guest; give the guest an address of its own",
        `${config}: warning: d: public tcp port 2200 is one the host itself listens on; the forward takes it away from the host`,
      ]);
      assert.match(r.stdout, /: OK, 2 domain\(s\)/);
    } finally {
      await lab.close();
    }
  },
});

Deno.test({
  name: "install.sh --uninstall names the forwards still live; --purge removes them",
  ignore: !can.ok,
  ...opts,
  async fn() {
    const lab = await createLab();
    const dest = await Deno.makeTempDir();
    const hooks = `${dest}/etc/libvirt/hooks`;
    const inHost = (argv: string[], env: Record<string, string> = {}, stdin?: string) =>
      run(
        ["ip", "netns", "exec", lab.ns.host, ...argv],
        { ...Deno.env.toObject(), DESTDIR: dest, ...env },
        stdin,
      );
    try {
      const before = await lab.ruleset(4);
      const start = async () => {
        // Installed from outside the lab (filling the module cache needs the npm registry), run inside it.
        const installed = await run(["bash", `${ROOT}install.sh`], { ...Deno.env.toObject(), DESTDIR: dest });
        assert.equal(installed.code, 0, installed.stderr);
        await Deno.writeTextFile(
          `${hooks}/hooks.jsonc`,
          `{"web1": {"private_ip": "${A.g1v4}", "port_map": {"tcp": [[2222, 22]]}}}`,
        );
        const r = await inHost(
          [`${hooks}/qemu`, "web1", "start", "begin", "-"],
          { CONFIG_PATH: hooks },
          "<domain/>",
        );
        assert.equal(r.code, 0, r.stderr);
      };
      await start();
      const kept = await inHost(["bash", `${ROOT}install.sh`, "--uninstall"]);
      assert.equal(kept.code, 0, kept.stderr);
      assert.match(
        kept.stdout,
        /^These forwards are still live:\n(?:.*\n)*? {2}tcp 203\.0\.113\.1:2222 -> 192\.168\.122\.10:22\b/m,
      );
      assert.match(kept.stdout, /remove --all/);
      assert.notEqual(await lab.ruleset(4), before);
      // Put it back, and this time purge.
      await start();
      const purged = await inHost(["bash", `${ROOT}install.sh`, "--uninstall", "--purge"]);
      assert.equal(purged.code, 0, purged.stderr);
      assert.match(purged.stdout, /Removed the forwards of "web1"/);
      assert.equal(await lab.ruleset(4), before);
    } finally {
      await lab.close();
      await Deno.remove(dest, { recursive: true });
    }
  },
});

Deno.test({
  name: "check and doctor say when conntrack is missing, and nothing of it where it is there",
  ignore: !can.ok,
  ...opts,
  async fn() {
    const lab = await createLab();
    try {
      const file = await tempConfig(
        `{"web1": {"private_ip": "192.168.122.10", "port_map": {"udp": [51820]}}}`,
      );
      const missing = "conntrack is not installed (Debian package conntrack)";
      const found = await Deno.stat("/usr/sbin/conntrack").then(() => true, () => false);
      // PATH without /usr/sbin, where Debian puts conntrack: as on a host without the package.
      for (
        const [path, has] of [["/usr/bin:/bin", false], ["/usr/sbin:/usr/bin:/sbin:/bin", found]] as const
      ) {
        const check = await cliIn(lab.ns.host, ["check"], { PATH: path, CONFIG_FILENAME: file });
        assert.equal(check.stderr.includes(`warning: ${missing}`), !has, `PATH=${path}\n${check.stderr}`);
        const doctor = await cliIn(lab.ns.host, ["doctor"], { PATH: path, CONFIG_FILENAME: file });
        assert.equal(doctor.stdout.includes(missing), !has, `PATH=${path}\n${doctor.stdout}`);
        if (has) {
          assert.match(doctor.stdout, /conntrack \(\/usr\/sbin\/conntrack\): the connections of a forward/);
        }
      }
    } finally {
      await lab.close();
    }
  },
});
