/** The hook's contract with libvirt, with a recording runner in place of iptables. */

import assert from "node:assert/strict";
import { domainHash } from "../backends/names.ts";
import { dedent, FACTS, recordingRunner } from "../test/util.ts";
import type { HookDeps } from "./deps.ts";
import { defaultMoves, pinnedDefaults, stoppedSince } from "./domain.ts";
import { asHookCall, runHook } from "./hook.ts";
import type { HostFacts, Listener } from "../system/host.ts";
import type { CommandResult } from "../system/runner.ts";

/** Every config file these tests write lives here, removed when the tests end. */
const SCRATCH = await Deno.makeTempDir();
globalThis.addEventListener("unload", () => Deno.removeSync(SCRATCH, { recursive: true }));

const GOOD = `{
  "web1": {"interface": "virbr0", "private_ip": "192.168.122.10", "port_map": {"tcp": [[2222, 22]]}},
  "db": {"private_ip": "not-an-ip", "port_map": {"tcp": [5432]}},
}`;

const XML = dedent(`
  <domain type='kvm'><name>web1</name><devices>
    <interface type='network'><source network='default' bridge='virbr0'/><target dev='vnet7'/></interface>
    <interface type='bridge'><source bridge='br-lan'/><target dev='vnet8'/></interface>
  </devices></domain>
`);

interface Fake {
  deps: HookDeps;
  calls: string[][];
  stdins: (string | undefined)[];
  stderr: string[];
  hairpin: string[];
  logged: string[];
  stdinRead: () => boolean;
}

async function fake(
  configText: string | undefined,
  respond: (argv: string[]) => Partial<CommandResult> = () => ({}),
  facts: HostFacts = FACTS,
  listeners: Listener[] = [],
): Promise<Fake> {
  const dir = await Deno.makeTempDir({ dir: SCRATCH });
  const file = `${dir}/hooks.jsonc`;
  if (configText !== undefined) await Deno.writeTextFile(file, configText);
  const runner = recordingRunner(respond);
  const stderr: string[] = [];
  const hairpin: string[] = [];
  const logged: string[] = [];
  let read = false;
  const deps: HookDeps = {
    env: (name) => (name === "CONFIG_PATH" ? dir : undefined),
    readStdin: () => {
      read = true;
      return Promise.resolve(XML);
    },
    runner,
    problem: (line) => stderr.push(line),
    facts: () => Promise.resolve(facts),
    lock: (fn) => fn(),
    setHairpin: (device) => {
      hairpin.push(device);
      return Promise.resolve();
    },
    log: (line) => logged.push(line),
    listeners: () => listeners,
    nft: undefined,
    // Not this machine's libvirt settings: the tests say what libvirt uses.
    networkConf: "/nonexistent/network.conf",
  };
  return {
    deps,
    get calls() {
      return runner.calls.map((c) => c.argv);
    },
    get stdins() {
      return runner.calls.map((c) => c.stdin);
    },
    stderr,
    hairpin,
    logged,
    stdinRead: () => read,
  };
}

const call = (domain: string, operation: string) => asHookCall([domain, operation, "begin", "-"])!;
const SAVE_4 = ["iptables-save"], SAVE_6 = ["ip6tables-save"];
const RESTORE_4 = ["iptables-restore", "--noflush", "--wait"];

Deno.test("asHookCall() takes only libvirt's four-argument form, whatever the guest is called", async (t) => {
  await t.step("a guest named like a command", () => assert.ok(asHookCall(["check", "start", "begin", "-"])));
  await t.step(
    "release with a shutoff reason",
    () => assert.ok(asHookCall(["web1", "release", "end", "shutdown"])),
  );
  await t.step("an operator command", () => assert.equal(asHookCall(["plan", "web1"]), undefined));
  await t.step("three arguments", () => assert.equal(asHookCall(["web1", "start", "begin"]), undefined));
  await t.step(
    "an unknown operation",
    () => assert.equal(asHookCall(["web1", "explode", "begin", "-"]), undefined),
  );
});

