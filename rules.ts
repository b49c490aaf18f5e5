/** The rule model: a domain's entries in, its forwards out; and the one place that applies them, all or nothing,
 * with whichever backend fits the host (the backends' text and live state are in backends/). */

import type { Change, Desired, FirewallBackend } from "./backends/backend.ts";
import { type Batch, nftBatch, runBatches } from "./backends/batch.ts";
import { chooseBackend } from "./backends/choose.ts";
import { readLibvirtElsewhere } from "./backends/elsewhere.ts";
import { readOtherGates } from "./backends/foreign.ts";
import { domainForwards, forget, forgetLines, type Forgotten } from "./backends/conntrack.ts";
import type { Forward, LiveForward, Snat } from "./backends/forward.ts";
import { acceptOnly, renderAdditions, type RuleLines, ruleLines } from "./backends/iptables.ts";
import { listingsToSave, liveForwards, parseSave } from "./backends/iptables_live.ts";
import { carriedDomain, chainNames } from "./backends/names.ts";
import { bridgesOf } from "./backends/nftables.ts";
import { iptablesBackend } from "./backends/iptables_backend.ts";
import { liveAccepts, liveSharedAccepts } from "./backends/nftables_live.ts";
import { nftablesBackend, reassertCommands, removeAtOnceBatches } from "./backends/nftables_backend.ts";
import {
  type ApplyDeps,
  ApplyError,
  beginRead,
  FAMILIES,
  type FirewallState,
  readAll,
  readState,
} from "./backends/state.ts";
import type { Entry } from "./config/model.ts";
import { type Family, formatNetwork, parseAddress } from "./system/address.ts";
import { connectedNetworkOf, type HostFacts } from "./system/host.ts";
import { message } from "./system/report.ts";
import { unique } from "./system/collections.ts";

/** Batches, and the one place that runs them, for the commands (see backends/batch.ts). */
export { type Batch, batchHeader, runBatches } from "./backends/batch.ts";
/** Chooses the backend for our rules: the one choice, which desiredState makes (see backends/choose.ts). */
export { chooseBackend } from "./backends/choose.ts";
export { readLibvirtElsewhere } from "./backends/elsewhere.ts";
/** What one sync changed in one backend (see backends/backend.ts). */
export type { Change } from "./backends/backend.ts";

/** Resolves a domain's entries against the host: default public addresses and hairpin networks. */
export function planForwards(
  entries: Entry[],
  facts: HostFacts,
): { forwards: Forward[]; snats: Snat[]; problems: string[] } {
  const forwards: Forward[] = [];
  const snats: Snat[] = [];
  // all_ports forwards come last in the domain's chain, after its own ports on the same address.
  const everyPort: Forward[] = [];
  const problems: string[] = [];
  for (const entry of entries) {
    // Switched off: configured, nothing installed (a start removes what is live of it).
    if (entry.enabled === false) continue;
    for (const t of entry.targets) {
      if (t.privateIp === undefined) {
        // Found before planning (hook/guest.ts); a target still without one waits for the guest's lease.
        problems.push(`${entry.path}: the guest's IPv${t.family} address is not known`);
        continue;
      }
      const privateIp = t.privateIp;
      let publicIp = t.publicIp;
      if (publicIp === undefined) {
        const found = facts.defaultPublicIp[t.family];
        if (!found || "problem" in found) {
          const key = t.family === 4 && !entry.targets.some((x) => x.family === 6 && x !== t)
            ? "public_ip"
            : t.family === 6 && entry.targets.length > 1
            ? "public_ipv6"
            : "public_ip";
          problems.push(
            `${entry.path}: Cannot find the default public IPv${t.family} address: ${
              found && "problem" in found ? found.problem : "unknown"
            }; set "${key}"`,
          );
          continue;
        }
        publicIp = found.address;
      }
      const priv = parseAddress(privateIp)!;
      const net = connectedNetworkOf(facts.connected, priv);
      const hairpinFrom = net ? formatNetwork(net) : `${priv.text}/${priv.family === 4 ? 32 : 128}`;
      // The optional fields are the same for every port of the target: made once, not twice per port.
      const optional: Pick<
        Forward,
        "sources" | "sourceSet" | "interface" | "dev" | "description" | "log" | "countTraffic"
      > = {};
      if (entry.log) optional.log = true;
      if (entry.counters) optional.countTraffic = true;
      if (t.sources !== undefined) optional.sources = t.sources;
      if (t.sourceSet !== undefined) optional.sourceSet = t.sourceSet;
      if (entry.interface !== undefined) optional.interface = entry.interface;
      if (entry.dev !== undefined) optional.dev = entry.dev;
      if (entry.description !== undefined) optional.description = entry.description;
      if (entry.snat) {
        snats.push({ family: t.family, privateIp, publicIp, network: hairpinFrom });
      }
      for (const p of entry.ports) {
        (p.all ? everyPort : forwards).push({
          family: t.family,
          protocol: p.protocol,
          publicIp,
          publicPort: p.publicPort,
          privateIp,
          privatePort: p.privatePort,
          count: p.count,
          hairpinFrom,
          ...(p.all ? { except: p.all.except[t.family] ?? [] } : {}),
          ...optional,
        });
      }
    }
  }
  return { forwards: [...forwards, ...everyPort], snats, problems };
}

