/**
 * Where a forward listens, with real packets, on both libvirt variants and both of our backends: `"*"` reaches the
 * guest on every address of the host (a second one, one added after the start without a hook call, the guests'
 * hairpin), never on loopback; `dev` takes only what arrives on that interface; `description` shows in status as
 * the live rules carry it, and doctor names each forward so; `"enabled": false` installs nothing, a start removes
 * what was live, and doctor says it is switched off; no residue.
 */

import assert from "node:assert/strict";
import { labFirewall } from "./lab_hook.ts";
import { canRunLab, createLab, type Lab, LAB_ADDR as A } from "./lab.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const can = await canRunLab();
const nft = can.ok &&
  (await new Deno.Command("nft", { args: ["--version"] }).output().catch(() => undefined))?.success;
if (!can.ok) console.log(`Skipping the listen namespace tests: ${can.reason}`);
else if (!nft) console.log("Skipping the listen namespace tests on libvirt's nftables: nft is not installed");

const XML = (name: string) =>
  `<domain type='kvm'><name>${name}</name><devices><interface type='network'>` +
  `<source network='default' bridge='virbr0'/><target dev='vnet0'/></interface></devices></domain>`;

/** Runs the hook (or a command) in the lab's host with `file` as the config, as libvirt runs it. */
async function run(lab: Lab, file: string, args: string[], domain = "", env: Record<string, string> = {}) {
  const r = await lab.exec(lab.ns.host, [Deno.execPath(), "run", "-A", MAIN, ...args], {
    stdin: XML(domain),
    clearEnv: true,
    env: {
      LC_ALL: "C",
      PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
      CONFIG_FILENAME: file,
      ...env,
    },
    cwd: "/",
    timeoutMs: 30_000,
  });
  assert.equal(r.stdout.startsWith("<"), false, "the hook never writes XML-like output");
  return r;
}

/** The config of these tests: g1 on "*" (named), and on "*" from pub0 only; `enabled` for the first entry. */
function config(backend: string, enabled = true): string {
  return `{"/settings": {"backend": "${backend}"},
    "g1": [
      {"private_ip": "${A.g1v4}", "private_ipv6": "${A.g1v6}", "public_ip": "*", "public_ipv6": "*",
       "description": "Bob's shop", ${enabled ? "" : `"enabled": false,`} "port_map": {"tcp": [[8080, 80]]}},
      {"private_ip": "${A.g1v4}", "public_ip": "*", "dev": "pub0", "port_map": {"tcp": [[9090, 80]]}}
    ]}`;
}

const VARIANTS = [
  { libvirt: "iptables" as const, backend: "iptables", ok: can.ok },
  { libvirt: "nftables" as const, backend: "iptables", ok: can.ok && nft },
  { libvirt: "nftables" as const, backend: "nftables", ok: can.ok && nft },
];

for (const v of VARIANTS) {
  Deno.test({
    name: `"*", dev, description and enabled, libvirt on ${v.libvirt}, backend ${v.backend}: every address ` +
      "but loopback, also one added later; one interface only; named in status; switched off; no residue",
    ignore: !v.ok,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      const lab = await createLab({ libvirt: v.libvirt });
      const file = await Deno.makeTempFile({ suffix: ".jsonc" });
      try {
        await checkListen(lab, file, v.backend);
      } finally {
        await lab.close();
        await Deno.remove(file);
      }
    },
  });
}