Deno.test("runHook() start installs the domain's forwards with one batch", async () => {
  const f = await fake(GOOD);
  assert.equal(await runHook(call("web1", "start"), f.deps), 0);
  assert.deepEqual(f.calls, [SAVE_4, SAVE_6, RESTORE_4]);
  assert.match(
    f.stdins[2]!,
    new RegExp(`-A LVH-${domainHash("web1")}-DNAT -d 203.0.113.1/32 .*--to-destination 192.168.122.10:22`),
  );
  // Problems elsewhere in the file are reported, but do not stop this guest.
  assert.deepEqual(f.stderr, [
    'hooks.jsonc:3:24: Not an IP address (db.private_ip = "not-an-ip")'.replace(
      /^/,
      `${f.deps.env("CONFIG_PATH")}/`,
    ),
  ]);
});

Deno.test("runHook() start reads the firewall under the lock while it validates, where the config names the domain", async (t) => {
  const traced = async (text: string) => {
    const f = await fake(text);
    const events: string[] = [];
    const { runner, facts } = f.deps;
    f.deps.lock = async (fn) => {
      events.push("lock");
      try {
        return await fn();
      } finally {
        events.push("unlock");
      }
    };
    f.deps.runner = { run: (argv, o) => (events.push(argv[0]!), runner.run(argv, o)) };
    f.deps.facts = () => (events.push("facts"), facts());
    return { f, events };
  };
  await t.step("named: the read goes first, the write follows, all under the lock", async () => {
    const { f, events } = await traced(GOOD);
    assert.equal(await runHook(call("web1", "start"), f.deps), 0);
    assert.deepEqual(events, [
      "lock",
      "iptables-save",
      "ip6tables-save",
      "facts",
      "iptables-restore",
      "unlock",
    ]);
  });
  await t.step("not named: no lock, no read", async () => {
    const { f, events } = await traced(GOOD);
    assert.equal(await runHook(call("other", "start"), f.deps), 0);
    assert.deepEqual(events, ["facts"]);
  });
});

Deno.test("runHook() start fails without touching the firewall when the domain's entry is invalid", async () => {
  const f = await fake(GOOD);
  assert.equal(await runHook(call("db", "start"), f.deps), 1);
  // The config names it, so the firewall was read while the config was validated; nothing was written.
  assert.deepEqual(f.calls, [SAVE_4, SAVE_6]);
  assert.match(f.stderr[0]!, /hooks\.jsonc:3:24: Not an IP address \(db\.private_ip = "not-an-ip"\)$/);
  assert.match(
    f.stderr[1]!,
    /^Cannot apply forwards for "db": 1 problem\(s\) in .*hooks\.jsonc, listed above; nothing was changed$/,
  );
});

Deno.test("runHook() start does nothing for a domain the config does not name", async (t) => {
  for (const [name, text] of [["no config file", undefined], ["not in the file", GOOD]] as const) {
    await t.step(name, async () => {
      const f = await fake(text);
      assert.equal(await runHook(call("other", "start"), f.deps), 0);
      assert.deepEqual(f.calls, []);
    });
  }
});

Deno.test("runHook() start with a file that does not parse fails the domains it names, and only those", async () => {
  const broken = `{"web1": {"private_ip": "192.168.122.10",, }`;
  const named = await fake(broken);
  assert.equal(await runHook(call("web1", "start"), named.deps), 1);
  assert.deepEqual(named.calls, [SAVE_4, SAVE_6], "a read, no write");
  const other = await fake(broken);
  assert.equal(await runHook(call("other", "start"), other.deps), 0);
  assert.deepEqual(other.calls, []);
  assert.match(other.stderr[0]!, /hooks\.jsonc:1:42: Cannot parse the config/);
});

Deno.test("runHook() start fails with iptables' own words when the firewall refuses", async () => {
  const f = await fake(
    GOOD,
    (argv) => argv[0] === "iptables-restore" ? { code: 1, stderr: "iptables-restore: line 7 failed\n" } : {},
  );
  assert.equal(await runHook(call("web1", "start"), f.deps), 1);
  const [head, ...context] = f.stderr.at(-1)!.split("\n");
  assert.equal(
    head,
    'Cannot apply forwards for "web1": iptables-restore failed: iptables-restore: line 7 failed',
  );
  // The batch line it refused, marked, between its neighbours (5 to 9), as kube-proxy shows them.
  const batch = f.stdins[f.calls.findIndex((argv) => argv[0] === "iptables-restore")]!.split("\n");
  assert.deepEqual(context, [5, 6, 7, 8, 9].map((n) => `${n === 7 ? "  >" : "   "} ${n}  ${batch[n - 1]}`));
});

