/** What the hook does for each libvirt call: install, re-sync or remove one domain's forwards. */

import {
  type Config,
  configCandidates,
  configMentions,
  type ConfigSource,
  type Diagnostic,
  domainConfig,
  formatDiagnostic,
  loadConfig,
  loadConfigFor,
  readConfigSource,
} from "../config.ts";
import { domainHash, type Forward, iptablesTools, planForwards, type Tools } from "../rules.ts";
import {
  type ApplyDeps,
  beginRead,
  type Change,
  type FirewallState,
  foreignGates,
  reassertAccepts,
  syncDomain,
} from "./apply.ts";
import type { Family } from "./address.ts";
import { guestInterfaces, xmlKind } from "./domain_xml.ts";
import { type ConnectedRoute, type HostFacts, type Listener, listenerAt } from "./host.ts";
import {
  type BaseChain,
  type Blocker,
  blockers,
  describeBlocker,
  type ForeignGate,
  gateName,
  type Packet,
} from "./gates.ts";
import { bridgesOf } from "./nft.ts";
import { parseAddress } from "./address.ts";
import type { Runner } from "./runner.ts";

/** The operations libvirt passes to the qemu hook. */
export const QEMU_OPERATIONS = [
  "prepare",
  "start",
  "started",
  "stopped",
  "release",
  "migrate",
  "restore",
  "reconnect",
  "attach",
] as const;

/** The operations libvirt passes to the network hook (`/etc/libvirt/hooks/network`). */
export const NETWORK_OPERATIONS = [
  "start",
  "started",
  "stopped",
  "port-created",
  "port-deleted",
  "updated",
  "plugged",
  "unplugged",
] as const;

/** One call from libvirt: `<domain> <operation> <sub-operation> <extra>`. */
export interface HookCall {
  domain: string;
  operation: string;
  subOperation: string;
  extra: string;
}

/** Tells whether argv is a libvirt hook call: four arguments, a known operation, a known sub-operation. */
export function asHookCall(args: string[]): HookCall | undefined {
  if (args.length !== 4) return undefined;
  const [domain = "", operation = "", subOperation = "", extra = ""] = args;
  const known = [...QEMU_OPERATIONS, ...NETWORK_OPERATIONS] as readonly string[];
  if (!known.includes(operation)) return undefined;
  if (!["begin", "end", "-"].includes(subOperation)) return undefined;
  return { domain, operation, subOperation, extra };
}

/** Everything the hook touches outside itself, so tests can record it. */
export interface HookDeps {
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
  /** Our directory on /run, if any: the validated config's cache and the busy-ruleset hint live there. */
  stateDir?: string;
  /** Where libvirt keeps its running networks' status; absent: libvirt's own place. */
  networkRunDir?: string;
  /** libvirt's network.conf; absent: libvirt's own. */
  networkConf?: string;
  /** Whether these iptables tools drive nf_tables (iptables-nft); absent: read with iptables-save. */
  nfTables?(tools: Record<Family, Tools>): boolean;
}

/** What applying needs, from the hook's dependencies, the config's settings and the host's networks. */
export function applyDeps(deps: HookDeps, config?: Config, facts?: HostFacts): ApplyDeps {
  const t = tools(deps);
  return {
    runner: deps.runner,
    tools: t,
    ...(deps.nft !== undefined && deps.nfTables?.(t) ? { iptablesNft: true } : {}),
    ...(deps.nft === undefined ? {} : { nft: deps.nft }),
    ...(config ? { backend: config.settings.backend, acceptIn: config.settings.acceptIn } : {}),
    ...(facts ? { connected: facts.connected } : {}),
    ...(deps.stateDir === undefined ? {} : { hintDir: deps.stateDir }),
    ...(deps.networkRunDir === undefined ? {} : { networkRunDir: deps.networkRunDir }),
    ...(deps.networkConf === undefined ? {} : { networkConf: deps.networkConf }),
  };
}

/** Runs one hook call and returns its exit code: non-zero only when `start` cannot install the forwards. */
export async function runHook(call: HookCall, deps: HookDeps): Promise<number> {
  if (await hookRole(call, deps) === "network") {
    await networkHook(call, deps);
    return 0;
  }
  switch (call.operation) {
    case "start":
      return (await install(call.domain, deps)) === "failed" ? 1 : 0;
    case "reconnect":
      await resync(call.domain, deps, "reconnect");
      return 0;
    case "stopped":
      await remove(call.domain, deps, "stopped");
      return 0;
    default:
      return 0;
  }
}

