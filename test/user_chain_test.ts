/**
 * A place for bans ahead of our accepts, with the real fail2ban: a jail whose action bans into the administrator's
 * chain (iptables' `LVH-USER`, or `user_forward` in our nftables table) stops a banned client from reaching a
 * forwarded guest while another client still reaches it; a ban by `fail2ban-client set <jail> banip` and one by log
 * lines its filter matches; the chain and its bans survive the domain's stop and start; once fail2ban is gone, a
 * stop leaves the firewall as it was. On both libvirt variants and both of our backends, IPv4 and IPv6.
 */

import assert from "node:assert/strict";
import { canRunLab, createLab, type Lab, LAB_ADDR as A } from "./lab.ts";
import { execInLab, labFirewall } from "./lab_hook.ts";

const can = await canRunLab();
const has = async (program: string, args: string[]) =>
  (await new Deno.Command(program, { args, stdout: "null", stderr: "null" }).output().catch(() => undefined))
    ?.success === true;
const nft = can.ok && await has("nft", ["--version"]);
const fail2ban = can.ok && await has("fail2ban-client", ["--version"]);
if (!can.ok) console.log(`Skipping the fail2ban namespace tests: ${can.reason}`);
else if (!fail2ban) console.log("Skipping the fail2ban namespace tests: fail2ban is not installed");
else if (!nft) {
  console.log("Skipping the fail2ban namespace tests on libvirt's nftables: nft is not installed");
}

/** Runs the hook (or a command) in the lab's host with `file` as the config, as libvirt runs it. */
async function run(lab: Lab, file: string, args: string[], domain = "") {
  const r = await execInLab(lab, file, args, domain);
  assert.equal(r.stdout, "", "the hook writes nothing to stdout");
  return r;
}

/**
 * The jail of the README: the action that bans into our chain. iptables: fail2ban's own chain `f2b-<jail>`, jumped
 * from LVH-USER. nftables: fail2ban's set and rule in our table's user_forward; its table clean-up is switched off
 * (`_nft_shutdown_table`), since the table is ours, not fail2ban's.
 */
function jailAction(backend: string): string {
  return backend === "iptables"
    ? "iptables[type=allports, chain=LVH-USER]"
    : "nftables[type=allports, table=libvirt_hook_qemu, chain=user_forward, chain_hook=forward, " +
      "chain_priority=-10, _nft_shutdown_table=true]";
}

/** fail2ban's configuration in `dir`: its own socket, pid file, log and an in-memory database; one jail `lvh`. */
async function writeFail2ban(dir: string, backend: string): Promise<void> {
  await Deno.mkdir(`${dir}/action.d`, { recursive: true });
  await Deno.mkdir(`${dir}/filter.d`);
  for (const action of ["iptables.conf", "nftables.conf"]) {
    await Deno.copyFile(`/etc/fail2ban/action.d/${action}`, `${dir}/action.d/${action}`);
  }
  await Deno.writeTextFile(
    `${dir}/fail2ban.conf`,
    `[Definition]\nloglevel = INFO\nlogtarget = ${dir}/fail2ban.log\nsocket = ${dir}/f2b.sock\n` +
      `pidfile = ${dir}/f2b.pid\ndbfile = :memory:\nallowipv6 = auto\n`,
  );
  await Deno.writeTextFile(
    `${dir}/filter.d/lvh.conf`,
    `[Definition]\nfailregex = ^Failed login from <HOST>$\ndatepattern = {NONE}\n`,
  );
  await Deno.writeTextFile(`${dir}/auth.log`, "");
  await Deno.writeTextFile(
    `${dir}/jail.conf`,
    // ignoreself: finding the host's own addresses asks DNS, which a lab cannot reach (20 s of timeouts).
    `[DEFAULT]\nbackend = polling\nignoreself = false\nusedns = no\n\n[lvh]\nenabled = true\nfilter = lvh\nlogpath = ${dir}/auth.log\n` +
      `maxretry = 2\nfindtime = 600\nbantime = 3600\naction = ${jailAction(backend)}\n`,
  );
}

/** fail2ban-client in the lab's host, against the configuration in `dir`. */
function client(lab: Lab, dir: string, args: string[]) {
  return lab.exec(lab.ns.host, ["fail2ban-client", "-c", dir, ...args], { timeoutMs: 20_000 });
}

