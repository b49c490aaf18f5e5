/**
 * The one interface both backends implement: a domain's desired state (every piece and the place it goes, made by
 * rules.ts desiredState) and what is live (backends/state.ts, one read for both) in, batches out.
 */

import type { Batch } from "./batch.ts";
import type { Backend } from "./choose.ts";
import type { Forward, LiveForward, Snat } from "./forward.ts";
import type { RuleLines } from "./iptables.ts";
import type { Table } from "./iptables_live.ts";
import type { ApplyDeps, FirewallState } from "./state.ts";
import type { Family } from "../system/address.ts";

/** What one sync changed in one backend. */
export interface Change {
  target: "iptables" | "ip6tables" | "nft";
  /** Rules of ours removed or replaced (where `chains` is given: beside those chains, whose rules were not read). */
  removed: number | undefined;
  added: number;
  /** Chains of ours removed by name with every rule in them, unread (a stop on iptables-nft: see readAtOnce). */
  chains?: number;
}

/** What of a domain goes into iptables' chains in one family. */
export interface IptablesPart {
  /**
   * "all": the DNAT, hairpin and outbound NAT chains and the FORWARD accept (our iptables backend); "filter": the
   * accept in iptables' own FORWARD only, a gate every forwarded connection passes whatever libvirt uses (our
   * nftables backend); "none": nothing (no FORWARD chain, or a removal).
   */
  place: "all" | "filter" | "none";
  /** The forwards the part is for. */
  forwards: Forward[];
  /** Whether an outbound NAT goes into our iptables SNAT chain. */
  snat: boolean;
  /** The rules, and the batch lines that add them (undefined: rendered when needed). */
  rules: RuleLines;
  additions: Record<Table, string> | undefined;
}

/** A domain's desired state: every piece, and the place it goes. */
export interface Desired {
  domain: string;
  /** The backend that carries the forwards' translation. */
  backend: Backend;
  /** What goes into iptables, per family. */
  iptables: Record<Family, IptablesPart>;
  /** What goes into our nftables table: the forwards it translates, and the outbound NATs. */
  table: { forwards: Forward[]; snats: Snat[] };
  /**
   * The bridges the domain's accepts in libvirt's chains and in the chains handed to us (`accept_in`) name, looked
   * up when asked; undefined: no accepts.
   */
  accepts: () => Record<Family, string[]> | undefined;
}

/** A firewall backend: what makes the live state (`live`, as read) equal to a domain's desired state. */
export interface FirewallBackend {
  readonly name: string;
  /** The batches, in the order they run, and what they change; none where nothing differs. */
  batches(desired: Desired, live: FirewallState, deps: ApplyDeps): { batches: Batch[]; changes: Change[] };
  /** What is live of ours here, read back into the model: every domain with rules here, with its forwards. */
  forwards(live: FirewallState): Map<string, LiveForward[]>;
  /** Whether a domain's live `forwards` lack an accept where it must be (see rules.ts acceptMisplaced). */
  misplaced(live: FirewallState, domain: string, forwards: Forward[]): boolean;
}

// ---- What the commands and the hook use of the backends: through this module alone (test/layout_test.ts) ----

/** The rule model's forwards, as planned and as read back, and how they are said. */
export {
  asLiveForward,
  asLiveSnat,
  type Counters,
  describeForward,
  describePlan,
  type Forward,
  type LiveForward,
  type Snat,
} from "./forward.ts";
/** The one naming scheme of both backends: what makes a rule, chain or table ours. */
export {
  carriedDomain,
  chainNames,
  domainHash,
  domainLabel,
  isHashOnly,
  LIBVIRT_TABLE,
  NFT_TABLE,
  ruleComment,
} from "./names.ts";
/** The live state's model and its read (one read for both backends, a constant number of processes). */
export { type ApplyDeps, beginRead, type FirewallState } from "./state.ts";
/** Other software's gates at the forward hook, and what they do to a forward's first packet. */
export {
  type BaseChain,
  blockedNote,
  type Blocker,
  blockers,
  describeBlocker,
  type ForeignGate,
  gateKind,
  gateName,
  openingLine,
  type Packet,
} from "./gates.ts";
export { foreignGates } from "./foreign.ts";
/** A named source set's live copies made equal to its stored members (see backends/sources.ts). */
export { syncSourceSet } from "./source_sets.ts";
/** The programs: iptables' per family, whether they drive nf_tables, and conntrack's count of tracked flows. */
export { iptablesTools, type Tools } from "./iptables.ts";
export { drivesNfTables } from "./choose.ts";
export { type Elsewhere, elsewhereProblem, listChains } from "./elsewhere.ts";
export { type Forgotten, trackedConnections } from "./conntrack.ts";
/** The bridge behind a guest address (where our accepts go). */
export { bridgesOf } from "./nftables.ts";
/** The old Python hook's chains, found in what is live (migrate-legacy removes them). */
export { legacyRules } from "./legacy.ts";
