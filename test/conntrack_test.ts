/**
 * Flows follow their forward, with real packets on both libvirt variants and both of our backends: a UDP stream
 * from one client socket moves to the new target within a second of `apply` and `reload`, IPv4 and IPv6; an
 * established TCP session through a forward is cut at `remove`, while the host's own session to its public
 * address and another forward's session go on.
 */

import assert from "node:assert/strict";
import { canRunLab, createLab, type ExecResult, type Lab, LAB_ADDR as A } from "./lab.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const can = await canRunLab();
const has = async (program: string) =>
  (await new Deno.Command(program, { args: ["--version"] }).output().catch(() => undefined))?.success ??
    false;
const nft = can.ok && await has("nft");
const conntrack = can.ok && await has("conntrack");
if (!can.ok) console.log(`Skipping the connection tracking namespace tests: ${can.reason}`);
else if (!conntrack) {
  console.log(
    "Skipping the connection tracking namespace tests: conntrack is not installed (Debian: conntrack)",
  );
} else if (!nft) {
  console.log("Skipping the connection tracking tests on libvirt's nftables: nft is not installed");
}

const XML = (name: string) =>
  `<domain type='kvm'><name>${name}</name><devices><interface type='network'>` +
  `<source network='default' bridge='virbr0'/><target dev='vnet0'/></interface></devices></domain>`;

/** A lab with a config file, our state directory and libvirt's run directory (for apply), gone after `fn`. */
async function withLab(
  options: Parameters<typeof createLab>[0],
  fn: (lab: Lab, run: RunProgram, file: string) => Promise<void>,
): Promise<void> {
  const lab = await createLab(options);
  const dir = await Deno.makeTempDir();
  const file = `${dir}/hooks.jsonc`;
  await Deno.mkdir(`${dir}/run`);
  await Deno.mkdir(`${dir}/state`);
  const run: RunProgram = (args, domain = "") =>
    lab.exec(lab.ns.host, [Deno.execPath(), "run", "-A", MAIN, ...args], {
      stdin: XML(domain),
      clearEnv: true,
      env: {
        LC_ALL: "C",
        PATH,
        CONFIG_FILENAME: file,
        LIBVIRT_QEMU_RUN_DIR: `${dir}/run`,
        LIBVIRT_HOOK_QEMU_STATE_DIR: `${dir}/state`,
      },
      cwd: "/",
      timeoutMs: 30_000,
    });
  try {
    await fn(lab, run, file);
  } finally {
    await lab.close();
    await Deno.remove(dir, { recursive: true });
  }
}

/** Runs the hook (`<domain> <op> <sub> -`) or a command in the lab's host, as libvirt or an administrator does. */
type RunProgram = (args: string[], domain?: string) => Promise<ExecResult>;

/** Starts a guest as libvirt does: its running XML where apply reads it, then the start hook. */
async function start(run: RunProgram, file: string, domain: string): Promise<void> {
  await Deno.writeTextFile(`${file.replace(/hooks\.jsonc$/, "run")}/${domain}.xml`, XML(domain));
  const r = await run([domain, "start", "begin", "-"], domain);
  assert.equal(r.code, 0, r.stderr);
}

/** The host's conntrack entries and rules of the family of `ip` (what the tests show when one fails). */
async function entries(lab: Lab, ip: string): Promise<string> {
  const family = ip.includes(":") ? "ipv6" : "ipv4";
  const tracked = (await lab.exec(lab.ns.host, ["conntrack", "-L", "-f", family])).stdout;
  const rules = family === "ipv6" ? await lab.ruleset(6) : await lab.ruleset(4);
  return `${tracked}\n${rules}\n${await lab.nftRuleset()}`;
}

/** Waits (`timeoutMs` from `since`) for a reply from `label` that came after `since`; says when it came. */
async function movedTo(
  stream: { replies(): { at: number; line: string }[] },
  label: string,
  since: number,
  timeoutMs: number,
): Promise<number | undefined> {
  const deadline = Math.max(since, Date.now()) + timeoutMs;
  while (Date.now() < deadline) {
    const first = stream.replies().find((r) => r.at >= since && r.line.startsWith(`${label} `));
    if (first) return first.at;
    await new Promise((r) => setTimeout(r, 20));
  }
  return undefined;
}