/**
 * Which hook libvirt ran: the same executable serves as the qemu and the network hook (the name a compiled binary
 * was started under is not reliable). An operation only one of them has decides; for the shared ones (start,
 * started, stopped) the XML on stdin does: `<domain>` or `<hookData>`.
 */
async function hookRole(call: HookCall, deps: HookDeps): Promise<"qemu" | "network"> {
  const qemu = (QEMU_OPERATIONS as readonly string[]).includes(call.operation);
  const network = (NETWORK_OPERATIONS as readonly string[]).includes(call.operation);
  if (qemu !== network) return qemu ? "qemu" : "network";
  return xmlKind(await deps.readStdin()) === "network" ? "network" : "qemu";
}

/** The note that an administrator removed a running guest's forwards on purpose (`remove`): watch leaves it be. */
export function removedMarker(stateDir: string, domain: string): string {
  return `${stateDir}/removed-${domainHash(domain)}`;
}

/** Removes a file of ours, if it is there; synchronously, as a hook call is about to end. */
function removeIfThere(path: string): void {
  try {
    Deno.removeSync(path);
  } catch {
    // Not there: nothing to do.
  }
}

/** The iptables programs, following IPTABLES_BINARY. */
export function tools(deps: Pick<HookDeps, "env">): Record<Family, Tools> {
  return iptablesTools(deps.env("IPTABLES_BINARY") || undefined);
}

/**
 * How many of the config's problems one call for a domain prints: libvirt shows every line in `virsh start`, and a
 * file with 200 000 clashing entries must not bury the one that matters.
 */
export const MAX_PRINTED_PROBLEMS = 20;

/**
 * Prints the config's problems: for a call about one domain, those that concern it (its own and the file's) first,
 * and at most MAX_PRINTED_PROBLEMS in all, then how many more there are; without a domain, every one.
 */
function printProblems(config: Config, deps: Pick<HookDeps, "problem">, domain?: string): void {
  const concerns = (d: Diagnostic) => d.domains === undefined || d.domains.includes(domain!);
  const ordered = domain === undefined
    ? config.diagnostics
    : [...config.diagnostics.filter(concerns), ...config.diagnostics.filter((d) => !concerns(d))];
  const shown = domain === undefined ? ordered : ordered.slice(0, MAX_PRINTED_PROBLEMS);
  for (const d of shown) deps.problem(formatDiagnostic(d));
  const count = config.diagnosticCount ?? ordered.length;
  if (shown.length < count) {
    deps.problem(
      `${config.file}: ${count - shown.length} more problem(s) not shown; "qemu check" lists them all`,
    );
  }
}

/**
 * Reads the host facts, then the config (using the default addresses to find clashing claims), and prints its
 * problems: for a call about one `domain`, those that concern it; `source`: the config file read already.
 */
export async function loadFor(
  deps: Pick<HookDeps, "facts" | "env" | "problem" | "stateDir">,
  { source, domain }: { source?: ConfigSource; domain?: string } = {},
): Promise<{ config: Config; facts: HostFacts }> {
  const facts = await deps.facts();
  const defaults: Partial<Record<Family, string>> = {};
  for (const family of [4, 6] as const) {
    const found = facts.defaultPublicIp[family];
    if (found && "address" in found) defaults[family] = found.address;
  }
  const candidates = configCandidates(deps.env);
  const options = { defaultPublicIp: defaults };
  // A call for one domain reads only what concerns it from the cache; the commands read the whole config.
  const config = domain === undefined
    ? await loadConfig(candidates, options, deps.stateDir, source)
    : await loadConfigFor(domain, candidates, {
      options,
      cacheDir: deps.stateDir,
      ...(source ? { source } : {}),
    });
  printProblems(config, deps, domain);
  return { config, facts };
}

/** What install did: the forwards are live, the config does not name the domain, or it could not. */
export type InstallResult = "installed" | "absent" | "failed";

/**
 * Installs a domain's forwards from the config (libvirt's start, the apply command). Where the config names the
 * domain, the firewall is read (a process, ~3 ms) while the config is validated and the forwards are planned:
 * under the lock from the start, as every read that a write follows.
 */
export async function install(domain: string, deps: HookDeps, action = "start"): Promise<InstallResult> {
  const source = readConfigSource(configCandidates(deps.env));
  if (!configMentions(source, domain)) return await installWith(domain, deps, action, source);
  return await deps.lock(async () => {
    const reading = (await beginRead(applyDeps(deps), domain, false)).state;
    try {
      return await installWith(domain, deps, action, source, reading);
    } finally {
      // Never left running when we return, whatever path above awaited it or not.
      await reading.catch(() => {});
    }
  });
}