/**
 * Makes a domain's live rules equal to `forwards` (none, and no snats: the domain removed), all or nothing: one
 * iptables-restore batch per family and one `nft -f` transaction; if any of them fails, what was already applied
 * is put back as it was. `read`: the domain's readState, when the caller started it already (under the same lock).
 */
export async function syncDomain(
  domain: string,
  deps: ApplyDeps,
  { forwards, read, snats = [], flows }: SyncOptions,
): Promise<Change[]> {
  const removing = forwards.length === 0 && snats.length === 0;
  // A start lists no jumps: with chains of the domain live, it reads everything below anyway. What is added does
  // not depend on what is live: built and rendered while the firewall is read (ms at 1000).
  const reading = read ?? (await beginRead(deps, { domain, jumps: removing })).state;
  const wanted = wantedOf(domain, { forwards, snats }, deps);
  const state = await readForSync(domain, reading, { removing, deps });
  // Read before the rules change: after, the old targets are gone from what is live.
  // Where the kernel tracks no connection at all, there is nothing to delete, and nothing is listed or run. A
  // connection that a forward going away DNATs while the rules change (a few ms) keeps its old target then.
  // Best-effort: what cannot be read back is not deleted, and never fails the sync.
  const before = deps.conntrack === undefined || deps.tracked?.() === 0
    ? []
    : await forwardsBefore(domain, state, deps).catch((err) => {
      flows?.({ error: `Cannot read the live forwards' targets: ${message(err)}` });
      return [];
    });
  const commit = async () => {
    try {
      if (state.scope && removing) return await removeAtOnce(domain, state, deps);
      return await syncState(domain, deps, { wanted, state });
    } catch (err) {
      // A removal from a partial read failed as a whole (nothing changed) where something differs from what the
      // read showed; a removal from everything that is live finishes the job.
      if (!state.scope || !removing || !(err instanceof ApplyError)) throw err;
      return await syncState(domain, deps, { wanted, state: await readAll(deps, domain) });
    }
  };
  const changes = await commit();
  // Only now: deleted before the new rules are in, a packet of the flow would re-create it through the old rule.
  if (before.length > 0) await forgetFlows(before, { forwards, deps, domain, flows });
  return changes;
}

/**
 * The batches a start of `domain` with `forwards` would run, from the firewall as it is now: read as the start
 * reads it, composed by the same function (syncBatches). This is what `plan` prints; nothing is run but reads.
 */
export async function startBatches(
  domain: string,
  deps: ApplyDeps,
  { forwards, snats = [] }: { forwards: Forward[]; snats?: Snat[] },
): Promise<Batch[]> {
  const removing = forwards.length === 0 && snats.length === 0;
  const reading = (await beginRead(deps, { domain, jumps: removing })).state;
  const wanted = wantedOf(domain, { forwards, snats }, deps);
  const state = await readForSync(domain, reading, { removing, deps });
  if (state.scope && removing) return removeAtOnceBatches(domain, state, deps)?.batches ?? [];
  return syncBatches(domain, deps, { wanted, state }).batches;
}

