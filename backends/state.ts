/** Reads what is live of ours, in every family and backend at once: a constant number of processes. */

import { createdListings, readCreated } from "./created.ts";
import type { Forward } from "./forward.ts";
import { forwardHooks } from "./gates.ts";
import { JUMP_CHAINS, type Tools } from "./iptables.ts";
import {
  listingsToSave,
  type Live,
  liveForwards,
  ownChainsAndJumps,
  parseInteractive,
  parseSave,
} from "./iptables_live.ts";
import { chainNames, GATE_CHAIN, LIBVIRT_CHAIN, LIBVIRT_TABLE, NFT_TABLE, USER_CHAIN } from "./names.ts";
import { bridgesOf } from "./nftables.ts";
import { addNftItems, emptyNftLive, nftBridges, type NftLive } from "./nftables_live.ts";
import { nftItems } from "./nft_json.ts";
import { type NftItem } from "./nft_json.ts";
import { BACKENDS } from "../config/model.ts";
import type { Family } from "../system/address.ts";
import type { ConnectedRoute } from "../system/host.ts";
import { LIBVIRT_NETWORK_RUN_DIR, libvirtBackends, readNetworkConf } from "../system/libvirt.ts";
import { CommandError, type Runner } from "../system/runner.ts";

/** What a sync needs: the runner, the iptables tools and, where nft exists, how to reach it. */
export interface ApplyDeps {
  runner: Runner;
  /** A named source set's stored members (default: its file under system/sets.ts' directory). */
  setMembers?: (name: string) => string[];
  /** The ipset program, for the iptables backend's source sets (default `ipset`). */
  ipset?: string;
  tools: Record<Family, Tools>;
  /** The nft program; undefined: leave nftables alone entirely (tests of the iptables path). */
  nft?: string;
  backend?: typeof BACKENDS[number];
  /** Connected networks, to find the bridge behind each guest address. */
  connected?: ConnectedRoute[];
  /**
   * The chains the administrator handed us (`accept_in` in the settings, `<family> <table> <chain>`): our accept
   * goes first in each, like in libvirt's.
   */
  acceptIn?: readonly string[];
  /** Where libvirt keeps its running networks' status (default LIBVIRT_NETWORK_RUN_DIR; tests point elsewhere). */
  networkRunDir?: string;
  /** libvirt's network driver settings (default LIBVIRT_NETWORK_CONF; tests point elsewhere). */
  networkConf?: string;
  /** A directory on /run where the size of the last full ruleset read is remembered (see readState). */
  hintDir?: string;
  /**
   * The iptables tools drive nf_tables (iptables-nft), so one `nft` process can see everything a domain's sync
   * needs (see readAtOnce). Undefined or false: read with iptables-save.
   */
  iptablesNft?: boolean;
  /**
   * The conntrack program, which deletes the flows of forwards that went or changed target once the rules are
   * committed; false: not installed (said where there was something to delete); undefined: leave flows alone.
   */
  conntrack?: string | false;
  /** How many connections the kernel tracks in this network namespace (absent: not known, maybe some). */
  tracked?: () => number;
}

/**
 * Above this much of other software's rules in `iptables-save` (bytes; ours do not count, so the choice does not
 * depend on how many forwards we have), a host counts as busy: reading everything costs tens of ms.
 */
export const BUSY_RULESET_BYTES = 256 * 1024;

const BUSY_HINT = "busy-ruleset";

export const FAMILIES: Family[] = [4, 6];

/** Which iptables holds libvirt's chains, where the one we run does not see them (see backends/elsewhere.ts). */
export type Elsewhere = "iptables-nft" | "iptables-legacy";

/** Everything of ours that is live: iptables per family (undefined: not installed) and nftables. */
export interface FirewallState {
  ipt: Record<Family, Live | undefined>;
  /** Undefined when nft is not installed (or not asked for). */
  nft: NftLive | undefined;
  /** libvirt's own `firewall_backend` setting, when /etc/libvirt/network.conf has one. */
  libvirtSetting?: string;
  /** nft was asked for but cannot be run (not installed, not on PATH): nftables could not be read. */
  nftMissing?: true;
  /**
   * The firewall backends libvirt's running networks were set up with (their status files), read only where one
   * of our programs is missing: what libvirt uses must be known even where we cannot read it.
   */
  libvirtBackends?: string[];
  /**
   * How much of the iptables part was read; undefined: everything of ours. "chains": one domain's chains (names
   * only) and the jumps into them, not what is in those chains: enough to remove them (declaring a chain flushes
   * it) or to know that there is nothing of the domain. "chains, no jumps": the same without the jumps (a start,
   * which reads everything anyway where the domain has chains; without chains there can be no jump, nf_tables
   * refuses a jump to a chain that does not exist).
   */
  scope?: ReadScope;
  /**
   * Where libvirt's iptables chains are when the iptables we run does not see them (see backends/elsewhere.ts);
   * looked for only by what needs it (a start, `plan`, `doctor`).
   */
  libvirtElsewhere?: Elsewhere;
}