Deno.test("runHook() start turns on hairpin mode for the guest's taps only when bridge netfilter is on", async (t) => {
  await t.step("off: no port is touched", async () => {
    const f = await fake(GOOD);
    await runHook(call("web1", "start"), f.deps);
    assert.deepEqual(f.hairpin, []);
  });
  await t.step("on: the taps on the entry's bridge", async () => {
    const f = await fake(GOOD, undefined, { ...FACTS, bridgeNetfilter: { 4: true, 6: true } });
    await runHook(call("web1", "start"), f.deps);
    assert.deepEqual(f.hairpin, ["vnet7"]);
  });
});

Deno.test("runHook() reconnect never fails, and keeps live rules when the config cannot be trusted", async (t) => {
  const h = domainHash("web1");
  const live = `*filter\n:LVH-${h}-FWD - [0:0]\n-A FORWARD -j LVH-${h}-FWD\nCOMMIT\n`;
  const withLive = (argv: string[]) => (argv[0] === "iptables-save" ? { stdout: live } : {});
  await t.step("an invalid entry: nothing is changed", async () => {
    const f = await fake(GOOD.replace("192.168.122.10", "192.168.122.999"), withLive);
    assert.equal(await runHook(call("web1", "reconnect"), f.deps), 0);
    assert.deepEqual(f.calls, []);
    assert.match(f.stderr.at(-1)!, /^Keeping the live forwards of "web1" unchanged/);
  });
  await t.step("a file that does not parse, even for a domain it no longer names", async () => {
    const f = await fake(`{"x": [`, withLive);
    assert.equal(await runHook(call("web1", "reconnect"), f.deps), 0);
    assert.deepEqual(f.calls, []);
  });
  await t.step("the domain left the config: its rules go", async () => {
    const f = await fake(`{}`, withLive);
    assert.equal(await runHook(call("web1", "reconnect"), f.deps), 0);
    assert.deepEqual(f.calls, [SAVE_4, SAVE_6, RESTORE_4]);
    assert.match(f.stdins[2]!, new RegExp(`-X LVH-${h}-FWD`));
  });
  await t.step("the firewall refuses: still exit 0", async () => {
    const f = await fake(GOOD, () => ({ code: 4, stderr: "boom" }));
    assert.equal(await runHook(call("web1", "reconnect"), f.deps), 0);
    assert.match(
      f.stderr.at(-1)!,
      /^Cannot re-apply forwards for "web1": iptables-save exited with 4: boom$/,
    );
  });
});

Deno.test("runHook() stopped removes what is live without reading the config, and never fails", async (t) => {
  await t.step("nothing live: only a look", async () => {
    const f = await fake(`{"web1": [`);
    assert.equal(await runHook(call("web1", "stopped"), f.deps), 0);
    assert.deepEqual(f.calls, [SAVE_4, SAVE_6]);
    assert.deepEqual(f.stderr, []);
  });
  await t.step("iptables missing", async () => {
    const f = await fake(GOOD, () => ({ code: 1, stderr: "iptables-save: cannot initialize" }));
    assert.equal(await runHook(call("web1", "stopped"), f.deps), 0);
    assert.match(f.stderr[0]!, /^Cannot remove forwards for "web1": iptables-save exited with 1/);
  });
});

Deno.test("runHook() stopped notes the stop before it removes anything; start clears the note", async () => {
  const f = await fake(GOOD);
  const stateDir = await Deno.makeTempDir({ dir: SCRATCH });
  let notedFirst: boolean | undefined;
  const runner = f.deps.runner;
  const deps: HookDeps = {
    ...f.deps,
    stateDir,
    runner: {
      ...runner,
      run: (argv, options) => {
        notedFirst ??= stoppedSince(stateDir, "web1");
        return runner.run(argv, options);
      },
    },
  };
  assert.equal(await runHook(call("web1", "start"), deps), 0);
  assert.equal(stoppedSince(stateDir, "web1"), false);
  notedFirst = undefined;
  assert.equal(await runHook(call("web1", "stopped"), deps), 0);
  assert.equal(notedFirst, true);
  assert.equal(stoppedSince(stateDir, "web1"), true);
  assert.equal(stoppedSince(stateDir, "db"), false);
  assert.equal(await runHook(call("web1", "start"), deps), 0);
  assert.equal(stoppedSince(stateDir, "web1"), false);
});

