/** One domain's forwards: install, re-sync or remove them, and say what happened. */

import {
  type ApplyDeps,
  beginRead,
  domainHash,
  type FirewallState,
  type Forgotten,
  type Forward,
  iptablesTools,
  type Snat,
  type Tools,
} from "../backends/backend.ts";
import { configClaims, domainConfig, loadConfig, loadConfigFor } from "../config.ts";
import { type ClaimSummary, type Config, type Diagnostic, formatDiagnostic } from "../config/model.ts";
import { configCandidates, configMentions, type ConfigSource, readConfigSource } from "../config/source.ts";
import type { HookDeps } from "./deps.ts";
import { guestInterfaces } from "./domain_xml.ts";
import { fileLookup, guestForwards, type Waiting, waitingNote } from "./guest.ts";
import { recordClaims, recordedClaims } from "./claims.ts";
import { guestRuns } from "../system/libvirt.ts";
import { METADATA_NS } from "../config/metadata.ts";
import { xmlRuleFor } from "../config/policy.ts";
import { loadXml, parseXml, XmlSyntaxError } from "../system/xml.ts";
import { gateWarnings, takenFromHost } from "./warnings.ts";
import { type Change, planForwards, syncDomain } from "../rules.ts";
import type { Family } from "../system/address.ts";
import type { HostFacts } from "../system/host.ts";
import { failed, message } from "../system/report.ts";
import { qemuCommand } from "../system/shell.ts";

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
    ...(deps.conntrack === undefined ? {} : { conntrack: deps.conntrack() ?? false }),
    ...(deps.tracked === undefined ? {} : { tracked: deps.tracked }),
    ...(deps.networkRunDir === undefined ? {} : { networkRunDir: deps.networkRunDir }),
    ...(deps.networkConf === undefined ? {} : { networkConf: deps.networkConf }),
  };
}

/** The note that an administrator removed a running guest's forwards on purpose (`remove`): watch leaves it be. */
export function removedMarker(stateDir: string, domain: string): string {
  return `${stateDir}/removed-${domainHash(domain)}`;
}

/**
 * The note that libvirt's `stopped` hook ran for a guest, written before its rules are removed and cleared by its
 * next start (or `apply`). libvirt removes the guest's status file only a second or more after that hook
 * (qemuProcessStop restores labels, host devices, taps and cgroups first): in that gap the guest looks running,
 * and the watcher must neither put its forwards back nor keep them.
 */
export function stoppedMarker(stateDir: string, domain: string): string {
  return `${stateDir}/stopped-${domainHash(domain)}`;
}

/** Notes that a guest's `stopped` hook ran (see stoppedMarker); best effort, synchronously. */
export function markStopped(stateDir: string, domain: string): void {
  try {
    Deno.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    Deno.writeTextFileSync(stoppedMarker(stateDir, domain), `${domain}\n`);
  } catch {
    // No /run to write to: the watcher then goes by the status file alone.
  }
}

/** Whether a guest's `stopped` hook ran since its last start (see stoppedMarker). */
export function stoppedSince(stateDir: string | undefined, domain: string): boolean {
  if (stateDir === undefined) return false;
  try {
    Deno.statSync(stoppedMarker(stateDir, domain));
    return true;
  } catch {
    return false;
  }
}

/** Where the default addresses a guest's forwards were applied with are kept, while it runs. */
function defaultsFile(stateDir: string, domain: string): string {
  return `${stateDir}/defaults-${domainHash(domain)}.json`;
}

/**
 * Records the host's default addresses that a guest's forwards took (those without a public address of their own),
 * so they stay on them when the default route moves (a VPN, a backup link) until an administrator applies a
 * change; none recorded where no forward took one. Best effort, synchronously.
 */
