/**
 * The watcher under hostile conditions, with real rules and real packets in the lab's namespaces: libvirt's gap
 * between the `stopped` hook and the removal of the guest's status file, a second default route, lease files
 * truncated, garbage or huge, a flood of lease changes, SIGHUP and kill -9. Self-healing must never become
 * self-harm: each of these once made the watcher add rules it should not have, move or remove live ones, stop
 * healing, or leave its `nft monitor` behind.
 */

import assert from "node:assert/strict";
import { canRunLab, createLab, type Lab, LAB_ADDR as A } from "./lab.ts";
import {
  type Dirs,
  domstatus,
  envOf,
  eventually,
  hook,
  MAC1,
  MAC2,
  MAIN,
  makeDirs,
  metadata,
  startWatcher,
  startXml,
  type Watcher,
  writeLeases,
} from "./guests.ts";

const can = await canRunLab();
if (!can.ok) console.log(`Skipping the watcher's namespace tests: ${can.reason}`);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A lab with libvirt's state files, the guests' servers on port 22, and what is needed to clean it all up. */
async function withLab(
  prefix: string,
  fn: (lab: Lab, d: Dirs, watchers: Watcher[]) => Promise<void>,
): Promise<void> {
  const lab = await createLab();
  const d = await makeDirs(prefix);
  const watchers: Watcher[] = [];
  try {
    await lab.serve(lab.ns.g1, "tcp", 22, "g1");
    await lab.serve(lab.ns.g2, "tcp", 22, "g2");
    await fn(lab, d, watchers);
  } finally {
    for (const w of watchers) await w.stop();
    await lab.close();
    await Deno.remove(d.root, { recursive: true });
  }
}

/** libvirt's start of a guest: the `start` hook, then its status file. */
async function startGuest(lab: Lab, d: Dirs, name: string, { mac, meta }: { mac: string; meta: string }) {
  const r = await hook(lab, d, [name, "start", "begin", "-"], startXml(name, mac, meta));
  assert.equal(r.code, 0, r.stderr);
  await Deno.writeTextFile(`${d.qemu}/${name}.xml`, domstatus(name, mac, meta));
}

/** The process ids of a process's children (every thread's). */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  for (const t of Deno.readDirSync(`/proc/${pid}/task`)) {
    try {
      const text = Deno.readTextFileSync(`/proc/${pid}/task/${t.name}/children`).trim();
      if (text !== "") out.push(...text.split(" ").map(Number));
    } catch {
      // A thread that ended meanwhile.
    }
  }
  return out;
}

/** A process's command line, or undefined where it is gone. */
function cmdline(pid: number): string | undefined {
  try {
    return Deno.readTextFileSync(`/proc/${pid}/cmdline`).split("\0").join(" ").trim();
  } catch {
    return undefined;
  }
}

/** Waits for the watcher's `nft monitor` child and returns its pid. */
async function monitorOf(w: Watcher): Promise<number> {
  const until = Date.now() + 10_000;
  while (Date.now() < until) {
    const found = childrenOf(w.child.pid).find((p) => /\bnft monitor\b/.test(cmdline(p) ?? ""));
    if (found !== undefined) return found;
    await sleep(100);
  }
  throw new Error(`the watcher ${w.child.pid} has no nft monitor child: ${w.stderr()}`);
}

/** Whether a process is gone (or a zombie) within `ms`. */
async function gone(pid: number, ms = 5000): Promise<boolean> {
  const until = Date.now() + ms;
  for (;;) {
    let state: string | undefined;
    try {
      state = /^State:\s+(\S)/m.exec(Deno.readTextFileSync(`/proc/${pid}/status`))?.[1];
    } catch {
      return true;
    }
    if (state === "Z") return true;
    if (Date.now() > until) return false;
    await sleep(100);
  }
}