/**
 * What a sync of `domain` works from: the domain's read, with other software's gates, and everything where the
 * domain has chains and gets forwards again.
 */
async function readForSync(
  domain: string,
  reading: Promise<FirewallState>,
  { removing, deps }: { removing: boolean; deps: ApplyDeps },
): Promise<FirewallState> {
  let state = await readOtherGates(deps, await reading);
  // A domain whose chains are there already and gets forwards again (reconnect, reload): rolling back exactly
  // needs what is in them (and a removal needs the jumps into them, where a start's read did not list them).
  const hasChains = (s: FirewallState) => FAMILIES.some((f) => (s.ipt[f]?.chains.length ?? 0) > 0);
  if (state.scope && (!removing || state.scope === "chains, no jumps") && hasChains(state)) {
    state = await readAll(deps, domain);
  }
  // Only what adds rules needs to know that libvirt's are where ours would not count (nothing is run elsewhere).
  return removing ? state : await readLibvirtElsewhere(deps, state);
}

/** What a domain's sync wants: its forwards and outbound NATs, with their iptables rules built. */
export function wantedOf(
  domain: string,
  { forwards, snats }: { forwards: Forward[]; snats: Snat[] },
  deps: Pick<ApplyDeps, "connected">,
): Wanted {
  const built = {} as Built;
  for (const family of FAMILIES) {
    const rules = ruleLines(domain, forwards.filter((f) => f.family === family));
    built[family] = { rules, additions: renderAdditions(rules) };
  }
  // Only nftables needs them (our table, libvirt's chains): looked up when it does (0.3 ms at 1000 forwards).
  let found: Record<Family, string[]> | undefined;
  const bridges: Bridges = () =>
    forwards.length === 0 ? undefined : found ??= bridgesOf(forwards, deps.connected ?? []);
  return { forwards, snats, built, bridges };
}

/** What a domain's sync wants (see wantedOf). */
export interface Wanted {
  forwards: Forward[];
  snats: Snat[];
  built: Built;
  bridges: Bridges;
}

/**
 * The domain's live forwards, before its sync (see backends/conntrack.ts). Where the read listed only the names of
 * its iptables chains (a removal), its DNAT chains are listed too, concurrently, one process per family that has
 * one: their rules hold the private targets, which nft shows only as iptables' own target.
 */
async function forwardsBefore(domain: string, state: FirewallState, deps: ApplyDeps): Promise<LiveForward[]> {
  if (!state.scope) return domainForwards(state, domain);
  const dnat = chainNames(domain).dnat;
  const listed = await Promise.all(FAMILIES.map(async (family): Promise<LiveForward[]> => {
    const live = state.ipt[family];
    // Without conntrack nothing is deleted: a stop pays for no listing.
    if (deps.conntrack === false || !live?.chains.some((c) => c.table === "nat" && c.chain === dnat)) {
      return [];
    }
    const result = await deps.runner.run([...deps.tools[family].list, "-t", "nat", "-S", dnat]);
    // Not there any more, or not listable: nothing known to forget in this family.
    if (result.code !== 0) return [];
    return liveForwards(parseSave(listingsToSave([{ table: "nat", text: result.stdout }])), family);
  }));
  const nftOnly: FirewallState = { ...state, ipt: { 4: undefined, 6: undefined } };
  return [...listed.flat(), ...domainForwards(nftOnly, domain)];
}

/** Deletes the flows of the forwards in `before` that `forwards` no longer has (or sends elsewhere); best-effort. */
async function forgetFlows(
  before: LiveForward[],
  { forwards, deps, domain, flows }: {
    forwards: Forward[];
    deps: ApplyDeps;
    domain: string;
    flows: SyncOptions["flows"];
  },
): Promise<void> {
  const lines = forgetLines(before, forwards, domain);
  if (lines.length === 0) return;
  if (deps.conntrack === false) return flows?.({ missing: true });
  try {
    flows?.(await forget(deps.runner, { conntrack: deps.conntrack!, lines }));
  } catch (err) {
    flows?.({ error: message(err) });
  }
}

