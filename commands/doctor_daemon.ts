/** `doctor`'s finding about libvirt's daemons: does the one that runs each hook of ours know it? */

import { fail, type Finding, note, ok } from "./doctor_findings.ts";

/** Which hooks each libvirt daemon runs: libvirtd both; with the modular daemons, one each. */
export const HOOK_DAEMONS: Record<string, readonly ("qemu" | "network")[]> = {
  libvirtd: ["qemu", "network"],
  virtqemud: ["qemu"],
  virtnetworkd: ["network"],
};

/** A libvirt daemon running now, and when it started (ms since the epoch). */
export interface RunningDaemon {
  name: string;
  pid: number;
  startedMs: number;
}

/** Our installed hooks (which of qemu and network), and since when (install.sh's INSTALLED marker). */
export interface InstalledHooks {
  hooks: readonly ("qemu" | "network")[];
  sinceMs: number;
}

/**
 * libvirt looks for hooks when its daemon starts (each modular daemon for its own hooks): a daemon that started
 * before our hook was installed never calls it, until it is restarted. Nothing is said where the hook is not
 * installed here.
 */
export function daemonFindings(daemons: RunningDaemon[], installed: InstalledHooks | undefined): Finding[] {
  if (installed === undefined) return [];
  const relevant = daemons.filter((d) => HOOK_DAEMONS[d.name]?.some((h) => installed.hooks.includes(h)));
  if (relevant.length === 0) {
    return [
      note(
        "no libvirt daemon runs now (libvirtd, virtqemud, virtnetworkd): the one that starts finds the hook",
      ),
    ];
  }
  return relevant.map((d) => {
    const hooks = HOOK_DAEMONS[d.name]!.filter((h) => installed.hooks.includes(h)).map((h) => `${h} hook`)
      .join(" and ");
    const when = `started ${iso(d.startedMs)}, the hook installed ${iso(installed.sinceMs)}`;
    if (d.startedMs >= installed.sinceMs) return ok(`${d.name} (pid ${d.pid}) knows the ${hooks} (${when})`);
    return fail(
      `${d.name} (pid ${d.pid}) started before the hook was installed (${when}): libvirt does not know the ${hooks} and calls it for no guest`,
      `systemctl restart ${d.name}`,
    );
  });
}

function iso(ms: number): string {
  return new Date(ms).toISOString().replace(/\.\d+Z$/, "Z");
}

/** The libvirt daemons running now, read from /proc (`proc`: another root, for tests). */
export function readDaemons(proc = "/proc"): RunningDaemon[] {
  const boot = /^btime (\d+)$/m.exec(readOr(`${proc}/stat`))?.[1];
  if (boot === undefined) return [];
  const out: RunningDaemon[] = [];
  for (const entry of safeReadDir(proc)) {
    if (!/^\d+$/.test(entry)) continue;
    const name = readOr(`${proc}/${entry}/comm`).trim();
    if (!(name in HOOK_DAEMONS)) continue;
    // Field 22 of stat, after the command in parentheses (which may hold spaces): clock ticks (USER_HZ, 100) since boot.
    const fields = readOr(`${proc}/${entry}/stat`).replace(/^.*\) /s, "").split(" ");
    const ticks = Number(fields[19]);
    if (!Number.isFinite(ticks)) continue;
    out.push({ name, pid: Number(entry), startedMs: Number(boot) * 1000 + ticks * 10 });
  }
  return out.sort((a, b) => a.pid - b.pid);
}

/** Our hooks under `hooksDir` and since when they are there, from install.sh's marker; undefined: not installed. */
export function readInstalled(hooksDir = "/etc/libvirt/hooks"): InstalledHooks | undefined {
  let sinceMs: number;
  try {
    sinceMs = Deno.statSync(`${hooksDir}/libvirt-hook-qemu/INSTALLED`).mtime?.getTime() ?? NaN;
  } catch {
    return undefined;
  }
  if (!Number.isFinite(sinceMs)) return undefined;
  const manifest = readOr(`${hooksDir}/libvirt-hook-qemu/MANIFEST`).split("\n");
  const hooks = (["qemu", "network"] as const).filter((h) =>
    manifest.some((line) => line.endsWith(`/hooks/${h}`) || line.endsWith(`/hooks/${h}.d/libvirt-hook-qemu`))
  );
  return { hooks, sinceMs };
}

function readOr(path: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return "";
  }
}

function safeReadDir(dir: string): string[] {
  try {
    return [...Deno.readDirSync(dir)].map((e) => e.name);
  } catch {
    return [];
  }
}
