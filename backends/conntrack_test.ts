/** Unit tests of the flows forgotten when forwards go or change target: the lines, the one process, the sync. */

import { forget, forgetLines, MAX_PORT_LINES } from "./conntrack.ts";
import type { Forward, LiveForward } from "./forward.ts";
import { iptablesTools } from "./iptables.ts";
import { domainHash } from "./names.ts";
import { syncDomain } from "../rules.ts";
import { dedent, recordingRunner } from "../test/util.ts";
import assert from "node:assert/strict";

const live = (over: Partial<LiveForward> = {}): LiveForward => ({
  domain: "web1",
  family: 4,
  protocol: "udp",
  publicIp: "203.0.113.1",
  publicPorts: "51820",
  privateIp: "192.168.122.10",
  privatePorts: "51820",
  ...over,
});

const planned = (over: Partial<Forward> = {}): Forward => ({
  family: 4,
  protocol: "udp",
  publicIp: "203.0.113.1",
  publicPort: 51820,
  privateIp: "192.168.122.10",
  privatePort: 51820,
  count: 1,
  hairpinFrom: "192.168.122.0/24",
  ...over,
});

Deno.test("forgetLines() names exactly the flows of forwards that went or changed target", async (t) => {
  const cases: { name: string; before: LiveForward[]; after: Forward[]; lines: string[] }[] = [
    { name: "nothing live: nothing to delete", before: [], after: [planned()], lines: [] },
    { name: "an unchanged forward keeps its flows", before: [live()], after: [planned()], lines: [] },
    {
      name: "only the source changed: the target is the same, the flows stay",
      before: [live()],
      after: [planned({ sources: ["198.51.100.0/24"] })],
      lines: [],
    },
    {
      name:
        "a new private address: the flows DNATed to the old one go, and the old guest's own from the port",
      before: [live()],
      after: [planned({ privateIp: "192.168.122.11" })],
      lines: [
        "-D -f ipv4 -p udp --orig-dst 203.0.113.1 --reply-src 192.168.122.10",
        "-D -f ipv4 -p udp --orig-src 192.168.122.10 --orig-port-src 51820 --reply-dst 203.0.113.1 --reply-port-dst 51820",
      ],
    },
    {
      name:
        'a forward on "*" to a new guest: the flows translated to the old one go, whatever address they came to',
      before: [live({ publicIp: "*" })],
      after: [planned({ publicIp: "*", privateIp: "192.168.122.11" })],
      lines: ["-D -f ipv4 -p udp --dst-nat --reply-src 192.168.122.10"],
    },
    {
      name:
        "moved to another port of a new guest: the old guest's masqueraded flows cannot take the public port",
      before: [live({ protocol: "tcp", publicPorts: "2222", privatePorts: "22" })],
      after: [planned({ protocol: "tcp", publicPort: 2222, privatePort: 22, privateIp: "192.168.122.11" })],
      lines: ["-D -f ipv4 -p tcp --orig-dst 203.0.113.1 --reply-src 192.168.122.10"],
    },
    {
      name: "a removal (stop, remove): each family and protocol of the guest once, whatever the ports",
      before: [
        live(),
        live({ publicPorts: "53", privatePorts: "53" }),
        live({ protocol: "tcp", publicPorts: "2222", privatePorts: "22" }),
        live({ family: 6, publicIp: "2001:db8:1::1", privateIp: "fd00:122::10" }),
      ],
      after: [],
      lines: [
        "-D -f ipv4 -p udp --orig-dst 203.0.113.1 --reply-src 192.168.122.10",
        "-D -f ipv4 -p tcp --orig-dst 203.0.113.1 --reply-src 192.168.122.10",
        "-D -f ipv6 -p udp --orig-dst 2001:db8:1::1 --reply-src fd00:122::10",
      ],
    },
    {
      name:
        "a forward of the same two addresses stays: the changed one's ports alone, with its old private port",
      before: [
        live({ protocol: "tcp", publicPorts: "80", privatePorts: "80" }),
        live({ protocol: "tcp", publicPorts: "8000-8001", privatePorts: "9000-9001" }),
      ],
      after: [planned({ protocol: "tcp", publicPort: 80, privatePort: 80 })],
      lines: [
        "-D -f ipv4 -p tcp --orig-dst 203.0.113.1 --reply-src 192.168.122.10 --orig-port-dst 8000 --reply-port-src 9000",
        "-D -f ipv4 -p tcp --orig-dst 203.0.113.1 --reply-src 192.168.122.10 --orig-port-dst 8001 --reply-port-src 9001",
      ],
    },
    {
      name: "a port moved to another private port of the same guest: its old flows only",
      before: [live({ protocol: "tcp", publicPorts: "80", privatePorts: "80" })],
      after: [planned({ protocol: "tcp", publicPort: 80, privatePort: 8080 })],
      lines: [
        "-D -f ipv4 -p tcp --orig-dst 203.0.113.1 --reply-src 192.168.122.10 --orig-port-dst 80 --reply-port-src 80",
        "-D -f ipv4 -p tcp --orig-src 192.168.122.10 --orig-port-src 80 --reply-dst 203.0.113.1 --reply-port-dst 80",
      ],
    },
    {
      name: `beyond ${MAX_PORT_LINES} single ports, the group's line (each line is a dump of the table)`,
      before: [
        live({ publicPorts: "10000-10099", privatePorts: "10000-10099" }),
        live({ publicPorts: "53" }),
      ],
      after: [planned({ publicPort: 53, privatePort: 53 })],
      lines: ["-D -f ipv4 -p udp --orig-dst 203.0.113.1 --reply-src 192.168.122.10"],
    },
    {
      name: "an outbound NAT is no forward: nothing of it is deleted",
      before: [live({ protocol: "all", publicPorts: "", privatePorts: "", outbound: true })],
      after: [],
      lines: [],
    },
  ];
  for (const c of cases) {
    await t.step(c.name, () => assert.deepEqual(forgetLines(c.before, c.after, "web1"), c.lines));
  }
});