/** What syncDomain is given: the forwards, and what it may be given beside them. */
export interface SyncOptions {
  /**
   * The domain's forwards, what is live is made equal to; required, so that a caller that forgets them cannot
   * remove the domain's rules: a removal says `forwards: []`.
   */
  forwards: Forward[];
  /** The domain's readState, when the caller started it already (under the same lock). */
  read?: Promise<FirewallState> | undefined;
  /** The domain's outbound NATs (see planForwards). */
  snats?: Snat[];
  /**
   * Told what became of the flows of the forwards that went or changed target (deleted with conntrack once the
   * rules are committed, see backends/conntrack.ts); not called where there were none.
   */
  flows?: ((done: Forgotten) => void) | undefined;
}

/** Removes a domain read with readAtOnce in one nft transaction (see removeAtOnceBatches). */
async function removeAtOnce(domain: string, state: FirewallState, deps: ApplyDeps): Promise<Change[]> {
  const removal = removeAtOnceBatches(domain, state, deps);
  if (!removal) return [];
  await runBatches(deps.runner, removal.batches);
  return removal.changes;
}

/** A domain's filter rules (the jump to LVH-USER and the accept, `count`: 2 or none): what FORWARD gets. */
function filterOnly(rules: RuleLines, count: number): Built[Family] {
  const filter = acceptOnly(rules, count);
  return { rules: filter, additions: renderAdditions(filter) };
}

/** The iptables rules of a domain's forwards, per family, and the batch lines that add them. */
type Built = Record<
  Family,
  { rules: RuleLines; additions: ReturnType<typeof renderAdditions> }
>;

/** The bridges a domain's forwards go out of (see bridgesOf), when asked; undefined when it has none. */
type Bridges = () => Record<Family, string[]> | undefined;

/** Runs the batches of syncBatches, and tells what they changed. */
async function syncState(
  domain: string,
  deps: ApplyDeps,
  { wanted, state }: { wanted: Wanted; state: FirewallState },
): Promise<Change[]> {
  const { batches, changes } = syncBatches(domain, deps, { wanted, state });
  await runBatches(deps.runner, batches);
  return changes;
}

/**
 * The batches that make a domain's live rules (`state`) equal to `wanted`, in the order they run, and what they
 * change: each backend's for the domain's desired state, iptables' first (a batch per family, each undone where a
 * later one fails), then nftables' one transaction. A start runs them (syncState); `plan` prints them
 * (startBatches).
 */
function syncBatches(
  domain: string,
  deps: ApplyDeps,
  { wanted, state }: { wanted: Wanted; state: FirewallState },
): { batches: Batch[]; changes: Change[] } {
  const desired = desiredState(domain, wanted, { state, deps });
  const out = { batches: [] as Batch[], changes: [] as Change[] };
  for (const backend of BACKENDS) {
    const { batches, changes } = backend.batches(desired, state, deps);
    out.batches.push(...batches);
    out.changes.push(...changes);
  }
  return out;
}

/** The backends, in the order their batches run. */
const BACKENDS: FirewallBackend[] = [iptablesBackend, nftablesBackend];

/**
 * Reads what is live of ours, in every family and backend at once (a constant number of processes), for the
 * commands that show or check it (status, doctor, watch); see backends/state.ts readState.
 */
export function readLive(
  deps: ApplyDeps,
  { counters = false }: { counters?: boolean } = {},
): Promise<FirewallState> {
  return readState(deps, { counters });
}

/** The forwards live in any backend, by domain, read back into the model (a domain with rules, maybe none). */
export function liveForwardsByDomain(state: FirewallState): Map<string, LiveForward[]> {
  const out = new Map<string, LiveForward[]>();
  // nftables first: a domain's order of forwards as status has always shown it.
  for (const backend of [nftablesBackend, iptablesBackend]) {
    for (const [domain, forwards] of backend.forwards(state)) {
      out.set(domain, [...out.get(domain) ?? [], ...forwards]);
    }
  }
  return out;
}

/**
 * The bridges our live accepts in libvirt's nftables chains let a domain's forwards through to, per family (doctor
 * checks its own): its own accepts, and those shared by the domains of our table (see SHARED_ACCEPT).
 */
