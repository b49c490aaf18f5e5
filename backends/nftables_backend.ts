/**
 * The nftables backend behind the one interface (backends/backend.ts): a domain's objects in our table, and its
 * accepts in libvirt's chains and in the chains handed to us, in one `nft -f` transaction.
 */

import type { Change, Desired, FirewallBackend } from "./backend.ts";
import { readCreated, uncreated, writeCreated } from "./created.ts";
import { type Batch, nftBatch } from "./batch.ts";
import type { Forward, LiveForward, Snat } from "./forward.ts";
import { carriedDomain, domainHash, GATE_CHAIN, USER_CHAIN } from "./names.ts";
import { gateChange, type Live, liveOf, userChainGoes } from "./iptables_live.ts";
import {
  bridgesOf,
  handedAccepts,
  libvirtAccepts,
  nftBase,
  nftDomainObjects,
  nftRemoveDomain,
  nftRemoveIptables,
  reassertHanded,
} from "./nftables.ts";
import {
  liveAccepts,
  nftBridges,
  nftDomainRules,
  type NftLive,
  nftLiveForwards,
  tableBridges,
} from "./nftables_live.ts";
import { unique } from "../system/collections.ts";
import { type ApplyDeps, ApplyError, FAMILIES, type FirewallState, liveBridges } from "./state.ts";
import type { Family } from "../system/address.ts";
import { readMembers } from "../system/sets.ts";
import { nftSetCommands, setsUsed } from "./sources.ts";

/** One nft transaction, where nftables is there; it runs after the iptables batches. */
export const nftablesBackend: FirewallBackend = {
  name: "nftables",
  batches(desired: Desired, state: FirewallState, deps: ApplyDeps): { batches: Batch[]; changes: Change[] } {
    if (!state.nft) return { batches: [], changes: [] };
    const commands = nftCommands(desired.domain, {
      ours: desired.table.forwards,
      snats: desired.table.snats,
      bridges: desired.accepts,
    }, { live: state.nft, deps });
    const batch = nftBatch(deps.nft!, commands);
    return batch
      ? {
        batches: [batch],
        changes: [{
          target: "nft",
          removed: nftDomainRules(state.nft, desired.domain),
          added: commands.length,
        }],
      }
      : { batches: [], changes: [] };
  },
  forwards(state: FirewallState): Map<string, LiveForward[]> {
    const out = new Map<string, LiveForward[]>();
    for (const f of state.nft ? nftLiveForwards(state.nft) : []) {
      const list = out.get(f.domain);
      if (list) list.push(f);
      else out.set(f.domain, [f]);
    }
    return out;
  },
  misplaced(): boolean {
    // Our accepts in libvirt's chains are put back by the network hook (reassertAccepts) whenever libvirt
    // re-creates them; our own table is ours alone.
    return false;
  },
};

/**
 * The nft commands for one domain: our table's objects (for `ours`, the forwards nftables carries, and `snats`)
 * and our accepts in libvirt's chains and in those handed to us (for `bridges`, those of all its forwards).
 */
export function nftCommands(
  domain: string,
  { ours, snats, bridges }: {
    ours: Forward[];
    snats: Snat[];
    bridges: () => Record<Family, string[]> | undefined;
  },
  { live, deps }: { live: NftLive; deps: ApplyDeps },
): string[] {
  const table = ours.length > 0 || snats.length > 0
    ? [
      ...nftBase(),
      // The sets its forwards match, as their members are stored: declared before the rules that use them.
      ...nftSetCommands(setsUsed(ours), deps.setMembers ?? readMembers),
      ...nftRemoveDomain(domain, live, { keepTable: true }),
      ...nftDomainObjects(domain, ours, {
        bridges: bridges() ?? bridgesOf(ours, deps.connected ?? []),
        snats,
      }),
    ]
    : nftRemoveDomain(domain, live);
  // Our accepts in libvirt's chains and in those handed to us: the other domains' as they are, this one's as
  // wanted. Keyed as the accepts' comments carry the domain, so that a name too long for a comment compares equal.
  // In libvirt's chains, the domains of our table share one accept per bridge (see SHARED_ACCEPT): this one's
  // bridges with the others' (their bridge sets in our table); a domain iptables translates has its own.
  const mine = bridges();
  const shared = tableBridges(live, domainHash(domain));
  if (mine && ours.length > 0) {
    for (const f of FAMILIES) shared[f] = unique([...shared[f], ...mine[f]]).sort();
  }
  const withMine = (wanted: Map<string, Record<Family, string[]>>) => {
    if (mine && ours.length === 0) wanted.set(carriedDomain(domain), mine);
    else wanted.delete(carriedDomain(domain));
    return wanted;
  };
  const libvirt = live.libvirt[4] || live.libvirt[6]
    ? libvirtAccepts(live, withMine(liveAccepts(live)), shared)
    : [];
  return [
    ...table,
    ...libvirt,
    ...handedAccepts(live, domain, { bridges: mine, acceptIn: deps.acceptIn ?? [] }),
  ];
}

