/**
 * What a hostile run broke, each case as libvirt would meet it: the hook from source in a lab host namespace,
 * real iptables/nftables, stderr and /run taken away, programs missing, the host's own ports forwarded.
 */

import assert from "node:assert/strict";
import { canRunLab, createLab, type Lab, LAB_ADDR as A } from "./lab.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const can = await canRunLab();
const nft = can.ok &&
  (await new Deno.Command("nft", { args: ["--version"] }).output().catch(() => undefined))?.success;
if (!can.ok) console.log(`Skipping the hardening tests: ${can.reason}`);
else if (!nft) console.log("Skipping the hardening tests that need nftables: nft is not installed");
const opts = { sanitizeOps: false, sanitizeResources: false };
const PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const XML = `<domain><name>web1</name><devices><interface type='network'><source bridge='virbr0'/>` +
  `<target dev='vnet0'/></interface></devices></domain>`;

/** Every file these tests write lives here, removed when the tests end. */
const SCRATCH = await Deno.makeTempDir();
globalThis.addEventListener("unload", () => Deno.removeSync(SCRATCH, { recursive: true }));

async function configFile(text: string): Promise<string> {
  const file = await Deno.makeTempFile({ dir: SCRATCH, suffix: ".jsonc" });
  await Deno.writeTextFile(file, text);
  return file;
}

const GOOD = `{ "web1": { "private_ip": "${A.g1v4}", "port_map": { "tcp": [[2222, 22]] } } }`;

/** The hook as libvirt runs it (LC_ALL=C, PATH, the domain XML on stdin), in the lab's host, through `wrap`. */
function hook(lab: Lab, args: string[], env: Record<string, string>, wrap = "") {
  const command = `${wrap}exec "$@"`;
  return lab.exec(lab.ns.host, ["sh", "-c", command, "sh", Deno.execPath(), "run", "-A", MAIN, ...args], {
    stdin: XML,
    clearEnv: true,
    env: { LC_ALL: "C", PATH, ...env },
    cwd: "/",
    timeoutMs: 30_000,
  });
}

/** Everything of the host's firewall, both families and nftables. */
async function firewall(lab: Lab): Promise<string> {
  return [await lab.ruleset(4), await lab.ruleset(6), nft ? await lab.nftRuleset() : ""].join("\n");
}

Deno.test({
  name: "reconnect and stopped exit 0 whatever happens to stderr; only start may fail",
  ignore: !can.ok,
  ...opts,
  async fn(t) {
    await using lab = await createLab();
    // A file that does not parse: every call has something to say on stderr.
    const broken = await configFile(`{ "web1": { "private_ip": `);
    const env = { CONFIG_FILENAME: broken };
    const cases: [string, string][] = [
      ["stderr is a full device", "exec 2>/dev/full; "],
      // The reader is gone before the hook writes: every write to it fails (EPIPE).
      ["stderr is a pipe its reader closed", "exec 2> >(exit 0); sleep 0.2; "],
    ];
    for (const [name, wrap] of cases) {
      await t.step(name, async () => {
        const shell = wrap.includes(">(") ? ["bash", "-c"] : ["sh", "-c"];
        for (const [operation, code] of [["reconnect", 0], ["stopped", 0], ["start", 1]] as const) {
          const r = await lab.exec(lab.ns.host, [
            ...shell,
            `${wrap}exec "$@"`,
            "sh",
            Deno.execPath(),
            "run",
            "-A",
            MAIN,
            "web1",
            operation,
            "begin",
            "-",
          ], { stdin: XML, clearEnv: true, env: { LC_ALL: "C", PATH, ...env }, cwd: "/", timeoutMs: 30_000 });
          assert.equal(r.code, code, `${operation}: ${r.stderr}`);
          assert.equal(r.stdout, "");
        }
      });
    }
  },
});

Deno.test({
  name: "stopped removes every rule with /run read-only, under the lock; reconnect exits 0 there",
  ignore: !can.ok,
  ...opts,
  async fn() {
    await using lab = await createLab();
    const file = await configFile(GOOD);
    const env = { CONFIG_FILENAME: file };
    const before = await firewall(lab);
    const started = await hook(lab, ["web1", "start", "begin", "-"], env);
    assert.equal(started.code, 0, started.stderr);
    assert.notEqual(await firewall(lab), before);
    // The lock file exists (the start made it); /run then turns read-only, as on a host whose tmpfs is full or
    // remounted: nothing can be created there, but the lock can still be taken.
    const readOnlyRun = "mount --bind /run /run && mount -o remount,bind,ro /run && ";
    const ro = (args: string[]) =>
      lab.exec(lab.ns.host, [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        `${readOnlyRun}exec "$@"`,
        "sh",
        Deno.execPath(),
        "run",
        "-A",
        MAIN,
        ...args,
      ], { stdin: XML, clearEnv: true, env: { LC_ALL: "C", PATH, ...env }, cwd: "/", timeoutMs: 30_000 });
    const reconnect = await ro(["web1", "reconnect", "begin", "-"]);
    assert.equal(reconnect.code, 0, reconnect.stderr);
    const stopped = await ro(["web1", "stopped", "end", "-"]);
    assert.equal(stopped.code, 0, stopped.stderr);
    assert.equal(await firewall(lab), before, `stopped left rules behind: ${stopped.stderr}`);
  },
});