/** Starts fail2ban's server in the foreground inside the lab's host, and waits until its jail answers. */
async function startFail2ban(lab: Lab, dir: string): Promise<Deno.ChildProcess> {
  const server = new Deno.Command("ip", {
    args: ["netns", "exec", lab.ns.host, "fail2ban-client", "-c", dir, "-f", "-x", "start"],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  for (let i = 0; i < 100; i++) {
    if ((await client(lab, dir, ["status", "lvh"])).code === 0) return server;
    await new Promise((r) => setTimeout(r, 100));
  }
  server.kill("SIGKILL");
  throw new Error(
    `fail2ban did not start: ${await Deno.readTextFile(`${dir}/fail2ban.log`).catch(() => "")}`,
  );
}

/** Waits until `check` holds (fail2ban polls its log once a second), else fails with `what`. */
async function eventually(
  what: string,
  check: () => Promise<boolean>,
  log: () => Promise<string> = () => Promise.resolve(""),
): Promise<void> {
  const end = Date.now() + 10_000;
  while (Date.now() < end) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  assert.fail(`${what}\n${await log()}`);
}

/** What each client gets from the guest's forwarded port 2222, in both families. */
async function reach(lab: Lab) {
  const at = (ip: string, source: string) =>
    lab.connect(lab.ns.client, "tcp", ip, 2222, { source, timeoutMs: 1500 });
  return {
    v4: await at(A.hostPub4, A.client4),
    v4banned: await at(A.hostPub4, A.client4b),
    v6: await at(A.hostPub6, A.client6),
    v6banned: await at(A.hostPub6, A.client6b),
  };
}

const VARIANTS = [
  { libvirt: "iptables" as const, backend: "iptables", ok: can.ok && fail2ban },
  { libvirt: "nftables" as const, backend: "iptables", ok: can.ok && fail2ban && nft },
  { libvirt: "nftables" as const, backend: "nftables", ok: can.ok && fail2ban && nft },
];

for (const v of VARIANTS) {
  Deno.test({
    name:
      `LVH-USER, libvirt on ${v.libvirt}, backend ${v.backend}: fail2ban's bans (banip and its filter) stop ` +
      "the banned client only, survive the guest's stop and start, and a stop without them leaves no residue",
    ignore: !v.ok,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      const lab = await createLab({ libvirt: v.libvirt, ipv6Forward: "established" });
      const file = await Deno.makeTempFile({ suffix: ".jsonc" });
      const dir = await Deno.makeTempDir({ prefix: "lvh-f2b-" });
      let server: Deno.ChildProcess | undefined;
      try {
        await Deno.writeTextFile(
          file,
          `{"/settings": {"backend": "${v.backend}"},
            "g1": {"private_ip": "${A.g1v4}", "private_ipv6": "${A.g1v6}", "port_map": {"tcp": [[2222, 22]]}}}`,
        );
        await lab.serve(lab.ns.g1, "tcp", 22, "g1");
        const pristine = await labFirewall(lab);
        const start = async () =>
          assert.equal((await run(lab, file, ["g1", "start", "begin", "-"], "g1")).code, 0);
        const stop = async () =>
          assert.equal((await run(lab, file, ["g1", "stopped", "end", "-"], "g1")).code, 0);
        await start();
        const open = {
          v4: `g1 ${A.client4}`,
          v4banned: `g1 ${A.client4b}`,
          v6: `g1 ${A.client6}`,
          v6banned: `g1 ${A.client6b}`,
        };
        assert.deepEqual(await reach(lab), open);

        await writeFail2ban(dir, v.backend);
        server = await startFail2ban(lab, dir);
        // A ban by hand: the IPv4 client's second address.
        assert.equal((await client(lab, dir, ["set", "lvh", "banip", A.client4b])).code, 0);
        await eventually("the banip ban takes effect", async () => (await reach(lab)).v4banned === null);
        assert.deepEqual(await reach(lab), { ...open, v4banned: null });
        // A ban by the jail's filter: two failures of the IPv6 client's second address in the log.
        await Deno.writeTextFile(
          `${dir}/auth.log`,
          `Failed login from ${A.client6b}\nFailed login from ${A.client6b}\n`,
          { append: true },
        );
        await eventually(
          "the filter's ban takes effect",
          async () => (await reach(lab)).v6banned === null,
          () => Deno.readTextFile(`${dir}/fail2ban.log`),
        );
        assert.deepEqual(await reach(lab), { ...open, v4banned: null, v6banned: null });

        // The guest stops and starts again: the chain, fail2ban's rules in it, and so its bans stay.
        await stop();
        if (v.backend === "iptables") {
          assert.match(await lab.ruleset(4), /^-A LVH-USER -p tcp -j f2b-lvh$/m);
          assert.match(await lab.ruleset(6), /^-A LVH-USER -p tcp -j f2b-lvh$/m);
        } else assert.match(await lab.nftRuleset(), /chain user_forward \{[^}]*@addr-set-lvh reject/s);
        await start();
        assert.deepEqual(await reach(lab), { ...open, v4banned: null, v6banned: null });
        // The administrator lifts a ban: that client is back.
        assert.equal((await client(lab, dir, ["set", "lvh", "unbanip", A.client4b])).code, 0);
        await eventually("the unban takes effect", async () => (await reach(lab)).v4banned !== null);
        assert.deepEqual(await reach(lab), { ...open, v6banned: null });

        // fail2ban leaves (its actionstop takes its own rules and sets), then the guest: nothing of ours is left.
        assert.equal((await client(lab, dir, ["stop"])).code, 0);
        assert.equal((await server.status).success, true);
        server = undefined;
        await stop();
        const left = await labFirewall(lab);
        assert.doesNotMatch(left, /LVH-|libvirt_hook_qemu|f2b/);
        if (v.libvirt === "nftables" && v.backend === "iptables") {
          // iptables-nft's filter tables, which our first start created on this host, were used by fail2ban too
          // (its f2b-lvh chain) while our guest ran: what other software used is as much its as ours
          // (backends/created.ts), so they stay, with nothing but an empty built-in FORWARD of policy accept.
          const emptyFilter = [
            /^\*filter\n:INPUT ACCEPT\n:FORWARD ACCEPT\n:OUTPUT ACCEPT\nCOMMIT\n/gm,
            /^table (ip|ip6) filter \{\n\tchain FORWARD \{\n.*policy accept;\n\t\}\n\}\n?/gm,
          ];
          assert.equal(emptyFilter.reduce((text, re) => text.replace(re, ""), left), pristine);
        } else assert.equal(left, pristine);
      } finally {
        if (server) {
          await client(lab, dir, ["stop"]).catch(() => undefined);
          try {
            server.kill("SIGKILL");
          } catch {
            // gone already
          }
          await server.status;
        }
        await lab.close();
        await Deno.remove(file);
        if (!Deno.env.get("KEEP")) await Deno.remove(dir, { recursive: true });
      }
    },
  });
}