Deno.test("runHook() reconnect keeps the default address the forwards took at start, where the default moved", async () => {
  const f = await fake(GOOD);
  const stateDir = await Deno.makeTempDir({ dir: SCRATCH });
  const moved: HostFacts = {
    ...FACTS,
    defaultPublicIp: { ...FACTS.defaultPublicIp, 4: { address: "198.51.100.7" } },
  };
  assert.equal(await runHook(call("web1", "start"), { ...f.deps, stateDir }), 0);
  assert.deepEqual(pinnedDefaults(stateDir, "web1"), { 4: "203.0.113.1" });
  assert.deepEqual(defaultMoves("web1", { facts: moved, pinned: pinnedDefaults(stateDir, "web1") }), [
    "web1: the host's default IPv4 address is now 198.51.100.7; its forwards stay on 203.0.113.1 until " +
    '"qemu apply web1" or "qemu reload" moves them',
  ]);
  const before = f.calls.length;
  assert.equal(
    await runHook(call("web1", "reconnect"), { ...f.deps, stateDir, facts: () => Promise.resolve(moved) }),
    0,
  );
  const batch = f.stdins.slice(before).find((text) => text?.includes("DNAT")) ?? "";
  assert.match(batch, /-d 203\.0\.113\.1\/32 /);
  assert.doesNotMatch(batch, /198\.51\.100\.7/);
  // A start (an administrator's or libvirt's) takes the host's default address as it is now.
  assert.equal(
    await runHook(call("web1", "start"), { ...f.deps, stateDir, facts: () => Promise.resolve(moved) }),
    0,
  );
  assert.deepEqual(pinnedDefaults(stateDir, "web1"), { 4: "198.51.100.7" });
  // The stop forgets it.
  assert.equal(await runHook(call("web1", "stopped"), { ...f.deps, stateDir }), 0);
  assert.deepEqual(pinnedDefaults(stateDir, "web1"), {});
});

Deno.test("runHook() ignores every other operation without running anything", async (t) => {
  for (const op of ["prepare", "release", "migrate", "restore", "attach"]) {
    await t.step(`${op}: stdin is not even read`, async () => {
      const f = await fake(GOOD);
      assert.equal(await runHook(call("web1", op), f.deps), 0);
      assert.deepEqual(f.calls, []);
      assert.equal(f.stdinRead(), false);
    });
  }
  await t.step("started (a qemu call: its stdin is a domain)", async () => {
    const f = await fake(GOOD);
    assert.equal(await runHook(call("web1", "started"), f.deps), 0);
    assert.deepEqual(f.calls, []);
  });
});

Deno.test("runHook() serves as the network hook when stdin holds <hookData>", async (t) => {
  const network = (op: string, nft: string | undefined) =>
    fake(GOOD, (argv) => (argv[0] === "nft" ? { code: 1, stderr: "Error: No such file or directory" } : {}))
      .then((f) => {
        f.deps.readStdin = () =>
          Promise.resolve("<hookData><network><name>default</name></network></hookData>");
        f.deps.nft = nft;
        return { f, run: () => runHook(call("default", op), f.deps) };
      });
  await t.step("start of a network named like a guest installs nothing", async () => {
    const { f, run } = await network("start", "nft");
    assert.equal(await run(), 0);
    assert.deepEqual(f.calls, []);
  });
  await t.step("started reads what is live, to put our accepts back in libvirt's chains", async () => {
    const { f, run } = await network("started", "nft");
    assert.equal(await run(), 0);
    // No table of libvirt's nor of ours: targeted looks (and the gates), nothing to write.
    assert.deepEqual(f.calls.slice(2).map((c) => c.slice(2).join(" ")), [
      "list table inet libvirt_hook_qemu",
      "list chain ip libvirt_network guest_input",
      "list chain ip6 libvirt_network guest_input",
      "list chains",
    ]);
    assert.deepEqual(f.stderr, []);
  });
  await t.step("port-created, a network-only operation, does nothing", async () => {
    const { f, run } = await network("port-created", "nft");
    assert.equal(await run(), 0);
    assert.deepEqual(f.calls, []);
  });
});

