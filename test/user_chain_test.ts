/**
 * A place for bans ahead of our accepts, with the real fail2ban: a jail whose action bans into the administrator's
 * chain (iptables' `LVH-USER` on our iptables backend, `user_forward` in our table on our nftables backend) stops a
 * banned client from reaching a forwarded guest while another client still reaches it; a ban by
 * `fail2ban-client set <jail> banip` and one by log lines its filter matches; the chain and its bans survive the
 * domain's stop and start, `reload` and the watcher, rule for rule; once fail2ban is gone, a stop leaves the
 * firewall as it was. On both libvirt variants with both of our backends, IPv4 and IPv6.
 */

import assert from "node:assert/strict";
import { canRunLab, createLab, type Lab, LAB_ADDR as A } from "./lab.ts";
import { type Dirs, hook, makeDirs, startWatcher } from "./guests.ts";
import { labFirewall, labXml } from "./lab_hook.ts";

const can = await canRunLab();
const has = async (program: string, args: string[]) =>
  (await new Deno.Command(program, { args, stdout: "null", stderr: "null" }).output().catch(() => undefined))
    ?.success === true;
const nft = can.ok && await has("nft", ["--version"]);
const fail2ban = can.ok && await has("fail2ban-client", ["--version"]);
if (!can.ok) console.log(`Skipping the fail2ban namespace tests: ${can.reason}`);
else if (!fail2ban) console.log("Skipping the fail2ban namespace tests: fail2ban is not installed");
else if (!nft) {
  console.log("Skipping the fail2ban namespace tests with libvirt's or our nftables: nft is not installed");
}

/** The config: the backend under test, and g1's forwards of `ports` to its port 22, IPv4 and IPv6. */
function config(backend: string, ports: number[]): string {
  return `{"/settings": {"backend": "${backend}"},
    "g1": {"private_ip": "${A.g1v4}", "private_ipv6": "${A.g1v6}",
           "port_map": {"tcp": [${ports.map((p) => `[${p}, 22]`).join(", ")}]}}}`;
}