function recordDefaults(
  stateDir: string,
  domain: string,
  { facts, forwards, snats }: { facts: HostFacts; forwards: Forward[]; snats: Snat[] },
): void {
  const used: Partial<Record<Family, string>> = {};
  for (const [family, address] of Object.entries(defaultsOf(facts))) {
    if ([...forwards, ...snats].some((f) => f.publicIp === address)) used[Number(family) as Family] = address;
  }
  const path = defaultsFile(stateDir, domain);
  try {
    if (Object.keys(used).length === 0) return removeIfThere(path);
    Deno.mkdirSync(stateDir, { recursive: true, mode: 0o700 });
    Deno.writeTextFileSync(`${path}.${Deno.pid}`, JSON.stringify(used));
    Deno.renameSync(`${path}.${Deno.pid}`, path);
  } catch {
    // Nothing recorded: the watcher then plans with the host's default addresses as they are.
  }
}

/** The default addresses a running guest's forwards took when they were applied (see recordDefaults). */
export function pinnedDefaults(
  stateDir: string | undefined,
  domain: string,
): Partial<Record<Family, string>> {
  if (stateDir === undefined) return {};
  try {
    const record = JSON.parse(Deno.readTextFileSync(defaultsFile(stateDir, domain)));
    const out: Partial<Record<Family, string>> = {};
    for (const family of [4, 6] as const) {
      if (typeof record[family] === "string") out[family] = record[family];
    }
    return out;
  } catch {
    return {};
  }
}

/** The host's facts with the default addresses a guest's forwards took: planned with these, they stay put. */
export function pinFacts(facts: HostFacts, pinned: Partial<Record<Family, string>>): HostFacts {
  const defaultPublicIp = { ...facts.defaultPublicIp };
  for (const family of [4, 6] as const) {
    const address = pinned[family];
    if (address !== undefined) defaultPublicIp[family] = { address };
  }
  return { ...facts, defaultPublicIp };
}

/** What the watcher, status and doctor say where the host's default address moved from the one a guest's forwards took. */
export function defaultMoves(
  domain: string,
  { facts, pinned }: { facts: HostFacts; pinned: Partial<Record<Family, string>> },
): string[] {
  const now = defaultsOf(facts);
  const out: string[] = [];
  for (const family of [4, 6] as const) {
    const was = pinned[family];
    if (was === undefined || now[family] === was) continue;
    const current = now[family] === undefined ? "gone" : `now ${now[family]}`;
    out.push(
      `${domain}: the host's default IPv${family} address is ${current}; its forwards stay on ${was} until ` +
        `"${qemuCommand("apply", domain)}" or "qemu reload" moves them`,
    );
  }
  return out;
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
  { source, domain, foreignAddresses }: {
    source?: ConfigSource;
    domain?: string;
    /** "warning": a public address that is not the host's is a warning (`check`), not a domain's error. */
    foreignAddresses?: "warning";
  } = {},
): Promise<{ config: Config; facts: HostFacts }> {
  const facts = await deps.facts();
  const defaults = defaultsOf(facts);
  const candidates = configCandidates(deps.env);
  // The host's addresses: an explicit public address must be one of them (or declared in the settings).
  const options = {
    defaultPublicIp: defaults,
    ...(facts.addresses ? { hostAddresses: [...facts.addresses].sort() } : {}),
    ...(foreignAddresses ? { foreignAddresses } : {}),
  };
  // A call for one domain reads only what concerns it from the cache; the commands read the whole config.
  const config = domain === undefined
    ? await loadConfig(candidates, { options, cacheDir: deps.stateDir, source })
    : await loadConfigFor(domain, candidates, {
      options,
      cacheDir: deps.stateDir,
      ...(source ? { source } : {}),
    });
  printProblems(config, deps, domain);
  return { config, facts };
}

/** The name problems give the domain's XML (the hook's stdin, or the running guest's status file). */
export function xmlLabel(domain: string): string {
  return `domain XML of ${domain}`;
}