const VARIANTS = [
  { libvirt: "iptables" as const, backend: "iptables", ok: can.ok && conntrack },
  { libvirt: "nftables" as const, backend: "iptables", ok: can.ok && conntrack && nft },
  { libvirt: "nftables" as const, backend: "nftables", ok: can.ok && conntrack && nft },
];

for (const v of VARIANTS) {
  for (const family of [4, 6] as const) {
    Deno.test({
      name:
        `syncDomain(), libvirt on ${v.libvirt}, backend ${v.backend}, IPv${family}: a UDP stream from one ` +
        "socket moves to the new private address within a second of apply and of reload",
      ignore: !v.ok,
      sanitizeOps: false,
      sanitizeResources: false,
      async fn() {
        await withLab({ libvirt: v.libvirt }, async (lab, run, file) => {
          const config = (guest4: string, guest6: string) =>
            Deno.writeTextFile(
              file,
              `{"/settings": {"backend": "${v.backend}"},
                "web": {"private_ip": "${guest4}", "private_ipv6": "${guest6}", "port_map": {"udp": [51820]}}}`,
            );
          await config(A.g1v4, A.g1v6);
          await lab.serve(lab.ns.g1, "udp", 51820, "g1");
          await lab.serve(lab.ns.g2, "udp", 51820, "g2");
          await start(run, file, "web");
          const pub = family === 4 ? A.hostPub4 : A.hostPub6;
          const stream = await lab.stream(lab.ns.client, pub, 51820, { intervalMs: 50 });
          assert.ok(await movedTo(stream, "g1", 0, 3000), "the stream reaches g1 first");

          await config(A.g2v4, A.g2v6);
          const applied = await run(["apply", "web"]);
          assert.equal(applied.code, 0, applied.stderr);
          const t1 = Date.now();
          const atG2 = await movedTo(stream, "g2", t1, 1000);
          assert.ok(atG2 !== undefined, `no reply from g2 within 1 s of apply:\n${await entries(lab, pub)}`);
          // And g1 answers no more: the stale entry is gone, not merely joined by a new one.
          await new Promise((r) => setTimeout(r, 300));
          assert.deepEqual(stream.replies().filter((r) => r.at > atG2 + 100 && r.line.startsWith("g1 ")), []);

          await config(A.g1v4, A.g1v6);
          const reloaded = await run(["reload"]);
          assert.equal(reloaded.code, 0, reloaded.stderr);
          const t2 = Date.now();
          const atG1 = await movedTo(stream, "g1", t2, 1000);
          assert.ok(atG1 !== undefined, `no reply from g1 within 1 s of reload:\n${await entries(lab, pub)}`);
          await stream.close();
        });
      },
    });
  }

  Deno.test({
    name: `syncDomain(), libvirt on ${v.libvirt}, backend ${v.backend}: remove cuts an established TCP ` +
      "session through the forward, in both families; the host's own session to its public address and " +
      "another forward's session go on",
    ignore: !v.ok,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      await withLab({ libvirt: v.libvirt }, async (lab, run, file) => {
        await Deno.writeTextFile(
          file,
          `{"/settings": {"backend": "${v.backend}"},
            "web": {"private_ip": "${A.g1v4}", "private_ipv6": "${A.g1v6}", "port_map": {"tcp": [8080]}},
            "db": {"private_ip": "${A.g2v4}", "private_ipv6": "${A.g2v6}", "port_map": {"tcp": [8081]}}}`,
        );
        await lab.serveEcho(lab.ns.g1, 8080, "g1");
        await lab.serveEcho(lab.ns.g2, 8081, "g2");
        // The host's own service on its public address, on a port no forward takes (an administrator's sshd).
        await lab.serveEcho(lab.ns.host, 2200, "host");
        await start(run, file, "web");
        await start(run, file, "db");
        const sessions = [];
        for (const pub of [A.hostPub4, A.hostPub6]) {
          const web = await lab.session(lab.ns.client, pub, 8080);
          const db = await lab.session(lab.ns.client, pub, 8081);
          const host = await lab.session(lab.ns.client, pub, 2200);
          assert.equal(await web.say("one"), "g1 one");
          assert.equal(await db.say("one"), "g2 one");
          assert.equal(await host.say("one"), "host one");
          sessions.push({ pub, web, db, host });
        }

        const removed = await run(["remove", "web"]);
        assert.equal(removed.code, 0, removed.stderr);
        for (const { pub, web, db, host } of sessions) {
          assert.equal(
            await web.say("two"),
            null,
            `the session to web still answers:\n${await entries(lab, pub)}`,
          );
          assert.equal(await db.say("two"), "g2 two", `another forward's session was cut (${pub})`);
          assert.equal(await host.say("two"), "host two", `the host's own session was cut (${pub})`);
        }
        for (const s of sessions) for (const c of [s.web, s.db, s.host]) await c.close();
      });
    },
  });
}