/** What a read of one domain lists (see FirewallState.scope). */
export type ReadScope = "chains" | "chains, no jumps";

/** What to read: everything, or only what concerns `domain` (see readAtOnce). */
export interface ReadOptions {
  /** Read only what concerns this domain, where one nft process can (iptables-nft); else everything. */
  domain?: string;
  /** Called once the reading process has its input: the caller's work can go on while it runs. */
  onInput?: (() => void) | undefined;
  /** List the jumps in the built-in chains too (default true); a start does without (see FirewallState.scope). */
  jumps?: boolean;
  /** Read the rules' counters too (status, metrics): a whole read, with `iptables-save -c`. */
  counters?: boolean;
}

/** Reads what is live for every family and backend, concurrently: a constant number of processes. */
export async function readState(deps: ApplyDeps, options: ReadOptions = {}): Promise<FirewallState> {
  const { domain, onInput, jumps = true, counters = false } = options;
  if (counters) return await readAll(deps, domain, { counters });
  if (domain !== undefined && deps.iptablesNft && deps.nft !== undefined) {
    const state = await readAtOnce(deps, deps.nft, { domain, onInput, jumps });
    if (state) return state;
  }
  // iptables-save and nft list take no input.
  onInput?.();
  return await readAll(deps, domain);
}

/** Reads with iptables-save (or, on a busy host, by single chains) and nft: the whole truth about our rules. */
export async function readAll(
  deps: ApplyDeps,
  domain?: string,
  { counters = false }: { counters?: boolean } = {},
): Promise<FirewallState> {
  const { runner, tools } = deps;
  // On a busy host (Docker, Kubernetes: thousands of rules of others) iptables-save takes ~70 ms, while listing one
  // chain takes ~3 ms. So where the last full read was big, a call for one domain lists only the chains that can
  // hold its rules: the four built-in chains our jumps live in, and its own three chains.
  const targeted = !counters && domain !== undefined && deps.hintDir !== undefined &&
    await hinted(deps.hintDir, BUSY_HINT);
  const ipt = Promise.all(FAMILIES.map(async (family) => {
    const listed = targeted ? await readChains(runner, tools[family], domain!) : "read all";
    if (listed !== "read all") return listed;
    const save = counters ? [...tools[family].save, "-c"] : tools[family].save;
    const result = await runner.run(save);
    if (result.code === 127) return undefined;
    if (result.code !== 0) throw new CommandError(save, result);
    const live = parseSave(result.stdout);
    if (family === 4 && deps.hintDir !== undefined) {
      await remember(deps.hintDir, BUSY_HINT, live.foreignBytes ?? 0);
    }
    return live;
  }));
  const nft = deps.nft === undefined ? Promise.resolve(undefined) : readNft(runner, deps.nft, deps.acceptIn);
  const conf = deps.nft === undefined ? Promise.resolve(undefined) : readNetworkConf(deps.networkConf);
  const [[v4, v6], n, setting] = await Promise.all([ipt, nft, conf]);
  const nftMissing = deps.nft !== undefined && n === undefined;
  const backends = v4 === undefined || nftMissing
    ? libvirtBackends(deps.networkRunDir ?? LIBVIRT_NETWORK_RUN_DIR)
    : [];
  // Without iptables programs, libvirt's iptables chains (iptables-nft's, in `ip filter`) are still seen with nft.
  if (v4 === undefined && n !== undefined && !backends.includes("iptables")) {
    if (await hasLibvirtChains(runner, deps.nft!)) backends.push("iptables");
  }
  return {
    ipt: { 4: v4, 6: v6 },
    nft: n,
    ...(setting === undefined ? {} : { libvirtSetting: setting }),
    ...(nftMissing ? { nftMissing } : {}),
    ...(backends.length > 0 ? { libvirtBackends: backends } : {}),
  };
}

/** Whether iptables-nft's `ip filter` table holds libvirt's chains (LIBVIRT_FWI, ...), read with nft. */
async function hasLibvirtChains(runner: Runner, nft: string): Promise<boolean> {
  const result = await runner.run([nft, "-j", "list", "chains", "ip"]);
  if (result.code !== 0) return false;
  try {
    return nftItems(result.stdout).some((i) => i.kind === "chain" && String(i.v.name).startsWith("LIBVIRT_"));
  } catch {
    return false;
  }
}

const NFT_FAMILY: Record<Family, string> = { 4: "ip", 6: "ip6" };