/** install(), from the config file as read, with the firewall's read already under way (and the lock held), or not. */
async function installWith(
  domain: string,
  deps: HookDeps,
  action: string,
  source: ConfigSource,
  reading?: Promise<FirewallState>,
): Promise<InstallResult> {
  const { config, facts } = await loadFor(deps, { source, domain });
  const found = domainConfig(config, domain);
  if (found.kind === "absent") return "absent";
  const fail = (why: string) => {
    deps.problem(`Cannot apply forwards for "${domain}": ${why}`);
    deps.log(`${action} ${domain}: failed: ${why}`);
    return "failed" as const;
  };
  if (found.kind === "invalid") {
    return fail(`${found.errors.length} problem(s) in ${config.file}, listed above; nothing was changed`);
  }
  const plan = planForwards(found.entries, facts);
  if (plan.problems.length > 0) {
    for (const p of plan.problems) deps.problem(`${config.file}: ${p}`);
    return fail("nothing was changed");
  }
  try {
    const sync = () => syncDomain(domain, plan.forwards, applyDeps(deps, config, facts), reading);
    const changes = reading ? await sync() : await deps.lock(sync);
    await hairpinPorts(domain, plan.forwards, facts, deps);
    deps.log(`${action} ${domain}: ${describe(changes, plan.forwards)}`);
    const hooks = reading ? (await reading).nft?.hooks : undefined;
    const warnings = [
      ...takenFromHost(plan.forwards, deps.listeners()),
      ...await gateWarnings(plan.forwards, applyDeps(deps, config, facts), hooks),
    ];
    for (const w of warnings) deps.log(`${action} ${domain}: warning: ${w}`);
    if (deps.stateDir !== undefined) removeIfThere(removedMarker(deps.stateDir, domain));
    return "installed";
  } catch (err) {
    return fail(message(err));
  }
}

/**
 * Makes a domain's live rules equal to what the config says now (libvirt's reconnect, the reload command);
 * keeps them as they are when the config cannot be trusted. False when something could not be done.
 */
export async function resync(domain: string, deps: HookDeps, action: string): Promise<boolean> {
  const { config, facts } = await loadFor(deps, { domain });
  const found = domainConfig(config, domain);
  const keep = (why: string) => {
    deps.problem(`Keeping the live forwards of "${domain}" unchanged: ${why}`);
    deps.log(`${action} ${domain}: kept live rules: ${why}`);
    return false;
  };
  if (config.broken || found.kind === "invalid") {
    return keep(`problems in ${config.file} (above, or all of them with "qemu check")`);
  }
  let forwards: Forward[] = [];
  if (found.kind === "ok") {
    const plan = planForwards(found.entries, facts);
    if (plan.problems.length > 0) {
      for (const p of plan.problems) deps.problem(`${config.file}: ${p}`);
      return keep("its forwards cannot be planned");
    }
    forwards = plan.forwards;
  }
  try {
    const changes = await deps.lock(() => syncDomain(domain, forwards, applyDeps(deps, config, facts)));
    if (forwards.length > 0) await hairpinPorts(domain, forwards, facts, deps);
    if (changes.length > 0) deps.log(`${action} ${domain}: ${describe(changes, forwards)}`);
    return true;
  } catch (err) {
    deps.problem(`Cannot re-apply forwards for "${domain}": ${message(err)}`);
    deps.log(`${action} ${domain}: failed: ${message(err)}`);
    return false;
  }
}

/** Removes whatever is live for a domain, whatever the config says (libvirt's stopped, the remove command). */
export async function remove(domain: string, deps: HookDeps, action: string): Promise<boolean> {
  try {
    const changes = await deps.lock(() => syncDomain(domain, [], applyDeps(deps)));
    if (changes.length > 0) deps.log(`${action} ${domain}: ${describe(changes, [])}`);
    return true;
  } catch (err) {
    deps.problem(`Cannot remove forwards for "${domain}": ${message(err)}`);
    deps.log(`${action} ${domain}: failed: ${message(err)}`);
    return false;
  }
}

/**
 * The network hook: when libvirt (re)starts a network it re-creates its nftables chains, and our accepts must
 * go back in front of its reject. Never fails: a failing network hook stops the network.
 */