/** The ids of the host's conntrack entries of UDP to `ip` port `port` (the same id: the very same entry). */
async function entryIds(lab: Lab, ip: string, port: number): Promise<string[]> {
  const family = ip.includes(":") ? "ipv6" : "ipv4";
  const r = await lab.exec(lab.ns.host, [
    "conntrack",
    "-L",
    "-f",
    family,
    "-p",
    "udp",
    "-d",
    ip,
    "--orig-port-dst",
    String(port),
    "-o",
    "id",
  ]);
  return [...r.stdout.matchAll(/\bid=(\d+)/g)].map((m) => m[1]!).sort();
}

for (const v of VARIANTS) {
  Deno.test({
    name:
      `syncDomain(), libvirt on ${v.libvirt}, backend ${v.backend}: a port of the guest moved to another ` +
      "private port loses its flows, the guest's port that stays keeps its very entries (IPv4 and IPv6)",
    ignore: !v.ok,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      await withLab({ libvirt: v.libvirt }, async (lab, run, file) => {
        const config = (to: number) =>
          Deno.writeTextFile(
            file,
            `{"/settings": {"backend": "${v.backend}"},
              "web": {"private_ip": "${A.g1v4}", "private_ipv6": "${A.g1v6}",
                      "port_map": {"udp": [5000, [5001, ${to}]]}}}`,
          );
        await config(5001);
        for (const port of [5000, 5001, 6001]) await lab.serve(lab.ns.g1, "udp", port, `g1-${port}`);
        await start(run, file, "web");
        const streams = [];
        for (const pub of [A.hostPub4, A.hostPub6]) {
          const stays = await lab.stream(lab.ns.client, pub, 5000);
          const moves = await lab.stream(lab.ns.client, pub, 5001);
          assert.ok(await movedTo(stays, "g1-5000", 0, 3000));
          assert.ok(await movedTo(moves, "g1-5001", 0, 3000));
          streams.push({ pub, stays, moves, ids: await entryIds(lab, pub, 5000) });
        }
        await config(6001);
        const reloaded = await run(["reload"]);
        assert.equal(reloaded.code, 0, reloaded.stderr);
        const t = Date.now();
        for (const { pub, stays, moves, ids } of streams) {
          assert.ok(
            await movedTo(moves, "g1-6001", t, 1000),
            `5001 did not move:\n${await entries(lab, pub)}`,
          );
          assert.equal(ids.length, 1, `one entry for port 5000 (${pub})`);
          assert.deepEqual(
            await entryIds(lab, pub, 5000),
            ids,
            `the entry of port 5000 was replaced (${pub})`,
          );
          assert.ok(stays.replies().some((r) => r.at > t && r.line.startsWith("g1-5000 ")));
        }
        for (const s of streams) for (const c of [s.stays, s.moves]) await c.close();
      });
    },
  });
}