/**
 * Where iptables is iptables-nft, one `nft -j -i` process answers every question a domain's sync asks: which
 * chains exist (our chains of the domain, libvirt's), the jumps in the four built-in chains ours hang from, our
 * nftables table and libvirt's nftables chains. Interactive mode runs each command on its own, so a table that
 * does not exist fails only its own listing. ~3 ms whatever the host's rules or our own N, against one
 * iptables-save per family that grows with both (30 ms for 1000 forwards). What it does not read is what is in
 * our own chains: a sync that needs it (the domain has chains already and gets forwards again) reads it all.
 * Without `jumps`, the built-in chains are not listed (each holds a jump per running domain: ~0.5 ms each with
 * 100 domains). Undefined when the answer is not exactly what was asked for; then the caller reads everything.
 */
async function readAtOnce(
  deps: ApplyDeps,
  nft: string,
  { domain, onInput, jumps }: ReadOptions & { domain: string },
): Promise<FirewallState | undefined> {
  const commands = [
    "list chains",
    ...(jumps
      ? FAMILIES.flatMap((f) =>
        JUMP_CHAINS.map(([table, chain]) => `list chain ${NFT_FAMILY[f]} ${table} ${chain}`)
      )
      : []),
    `list table inet ${NFT_TABLE}`,
    `list chain ip ${LIBVIRT_TABLE} ${LIBVIRT_CHAIN}`,
    `list chain ip6 ${LIBVIRT_TABLE} ${LIBVIRT_CHAIN}`,
    ...(deps.acceptIn ?? []).map((gate) => `list chain ${gate}`),
    // A removal may delete the administrator's chain where it is empty and unused (see userChainGoes), and our
    // gate where it held the domain's jump alone (see gateChange).
    ...(jumps
      ? FAMILIES.flatMap((f) =>
        [USER_CHAIN, GATE_CHAIN].map((c) => `list chain ${NFT_FAMILY[f]} filter ${c}`)
      )
      : []),
    // A removal may delete a table we created: every chain of it must be known empty first.
    ...(jumps && deps.hintDir !== undefined ? createdListings(readCreated(deps.hintDir)) : []),
  ];
  // HOME: the interactive mode keeps a history file there; it must not write into root's home.
  const [result, setting] = await Promise.all([
    deps.runner.run([nft, "-j", "-i"], {
      stdin: commands.join("\n") + "\n",
      env: { HOME: "/dev/null" },
      ...(onInput ? { onInput } : {}),
    }),
    readNetworkConf(deps.networkConf),
  ]);
  const answered = parseInteractive(result.stdout, result.stderr);
  // Every command answered once, `list chains` (which cannot miss) first among the documents.
  if (
    result.code !== 0 || !answered || answered.docs.length + answered.missing.length !== commands.length ||
    answered.missing.some((m) => !commands.includes(m) || m === commands[0])
  ) return undefined;
  let docs: NftItem[][];
  try {
    docs = answered.docs.map(nftItems);
  } catch {
    return undefined;
  }
  const [chains = [], ...rest] = docs;
  const ipt = ownChainsAndJumps(chains, rest, domain);
  const nftLive = emptyNftLive();
  for (const items of rest) addNftItems(items, nftLive, deps.acceptIn);
  nftLive.hooks = forwardHooks(chains);
  return {
    ipt,
    nft: nftLive,
    scope: jumps ? "chains" : "chains, no jumps",
    ...(setting === undefined ? {} : { libvirtSetting: setting }),
  };
}

/** Lists the chains that can hold a domain's rules; "read all" when a listing fails in a way a full read explains. */
async function readChains(
  runner: Runner,
  tools: Tools,
  domain: string,
): Promise<Live | undefined | "read all"> {
  const c = chainNames(domain);
  const wanted: [string, string, boolean][] = [
    ...JUMP_CHAINS.map(([t, chain]): [string, string, boolean] => [t, chain, true]),
    ["nat", c.dnat, false],
    ["nat", c.snat, false],
    ["filter", c.fwd, false],
    // Whether the administrator's chain is there: a start creates it where it is not (see USER_CHAIN).
    ["filter", USER_CHAIN, false],
    // Our gate, with every domain's jump in it (see gateChange).
    ["filter", GATE_CHAIN, false],
  ];
  const results = await Promise.all(
    wanted.map(([table, chain]) => runner.run([...tools.list, "-t", table, "-S", chain])),
  );
  if (results.some((r) => r.code === 127)) return undefined;
  const listings: { table: string; text: string }[] = [];
  for (const [i, r] of results.entries()) {
    const [table, , builtin] = wanted[i]!;
    if (r.code === 0) listings.push({ table, text: r.stdout });
    // Our own chain is simply not there (iptables-nft 1.8.9 says "incompatible" for a chain that does not exist).
    // Anything else is left to iptables-save, which reads whatever there is.
    else if (builtin || !/No chain|does not exist|is incompatible/i.test(r.stderr)) return "read all";
  }
  // Other domains' chains were not listed: the administrator's chain is never deleted from this read.
  const { userRules: _, ...live } = parseSave(listingsToSave(listings));
  // The domain's counting chain is known by the gate's jump into it (see ruleLines): not listed, as it is not
  // read (a sync declares it, which empties it), so no start of a domain that does not count lists one more chain.
  for (const r of live.rules) {
    if (
      r.chain === GATE_CHAIN && r.spec.endsWith(` -j ${c.cnt}`) && !live.chains.some((x) => x.chain === c.cnt)
    ) {
      live.chains.push({ table: "filter", chain: c.cnt, owner: r.owner });
    }
  }
  return live;
}

