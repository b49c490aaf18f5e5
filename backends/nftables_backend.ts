/**
 * The nftables backend behind the one interface (backends/backend.ts): a domain's objects in our table, and its
 * accepts in libvirt's chains and in the chains handed to us, in one `nft -f` transaction.
 */

import type { Change, Desired, FirewallBackend } from "./backend.ts";
import { type Batch, nftBatch } from "./batch.ts";
import type { Forward, LiveForward, Snat } from "./forward.ts";
import { carriedDomain } from "./names.ts";
import {
  bridgesOf,
  handedAccepts,
  libvirtAccepts,
  nftBase,
  nftDomainObjects,
  nftRemoveDomain,
} from "./nftables.ts";
import { liveAccepts, type NftLive, nftLiveForwards } from "./nftables_live.ts";
import type { ApplyDeps, FirewallState } from "./state.ts";
import type { Family } from "../system/address.ts";

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
      ? { batches: [batch], changes: [{ target: "nft", removed: 0, added: commands.length }] }
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
      ...nftRemoveDomain(domain, live, { keepTable: true }),
      ...nftDomainObjects(domain, ours, bridges() ?? bridgesOf(ours, deps.connected ?? []), { snats }),
    ]
    : nftRemoveDomain(domain, live);
  // Our accepts in libvirt's chains and in those handed to us: the other domains' as they are, this one's as
  // wanted. Keyed as the accepts' comments carry the domain, so that a name too long for a comment compares equal.
  const mine = bridges();
  const withMine = (wanted: Map<string, Record<Family, string[]>>) => {
    if (mine) wanted.set(carriedDomain(domain), mine);
    else wanted.delete(carriedDomain(domain));
    return wanted;
  };
  const libvirt = live.libvirt[4] || live.libvirt[6] ? libvirtAccepts(live, withMine(liveAccepts(live))) : [];
  return [...table, ...libvirt, ...handedAccepts(live, domain, mine, deps.acceptIn ?? [])];
}
