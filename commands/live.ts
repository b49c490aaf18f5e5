/** What is live, by domain: forwards read back from the firewall, running guests, and where accepts stand. */

import {
  bridgesOf,
  carriedDomain,
  domainHash,
  type FirewallState,
  type Forward,
  isHashOnly,
  type LiveForward,
  type Packet,
} from "../backends/backend.ts";
import type { Config, Settings } from "../config/model.ts";
import type { HookDeps } from "../hook/deps.ts";
import { applyDeps, loadFor } from "../hook/domain.ts";
import { acceptMisplaced as misplaced, chooseBackend, liveForwardsByDomain, readLive } from "../rules.ts";
import { publicAddress } from "../system/address.ts";
import { qemuRunDir } from "../system/libvirt.ts";
import { type ConnectedRoute, type Listener, listenerAt } from "../system/host.ts";
import { message } from "../system/report.ts";

/** Where libvirt keeps the XML of running guests (see qemuRunDir). */
export function runDir(): string {
  return qemuRunDir();
}

/** A running guest's XML (libvirt's status file: its live XML); undefined where the guest does not run. */
export function runningXml(domain: string): Promise<string | undefined> {
  return Deno.readTextFile(`${runDir()}/${domain}.xml`).catch(() => undefined);
}

/**
 * A guest's XML as the operator commands read it: a running guest's status file (its live XML, metadata as
 * `virsh metadata --live` left it), else its defined XML (`virsh dumpxml --inactive`: commands may call libvirt,
 * the hook never does). Undefined where neither is there (no such guest, or no libvirt here).
 */
export async function guestXml(deps: Pick<HookDeps, "runner">, domain: string): Promise<string | undefined> {
  const running = await runningXml(domain);
  if (running !== undefined) return running;
  try {
    const r = await deps.runner.run(["virsh", "-q", "dumpxml", "--inactive", "--", domain], {
      timeoutMs: 10_000,
    });
    return r.code === 0 && r.stdout.trim() !== "" ? r.stdout : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The forwards that are live, by domain, read back from either backend. A domain whose name was too long for our
 * comments is known by its hash only; it gets its name back where one of `names` has that hash.
 */
export function forwardsByDomain(state: FirewallState, names: Iterable<string>): Map<string, LiveForward[]> {
  const out = liveForwardsByDomain(state);
  const byHash = new Map<string, string>();
  for (const name of names) if (isHashOnly(carriedDomain(name))) byHash.set(domainHash(name), name);
  if (byHash.size === 0) return out;
  return new Map([...out].map(([domain, forwards]) => [byHash.get(domainHash(domain)) ?? domain, forwards]));
}

/** The names a domain known only by its hash may have: those of the config, and of the running guests. */
export async function knownNames(config: Config): Promise<string[]> {
  return [...config.names, ...await runningDomains()];
}

/** The first packet of a live forward's connections, as a gate at the forward hook sees it. */
export function livePacket(f: LiveForward, connected: ConnectedRoute[]): Packet {
  const oif = bridgesOf([{ family: f.family, privateIp: f.privateIp } as Forward], connected)[f.family][0];
  return {
    family: f.family,
    protocol: f.protocol,
    daddr: f.privateIp,
    dport: Number(f.privatePorts.split("-")[0]),
    ...(oif === undefined ? {} : { oif }),
  };
}

/** The host's own listener a live forward's public port takes over, as `address:port`, if any. */
export function hostListener(f: LiveForward, listeners: Listener[]): string | undefined {
  const address = publicAddress(f.publicIp, f.family);
  const [first = 0, last = first] = f.publicPorts.split("-").map(Number);
  const l = address && listenerAt(listeners, { protocol: f.protocol, address, first, last });
  return l ? `${l.family === 6 ? `[${l.address}]` : l.address}:${l.port}` : undefined;
}

/**
 * Whether a domain's forwards are live but its accept is not where it must be: iptables' FORWARD appeared since
 * (Docker or ufw started) without our accept in it, or another tool put its rules ahead of our jumps (libvirt and
 * firewalld insert theirs at the top when they reload).
 */
export function acceptMisplaced(state: FirewallState, domain: string, forwards: Forward[]): boolean {
  return misplaced(state, domain, forwards);
}

/** The guests libvirt runs now: those with a status file in its run directory. */
export async function runningDomains(): Promise<string[]> {
  try {
    const out: string[] = [];
    for await (const e of Deno.readDir(runDir())) if (e.name.endsWith(".xml")) out.push(e.name.slice(0, -4));
    return out.sort();
  } catch {
    return [];
  }
}

/** Which backend start would use here, and why, from what is live. */
export function describeBackend(setting: Settings["backend"], state: FirewallState): string {
  const libvirt = state.nft && Object.keys(state.nft.libvirt).length > 0
    ? "libvirt uses nftables"
    : state.ipt[4]?.libvirt
    ? "libvirt uses iptables"
    : "no libvirt network firewall seen";
  try {
    return `${chooseBackend(setting, state)} (setting "${setting}"; ${libvirt})`;
  } catch (err) {
    return `none: ${err instanceof Error ? err.message : String(err)}`;
  }
}

/** The live firewall, or why it cannot be read (reading it needs root). */
export async function readFirewall(
  deps: HookDeps,
  config: Config,
): Promise<FirewallState | { error: string }> {
  try {
    return await readLive(applyDeps(deps, config));
  } catch (err) {
    return { error: message(err) };
  }
}

export async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Reads the live firewall and returns its forwards by domain. */
export async function liveByDomain(deps: HookDeps): Promise<Map<string, LiveForward[]>> {
  const { config } = await loadFor({ ...deps, problem: () => {} });
  return forwardsByDomain(await readLive(applyDeps(deps)), await knownNames(config));
}