export function libvirtAccepts(state: FirewallState, domain: string): Record<Family, string[]> | undefined {
  if (!state.nft) return undefined;
  const own = liveAccepts(state.nft).get(carriedDomain(domain));
  const shared = liveSharedAccepts(state.nft);
  if (!own && shared[4].length === 0 && shared[6].length === 0) return undefined;
  return { 4: unique([...own?.[4] ?? [], ...shared[4]]), 6: unique([...own?.[6] ?? [], ...shared[6]]) };
}

/** Whether a domain's live forwards lack an accept where it must be, in any backend (watch puts it back). */
export function acceptMisplaced(state: FirewallState, domain: string, forwards: Forward[]): boolean {
  return BACKENDS.some((backend) => backend.misplaced(state, domain, forwards));
}

/**
 * A domain's desired state on this host: which backend translates its forwards, and every piece with the place it
 * goes (iptables' chains per family, our nftables table, the accepts in libvirt's chains and those handed to us).
 */
export function desiredState(
  domain: string,
  { forwards, snats, built, bridges }: Wanted,
  { state, deps }: { state: FirewallState; deps: Pick<ApplyDeps, "backend"> },
): Desired {
  const backend = forwards.length === 0 && snats.length === 0
    ? "iptables"
    : chooseBackend(deps.backend, state);
  // Outbound NAT goes where libvirt's masquerade is, ahead of it: into our nftables table where libvirt uses
  // nftables (or our rules do), else into our iptables SNAT chain, whose jump comes first in POSTROUTING.
  const libvirtNft = state.nft !== undefined &&
    (state.nft.libvirt[4] !== undefined || state.nft.libvirt[6] !== undefined);
  // Where libvirt's masquerade is in iptables, ours must come first in iptables' POSTROUTING on either backend: an
  // nftables chain at the same hook and priority would run after it (issue 25: our table translating there).
  const libvirtIpt = FAMILIES.some((family) => state.ipt[family]?.libvirt === true);
  const snatNft = snats.length > 0 && state.nft !== undefined &&
    (libvirtNft || (backend === "nftables" && !libvirtIpt));
  const iptables = {} as Desired["iptables"];
  for (const family of FAMILIES) {
    // On the nftables backend, iptables' own FORWARD still gets our accept where it exists: it is a gate every
    // forwarded connection passes (Docker, ufw, an administrator's iptables rules), whatever libvirt uses.
    const place = backend === "iptables" ? "all" : state.ipt[family]?.forward ? "filter" : "none";
    const mine = place === "none" ? [] : forwards.filter((f) => f.family === family);
    const out = place !== "none" && !snatNft ? snats.filter((s) => s.family === family) : [];
    const added = place === "filter"
      ? out.length > 0
        ? withRules(ruleLines(domain, mine, { snats: out, translate: false }))
        : filterOnly(built[family].rules, mine.length === 0 ? 0 : 2)
      : place === "none"
      ? { rules: ruleLines(domain, []), additions: undefined }
      : out.length > 0
      ? withRules(ruleLines(domain, mine, { snats: out }))
      : built[family];
    iptables[family] = { place, forwards: mine, snat: out.length > 0, ...added };
  }
  return {
    domain,
    backend,
    iptables,
    table: { forwards: backend === "nftables" ? forwards : [], snats: snatNft ? snats : [] },
    accepts: bridges,
  };
}

/** Rules with the batch lines that add them. */
function withRules(rules: RuleLines): Built[Family] {
  return { rules, additions: renderAdditions(rules) };
}

/**
 * Puts our accepts back in front of libvirt's nftables chains for every domain with live forwards; libvirt
 * re-creates those chains on network and daemon restarts and on reload. Returns how many commands it ran.
 */
export async function reassertAccepts(deps: ApplyDeps): Promise<number> {
  if (deps.nft === undefined) return 0;
  const state = await readState(deps);
  if (!state.nft) return 0;
  const commands = reassertCommands(state, deps);
  const batch = nftBatch(deps.nft, commands);
  if (!batch) return 0;
  await runBatches(deps.runner, [batch]);
  return commands.length;
}