/**
 * Removes a domain read with readAtOnce (iptables-nft) in one nft transaction, a batch that spans both backends:
 * the jumps into its iptables-nft chains (by handle), those chains, its objects in our nftables table, its
 * accepts in libvirt's chains, and the tables it alone had created. iptables-restore commits each table on its
 * own, and the kernel makes every commit that deletes wait for a grace period (10-40 ms) before the program can
 * exit; one transaction waits once. All or nothing: where it fails, nothing changed. Undefined: nothing to remove.
 */
export function removeAtOnceBatches(
  domain: string,
  state: FirewallState,
  deps: ApplyDeps,
): { batches: Batch[]; changes: Change[] } | undefined {
  const mine = {} as Record<Family, Live>;
  const ipt = { ...state.ipt };
  for (const family of FAMILIES) {
    const all = state.ipt[family] ?? { chains: [], rules: [] };
    mine[family] = liveOf(all, domain);
    // Our gate goes with the last jump in it (see gateChange): its rule in FORWARD, then the chain.
    const gate = all.gate?.jump;
    if (gateChange(all.gate, { domain, wanted: false }) === "remove" && gate) {
      mine[family].rules.push({ table: "filter", chain: "FORWARD", owner: "", ...gate });
      mine[family].chains.push({ table: "filter", chain: GATE_CHAIN, owner: "" });
      // FORWARD no longer holds a rule of ours once the gate's goes (see uncreated).
      const count = all.othersIn?.["filter FORWARD"];
      if (count) {
        ipt[family] = {
          ...all,
          othersIn: { ...all.othersIn, "filter FORWARD": { ...count, ours: count.ours - 1 } },
        };
      }
    }
    // The administrator's chain goes with our last domain where it is empty (see userChainGoes).
    if (userChainGoes(all, domain)) {
      mine[family].chains.push({ table: "filter", chain: USER_CHAIN, owner: "" });
    }
  }
  const iptables = nftRemoveIptables(mine);
  if (!iptables) throw new ApplyError("A jump into our chains was read without its nft handle");
  const others = state.nft
    ? nftCommands(domain, { ours: [], snats: [], bridges: () => undefined }, { live: state.nft, deps })
    : [];
  const created = deps.hintDir === undefined || state.scope === "chains, no jumps"
    ? undefined
    : readCreated(deps.hintDir);
  const uncreate = created ? uncreated(created, { ipt }, mine) : { commands: [], keep: [] };
  const batch = nftBatch(deps.nft!, [...iptables, ...others, ...uncreate.commands]);
  if (!batch) return undefined;
  if (created && uncreate.keep.length !== created.length) {
    batch.committed = () => writeCreated(deps.hintDir!, uncreate.keep);
  }
  const changes: Change[] = [];
  for (const family of FAMILIES) {
    const { chains, rules } = mine[family];
    if (chains.length === 0 && rules.length === 0) continue;
    // What is in the chains is never read (listing it costs ~0.1 ms a rule): the jumps are counted, and the
    // chains, which go with every rule in them.
    changes.push({
      target: family === 4 ? "iptables" : "ip6tables",
      removed: rules.length,
      added: 0,
      ...(chains.length > 0 ? { chains: chains.length } : {}),
    });
  }
  if (others.length > 0) {
    changes.push({ target: "nft", removed: nftDomainRules(state.nft!, domain), added: others.length });
  }
  return { batches: [batch], changes };
}

/**
 * The nft commands that put our accepts back first in libvirt's chains and in the chains handed to us, for every
 * domain with live forwards (libvirt re-creates its chains on network and daemon restarts and on reload).
 */
export function reassertCommands(state: FirewallState, deps: ApplyDeps): string[] {
  if (!state.nft) return [];
  const wanted = liveBridges(state, deps.connected ?? []);
  // The domains of our table share their accepts in libvirt's chains (see SHARED_ACCEPT).
  const own = new Map(wanted);
  for (const domain of nftBridges(state.nft).keys()) own.delete(domain);
  return [
    ...libvirtAccepts(state.nft, own, tableBridges(state.nft)),
    ...reassertHanded(state.nft, wanted, deps.acceptIn ?? []),
  ];
}