/** What a domain's forwards are, from the config and its XML: none, unusable (and why), or planned. */
export type DomainForwards =
  | { kind: "absent" }
  | { kind: "invalid"; lines: string[]; why: string }
  | {
    kind: "ok";
    forwards: Forward[];
    snats: Snat[];
    /** Targets still without the guest's address: the watcher applies them when its lease appears. */
    waiting: Waiting[];
    /** Lease files that could not be read (see GuestForwards): what is live for the guest must stay. */
    leaseProblems: string[];
    /** Whether the XML holds forwards of ours. */
    metadata: boolean;
    /** The public ports the XML claims (recorded while the guest runs: see hook/claims.ts). */
    claims: ClaimSummary[];
    /** What is worth a line in the log beside the forwards (see GuestForwards). */
    notes: string[];
  };

/** The host's default public addresses, by family, where they were found. */
function defaultsOf(facts: HostFacts): Partial<Record<Family, string>> {
  const defaults: Partial<Record<Family, string>> = {};
  for (const family of [4, 6] as const) {
    const found = facts.defaultPublicIp[family];
    if (found && "address" in found) defaults[family] = found.address;
  }
  return defaults;
}

/**
 * A domain's forwards: its config entries (their problems printed by loadFor already) and its XML's metadata,
 * with the guest's addresses found (see hook/guest.ts), planned against the host. `xml`: the domain's XML, where
 * there is one. The XML is parsed only where it holds forwards of ours or an entry needs the guest's address.
 */
export async function forwardsOf(
  domain: string,
  { config, facts, xml, deps }: {
    config: Config;
    facts: HostFacts;
    xml: string | undefined;
    deps: Pick<HookDeps, "networkRunDir" | "dnsmasqDir" | "stateDir" | "listeners">;
  },
): Promise<DomainForwards> {
  const found = domainConfig(config, domain);
  if (found.kind === "invalid") {
    return {
      kind: "invalid",
      lines: [],
      why: `${found.errors.length} problem(s) in ${config.file}, listed above`,
    };
  }
  const entries = found.kind === "ok" ? found.entries : [];
  const ours = xml?.includes(METADATA_NS) ?? false;
  if (!ours && found.kind === "absent") return { kind: "absent" };
  const file = xmlLabel(domain);
  let root;
  if (xml !== undefined && (ours || entries.some((e) => e.targets.some((t) => t.privateIp === undefined)))) {
    await loadXml();
    try {
      root = parseXml(xml);
    } catch (err) {
      if (!(err instanceof XmlSyntaxError) || !ours) throw err;
      return {
        kind: "invalid",
        lines: [`${file}:${err.line}:${err.column}: Not well-formed XML: ${err.reason}`],
        why: "its XML cannot be read",
      };
    }
  }
  const guest = guestForwards(domain, {
    entries,
    claims: ours ? configClaims(config) : [],
    recorded: deps.stateDir === undefined ? [] : recordedClaims(deps.stateDir, domain, guestRuns),
    xml: root ? { root, file } : undefined,
    lookup: fileLookup(deps.networkRunDir, deps.dnsmasqDir),
    defaultPublicIp: defaultsOf(facts),
    policy: {
      rule: xmlRuleFor(config.settings.xmlForwards, domain),
      addresses: facts.addresses,
      declared: config.settings.hostAddresses,
      listeners: () => deps.listeners(),
      defaultPublicIp: defaultsOf(facts),
    },
  });
  const errors = guest.diagnostics.filter((d) => d.severity === "error");
  if (errors.length > 0) {
    return {
      kind: "invalid",
      lines: guest.diagnostics.map(formatDiagnostic),
      why: `${errors.length} problem(s) in the forwards of its XML`,
    };
  }
  // These name the entry by its path: in the XML (forwards/...) or in the config file it is in (a drop-in's too).
  const where = (p: string) =>
    `${
      p.startsWith("forwards") ? file : entries.find((e) => p.startsWith(`${e.path}:`))?.file ?? config.file
    }: ${p}`;
  if (guest.problems.length > 0) {
    return { kind: "invalid", lines: guest.problems.map(where), why: "the guest's address cannot be found" };
  }
  const plan = planForwards(guest.entries, facts);
  if (plan.problems.length > 0) {
    return {
      kind: "invalid",
      lines: plan.problems.map(where),
      why: "nothing was changed",
    };
  }
  return {
    kind: "ok",
    forwards: plan.forwards,
    snats: plan.snats,
    waiting: guest.waiting,
    leaseProblems: guest.leaseProblems,
    metadata: guest.metadata,
    claims: guest.claims,
    notes: guest.notes,
  };
}