Deno.test("runHook() logs one line per action that changed the firewall, or failed to", async (t) => {
  await t.step("start", async () => {
    const f = await fake(GOOD);
    await runHook(call("web1", "start"), f.deps);
    assert.deepEqual(f.logged, ["start web1: 1 forward(s) live, 0 old rule(s) removed"]);
  });
  await t.step("a refused start", async () => {
    const f = await fake(GOOD);
    await runHook(call("db", "start"), f.deps);
    // Why, then what failed: syslog keeps the problem itself, as no one may see stderr (autostart).
    assert.equal(f.logged.length, 2);
    assert.match(f.logged[0]!, /^start db: .*hooks\.jsonc:\d+:\d+: .*\(db/);
    assert.match(
      f.logged[1]!,
      /^start db: failed: 1 problem\(s\) in .*hooks\.jsonc, listed above; nothing was changed$/,
    );
  });
  await t.step("a stop with nothing live changes nothing and logs nothing", async () => {
    const f = await fake(GOOD);
    await runHook(call("web1", "stopped"), f.deps);
    assert.deepEqual(f.logged, []);
  });
});

Deno.test("runHook() start prints the domain's own problems first, and at most 20 lines in all", async (t) => {
  // 30 domains with a bad address each, and "late" at the end of the file with its own problem.
  const bad = Array.from(
    { length: 30 },
    (_, i) => `"bad${i}": {"private_ip": "x${i}", "port_map": {"tcp": [1]}},`,
  );
  const text = `{\n${bad.join("\n")}\n"late": {"private_ip": "nope", "port_map": {"tcp": [2]}},\n${
    GOOD.slice(1)
  }`;
  await t.step("a domain with a problem of its own sees it first", async () => {
    const f = await fake(text);
    assert.equal(await runHook(call("late", "start"), f.deps), 1);
    assert.match(f.stderr[0]!, /hooks\.jsonc:32:\d+: Not an IP address \(late\.private_ip = "nope"\)$/);
    assert.equal(f.stderr.length, 20 + 2);
    assert.match(f.stderr[20]!, /hooks\.jsonc: 12 more problem\(s\) not shown; "qemu check" lists them all$/);
    assert.match(f.stderr[21]!, /^Cannot apply forwards for "late"/);
  });
  await t.step("a valid domain starts, with the same bound on what it prints", async () => {
    const f = await fake(text);
    assert.equal(await runHook(call("web1", "start"), f.deps), 0);
    assert.equal(f.stderr.length, 21);
    assert.match(f.stderr[20]!, /12 more problem\(s\) not shown/);
  });
});

Deno.test("runHook() start logs a public port the host itself listens on, and applies it all the same", async (t) => {
  const sshd = (address: string): Listener => ({ protocol: "tcp", family: 4, address, port: 2222 });
  for (
    const [name, listeners, logged] of [
      ["listening on any address", [sshd("0.0.0.0")], true],
      ["listening on the public address", [sshd("203.0.113.1")], true],
      ["listening on another address only", [sshd("127.0.0.1")], false],
      ["udp on that port", [{ ...sshd("0.0.0.0"), protocol: "udp" as const }], false],
    ] as const
  ) {
    await t.step(name, async () => {
      const f = await fake(GOOD, () => ({}), FACTS, [...listeners]);
      assert.equal(await runHook(call("web1", "start"), f.deps), 0);
      assert.equal(f.calls.length, 3);
      const warnings = f.logged.filter((l) => l.includes("warning"));
      assert.deepEqual(
        warnings,
        logged
          ? [
            `start web1: warning: public tcp 203.0.113.1:2222 takes from the host a port it listens on ` +
            `(${listeners[0]!.address}:2222): connections there now reach the guest, not the host`,
          ]
          : [],
      );
    });
  }
});

Deno.test("runHook() start logs a gate that will drop the forwards, and still starts the guest", async () => {
  const chains = JSON.stringify({
    nftables: [{
      chain: { family: "inet", table: "filter", name: "forward", hook: "forward", prio: 0, policy: "drop" },
    }],
  });
  const table = JSON.stringify({
    nftables: [
      { table: { family: "inet", name: "filter" } },
      {
        chain: { family: "inet", table: "filter", name: "forward", hook: "forward", prio: 0, policy: "drop" },
      },
    ],
  });
  const f = await fake(GOOD, (argv) => {
    if (argv.join(" ") === "nft -j list chains") return { stdout: chains };
    if (argv.join(" ") === "nft -j -i") return { stdout: table };
    // Nothing else of nftables is there: the iptables backend carries the forwards.
    if (argv[0] === "nft") return { code: 1, stderr: "Error: No such file or directory" };
    return {};
  });
  f.deps.nft = "nft";
  assert.equal(await runHook(call("web1", "start"), f.deps), 0, f.stderr.join("\n"));
  assert.deepEqual(f.logged.filter((l) => l.includes("warning")), [
    'start web1: warning: 1 of 1 forward(s) blocked by inet filter forward (priority 0): inet filter forward has policy drop; let it through with "nft insert rule inet filter forward ct status dnat accept", or hand us the chain: "/settings": {"accept_in": ["inet filter forward"]}',
  ]);
});

/** What iptables-save shows of web1 with GOOD's forward live (tcp 2222 -> 192.168.122.10:22). */
const LIVE_WEB1 = (h = domainHash("web1")) =>
  dedent(`
    *nat
    :PREROUTING ACCEPT [0:0]
    :LVH-${h}-DNAT - [0:0]
    -A PREROUTING -m comment --comment "libvirt-hook-qemu:1:web1" -j LVH-${h}-DNAT
    -A LVH-${h}-DNAT -d 203.0.113.1/32 -p tcp -m tcp --dport 2222 -m comment --comment "libvirt-hook-qemu:1:web1" -j DNAT --to-destination 192.168.122.10:22
    COMMIT
  `);

Deno.test("runHook() deletes the connections of forwards that go, says so, and never fails for it", async (t) => {
  await t.step("start without conntrack: a warning in syslog, the guest starts", async () => {
    const f = await fake(GOOD);
    f.deps.conntrack = () => undefined;
    assert.equal(await runHook(call("web1", "start"), f.deps), 0);
    assert.ok(f.calls.some((c) => c[0] === "iptables-restore"));
    assert.ok(
      f.logged.includes(
        "start web1: warning: conntrack is not installed (Debian package conntrack): connections through a " +
          "forward that goes or changes target keep their old target until they end",
      ),
      f.logged.join("\n"),
    );
  });
  await t.step("start with conntrack, nothing live before: no conntrack process, no warning", async () => {
    const f = await fake(GOOD);
    f.deps.conntrack = () => "/usr/sbin/conntrack";
    assert.equal(await runHook(call("web1", "start"), f.deps), 0);
    assert.deepEqual(f.calls, [SAVE_4, SAVE_6, RESTORE_4]);
    assert.deepEqual(f.logged.filter((l) => l.includes("conntrack")), []);
  });
  await t.step(
    "stopped: one conntrack process after the removal; what it deleted, in its syslog line",
    async () => {
      const f = await fake(GOOD, (argv) => {
        if (argv[0] === "iptables-save") return { stdout: LIVE_WEB1() };
        if (argv[0] === "/usr/sbin/conntrack") return { stdout: "tcp 6 431999 ESTABLISHED src=...\n" };
        return {};
      });
      f.deps.conntrack = () => "/usr/sbin/conntrack";
      assert.equal(await runHook(call("web1", "stopped"), f.deps), 0);
      assert.deepEqual(f.calls, [SAVE_4, SAVE_6, RESTORE_4, ["/usr/sbin/conntrack", "-R", "-"]]);
      assert.equal(f.stdins[3], "-D -f ipv4 -p tcp --orig-dst 203.0.113.1 --reply-src 192.168.122.10\n");
      // One line for the stop, no logger process of its own.
      assert.deepEqual(f.logged, [
        "stopped web1: 0 forward(s) live, 2 old rule(s) removed, 1 connection(s) through forwards that went or changed deleted",
      ]);
    },
  );
  await t.step(
    "stopped: conntrack fails; said on stderr and in syslog, the stop still succeeds",
    async () => {
      const f = await fake(GOOD, (argv) => {
        if (argv[0] === "iptables-save") return { stdout: LIVE_WEB1() };
        if (argv[0] === "conntrack") return { code: 1, stderr: "conntrack v1.4.7: Operation failed" };
        return {};
      });
      f.deps.conntrack = () => "conntrack";
      assert.equal(await runHook(call("web1", "stopped"), f.deps), 0);
      assert.deepEqual(f.stderr, [
        'Cannot delete the connections of forwards of "web1" that went or changed target: conntrack failed: conntrack v1.4.7: Operation failed',
      ]);
      assert.ok(f.logged.some((l) => l.startsWith("stopped web1: warning: Cannot delete the connections")));
      assert.ok(f.logged.some((l) => l.startsWith("stopped web1: 0 forward(s) live")), f.logged.join("\n"));
    },
  );
});