Deno.test("forget() runs one conntrack process for every line, and none without lines", async (t) => {
  await t.step("no lines: no process", async () => {
    const runner = recordingRunner();
    assert.deepEqual(await forget(runner, { conntrack: "conntrack", lines: [] }), { deleted: 0 });
    assert.equal(runner.calls.length, 0);
  });
  await t.step("the lines on stdin of `conntrack -R -`; the flows it printed are counted", async () => {
    const runner = recordingRunner(() => ({ stdout: "udp 17 29 src=a ...\ntcp 6 431999 ESTABLISHED ...\n" }));
    const lines = [
      "-D -f ipv4 -p udp --orig-dst 203.0.113.1 --reply-src 192.168.122.10",
      "-D -f ipv6 -p udp x",
    ];
    assert.deepEqual(await forget(runner, { conntrack: "/usr/sbin/conntrack", lines }), { deleted: 2 });
    assert.deepEqual(runner.calls, [{
      argv: ["/usr/sbin/conntrack", "-R", "-"],
      stdin: lines.join("\n") + "\n",
    }]);
  });
  await t.step("not installed, or refused: said, never thrown", async () => {
    const gone = recordingRunner(() => ({ code: 127, stderr: "conntrack: not found" }));
    assert.deepEqual(await forget(gone, { conntrack: "conntrack", lines: ["-D x"] }), { missing: true });
    const refused = recordingRunner(() => ({
      code: 2,
      stderr: "conntrack v1.4.7: unknown option `--x'\nTry ...",
    }));
    assert.deepEqual(await forget(refused, { conntrack: "conntrack", lines: ["-D x"] }), {
      error: "conntrack failed: conntrack v1.4.7: unknown option `--x'; Try ...",
    });
  });
});

/** What iptables-save shows of web1 with one UDP forward to 192.168.122.10. */
function saved(): string {
  const h = domainHash("web1");
  return dedent(`
    *nat
    :PREROUTING ACCEPT [0:0]
    :LVH-${h}-DNAT - [0:0]
    -A PREROUTING -m comment --comment "libvirt-hook-qemu:1:web1" -j LVH-${h}-DNAT
    -A LVH-${h}-DNAT -d 203.0.113.1/32 -p udp -m udp --dport 51820 -m comment --comment "libvirt-hook-qemu:1:web1" -j DNAT --to-destination 192.168.122.10:51820
    COMMIT
  `);
}