Deno.test({
  name: "watch: a guest whose stopped hook ran gets no forwards back while its status file lingers",
  ignore: !can.ok,
  fn: () =>
    withLab("lvh-watch-stopped-", async (lab, d, watchers) => {
      const before = await lab.ruleset(4);
      watchers.push(await startWatcher(lab, d, 2));
      const w = watchers[0]!;
      await startGuest(lab, d, "g1", { mac: MAC1, meta: metadata(8080) });
      assert.equal(await eventually(lab, 8080, `g1 ${A.client4}`), `g1 ${A.client4}`);
      // libvirt's qemuProcessStop: the `stopped` hook first, the status file removed only 1.5 s later.
      const r = await hook(lab, d, ["g1", "stopped", "end", "-"], startXml("g1", MAC1, metadata(8080)));
      assert.equal(r.code, 0, r.stderr);
      // Something for the watcher to look at inside the gap: a lease change (it looks 300 ms later), and a poll.
      await writeLeases(d.dnsmasq, []);
      await sleep(1500);
      await Deno.remove(`${d.qemu}/g1.xml`);
      // A poll (every 2 s) after the gap, and time for it to act.
      await sleep(3000);
      assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 8080), null);
      assert.equal(await lab.ruleset(4), before);
      assert.doesNotMatch(w.stderr(), /mended g1/);
      const status = await hook(lab, d, ["status"]);
      assert.equal(status.stdout.includes("g1"), false, status.stdout);
    }),
});

Deno.test({
  name: "watch: removes the live rules a stopped guest left behind (residue), and never adds them",
  ignore: !can.ok,
  fn: () =>
    withLab("lvh-watch-residue-", async (lab, d, watchers) => {
      const before = await lab.ruleset(4);
      await startGuest(lab, d, "g1", { mac: MAC1, meta: metadata(8080) });
      assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 8080), `g1 ${A.client4}`);
      // A stopped hook whose removal did not reach the rules (run where they are not: another namespace, with
      // the same state directory): they are left behind.
      const r = await lab.exec(lab.ns.g2, [Deno.execPath(), "run", "-A", MAIN, "g1", "stopped", "end", "-"], {
        stdin: startXml("g1", MAC1, metadata(8080)),
        clearEnv: true,
        env: envOf(d),
        cwd: "/",
        timeoutMs: 30_000,
      });
      assert.equal(r.code, 0, r.stderr);
      await Deno.remove(`${d.qemu}/g1.xml`);
      assert.notEqual(await lab.ruleset(4), before);
      watchers.push(await startWatcher(lab, d, 2));
      assert.ok(await watchers[0]!.said(/removed what a stopped guest left live: g1/), watchers[0]!.stderr());
      assert.equal(await lab.ruleset(4), before);
      assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 8080), null);
    }),
});

Deno.test({
  name:
    "watch: a second default route keeps a forward on the address it got at start, and status and doctor say so",
  ignore: !can.ok,
  fn: () =>
    withLab("lvh-watch-route-", async (lab, d, watchers) => {
      // No address: the forward takes the host's default address, 203.0.113.1 on pub0.
      const meta = metadata(8080, { address: null });
      await startGuest(lab, d, "g1", { mac: MAC1, meta });
      assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 8080), `g1 ${A.client4}`);
      watchers.push(await startWatcher(lab, d, 2));
      const w = watchers[0]!;
      // A VPN comes up with a default route of lower metric: the host's default address is now 10.8.0.2.
      const ip = (...args: string[]) => lab.exec(lab.ns.host, ["ip", ...args]);
      await ip("route", "del", "default", "via", A.gw4);
      await ip("route", "add", "default", "via", A.gw4, "dev", "pub0", "metric", "100");
      // (A veth: the lab's kernels need not have the dummy driver.)
      await ip("link", "add", "vpn0", "type", "veth", "peer", "name", "vpn0p");
      await ip("address", "add", "10.8.0.2/24", "dev", "vpn0");
      await ip("link", "set", "vpn0", "up");
      const added = await ip("route", "add", "default", "via", "10.8.0.1", "dev", "vpn0", "metric", "50");
      assert.equal(added.code, 0, added.stderr);
      // Two polls at least.
      await sleep(5000);
      assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 8080), `g1 ${A.client4}`);
      const change =
        /g1: the host's default IPv4 address is now 10\.8\.0\.2; its forwards stay on 203\.0\.113\.1/;
      assert.match(w.stderr(), change);
      assert.equal(w.stderr().match(new RegExp(change, "g"))?.length, 1, w.stderr());
      assert.doesNotMatch(w.stderr(), /mended g1/);
      const status = await hook(lab, d, ["status", "g1"]);
      assert.match(status.stdout, new RegExp(`  tcp ${A.hostPub4}:8080 -> ${A.g1v4}:22\\n`));
      assert.doesNotMatch(status.stdout, /not explained/);
      assert.match(status.stdout, change);
      assert.match(status.stdout, /"qemu apply g1" or "qemu reload" moves them/);
      const doctor = await hook(lab, d, ["doctor", "g1"]);
      assert.match(doctor.stdout, change);
      // The administrator applies the change: the forward moves to the new default address.
      const apply = await hook(lab, d, ["apply", "g1"]);
      assert.equal(apply.code, 0, apply.stderr);
      const moved = await hook(lab, d, ["status", "g1"]);
      assert.match(moved.stdout, new RegExp(`  tcp 10\\.8\\.0\\.2:8080 -> ${A.g1v4}:22\\n`));
      assert.doesNotMatch(moved.stdout, /default IPv4 address is now/);
    }),
});