/** The test's steps in one lab (see the file's header). */
async function checkListen(lab: Lab, file: string, backend: string): Promise<void> {
  const host = (argv: string[]) => lab.exec(lab.ns.host, argv);
  await Deno.writeTextFile(file, config(backend));
  // A second public address before the start; the host's own service on 8080, which loopback must keep.
  await host(["ip", "address", "add", "203.0.113.2/24", "dev", "pub0"]);
  await lab.serve(lab.ns.g1, "tcp", 80, "g1");
  await lab.serve(lab.ns.host, "tcp", 8080, "host");
  const pristine = await labFirewall(lab);
  const started = await run(lab, file, ["g1", "start", "begin", "-"], "g1");
  assert.equal(started.code, 0, started.stderr);
  for (const address of [A.hostPub4, "203.0.113.2"]) {
    assert.equal(await lab.connect(lab.ns.client, "tcp", address, 8080), `g1 ${A.client4}`, address);
  }
  assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub6, 8080), `g1 ${A.client6}`);
  // Hairpin: another guest, through the public address and through the host's address on the bridge.
  assert.equal(await lab.connect(lab.ns.g2, "tcp", A.hostPub4, 8080), `g1 ${A.bridge4}`);
  assert.equal(await lab.connect(lab.ns.g2, "tcp", A.bridge4, 8080), `g1 ${A.bridge4}`);
  // Loopback stays the host's: no route_localnet, and the host's own service answers there.
  assert.equal(await lab.connect(lab.ns.host, "tcp", "127.0.0.1", 8080), "host 127.0.0.1");
  assert.equal((await host(["sysctl", "-n", "net.ipv4.conf.all.route_localnet"])).stdout.trim(), "0");
  // The host's second address changes after the start, with no hook call: the forward is on the new one already.
  await host(["ip", "address", "del", "203.0.113.2/24", "dev", "pub0"]);
  await host(["ip", "address", "add", "203.0.113.3/24", "dev", "pub0"]);
  assert.equal(await lab.connect(lab.ns.client, "tcp", "203.0.113.3", 8080), `g1 ${A.client4}`);
  assert.equal(await lab.connect(lab.ns.client, "tcp", "203.0.113.2", 8080, { timeoutMs: 1000 }), null);
  // dev: only what arrives on pub0; the other guest comes in on virbr0 and reaches nothing.
  assert.equal(await lab.connect(lab.ns.client, "tcp", "203.0.113.3", 9090), `g1 ${A.client4}`);
  assert.equal(await lab.connect(lab.ns.g2, "tcp", A.hostPub4, 9090), null);
  await checkStatus(lab, file);
  // doctor, with g1 running (libvirt's status file): each forward named as status names it, "*" said as such.
  const running = await Deno.makeTempDir();
  const doctor = (): Promise<string> =>
    Deno.writeTextFile(`${running}/g1.xml`, XML("g1")).then(() =>
      run(lab, file, ["doctor", "g1"], "", { LIBVIRT_QEMU_RUN_DIR: running, NO_COLOR: "1" })
    ).then((r) => r.stdout);
  const examined = await doctor();
  assert.match(examined, new RegExp(`\\ng1: tcp \\*:8080 -> ${A.g1v4}:80 "Bob's shop"\\n`));
  assert.match(examined, /\n {2}ok {4}public address \*: every IPv4 address of this host but loopback's/);
  assert.match(examined, new RegExp(`\\ng1: tcp \\*:9090 -> ${A.g1v4}:80 on pub0\\n`));
  // Switched off: a start installs nothing for it and removes what was live of it; the other entry stays.
  await Deno.writeTextFile(file, config(backend, false));
  const again = await run(lab, file, ["g1", "start", "begin", "-"], "g1");
  assert.equal(again.code, 0, again.stderr);
  assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 8080), "host 203.0.113.50");
  assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 9090), `g1 ${A.client4}`);
  const status = await run(lab, file, ["status", "g1"]);
  assert.doesNotMatch(status.stdout, /8080|Bob's shop/);
  const off = await doctor();
  assert.match(
    off,
    /\ng1: \(switched off\)\n {2}note {2}g1\[0\] "Bob's shop" is switched off \("enabled": false\): nothing is installed/,
  );
  assert.doesNotMatch(off, /:8080 ->/);
  await Deno.remove(running, { recursive: true });
  assert.equal((await run(lab, file, ["g1", "stopped", "end", "-"], "g1")).code, 0);
  assert.equal(await labFirewall(lab), pristine);
}

/** status, as text and as JSON: each forward on "*" with its interface and its description, as live. */
async function checkStatus(lab: Lab, file: string): Promise<void> {
  const text = (await run(lab, file, ["status", "g1"])).stdout;
  // The host's own service on 8080 is noted beside the forward that takes it from the host's addresses.
  assert.match(
    text,
    new RegExp(`\\n  tcp \\*:8080 -> ${A.g1v4}:80 "Bob's shop"   <- takes from the host a port`),
  );
  assert.match(
    text,
    new RegExp(`\\n  tcp \\[\\*\\]:8080 -> \\[${A.g1v6}\\]:80 "Bob's shop"   <- takes from the host`),
  );
  assert.match(text, new RegExp(`\\n  tcp \\*:9090 -> ${A.g1v4}:80 on pub0\\n`));
  const json = JSON.parse((await run(lab, file, ["status", "g1", "--json"])).stdout);
  const forwards = json.domains[0].forwards as {
    forward: string;
    description?: string;
    explained: boolean;
  }[];
  assert.deepEqual(
    forwards.map((f) => [f.description, f.explained]).sort(),
    [["Bob's shop", true], ["Bob's shop", true], [undefined, true]].sort(),
  );
}