Deno.test("syncDomain() deletes the old target's flows once the new rules are committed", async (t) => {
  const sync = async (
    { save, after, conntrack, tracked }: {
      save: string;
      after: Forward[];
      conntrack: string | false;
      tracked?: number;
    },
  ) => {
    const runner = recordingRunner((argv) => argv[0] === "iptables-save" ? { stdout: save } : {});
    const told: unknown[] = [];
    const counted = tracked === undefined ? {} : { tracked: () => tracked };
    await syncDomain("web1", { runner, tools: iptablesTools(), conntrack, ...counted }, {
      forwards: after,
      flows: (done) => told.push(done),
    });
    return { commands: runner.calls.map((c) => c.argv[0]), calls: runner.calls, told };
  };
  await t.step(
    "a new private address: conntrack runs after iptables-restore, with the old target",
    async () => {
      const { commands, calls, told } = await sync({
        save: saved(),
        after: [planned({ privateIp: "192.168.122.11" })],
        conntrack: "/usr/sbin/conntrack",
      });
      assert.deepEqual(commands, [
        "iptables-save",
        "ip6tables-save",
        "iptables-restore",
        "/usr/sbin/conntrack",
      ]);
      assert.equal(
        calls.at(-1)!.stdin,
        "-D -f ipv4 -p udp --orig-dst 203.0.113.1 --reply-src 192.168.122.10\n" +
          "-D -f ipv4 -p udp --orig-src 192.168.122.10 --orig-port-src 51820 --reply-dst 203.0.113.1 --reply-port-dst 51820\n",
      );
      assert.deepEqual(told, [{ deleted: 0 }]);
    },
  );
  await t.step("a removal deletes them too", async () => {
    const { commands } = await sync({ save: saved(), after: [], conntrack: "conntrack" });
    assert.equal(commands.at(-1), "conntrack");
    assert.equal(commands.filter((c) => c === "conntrack").length, 1);
  });
  await t.step("a first start (nothing live) and an unchanged re-sync run no conntrack at all", async () => {
    for (const save of ["*nat\nCOMMIT\n", saved()]) {
      const { commands, told } = await sync({ save, after: [planned()], conntrack: "conntrack" });
      assert.ok(!commands.includes("conntrack"), commands.join(" "));
      assert.deepEqual(told, []);
    }
  });
  await t.step("the kernel tracks no connection at all: nothing to delete, no process", async () => {
    const { commands, told } = await sync({ save: saved(), after: [], conntrack: "conntrack", tracked: 0 });
    assert.deepEqual(commands, ["iptables-save", "ip6tables-save", "iptables-restore"]);
    assert.deepEqual(told, []);
  });
  await t.step("some connections tracked: conntrack runs", async () => {
    const { commands } = await sync({ save: saved(), after: [], conntrack: "conntrack", tracked: 3 });
    assert.equal(commands.at(-1), "conntrack");
  });
  await t.step(
    "a removal from a partial read whose targets cannot be read: said, the removal done",
    async () => {
      const h = domainHash("web1");
      const chains = [{ table: "nat", chain: `LVH-${h}-DNAT`, owner: h }];
      const runner = recordingRunner();
      runner.run = (argv) => {
        runner.calls.push({ argv });
        if (argv[0] === "iptables") return Promise.reject(new Error("boom"));
        return Promise.resolve({ code: 0, stdout: "", stderr: "" });
      };
      const told: unknown[] = [];
      const read = Promise.resolve({
        ipt: { 4: { chains, rules: [] }, 6: { chains: [], rules: [] } },
        nft: undefined,
        scope: "chains" as const,
      });
      const changes = await syncDomain("web1", {
        runner,
        tools: iptablesTools(),
        nft: "nft",
        conntrack: "conntrack",
      }, { forwards: [], read, flows: (done) => told.push(done) });
      assert.deepEqual(told, [{ error: "Cannot read the live forwards' targets: boom" }]);
      assert.deepEqual(runner.calls.map((c) => c.argv[0]), ["iptables", "nft"]);
      assert.equal(changes.length, 1);
    },
  );
  await t.step("without conntrack: said, no process, the sync done", async () => {
    const { commands, told } = await sync({ save: saved(), after: [], conntrack: false });
    assert.ok(commands.includes("iptables-restore"));
    assert.ok(!commands.includes("conntrack"));
    assert.deepEqual(told, [{ missing: true }]);
  });
});