/** Replaces the lease file by rename with `text`, as libvirt's helper replaces it. */
async function replaceLeases(d: Dirs, text: string | Uint8Array) {
  if (typeof text === "string") await Deno.writeTextFile(`${d.dnsmasq}/virbr0.status.new`, text);
  else await Deno.writeFile(`${d.dnsmasq}/virbr0.status.new`, text);
  await Deno.rename(`${d.dnsmasq}/virbr0.status.new`, `${d.dnsmasq}/virbr0.status`);
}

/** A process's peak resident memory, in MB. */
function peakMb(pid: number): number {
  const kb = /^VmHWM:\s+(\d+) kB/m.exec(Deno.readTextFileSync(`/proc/${pid}/status`))?.[1];
  return Number(kb) / 1024;
}

Deno.test({
  name:
    "watch: a truncated, garbage or huge lease file changes nothing live, and is logged once with the file",
  ignore: !can.ok,
  fn: () =>
    withLab("lvh-watch-leases-", async (lab, d, watchers) => {
      const lease = { ip: A.g2v4, mac: MAC2, host: "g2" };
      await writeLeases(d.dnsmasq, [lease]);
      const good = await Deno.readTextFile(`${d.dnsmasq}/virbr0.status`);
      await startGuest(lab, d, "g2", { mac: MAC2, meta: metadata(8080) });
      assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 8080), `g2 ${A.client4}`);
      watchers.push(await startWatcher(lab, d, 2));
      const w = watchers[0]!;
      const file = `${d.dnsmasq}/virbr0.status`;
      const huge = new TextEncoder().encode(
        `[${
          `{"ip-address": "192.168.122.200", "mac-address": "52:54:00:99:99:99", "expiry-time": 1},`.repeat(
            1_200_000,
          )
        }${good.trim().slice(1)}`,
      );
      const cases: [string, string | Uint8Array, RegExp][] = [
        ["truncated", good.slice(0, good.length / 2), /Cannot read the DHCP leases in .*: not JSON/],
        ["garbage", "\u0000\u00ff garbage {{{", /Cannot read the DHCP leases in .*: not JSON/],
        ["huge", huge, /Cannot read the DHCP leases in .*: larger than \d+ MB/],
      ];
      for (const [what, text, said] of cases) {
        const from = w.stderr().length;
        await replaceLeases(d, text);
        // The lease change (300 ms), then a poll or two.
        await sleep(4500);
        assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 8080), `g2 ${A.client4}`, what);
        const lines = w.stderr().slice(from).split("\n").filter((l) => said.test(l));
        assert.equal(lines.length, 1, `${what}: ${w.stderr()}`);
        assert.ok(lines[0]!.includes(file), lines[0]);
        assert.doesNotMatch(w.stderr(), /mended g2/, what);
        const status = await hook(lab, d, ["status", "g2"]);
        assert.match(status.stdout, new RegExp(`  tcp ${A.hostPub4}:8080 -> ${A.g2v4}:22\\n`), what);
        // Back to a good file in between (and a look at it), so each case is logged anew.
        await replaceLeases(d, good);
        await sleep(2500);
      }
      // Libvirt's files are small; the watcher read the huge one without holding it (it held 520 MB before).
      assert.ok(peakMb(w.child.pid) < 250, `the watcher peaked at ${peakMb(w.child.pid)} MB`);
      // A start with the huge file: quick, and the forward waits for a lease it can read.
      await replaceLeases(d, huge);
      const t0 = Date.now();
      const r = await hook(
        lab,
        d,
        ["g1", "start", "begin", "-"],
        startXml("g1", "52:54:00:00:00:12", metadata(8081)),
      );
      assert.equal(r.code, 0, r.stderr);
      assert.ok(Date.now() - t0 < 2000, `start took ${Date.now() - t0} ms`);
    }),
});

