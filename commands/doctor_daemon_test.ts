/** doctor's finding about libvirt's daemons: the one that runs each hook started after the hook was installed. */

import assert from "node:assert/strict";
import { daemonFindings, readDaemons, readInstalled } from "./doctor_daemon.ts";

const T = Date.UTC(2026, 11, 7, 12, 0, 0);
const both = { hooks: ["qemu", "network"] as const, sinceMs: T };

Deno.test("daemonFindings() fails a daemon that started before the hook was installed, naming its restart", async (t) => {
  const cases: [string, Parameters<typeof daemonFindings>, ReturnType<typeof daemonFindings>][] = [
    ["not installed here: nothing said", [[{ name: "libvirtd", pid: 9, startedMs: T - 1 }], undefined], []],
    [
      "libvirtd started after: ok",
      [[{ name: "libvirtd", pid: 9, startedMs: T + 5000 }], both],
      [{
        level: "ok",
        what:
          "libvirtd (pid 9) knows the qemu hook and network hook (started 2026-12-07T12:00:05Z, the hook installed 2026-12-07T12:00:00Z)",
      }],
    ],
    [
      "modular: virtqemud restarted since, virtnetworkd not: one FAIL, with its own restart",
      [[
        { name: "virtqemud", pid: 20, startedMs: T + 1000 },
        { name: "virtnetworkd", pid: 21, startedMs: T - 3_600_000 },
      ], both],
      [
        {
          level: "ok",
          what:
            "virtqemud (pid 20) knows the qemu hook (started 2026-12-07T12:00:01Z, the hook installed 2026-12-07T12:00:00Z)",
        },
        {
          level: "fail",
          what:
            "virtnetworkd (pid 21) started before the hook was installed (started 2026-12-07T11:00:00Z, the hook installed " +
            "2026-12-07T12:00:00Z): libvirt does not know the network hook and calls it for no guest",
          fix: "systemctl restart virtnetworkd",
        },
      ],
    ],
    [
      "only the qemu hook is ours (another network hook): virtnetworkd is not asked about",
      [[{ name: "virtnetworkd", pid: 21, startedMs: T - 1 }], { hooks: ["qemu"], sinceMs: T }],
      [{
        level: "note",
        what:
          "no libvirt daemon runs now (libvirtd, virtqemud, virtnetworkd): the one that starts finds the hook",
      }],
    ],
  ];
  for (const [name, args, expected] of cases) {
    await t.step(name, () => assert.deepEqual(daemonFindings(...args), expected));
  }
});

Deno.test("readDaemons() finds libvirt's daemons in /proc and when each started", async () => {
  const proc = await Deno.makeTempDir();
  try {
    await Deno.writeTextFile(`${proc}/stat`, "cpu  1 2 3\nbtime 1796644800\nprocesses 5\n");
    const proc1 = (pid: number, comm: string, ticks: number) => [
      Deno.mkdir(`${proc}/${pid}`).then(() =>
        Promise.all([
          Deno.writeTextFile(`${proc}/${pid}/comm`, `${comm}\n`),
          Deno.writeTextFile(
            `${proc}/${pid}/stat`,
            `${pid} (${comm} x) S 1 ${pid} ${pid} 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 ${ticks} 100 200\n`,
          ),
        ])
      ),
    ];
    await Promise.all([
      ...proc1(300, "virtqemud", 12345),
      ...proc1(301, "bash", 1),
      ...proc1(42, "libvirtd", 100),
    ]);
    assert.deepEqual(readDaemons(proc), [
      { name: "libvirtd", pid: 42, startedMs: 1796644800_000 + 1000 },
      { name: "virtqemud", pid: 300, startedMs: 1796644800_000 + 123450 },
    ]);
    assert.deepEqual(readDaemons(`${proc}/none`), []);
  } finally {
    await Deno.remove(proc, { recursive: true });
  }
});

Deno.test("readInstalled() reads install.sh's marker and which hooks its MANIFEST lists", async () => {
  const hooks = await Deno.makeTempDir();
  try {
    assert.equal(readInstalled(hooks), undefined);
    await Deno.mkdir(`${hooks}/libvirt-hook-qemu`);
    await Deno.writeTextFile(`${hooks}/libvirt-hook-qemu/INSTALLED`, "");
    await Deno.utime(`${hooks}/libvirt-hook-qemu/INSTALLED`, T / 1000, T / 1000);
    await Deno.writeTextFile(
      `${hooks}/libvirt-hook-qemu/MANIFEST`,
      "/etc/libvirt/hooks/qemu.d/libvirt-hook-qemu\n/etc/libvirt/hooks/hooks.schema.json\n",
    );
    assert.deepEqual(readInstalled(hooks), { hooks: ["qemu"], sinceMs: T });
  } finally {
    await Deno.remove(hooks, { recursive: true });
  }
});