function hinted(dir: string, hint: string): Promise<boolean> {
  return Deno.stat(`${dir}/${hint}`).then(() => true, () => false);
}

async function remember(dir: string, hint: string, bytes: number): Promise<void> {
  const path = `${dir}/${hint}`;
  try {
    if (bytes > BUSY_RULESET_BYTES) {
      await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
      await Deno.writeTextFile(path, `${bytes}\n`);
    } else await Deno.remove(path);
  } catch {
    // Only a hint: a failure costs later calls some speed, nothing else.
  }
}

async function readNft(
  runner: Runner,
  nft: string,
  handed: readonly string[] = [],
): Promise<NftLive | undefined> {
  // Three targeted looks, concurrently. Not `nft list tables`: that fetches the whole ruleset first, 100 ms on a
  // host with 10 000 rules of other software, where listing one table or chain takes 3 ms.
  // `list chains` names the gates: every base chain at the forward hook, whatever its table.
  const lists = [
    ["list", "table", "inet", NFT_TABLE],
    ["list", "chain", "ip", LIBVIRT_TABLE, LIBVIRT_CHAIN],
    ["list", "chain", "ip6", LIBVIRT_TABLE, LIBVIRT_CHAIN],
    ["list", "chains"],
    ...handed.map((gate) => ["list", "chain", ...gate.split(" ")]),
  ];
  const results = await Promise.all(lists.map((l) => runner.run([nft, "-j", ...l])));
  if (results.some((r) => r.code === 127)) return undefined;
  const live = emptyNftLive();
  results.forEach((r, i) => {
    // A table or chain that does not exist is simply not there.
    if (r.code !== 0 && /No such file or directory/.test(r.stderr)) return;
    if (r.code !== 0) throw new CommandError([nft, "-j", ...lists[i]!], r);
    if (i === 3) live.hooks = forwardHooks(nftItems(r.stdout));
    else addNftItems(nftItems(r.stdout), live, handed);
  });
  return live;
}

/**
 * Starts readState for a domain (with or without the jumps, see readAtOnce) and returns once the reading process
 * has its input: its stdin is written by the event loop, so CPU work done meanwhile would hold the read up instead
 * of overlapping it. A failure of the read surfaces where `state` is awaited.
 */
export async function beginRead(
  deps: ApplyDeps,
  options: Omit<ReadOptions, "onInput"> & { domain: string },
): Promise<{ state: Promise<FirewallState> }> {
  let sent = () => {};
  const inputSent = new Promise<void>((resolve) => sent = resolve);
  const state = readState(deps, { ...options, onInput: sent });
  await Promise.race([inputSent, state.then(() => {}, () => {})]);
  return { state };
}

/** Per domain with live rules of ours (either backend): the bridges its forwards go out of. */
export function liveBridges(
  state: FirewallState,
  connected: ConnectedRoute[],
): Map<string, Record<Family, string[]>> {
  const out = new Map<string, Record<Family, string[]>>();
  const add = (domain: string, family: Family, bridge: string) => {
    const entry = out.get(domain) ?? { 4: [], 6: [] };
    if (!entry[family].includes(bridge)) entry[family].push(bridge);
    out.set(domain, entry);
  };
  for (const family of FAMILIES) {
    const live = state.ipt[family];
    if (!live) continue;
    // The guests' addresses, from the DNAT rules (the one accept holds none); a guest's bridge is the device of
    // its connected network.
    for (const f of liveForwards(live, family)) {
      if (f.outbound || f.privateIp === "") continue;
      for (const b of bridgesOf([{ family, privateIp: f.privateIp } as Forward], connected)[family]) {
        add(f.domain, family, b);
      }
    }
  }
  for (const [domain, bridges] of state.nft ? nftBridges(state.nft) : []) {
    for (const family of FAMILIES) for (const b of bridges[family]) add(domain, family, b);
  }
  return out;
}

/** Thrown when a domain's rules cannot be applied; the firewall is as it was before. */
export class ApplyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ApplyError";
  }
}