Deno.test({
  name:
    "watch: heals wiped rules within the poll interval while the lease file is replaced thousands of times a second",
  ignore: !can.ok,
  fn: () =>
    withLab("lvh-watch-flood-", async (lab, d, watchers) => {
      const before = await lab.ruleset(4);
      await startGuest(lab, d, "g1", { mac: MAC1, meta: metadata(8080) });
      watchers.push(await startWatcher(lab, d, 2));
      const w = watchers[0]!;
      const flood = new Deno.Command(Deno.execPath(), {
        args: [
          "eval",
          `const dir = ${JSON.stringify(d.dnsmasq)};
          for (;;) {
            Deno.writeTextFileSync(dir + "/virbr0.status.new", "[]");
            Deno.renameSync(dir + "/virbr0.status.new", dir + "/virbr0.status");
          }`,
        ],
        stdout: "null",
        stderr: "null",
      }).spawn();
      try {
        await sleep(1000);
        // netfilter-persistent restore: the saved rules come back, ours are gone.
        const r = await lab.exec(lab.ns.host, ["iptables-restore"], { stdin: `${before}\n` });
        assert.equal(r.code, 0, r.stderr);
        assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 8080), null);
        // The poll interval (2 s) plus a few seconds.
        assert.equal(await eventually(lab, 8080, `g1 ${A.client4}`, 6000), `g1 ${A.client4}`, w.stderr());
      } finally {
        flood.kill("SIGKILL");
        await flood.status;
      }
    }),
});

Deno.test({
  name: "watch: SIGHUP re-reads the config and goes on; after kill -9 no nft monitor is left behind",
  ignore: !can.ok,
  fn: () =>
    withLab("lvh-watch-signals-", async (lab, d, watchers) => {
      const before = await lab.ruleset(4);
      await startGuest(lab, d, "g1", { mac: MAC1, meta: metadata(8080) });
      watchers.push(await startWatcher(lab, d, 2));
      const w = watchers[0]!;
      const monitor = await monitorOf(w);
      Deno.kill(w.child.pid, "SIGHUP");
      assert.ok(await w.said(/SIGHUP: re-reading the config/), w.stderr());
      await sleep(1000);
      assert.equal(await gone(w.child.pid, 0), false, `SIGHUP ended the watcher: ${w.stderr()}`);
      assert.equal(await gone(monitor, 0), false);
      assert.equal(cmdline(monitor)?.includes("nft monitor"), true);
      // Still healing after SIGHUP.
      const wiped = await lab.exec(lab.ns.host, ["iptables-restore"], { stdin: `${before}\n` });
      assert.equal(wiped.code, 0, wiped.stderr);
      assert.equal(await eventually(lab, 8080, `g1 ${A.client4}`), `g1 ${A.client4}`);
      Deno.kill(w.child.pid, "SIGKILL");
      await w.child.status;
      assert.ok(await gone(monitor), `nft monitor ${monitor} outlived its watcher: ${cmdline(monitor)}`);
    }),
});

Deno.test("watch --poll refuses an interval below its lower bound, and a non-number", async () => {
  for (const poll of ["0", "0.001", "1", "-5", "abc"]) {
    // Were it taken, a watcher would run: as root, in a network namespace of its own, so it touches no firewall
    // but its own; and for 10 s at most.
    const argv = [Deno.execPath(), "run", "-A", MAIN, "watch", `--poll=${poll}`];
    const [program, ...args] = Deno.uid() === 0 ? ["unshare", "--net", ...argv] : argv;
    const r = await new Deno.Command(program!, {
      args,
      stdout: "piped",
      stderr: "piped",
      signal: AbortSignal.timeout(10_000),
    }).output();
    assert.equal(r.code, 2, poll);
    assert.match(new TextDecoder().decode(r.stderr), /--poll takes a number of seconds from 2/, poll);
  }
});

Deno.test("the watcher's unit restarts it after any exit but a clean stop", async () => {
  const unit = await Deno.readTextFile(
    new URL("../contrib/libvirt-hook-qemu-watch.service", import.meta.url),
  );
  assert.match(unit, /^Restart=always$/m);
  assert.doesNotMatch(unit, /^Restart=on-failure$/m);
});
