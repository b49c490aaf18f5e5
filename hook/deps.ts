/** Everything the hook touches outside itself (HookDeps), and the real world behind it. */

import { drivesNfTables, type Tools, trackedConnections } from "../backends/backend.ts";
import type { Family } from "../system/address.ts";
import { env, onPath, readStdin, STATE_DIR } from "../system/env.ts";
import { type HostFacts, type Listener, readHostFacts, readListeners } from "../system/host.ts";
import { withLock } from "../system/lock.ts";
import { log, type Outlet, problem } from "../system/report.ts";
import { type Runner, systemRunner } from "../system/runner.ts";

/** Everything the hook touches outside itself, so tests can record it. */
export interface HookDeps extends Outlet {
  env(name: string): string | undefined;
  readStdin(): Promise<string>;
  runner: Runner;
  /** Writes one line to stderr (libvirt shows it when the hook fails). */
  problem(line: string): void;
  facts(): Promise<HostFacts>;
  lock<T>(fn: () => Promise<T>): Promise<T>;
  /** Turns on hairpin mode of a bridge port (the guest's tap), so a guest can reach itself when br_netfilter is on. */
  setHairpin(device: string): Promise<void>;
  /** The sockets the host itself listens on (a forward of such a public port takes it from the host). */
  listeners(): Listener[];
  /** Records one action where administrators look (syslog); must never fail or block. */
  log(line: string): void;
  /** The nft program, or undefined to leave nftables alone (hosts without it, tests of the iptables path). */
  nft: string | undefined;
  /**
   * The conntrack program, found on PATH (undefined where it is not installed): it deletes the flows of forwards
   * that went or changed target. Absent: connections are left alone (tests of other things).
   */
  conntrack?(): string | undefined;
  /** How many connections the kernel tracks here (none: nothing to delete); absent: not known. */
  tracked?(): number;
  /** Our directory on /run, if any: the validated config's cache and the busy-ruleset hint live there. */
  stateDir?: string;
  /** Where libvirt keeps its running networks' status; absent: libvirt's own place. */
  networkRunDir?: string;
  /** Where libvirt's dnsmasq records DHCP leases (`<bridge>.status`); absent: libvirt's own place. */
  dnsmasqDir?: string;
  /** libvirt's network.conf; absent: libvirt's own. */
  networkConf?: string;
  /** Whether these iptables tools drive nf_tables (iptables-nft); absent: read with iptables-save. */
  nfTables?(tools: Record<Family, Tools>): boolean;
}

async function setHairpin(device: string): Promise<void> {
  if (!/^[^/\0]+$/.test(device) || device === "." || device === "..") {
    throw new TypeError(`Not a device name: "${device}"`);
  }
  const path = `/sys/class/net/${device}/brport/hairpin_mode`;
  try {
    if ((await Deno.readTextFile(path)).trim() === "1") return;
  } catch (err) {
    // Not a bridge port (macvtap, direct): hairpin mode does not apply.
    if (err instanceof Deno.errors.NotFound) return;
    throw err;
  }
  await Deno.writeTextFile(path, "1");
}

/** The hook's dependencies on this machine. */
export function systemHookDeps(): HookDeps {
  // Looked up once per call, and only where a forward is there to need it.
  let conntrack: string | undefined | null = null;
  return {
    env,
    readStdin,
    runner: systemRunner(),
    problem,
    facts: readHostFacts,
    lock: (fn) => withLock(fn),
    setHairpin,
    listeners: readListeners,
    log,
    nft: "nft",
    conntrack: () => conntrack === null ? (conntrack = onPath("conntrack", env("PATH"))) : conntrack,
    tracked: trackedConnections,
    stateDir: env("LIBVIRT_HOOK_QEMU_STATE_DIR") || STATE_DIR,
    // Tests only (libvirt never sets it): where the lab keeps network status files.
    ...(env("LIBVIRT_NETWORK_RUN_DIR") ? { networkRunDir: env("LIBVIRT_NETWORK_RUN_DIR")! } : {}),
    ...(env("LIBVIRT_DNSMASQ_DIR") ? { dnsmasqDir: env("LIBVIRT_DNSMASQ_DIR")! } : {}),
    nfTables: (tools) => drivesNfTables(tools, env("PATH")),
  };
}