/** Runs the hook for g1 in the lab's host as libvirt runs it, with `d`'s config and state. */
async function run(lab: Lab, d: Dirs, args: string[]) {
  const r = await hook(lab, d, args, labXml("g1"));
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

/** What each client gets from the guest's forwarded `port`, in both families. */
async function reach(lab: Lab, port = 2222) {
  const at = (ip: string, source: string) =>
    lab.connect(lab.ns.client, "tcp", ip, port, { source, timeoutMs: 1500 });
  return {
    v4: await at(A.hostPub4, A.client4),
    v4banned: await at(A.hostPub4, A.client4b),
    v6: await at(A.hostPub6, A.client6),
    v6banned: await at(A.hostPub6, A.client6b),
  };
}

/**
 * The administrator's ban chain as listed, bans included. iptables: `LVH-USER` and fail2ban's chain it jumps to, both
 * families. nftables: our table's `user_forward` and fail2ban's sets, with handles (a rule or chain deleted and
 * added back would differ).
 */
async function banChain(lab: Lab, backend: string): Promise<string> {
  if (backend === "iptables") {
    const save = `${await lab.ruleset(4)}\n${await lab.ruleset(6)}`;
    return save.split("\n").filter((l) => /^(:|-A )(LVH-USER|f2b-lvh) /.test(l)).join("\n");
  }
  const table = "inet libvirt_hook_qemu";
  let out = "";
  for (
    const what of [`chain ${table} user_forward`, `set ${table} addr-set-lvh`, `set ${table} addr6-set-lvh`]
  ) {
    const r = await lab.exec(lab.ns.host, ["nft", "-a", "list", ...what.split(" ")]);
    assert.equal(r.code, 0, r.stderr);
    out += r.stdout;
  }
  return out;
}

const VARIANTS = [
  { libvirt: "iptables" as const, backend: "iptables", ok: can.ok && fail2ban },
  { libvirt: "iptables" as const, backend: "nftables", ok: can.ok && fail2ban && nft },
  { libvirt: "nftables" as const, backend: "iptables", ok: can.ok && fail2ban && nft },
  { libvirt: "nftables" as const, backend: "nftables", ok: can.ok && fail2ban && nft },
];

for (const v of VARIANTS) {
  Deno.test({
    name:
      `LVH-USER, libvirt on ${v.libvirt}, backend ${v.backend}: fail2ban's bans (banip and its filter) stop ` +
      "the banned client only, survive the guest's stop and start, reload and the watcher, and a stop without " +
      "them leaves no residue",
    ignore: !v.ok,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn(t) {
      const lab = await createLab({ libvirt: v.libvirt, ipv6Forward: "established" });
      const dirs = await makeDirs("lvh-f2b-");
      const d = { ...dirs, config: `${dirs.root}/hooks.jsonc` };
      const dir = `${d.root}/fail2ban`;
      let server: Deno.ChildProcess | undefined;
      try {
        await Deno.writeTextFile(d.config, config(v.backend, [2222]));
        await lab.serve(lab.ns.g1, "tcp", 22, "g1");
        const pristine = await labFirewall(lab);
        // libvirt's start: the `start` hook, then the running guest's status file; its stop: the reverse.
        const start = async () => {
          assert.equal((await run(lab, d, ["g1", "start", "begin", "-"])).code, 0);
          await Deno.writeTextFile(`${d.qemu}/g1.xml`, labXml("g1"));
        };
        const stop = async () => {
          assert.equal((await run(lab, d, ["g1", "stopped", "end", "-"])).code, 0);
          await Deno.remove(`${d.qemu}/g1.xml`);
        };
        await start();
        const open = {
          v4: `g1 ${A.client4}`,
          v4banned: `g1 ${A.client4b}`,
          v6: `g1 ${A.client6}`,
          v6banned: `g1 ${A.client6b}`,
        };
        const banned = { ...open, v4banned: null, v6banned: null };
        assert.deepEqual(await reach(lab), open);

        await t.step("a ban by hand (banip) stops that client only", async () => {
          await writeFail2ban(dir, v.backend);
          server = await startFail2ban(lab, dir);
          // The IPv4 client's second address.
          assert.equal((await client(lab, dir, ["set", "lvh", "banip", A.client4b])).code, 0);
          await eventually("the banip ban takes effect", async () => (await reach(lab)).v4banned === null);
          assert.deepEqual(await reach(lab), { ...open, v4banned: null });
        });

        await t.step(
          "a ban by the jail's filter (two failures in the log) stops that client only",
          async () => {
            // The IPv6 client's second address.
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
            assert.deepEqual(await reach(lab), banned);
          },
        );

        await t.step(
          "the guest stops and starts again: the chain, fail2ban's rules in it, and so its bans stay",
          async () => {
            await stop();
            if (v.backend === "iptables") {
              assert.match(await lab.ruleset(4), /^-A LVH-USER -p tcp -j f2b-lvh$/m);
              assert.match(await lab.ruleset(6), /^-A LVH-USER -p tcp -j f2b-lvh$/m);
            } else assert.match(await lab.nftRuleset(), /chain user_forward \{[^}]*@addr-set-lvh reject/s);
            await start();
            assert.deepEqual(await reach(lab), banned);
          },
        );

        await t.step(
          "reload applies a forward the config gained, one look of the watcher takes it away again: the bans " +
            "hold on both forwards, the other client reaches both, the ban chain is as it was, byte for byte",
          async () => {
            const bans = await banChain(lab, v.backend);
            for (const ip of [A.client4b, A.client6b]) {
              assert.ok(bans.includes(ip), `no ban of ${ip} in:\n${bans}`);
            }
            await Deno.writeTextFile(d.config, config(v.backend, [2222, 2223]));
            const reloaded = await hook(lab, d, ["reload"]);
            assert.equal(reloaded.code, 0, reloaded.stderr);
            assert.equal(reloaded.stdout, `Reloaded "g1"\n`);
            assert.equal(await banChain(lab, v.backend), bans, "reload changed the ban chain");
            assert.deepEqual(await reach(lab, 2223), banned);
            assert.deepEqual(await reach(lab), banned);

            await Deno.writeTextFile(d.config, config(v.backend, [2222]));
            // A poll far off: the watcher's first look, at its start, is the one that mends.
            const watcher = await startWatcher(lab, d, 600);
            try {
              assert.ok(await watcher.said(/mended g1/), watcher.stderr());
            } finally {
              await watcher.stop();
            }
            assert.equal(await banChain(lab, v.backend), bans, "the watcher changed the ban chain");
            assert.deepEqual(await reach(lab, 2223), { v4: null, v4banned: null, v6: null, v6banned: null });
            assert.deepEqual(await reach(lab), banned);
          },
        );

        await t.step("the administrator lifts a ban: that client is back", async () => {
          assert.equal((await client(lab, dir, ["set", "lvh", "unbanip", A.client4b])).code, 0);
          await eventually("the unban takes effect", async () => (await reach(lab)).v4banned !== null);
          assert.deepEqual(await reach(lab), { ...open, v6banned: null });
        });

        await t.step(
          "fail2ban leaves (its actionstop takes its own rules and sets), then the guest: nothing of ours is left",
          async () => {
            assert.equal((await client(lab, dir, ["stop"])).code, 0);
            assert.equal((await server!.status).success, true);
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
          },
        );
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
        if (!Deno.env.get("KEEP")) await Deno.remove(d.root, { recursive: true });
      }
    },
  });
}