async function networkHook(call: HookCall, deps: HookDeps): Promise<void> {
  if (call.operation !== "started") return;
  try {
    const facts = await deps.facts();
    const count = await deps.lock(() => reassertAccepts(applyDeps(deps, undefined, facts)));
    if (count > 0) deps.log(`network ${call.domain} started: re-asserted our accepts in libvirt's chains`);
  } catch (err) {
    deps.problem(`Cannot re-assert forwards after network "${call.domain}" started: ${message(err)}`);
  }
}

/**
 * With bridge netfilter on, a DNAT to a guest on the same bridge is forwarded by the bridge itself, back out of
 * the port the packet came in on, which a bridge refuses unless that port is in hairpin mode. So a guest can
 * reach its own forward only with hairpin mode on its tap: a per-port setting, never a host-wide one.
 */
async function hairpinPorts(domain: string, forwards: Forward[], facts: HostFacts, deps: HookDeps) {
  if (!forwards.some((f) => facts.bridgeNetfilter[f.family])) return;
  const bridges = new Set(forwards.map((f) => f.interface));
  const any = bridges.has(undefined);
  const taps = guestInterfaces(await deps.readStdin()).filter((i) => any || bridges.has(i.bridge));
  for (const tap of taps) {
    try {
      await deps.setHairpin(tap.device);
    } catch (err) {
      deps.problem(`Cannot turn on hairpin mode on "${tap.device}" of "${domain}": ${message(err)}`);
    }
  }
}

/**
 * The forwards whose public port the host itself listens on, each said as one line: legitimate (a port 22 on an
 * address of its own for the guest), but a forward on an address sshd listens on locks the administrator out.
 */
export function takenFromHost(forwards: Forward[], listeners: Listener[]): string[] {
  const out: string[] = [];
  for (const f of forwards) {
    const last = f.publicPort + f.count - 1;
    const l = listenerAt(listeners, f.protocol, parseAddress(f.publicIp)!, f.publicPort, last);
    if (!l) continue;
    const at = (ip: string, port: number | string) => `${ip.includes(":") ? `[${ip}]` : ip}:${port}`;
    const ports = f.count === 1 ? `${f.publicPort}` : `${f.publicPort}-${last}`;
    out.push(
      `public ${f.protocol} ${at(f.publicIp, ports)} takes from the host a port it listens on ` +
        `(${at(l.address, l.port)}): connections there now reach the guest, not the host`,
    );
  }
  return out;
}

/** The first packet of a forward's connections, as a gate at the forward hook sees it (after our DNAT). */
export function packetOf(f: Forward, connected: ConnectedRoute[]): Packet {
  const oif = bridgesOf([f], connected)[f.family][0];
  return {
    family: f.family,
    protocol: f.protocol,
    daddr: f.privateIp,
    dport: f.privatePort,
    ...(oif === undefined ? {} : { oif }),
  };
}

/**
 * One line per gate no one opens for us that drops (or may drop) some of these forwards: the guest still starts,
 * but a forward that says OK and carries nothing must never go unsaid. Reads gates only where there are some.
 */
export async function gateWarnings(
  forwards: Forward[],
  deps: ApplyDeps,
  hooks?: BaseChain[],
): Promise<string[]> {
  try {
    return gateLines(forwards, await foreignGates(deps, hooks), deps.connected ?? []);
  } catch {
    return [];
  }
}

/** One line per gate among `gates` that stops some of `forwards`: how many, where, why, and what opens it. */
export function gateLines(forwards: Forward[], gates: ForeignGate[], connected: ConnectedRoute[]): string[] {
  if (gates.length === 0) return [];
  const byGate = new Map<string, { blocker: Blocker; count: number }>();
  for (const f of forwards) {
    for (const b of blockers(gates, packetOf(f, connected))) {
      const key = gateName(b.gate);
      const seen = byGate.get(key);
      if (seen) seen.count++;
      else byGate.set(key, { blocker: b, count: 1 });
    }
  }
  return [...byGate.values()].map(({ blocker, count }) =>
    `${count} of ${forwards.length} forward(s) ${describeBlocker(blocker)}`
  );
}

function describe(changes: Change[], forwards: Forward[]): string {
  if (changes.some((c) => c.removed === undefined)) {
    return `${forwards.length} forward(s) live, old rules removed`;
  }
  const removed = changes.reduce((n, c) => n + (c.removed ?? 0), 0);
  return `${forwards.length} forward(s) live, ${removed} old rule(s) removed`;
}

/** The message of any thrown value. */
export function message(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