/** A directory for PATH holding the system's programs but those named: a host where they are missing. */
async function pathWithout(missing: string[]): Promise<string> {
  const dir = await Deno.makeTempDir({ dir: SCRATCH });
  for (const source of ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]) {
    for (const e of Deno.readDirSync(source)) {
      if (missing.some((m) => e.name === m || e.name.startsWith(`${m}-`))) continue;
      await Deno.symlink(`${source}/${e.name}`, `${dir}/${e.name}`).catch(() => {});
    }
  }
  return dir;
}

Deno.test({
  name: "start fails, saying what is missing, where libvirt's backend needs a program the host lacks",
  ignore: !can.ok || !nft,
  ...opts,
  async fn(t) {
    const file = await configFile(GOOD);
    await t.step("libvirt on nftables, nft missing: its status file says so", async () => {
      await using lab = await createLab({ libvirt: "nftables" });
      const status = await Deno.makeTempDir({ dir: SCRATCH });
      // What libvirt >= 10.4 keeps for a running network: the commands that will remove its firewall, by backend.
      await Deno.writeTextFile(
        `${status}/default.xml`,
        `<networkstatus>\n  <class_id bitmap='0-2'/>\n  <floor sum='0'/>\n` +
          `  <firewall name='default' backend='nftables'>\n    <group>\n      <action layer='ipv4'>\n` +
          `        <args>\n          <item>delete</item>\n          <item>table</item>\n` +
          `          <item>ip</item>\n          <item>libvirt_network</item>\n        </args>\n` +
          `      </action>\n    </group>\n  </firewall>\n  <network><name>default</name></network>\n` +
          `</networkstatus>\n`,
      );
      const before = await firewall(lab);
      const r = await hook(lab, ["web1", "start", "begin", "-"], {
        CONFIG_FILENAME: file,
        PATH: await pathWithout(["nft"]),
        LIBVIRT_NETWORK_RUN_DIR: status,
      });
      assert.equal(r.code, 1);
      assert.match(
        r.stderr,
        // (A machine whose own /etc/libvirt/network.conf says nftables too is named that way first.)
        /^Cannot apply forwards for "web1": libvirt uses nftables here \((firewall_backend = "nftables" in \/etc\/libvirt\/network\.conf; )?its running networks use nftables\), but nft is not installed or not on PATH: .*install nftables$/m,
      );
      assert.equal(await firewall(lab), before);
    });
    await t.step("libvirt on iptables, iptables missing: its chains seen with nft", async () => {
      await using lab = await createLab({ libvirt: "iptables" });
      const before = await firewall(lab);
      const r = await hook(lab, ["web1", "start", "begin", "-"], {
        CONFIG_FILENAME: file,
        PATH: await pathWithout(["iptables", "ip6tables"]),
      });
      assert.equal(r.code, 1);
      assert.match(
        r.stderr,
        /libvirt uses iptables here .*but iptables-save is not installed or not on PATH/,
      );
      assert.equal(await firewall(lab), before);
    });
  },
});

Deno.test({
  name: "a forward of a port the host itself listens on still applies, and status shows what it takes",
  ignore: !can.ok,
  ...opts,
  async fn() {
    await using lab = await createLab();
    await lab.serve(lab.ns.host, "tcp", 2222, "host-sshd");
    const file = await configFile(GOOD);
    const r = await hook(lab, ["web1", "start", "begin", "-"], { CONFIG_FILENAME: file });
    assert.equal(r.code, 0, r.stderr);
    const status = await lab.exec(lab.ns.host, [
      Deno.execPath(),
      "run",
      "-A",
      MAIN,
      "status",
      "--config",
      file,
    ]);
    assert.equal(status.code, 0, status.stderr);
    assert.match(
      status.stdout,
      new RegExp(
        `tcp ${A.hostPub4}:2222 -> ${A.g1v4}:22   <- takes from the host a port it listens on \\((0\\.0\\.0\\.0|\\[::\\]):2222\\)`,
      ),
    );
    const json = JSON.parse(
      (await lab.exec(lab.ns.host, [
        Deno.execPath(),
        "run",
        "-A",
        MAIN,
        "status",
        "--json",
        "--config",
        file,
      ]))
        .stdout,
    );
    assert.match(json.domains[0].forwards[0].takenFromHost, /:2222$/);
  },
});