/**
 * What install did: the forwards are live, the config does not name the domain, it could not, or (the watcher's
 * install only) nothing, as the guest's `stopped` hook ran meanwhile.
 */
export type InstallResult = "installed" | "absent" | "failed" | "stopped";

/** What install saw beside its result: the forwards that wait for the guest's lease (applied when it comes). */
export interface InstallSeen {
  waiting?: Waiting[];
}

/** How install runs: for which `action` it logs (`start`; `watch`: the watcher's), and where it says what it saw. */
export interface InstallOptions {
  action?: string;
  seen?: InstallSeen;
}

/**
 * Installs a domain's forwards from the config (libvirt's start, the apply command). Where the config names the
 * domain, the firewall is read (a process, ~3 ms) while the config is validated and the forwards are planned:
 * under the lock from the start, as every read that a write follows.
 */
export async function install(
  domain: string,
  deps: HookDeps,
  { action = "start", seen = {} }: InstallOptions = {},
): Promise<InstallResult> {
  // A start (or apply) ends what a `stopped` hook noted; the watcher's install never does (see stoppedMarker).
  const watcher = action === "watch";
  if (!watcher && deps.stateDir !== undefined) removeIfThere(stoppedMarker(deps.stateDir, domain));
  const source = readConfigSource(configCandidates(deps.env));
  const xml = await deps.readStdin();
  if (!configMentions(source, domain) && !xml.includes(METADATA_NS)) {
    return await installWith(domain, deps, { action, source, seen });
  }
  return await deps.lock(async () => {
    // Under the lock: a `stopped` hook notes it before it takes the lock to remove the rules.
    if (watcher && stoppedSince(deps.stateDir, domain)) return "stopped";
    const reading = (await beginRead(applyDeps(deps), { domain, jumps: false })).state;
    try {
      return await installWith(domain, deps, { action, source, seen, reading });
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
  { action, source, seen, reading }: {
    action: string;
    source: ConfigSource;
    seen: InstallSeen;
    /** The domain's readState, started under the lock; absent: the lock is taken for the write alone. */
    reading?: Promise<FirewallState>;
  },
): Promise<InstallResult> {
  const { config, facts } = await loadFor(deps, { source, domain });
  const fail = (why: unknown) => {
    failed(deps, { action, domain, headline: `Cannot apply forwards for "${domain}"`, why });
    return "failed" as const;
  };
  let plan: DomainForwards;
  try {
    plan = await forwardsOf(domain, { config, facts, xml: await deps.readStdin(), deps });
  } catch (err) {
    return fail(err);
  }
  if (plan.kind === "absent") return "absent";
  if (plan.kind === "invalid") {
    for (const line of plan.lines) deps.problem(line);
    // Syslog says why too: libvirt shows stderr only to whoever ran `virsh start`, and autostart has no one.
    const found = domainConfig(config, domain);
    const why = plan.lines.length > 0
      ? plan.lines
      : found.kind === "invalid"
      ? found.errors.map(formatDiagnostic)
      : [];
    for (const line of why.slice(0, MAX_PRINTED_PROBLEMS)) deps.log(`${action} ${domain}: ${line}`);
    return fail(`${plan.why}; nothing was changed`);
  }
  for (const w of plan.waiting) deps.log(`${action} ${domain}: ${w.entry}: ${waitingNote(w)}`);
  for (const n of plan.notes) deps.log(`${action} ${domain}: ${n}`);
  for (const p of plan.leaseProblems) {
    deps.problem(p);
    deps.log(`${action} ${domain}: ${p}`);
  }
  seen.waiting = plan.waiting;
  try {
    // The taps are read from the XML while the firewall's read runs, not after the write.
    const taps = await hairpinTaps(plan.forwards, facts, await deps.readStdin());
    const flows = flowReport(domain, deps, action);
    const sync = () =>
      syncDomain(domain, applyDeps(deps, config, facts), {
        forwards: plan.forwards,
        read: reading,
        snats: plan.snats,
        flows: flows.tell,
      });
    const changes = reading ? await sync() : await deps.lock(sync);
    await setHairpins(domain, taps, deps);
    if (deps.stateDir !== undefined) {
      recordClaims(deps.stateDir, domain, plan.claims);
      recordDefaults(deps.stateDir, domain, { facts, forwards: plan.forwards, snats: plan.snats });
    }
    deps.log(`${action} ${domain}: ${describe(changes, plan.forwards)}${flows.said()}`);
    const hooks = reading ? (await reading).nft?.hooks : undefined;
    const warnings = [
      ...takenFromHost(plan.forwards, deps.listeners()),
      ...await gateWarnings(plan.forwards, applyDeps(deps, config, facts), hooks),
      ...(plan.forwards.length > 0 && deps.conntrack !== undefined && deps.conntrack() === undefined
        ? [NO_CONNTRACK]
        : []),
    ];
    for (const w of warnings) deps.log(`${action} ${domain}: warning: ${w}`);
    if (deps.stateDir !== undefined) removeIfThere(removedMarker(deps.stateDir, domain));
    return "installed";
  } catch (err) {
    return fail(err);
  }
}

/**
 * Makes a domain's live rules equal to what the config says now (libvirt's reconnect, the reload command);
 * keeps them as they are when the config cannot be trusted. False when something could not be done.
 */
export async function resync(domain: string, deps: HookDeps, action: string): Promise<boolean> {
  const loaded = await loadFor(deps, { domain });
  const { config } = loaded;
  // libvirt's reconnect is no administrator's change: the forwards keep the default addresses they took.
  const facts = action === "reconnect"
    ? pinFacts(loaded.facts, pinnedDefaults(deps.stateDir, domain))
    : loaded.facts;
  const keep = (why: string) => {
    failed(deps, {
      action,
      domain,
      headline: `Keeping the live forwards of "${domain}" unchanged`,
      why,
      outcome: "kept live rules",
    });
    return false;
  };
  if (config.broken) return keep(`problems in ${config.file} (above, or all of them with "qemu check")`);
  let plan: DomainForwards;
  try {
    plan = await forwardsOf(domain, { config, facts, xml: await deps.readStdin(), deps });
  } catch (err) {
    return keep(message(err));
  }
  if (plan.kind === "invalid") {
    for (const line of plan.lines) deps.problem(line);
    return keep(`${plan.why} (or all of the config's problems with "qemu check")`);
  }
  if (plan.kind === "ok" && plan.leaseProblems.length > 0) {
    for (const line of plan.leaseProblems) deps.problem(line);
    return keep("a lease file cannot be read (above): the forwards it would give cannot be told");
  }
  const { forwards = [], snats = [] } = plan.kind === "ok" ? plan : {};
  if (plan.kind === "ok") {
    for (const w of plan.waiting) deps.log(`${action} ${domain}: ${w.entry}: ${waitingNote(w)}`);
  }
  try {
    const flows = flowReport(domain, deps, action);
    const changes = await deps.lock(() =>
      syncDomain(domain, applyDeps(deps, config, facts), {
        forwards,
        snats,
        flows: flows.tell,
      })
    );
    await setHairpins(domain, await hairpinTaps(forwards, facts, await deps.readStdin()), deps);
    if (deps.stateDir !== undefined) {
      recordClaims(deps.stateDir, domain, plan.kind === "ok" ? plan.claims : []);
      recordDefaults(deps.stateDir, domain, { facts, forwards, snats });
    }
    if (changes.length > 0) deps.log(`${action} ${domain}: ${describe(changes, forwards)}${flows.said()}`);
    return true;
  } catch (err) {
    failed(deps, { action, domain, headline: `Cannot re-apply forwards for "${domain}"`, why: err });
    return false;
  }
}

/** Removes whatever is live for a domain, whatever the config says (libvirt's stopped, the remove command). */
export async function remove(domain: string, deps: HookDeps, action: string): Promise<boolean> {
  if (deps.stateDir !== undefined) {
    recordClaims(deps.stateDir, domain, []);
    removeIfThere(defaultsFile(deps.stateDir, domain));
  }
  try {
    const flows = flowReport(domain, deps, action);
    const changes = await deps.lock(() =>
      syncDomain(domain, applyDeps(deps), { forwards: [], flows: flows.tell })
    );
    if (changes.length > 0) deps.log(`${action} ${domain}: ${describe(changes, [])}${flows.said()}`);
    return true;
  } catch (err) {
    failed(deps, { action, domain, headline: `Cannot remove forwards for "${domain}"`, why: err });
    return false;
  }
}

/**
 * With bridge netfilter on, a DNAT to a guest on the same bridge is forwarded by the bridge itself, back out of
 * the port the packet came in on, which a bridge refuses unless that port is in hairpin mode. So a guest can
 * reach its own forward only with hairpin mode on its tap: a per-port setting, never a host-wide one. These are
 * the guest's taps on the forwards' bridges, where bridge netfilter is on (none elsewhere).
 */
async function hairpinTaps(forwards: Forward[], facts: HostFacts, xml: string): Promise<string[]> {
  if (!forwards.some((f) => facts.bridgeNetfilter[f.family])) return [];
  const bridges = new Set(forwards.map((f) => f.interface));
  const any = bridges.has(undefined);
  await loadXml();
  return guestInterfaces(xml).filter((i) => any || bridges.has(i.bridge)).map((i) => i.device);
}

/** Turns on hairpin mode on the guest's taps (see hairpinTaps); a tap that refuses is reported, not fatal. */
async function setHairpins(domain: string, taps: string[], deps: HookDeps): Promise<void> {
  for (const tap of taps) {
    try {
      await deps.setHairpin(tap);
    } catch (err) {
      deps.problem(`Cannot turn on hairpin mode on "${tap}" of "${domain}": ${message(err)}`);
    }
  }
}

/** What start says in syslog where conntrack is missing (and check and doctor say too). */
export const NO_CONNTRACK =
  "conntrack is not installed (Debian package conntrack): connections through a forward that goes or changes target keep their old target until they end";

/**
 * What became of the flows of a domain's forwards that went or changed target: `tell` is handed to syncDomain;
 * what it deleted joins the action's own syslog line (`said`: no logger process of its own), a warning or a
 * failure goes out at once (stderr too). Best-effort: never a failure of the action.
 */
function flowReport(domain: string, deps: HookDeps, action: string) {
  let deleted = 0;
  return {
    tell(done: Forgotten): void {
      if ("deleted" in done) deleted += done.deleted;
      else if ("missing" in done) deps.log(`${action} ${domain}: warning: ${NO_CONNTRACK}`);
      else {
        const line =
          `Cannot delete the connections of forwards of "${domain}" that went or changed target: ${done.error}`;
        deps.problem(line);
        deps.log(`${action} ${domain}: warning: ${line}`);
      }
    },
    said: () => deleted > 0 ? `, ${deleted} connection(s) through forwards that went or changed deleted` : "",
  };
}

function describe(changes: Change[], forwards: Forward[]): string {
  if (changes.some((c) => c.removed === undefined)) {
    return `${forwards.length} forward(s) live, old rules removed`;
  }
  const removed = changes.reduce((n, c) => n + (c.removed ?? 0), 0);
  const chains = changes.reduce((n, c) => n + (c.chains ?? 0), 0);
  return `${forwards.length} forward(s) live, ${removed} old rule(s) removed` +
    (chains > 0 ? `, and ${chains} chain(s) of ours with the rules in them` : "");
}
