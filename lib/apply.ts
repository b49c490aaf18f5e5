/** Applies a domain's forwards to the live firewall, all or nothing, with whichever backend fits the host. */

import {
  carriedDomain,
  CHAIN_PREFIX,
  chainNames,
  domainHash,
  type Forward,
  JUMP_CHAINS,
  listingsToSave,
  type Live,
  liveOf,
  parseSave,
  renderAdditions,
  renderRollback,
  renderSync,
  ruleComment,
  type RuleLines,
  ruleLines,
  tokenize,
  type Tools,
} from "../rules.ts";
import type { BACKENDS } from "../config.ts";
import type { Family } from "./address.ts";
import type { ConnectedRoute } from "./host.ts";
import {
  addNftItems,
  bridgesOf,
  emptyNftLive,
  handedAccepts,
  LIBVIRT_CHAIN,
  LIBVIRT_TABLE,
  libvirtAccepts,
  liveAccepts,
  NFT_TABLE,
  nftBase,
  nftBridges,
  nftDomainObjects,
  type NftItem,
  nftItems,
  type NftLive,
  nftRemoveDomain,
  nftRemoveIptables,
  reassertHanded,
} from "./nft.ts";
import { CommandError, oneLine, type Runner } from "./runner.ts";
import { type BaseChain, type ForeignGate, forwardHooks, gateKind, gateName } from "./gates.ts";

/** What one sync changed in one backend. */
export interface Change {
  target: "iptables" | "ip6tables" | "nft";
  /** Rules of ours removed or replaced; undefined where a partial read did not count what was in our chains. */
  removed: number | undefined;
  added: number;
}

/** Thrown when a domain's rules cannot be applied; the firewall is as it was before. */
export class ApplyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ApplyError";
  }
}

/** The firewall backend in use for our own rules. */
export type Backend = "iptables" | "nftables";

/** What a sync needs: the runner, the iptables tools and, where nft exists, how to reach it. */
export interface ApplyDeps {
  runner: Runner;
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
}

/**
 * Above this much of other software's rules in `iptables-save` (bytes; ours do not count, so the choice does not
 * depend on how many forwards we have), a host counts as busy: reading everything costs tens of ms.
 */
export const BUSY_RULESET_BYTES = 256 * 1024;
const BUSY_HINT = "busy-ruleset";

const FAMILIES: Family[] = [4, 6];

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
   * The iptables part holds one domain's chains (names only) and the jumps into them, not what is in those
   * chains: enough to remove them (declaring a chain flushes it) or to know that there is nothing of the domain.
   */
  partial?: boolean;
  /**
   * With partial: the jumps were not listed (a start, which reads everything anyway where the domain has chains;
   * without chains there can be no jump, nf_tables refuses a jump to a chain that does not exist).
   */
  jumpsUnread?: boolean;
}

/** Reads `firewall_backend` from libvirt's network.conf (libvirt >= 10.4), if it is set there. */
export function parseNetworkConf(text: string): string | undefined {
  return /^\s*firewall_backend\s*=\s*"([a-z]+)"/m.exec(text)?.[1];
}

/** libvirt's network driver settings; its `firewall_backend` tells which backend libvirt will use. */
export const LIBVIRT_NETWORK_CONF = "/etc/libvirt/network.conf";

/** Reads what is live for every family and backend, concurrently: a constant number of processes. */
export async function readState(
  deps: ApplyDeps,
  domain?: string,
  onInput?: () => void,
  jumps = true,
): Promise<FirewallState> {
  if (domain !== undefined && deps.iptablesNft && deps.nft !== undefined) {
    const state = await readAtOnce(deps, deps.nft, domain, onInput, jumps);
    if (state) return state;
  }
  // iptables-save and nft list take no input.
  onInput?.();
  return await readAll(deps, domain);
}

/** Reads with iptables-save (or, on a busy host, by single chains) and nft: the whole truth about our rules. */
async function readAll(deps: ApplyDeps, domain?: string): Promise<FirewallState> {
  const { runner, tools } = deps;
  // On a busy host (Docker, Kubernetes: thousands of rules of others) iptables-save takes ~70 ms, while listing one
  // chain takes ~3 ms. So where the last full read was big, a call for one domain lists only the chains that can
  // hold its rules: the four built-in chains our jumps live in, and its own three chains.
  const targeted = domain !== undefined && deps.hintDir !== undefined &&
    await hinted(deps.hintDir, BUSY_HINT);
  const ipt = Promise.all(FAMILIES.map(async (family) => {
    const listed = targeted ? await readChains(runner, tools[family], domain!) : "read all";
    if (listed !== "read all") return listed;
    const result = await runner.run(tools[family].save);
    if (result.code === 127) return undefined;
    if (result.code !== 0) throw new CommandError(tools[family].save, result);
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

/** Where libvirt keeps the status of its running networks; each names the firewall backend it was set up with. */
export const LIBVIRT_NETWORK_RUN_DIR = "/run/libvirt/network";

/**
 * The firewall backend a libvirt network status file names (`<firewall name=... backend='nftables'>`, written by
 * libvirt >= 10.4 with the commands that will remove the network's rules), if any.
 */
export function parseNetworkStatus(xml: string): string | undefined {
  return /<firewall\b[^>]*\bbackend=(['"])([a-z]+)\1/.exec(xml)?.[2];
}

/** The backends of libvirt's running networks, from their status files; synchronously (a few small files). */
function libvirtBackends(dir: string): string[] {
  const out = new Set<string>();
  try {
    for (const e of Deno.readDirSync(dir)) {
      if (!e.name.endsWith(".xml")) continue;
      try {
        const backend = parseNetworkStatus(Deno.readTextFileSync(`${dir}/${e.name}`));
        if (backend) out.add(backend);
      } catch {
        // A network stopping meanwhile: it has no rules to go by.
      }
    }
  } catch {
    // No libvirt networks running here.
  }
  return [...out].sort();
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
  domain: string,
  onInput: (() => void) | undefined,
  jumps: boolean,
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
    partial: true,
    ...(jumps ? {} : { jumpsUnread: true }),
    ...(setting === undefined ? {} : { libvirtSetting: setting }),
  };
}

/**
 * Splits what `nft -j -i` printed: one JSON document per command that succeeded (a prompt some builds print is
 * skipped), and the commands that failed because their table or chain does not exist (nft repeats the command
 * under its error). Undefined on any other error.
 */
export function parseInteractive(
  stdout: string,
  stderr: string,
): { docs: string[]; missing: string[] } | undefined {
  const docs: string[] = [];
  for (const line of stdout.split("\n")) {
    const at = line.indexOf('{"nftables"');
    if (at >= 0) docs.push(line.slice(at));
  }
  const missing: string[] = [];
  const lines = stderr.split("\n");
  for (const [i, line] of lines.entries()) {
    if (!line.startsWith("Error:")) continue;
    if (!/No such file or directory/.test(line)) return undefined;
    missing.push(lines[i + 1]?.trim() ?? "");
  }
  return { docs, missing };
}

/**
 * From `list chains` and the listings of the built-in chains (their `nft -j` objects): per family, the domain's
 * chains and the jumps into them, as iptables-save would have shown them (our jumps carry nothing but our
 * comment).
 */
export function ownChainsAndJumps(
  chains: NftItem[],
  listings: NftItem[][],
  domain: string,
): Record<Family, Live> {
  const owner = domainHash(domain);
  const ours = `${CHAIN_PREFIX}${owner}-`;
  // Every chain was listed: a table with none is not there.
  const out: Record<Family, Live> = {
    4: { chains: [], rules: [], tables: {} },
    6: { chains: [], rules: [], tables: {} },
  };
  for (const { kind, v, family } of iptablesItems(chains)) {
    if (kind !== "chain") continue;
    const name = String(v.name);
    ((out[family].tables ??= {})[String(v.table)] ??= {})[name] = String(v.policy ?? "");
    if (name.startsWith("LIBVIRT_")) out[family].libvirt = true;
    if (name.startsWith(ours)) out[family].chains.push({ table: String(v.table), chain: name, owner });
    if (v.table === "filter" && name === "FORWARD") {
      out[family].forward = { policy: String(v.policy ?? "accept").toUpperCase() };
    }
  }
  // A rule that is not a jump into chains of ours, ahead of one that is, buries it (see LiveRule).
  const foreignFirst = new Set<string>();
  for (const { kind, v, family } of listings.flatMap(iptablesItems)) {
    // Each chain listed has its count of other rules, none yet: a chain not listed has none (not known).
    if (kind === "chain") (out[family].othersIn ??= {})[`${v.table} ${v.name}`] ??= { foreign: 0, ours: 0 };
    if (kind !== "rule") continue;
    const where = `${family} ${v.table} ${v.chain}`;
    const targets = ((v.expr ?? []) as { jump?: { target?: string } }[]).map((e) => e.jump?.target);
    if (!targets.some((t) => t?.startsWith(CHAIN_PREFIX))) foreignFirst.add(where);
    const count = (out[family].othersIn ??= {})[`${v.table} ${v.chain}`] ??= { foreign: 0, ours: 0 };
    if (!targets.some((t) => t?.startsWith(CHAIN_PREFIX))) count.foreign++;
    else if (!targets.some((t) => t?.startsWith(ours))) count.ours++;
    for (const target of targets) {
      if (target === undefined || !target.startsWith(ours)) continue;
      out[family].rules.push({
        table: String(v.table),
        chain: String(v.chain),
        spec: `-m comment --comment "${ruleComment(domain)}" -j ${target}`,
        owner,
        domain,
        ...(typeof v.handle === "number" ? { handle: v.handle } : {}),
        ...(foreignFirst.has(where) ? { buried: true as const } : {}),
      });
    }
  }
  return out;
}

/** The objects that belong to iptables-nft's nat and filter tables, with their family. */
function iptablesItems(items: NftItem[]): (NftItem & { family: Family })[] {
  return items.flatMap((i) =>
    (i.v.table === "nat" || i.v.table === "filter") && (i.v.family === "ip" || i.v.family === "ip6")
      ? [{ ...i, family: i.v.family === "ip" ? 4 as const : 6 as const }]
      : []
  );
}

function readNetworkConf(path = LIBVIRT_NETWORK_CONF): Promise<string | undefined> {
  return Deno.readTextFile(path).then(parseNetworkConf, () => undefined);
}

/**
 * Whether both iptables programs drive nf_tables: each resolves (through PATH and the alternatives' symlinks) to
 * xtables-nft-multi or iptables-nft. Anything else (legacy, not found, unknown) reads with iptables-save.
 */
export function drivesNfTables(tools: Record<Family, Tools>, path: string | undefined): boolean {
  return FAMILIES.every((family) => {
    const program = tools[family].list[0] ?? "";
    const candidates = program.includes("/")
      ? [program]
      : (path || "/usr/sbin:/usr/bin:/sbin:/bin").split(":").map((dir) => `${dir}/${program}`);
    for (const candidate of candidates) {
      try {
        const real = Deno.realPathSync(candidate);
        const base = real.slice(real.lastIndexOf("/") + 1);
        return /nft/.test(base) && !/legacy/.test(base);
      } catch {
        // Not in this directory.
      }
    }
    return false;
  });
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
  return parseSave(listingsToSave(listings));
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

/** Whether libvirt runs its iptables backend here: its chains are in iptables. */
function libvirtUsesIptables(state: FirewallState): boolean {
  return state.ipt[4]?.libvirt === true || state.ipt[6]?.libvirt === true;
}

/**
 * Why a forward could not work here because a program of ours is missing where libvirt's backend needs it, if so:
 * our accept must go where libvirt rejects (its nftables chain, or ahead of LIBVIRT_FWI in iptables).
 */
function missingProgram(state: FirewallState): string | undefined {
  const says = (backend: string) => [
    ...(state.libvirtSetting === backend
      ? [`firewall_backend = "${backend}" in ${LIBVIRT_NETWORK_CONF}`]
      : []),
    ...(state.libvirtBackends?.includes(backend) ? [`its running networks use ${backend}`] : []),
  ];
  const nftables = says("nftables");
  if (state.nftMissing && nftables.length > 0) {
    return `libvirt uses nftables here (${
      nftables.join("; ")
    }), but nft is not installed or not on PATH: our ` +
      "accept cannot go into libvirt's guest_input chain, whose reject would drop every forward; install nftables";
  }
  const iptables = says("iptables");
  if (state.ipt[4] === undefined && iptables.length > 0) {
    return `libvirt uses iptables here (${
      iptables.join("; ")
    }), but iptables-save is not installed or not on ` +
      "PATH: our accept cannot go ahead of LIBVIRT_FWI's reject; install iptables";
  }
  return undefined;
}

/** Chooses the backend for our rules, or explains why the configured one cannot work here. */
export function chooseBackend(setting: ApplyDeps["backend"], state: FirewallState): Backend {
  const missing = missingProgram(state);
  if (missing) throw new ApplyError(missing);
  // What is live decides first; libvirt's own setting counts while none of its networks runs yet.
  const libvirtNft = state.nft !== undefined &&
    (Object.keys(state.nft.libvirt).length > 0 ||
      (state.libvirtSetting === "nftables" && !libvirtUsesIptables(state)));
  if (setting === "nftables" || (setting !== "iptables" && libvirtNft)) {
    if (!state.nft) throw new ApplyError("the nftables backend needs nft, which is not installed");
    if (libvirtUsesIptables(state)) {
      throw new ApplyError(
        "libvirt uses its iptables backend here: an accept in our nftables table cannot get past LIBVIRT_FWI's " +
          'REJECT; set "backend" to "iptables" or "auto"',
      );
    }
    return "nftables";
  }
  if (state.ipt[4] === undefined && state.nft !== undefined && setting !== "iptables") return "nftables";
  return "iptables";
}

/**
 * Starts readState for a domain (with or without the jumps, see readAtOnce) and returns once the reading process
 * has its input: its stdin is written by the event loop, so CPU work done meanwhile would hold the read up instead
 * of overlapping it. A failure of the read surfaces where `state` is awaited.
 */
export async function beginRead(
  deps: ApplyDeps,
  domain: string,
  jumps: boolean,
): Promise<{ state: Promise<FirewallState> }> {
  let sent = () => {};
  const inputSent = new Promise<void>((resolve) => sent = resolve);
  const state = readState(deps, domain, sent, jumps);
  await Promise.race([inputSent, state.then(() => {}, () => {})]);
  return { state };
}

/**
 * Makes a domain's live rules equal to `forwards`, all or nothing: one iptables-restore batch per family and one
 * `nft -f` transaction; if any of them fails, what was already applied is put back as it was. `read`: the
 * domain's readState, when the caller started it already (under the same lock).
 */
export async function syncDomain(
  domain: string,
  forwards: Forward[],
  deps: ApplyDeps,
  read?: Promise<FirewallState>,
): Promise<Change[]> {
  // A start lists no jumps: with chains of the domain live, it reads everything below anyway. What is added does
  // not depend on what is live: built and rendered while the firewall is read (ms at 1000).
  const reading = read ?? (await beginRead(deps, domain, forwards.length === 0)).state;
  const built = {} as Built;
  for (const family of FAMILIES) {
    const rules = ruleLines(domain, forwards.filter((f) => f.family === family));
    built[family] = { rules, additions: renderAdditions(rules) };
  }
  // Only nftables needs them (our table, libvirt's chains): looked up when it does (0.3 ms at 1000 forwards).
  let found: Record<Family, string[]> | undefined;
  const bridges: Bridges = () =>
    forwards.length === 0 ? undefined : found ??= bridgesOf(forwards, deps.connected ?? []);
  let state = await readOtherGates(deps, await reading);
  // A domain whose chains are there already and gets forwards again (reconnect, reload): rolling back exactly
  // needs what is in them (and a removal needs the jumps into them, where a start's read did not list them).
  const hasChains = (s: FirewallState) => FAMILIES.some((f) => (s.ipt[f]?.chains.length ?? 0) > 0);
  if (state.partial && (forwards.length > 0 || state.jumpsUnread) && hasChains(state)) {
    state = await readAll(deps, domain);
  }
  try {
    if (state.partial && forwards.length === 0) return await removeAtOnce(domain, state, deps);
    return await syncState(domain, forwards, built, bridges, deps, state);
  } catch (err) {
    // A removal from a partial read failed as a whole (nothing changed) where something differs from what the
    // read showed; a removal from everything that is live finishes the job.
    if (!state.partial || forwards.length > 0 || !(err instanceof ApplyError)) throw err;
    return await syncState(domain, forwards, built, bridges, deps, await readAll(deps, domain));
  }
}

/**
 * Adds to what was read the rules of every gate at the forward hook that is neither libvirt's, iptables', ours nor
 * handed to us already: a chain the settings no longer hand us may still hold an accept of ours, which goes with
 * its domain whatever the config says now. One more nft process, only on hosts with such gates.
 */
async function readOtherGates(deps: ApplyDeps, state: FirewallState): Promise<FirewallState> {
  const nft = state.nft;
  if (!nft || deps.nft === undefined) return state;
  const others = nft.hooks.map(gateName).filter((g) =>
    !(g in nft.handed) &&
    gateKind(nft.hooks.find((h) => gateName(h) === g)!, [], NFT_TABLE, LIBVIRT_TABLE) ===
      "foreign"
  );
  if (others.length === 0) return state;
  const result = await deps.runner.run([deps.nft, "-j", "-i"], {
    stdin: others.map((g) => `list chain ${g}`).join("\n") + "\n",
    env: { HOME: "/dev/null" },
  });
  const answered = parseInteractive(result.stdout, result.stderr);
  // A chain gone since `list chains` is simply not there; any other failure leaves the read unsure.
  if (!answered) throw new ApplyError(`nft failed: ${oneLine(result.stderr) || `exit ${result.code}`}`);
  const handed = { ...nft.handed };
  const live = { ...nft, handed };
  for (const doc of answered.docs) addNftItems(nftItems(doc), live, others);
  return { ...state, nft: live };
}

/**
 * Removes a domain read with readAtOnce in one nft transaction: the jumps into its iptables-nft chains (by
 * handle), those chains, its objects in our nftables table and its accepts in libvirt's chains. iptables-restore
 * commits each table on its own, and the kernel makes every commit that deletes wait for a grace period
 * (10–40 ms here) before the program can exit; one transaction waits once. All or nothing: where it fails,
 * nothing changed.
 */
async function removeAtOnce(domain: string, state: FirewallState, deps: ApplyDeps): Promise<Change[]> {
  const mine = {} as Record<Family, Live>;
  for (const family of FAMILIES) {
    mine[family] = liveOf(state.ipt[family] ?? { chains: [], rules: [] }, domain);
  }
  const iptables = nftRemoveIptables(mine);
  if (!iptables) throw new ApplyError("A jump into our chains was read without its nft handle");
  const others = state.nft ? nftSync(domain, [], () => undefined, state.nft, deps) : [];
  const created = deps.hintDir === undefined || state.jumpsUnread ? undefined : readCreated(deps.hintDir);
  const uncreate = created ? uncreated(created, state, mine) : { commands: [], keep: [] };
  const commands = [...iptables, ...others, ...uncreate.commands];
  if (commands.length === 0) return [];
  const result = await deps.runner.run([deps.nft!, "-f", "-"], { stdin: commands.join("\n") + "\n" });
  if (result.code !== 0) {
    throw new ApplyError(`nft failed: ${oneLine(result.stderr) || `exit ${result.code}`}`);
  }
  if (created && uncreate.keep.length !== created.length) writeCreated(deps.hintDir!, uncreate.keep);
  const changes: Change[] = [];
  for (const family of FAMILIES) {
    const { chains, rules } = mine[family];
    if (chains.length === 0 && rules.length === 0) continue;
    // What was in the chains was not read: only the jumps are counted, and only where there are no chains.
    const removed = chains.length > 0 ? undefined : rules.length;
    changes.push({ target: family === 4 ? "iptables" : "ip6tables", removed, added: 0 });
  }
  if (others.length > 0) changes.push({ target: "nft", removed: 0, added: others.length });
  return changes;
}

/** The filter part of a domain's rules (its accepts, `count` of them): what iptables' FORWARD gets of them. */
function filterOnly(rules: RuleLines, count: number): Built[Family] {
  const filter: RuleLines = {
    chains: rules.chains.filter((c) => c.table === "filter"),
    jumps: rules.jumps.filter((j) => j.table === "filter"),
    text: { nat: "", filter: rules.text.filter },
    count,
  };
  return { rules: filter, additions: renderAdditions(filter) };
}

/**
 * Where we remember the built-in chains and tables of iptables-nft that a batch of ours created (`<family>
 * <table> [<chain>]`, one a line): iptables-nft makes a built-in chain when a rule first goes into it, and leaves it
 * when the rule goes. The last removal that leaves one empty deletes it again, so a host with no iptables rules
 * before our forwards has none after them. Only what we made is ever deleted, and only while nothing else uses it.
 */
const CREATED = "created-chains";

/** The file of CREATED for this network namespace: what a lab's host (or a container) made is its own. */
function createdFile(dir: string): string {
  let ns = "";
  try {
    ns = `-${Deno.statSync("/proc/self/ns/net").ino}`;
  } catch {
    // One namespace as far as we can tell.
  }
  return `${dir}/${CREATED}${ns}`;
}

/** What of iptables-nft a start's jumps create in one family, from what `list chains` showed (`live.tables`). */
export function createdBy(rules: RuleLines, family: Family, live: Live | undefined): string[] {
  if (!live?.tables) return [];
  const out: string[] = [];
  for (const j of rules.jumps) {
    if (!live.tables[j.table]) out.push(`${family} ${j.table}`);
    if (live.tables[j.table]?.[j.chain] === undefined) out.push(`${family} ${j.table} ${j.chain}`);
  }
  return out;
}

/** The built-in chains iptables-nft makes with each of its tables. */
const BUILTIN: Record<string, string[]> = {
  filter: ["INPUT", "FORWARD", "OUTPUT"],
  nat: ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
};

/** The listings a removal adds so that the tables we created are known whole: their built-in chains. */
function createdListings(created: string[]): string[] {
  const listed = new Set(JUMP_CHAINS.map(([t, c]) => `${t} ${c}`));
  return created.flatMap((entry) => {
    const [f, table = "", chain] = entry.split(" ");
    if (chain !== undefined) return [];
    return (BUILTIN[table] ?? []).filter((c) => !listed.has(`${table} ${c}`)).map((c) =>
      `list chain ${f === "6" ? "ip6" : "ip"} ${table} ${c}`
    );
  });
}

/**
 * The nft commands that delete what we created and a removal leaves empty (`created`: remembered; `mine`: the
 * domain's chains and jumps, about to go), and the entries to keep remembering: those still used by another of our
 * domains. What other software uses now is forgotten: it is as much its as ours. Only a chain known empty (listed,
 * no rule but this domain's jumps, policy accept) is ever deleted; nft refuses to delete one with rules anyway.
 */
export function uncreated(
  created: string[],
  state: FirewallState,
  mine: Record<Family, Live>,
): { commands: string[]; keep: string[] } {
  const commands: string[] = [], keep: string[] = [];
  const tables = new Set(created.filter((e) => e.split(" ").length === 2));
  for (const entry of created) {
    const [f, table = "", chain] = entry.split(" ");
    const family: Family = f === "6" ? 6 : 4;
    const nftFamily = family === 4 ? "ip" : "ip6";
    const live = state.ipt[family];
    const chains = live?.tables?.[table];
    if (!chains) continue;
    // Unused: a built-in chain, policy accept, listed, with no rule left once this domain's jumps go.
    const state_ = (c: string) => {
      const others = live?.othersIn?.[`${table} ${c}`];
      if (others === undefined || chains[c] !== "accept" || others.foreign > 0) return "others";
      return others.ours > 0 ? "ours" : "unused";
    };
    if (chain !== undefined) {
      if (tables.has(`${f} ${table}`) || chains[chain] === undefined) continue;
      const use = state_(chain);
      if (use === "unused") commands.push(`delete chain ${nftFamily} ${table} ${chain}`);
      else if (use === "ours") keep.push(entry);
      continue;
    }
    const going = new Set(mine[family].chains.filter((c) => c.table === table).map((c) => c.chain));
    const left = Object.keys(chains).filter((c) => !going.has(c));
    const uses = left.map((c) => (c.startsWith(CHAIN_PREFIX) ? "ours" : state_(c)));
    if (uses.every((u) => u === "unused")) {
      for (const c of left) commands.push(`delete chain ${nftFamily} ${table} ${c}`);
      commands.push(`delete table ${nftFamily} ${table}`);
    } else if (!uses.includes("others")) keep.push(entry);
  }
  return { commands, keep };
}

function readCreated(dir: string): string[] {
  try {
    return Deno.readTextFileSync(createdFile(dir)).split("\n").filter(Boolean);
  } catch {
    return [];
  }
}

function writeCreated(dir: string, entries: string[]): void {
  try {
    if (entries.length === 0) Deno.removeSync(createdFile(dir));
    else Deno.writeTextFileSync(createdFile(dir), entries.join("\n") + "\n");
  } catch {
    // Only tidiness: an empty built-in chain left behind lets everything through, as if it were not there.
  }
}

function recordCreated(dir: string, entries: string[]): void {
  if (entries.length === 0) return;
  try {
    Deno.mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch {
    // Written below, or not at all.
  }
  writeCreated(dir, [...new Set([...readCreated(dir), ...entries])]);
}

/** The iptables rules of a domain's forwards, per family, and the batch lines that add them. */
type Built = Record<
  Family,
  { rules: RuleLines; additions: ReturnType<typeof renderAdditions> }
>;

/** The bridges a domain's forwards go out of (see bridgesOf), when asked; undefined when it has none. */
type Bridges = () => Record<Family, string[]> | undefined;

async function syncState(
  domain: string,
  forwards: Forward[],
  built: Built,
  bridges: Bridges,
  deps: ApplyDeps,
  state: FirewallState,
): Promise<Change[]> {
  const backend = forwards.length === 0 ? "iptables" : chooseBackend(deps.backend, state);
  const batches: { family: Family; text: string; change: Change; rules: RuleLines }[] = [];
  const before: Partial<Record<Family, Live>> = {};
  for (const family of FAMILIES) {
    const all = state.ipt[family];
    // On the nftables backend, iptables' own FORWARD still gets our accept where it exists: it is a gate every
    // forwarded connection passes (Docker, ufw, an administrator's iptables rules), whatever libvirt uses.
    const iptables = backend === "iptables" ? "all" : all?.forward ? "filter" : "none";
    const wanted = iptables === "none" ? [] : forwards.filter((f) => f.family === family);
    if (!all) {
      if (wanted.length > 0) throw new ApplyError(`${deps.tools[family].save[0]} is not installed`);
      continue;
    }
    const mine = liveOf(all, domain);
    before[family] = mine;
    const added = iptables === "all"
      ? built[family]
      : iptables === "filter"
      ? filterOnly(built[family].rules, wanted.length)
      : { rules: ruleLines(domain, []), additions: undefined };
    const text = renderSync(domain, wanted, mine, added.rules, added.additions);
    if (text === undefined) continue;
    const target = family === 4 ? "iptables" : "ip6tables";
    batches.push({
      family,
      text,
      rules: added.rules,
      change: {
        target,
        removed: state.partial && mine.chains.length > 0 ? undefined : mine.rules.length,
        added: added.rules.count + added.rules.jumps.length,
      },
    });
  }
  const nftCommands = state.nft
    ? nftSync(domain, backend === "nftables" ? forwards : [], bridges, state.nft, deps)
    : [];

  const attempted: Family[] = [];
  const undo = async (why: string) => {
    // Only what was read whole can be put back: a partial read knows a family exactly only when the domain had
    // no chains there. A removal is not undone where it is not known exactly (see syncDomain).
    const exact = attempted.filter((f) => !state.partial || (before[f]?.chains.length ?? 0) === 0);
    const rollback = await rollBack(domain, exact, before, deps);
    return new ApplyError(rollback ? `${why}; ${rollback}` : why);
  };
  for (const batch of batches) {
    attempted.push(batch.family);
    const result = await deps.runner.run(deps.tools[batch.family].restore, { stdin: batch.text });
    if (result.code !== 0) {
      throw await undo(
        `${deps.tools[batch.family].restore[0]} failed: ${oneLine(result.stderr) || `exit ${result.code}`}`,
      );
    }
  }
  if (state.partial && deps.hintDir !== undefined) {
    recordCreated(deps.hintDir, batches.flatMap((b) => createdBy(b.rules, b.family, state.ipt[b.family])));
  }
  const changes = batches.map((b) => b.change);
  if (nftCommands.length > 0) {
    const result = await deps.runner.run([deps.nft!, "-f", "-"], { stdin: nftCommands.join("\n") + "\n" });
    if (result.code !== 0) throw await undo(`nft failed: ${oneLine(result.stderr) || `exit ${result.code}`}`);
    changes.push({ target: "nft", removed: 0, added: nftCommands.length });
  }
  return changes;
}

/**
 * The nft commands for one domain: our table's objects (for `ours`, the forwards nftables carries) and our accepts
 * in libvirt's chains (for `bridges`, those of all its forwards).
 */
function nftSync(
  domain: string,
  ours: Forward[],
  bridges: Bridges,
  live: NftLive,
  deps: ApplyDeps,
): string[] {
  const table = ours.length > 0
    ? [
      ...nftBase(),
      ...nftRemoveDomain(domain, live, true),
      ...nftDomainObjects(domain, ours, bridges() ?? bridgesOf(ours, deps.connected ?? [])),
    ]
    : nftRemoveDomain(domain, live, false);
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

async function rollBack(
  domain: string,
  families: Family[],
  before: Partial<Record<Family, Live>>,
  deps: ApplyDeps,
): Promise<string | undefined> {
  const problems: string[] = [];
  for (const family of families) {
    try {
      const save = await deps.runner.run(deps.tools[family].save);
      if (save.code !== 0) throw new CommandError(deps.tools[family].save, save);
      const text = renderRollback(
        domain,
        before[family] ?? { chains: [], rules: [] },
        liveOf(parseSave(save.stdout), domain),
      );
      if (text === undefined) continue;
      const result = await deps.runner.run(deps.tools[family].restore, { stdin: text });
      if (result.code !== 0) throw new CommandError(deps.tools[family].restore, result);
    } catch (err) {
      problems.push(`IPv${family}: ${err instanceof Error ? err.message : String(err)}`);
    }
  }
  return problems.length
    ? `rolling back also failed, rules may be left half-applied: ${problems.join("; ")}`
    : undefined;
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
    const names = new Map<string, string>();
    for (const r of live.rules) if (r.domain !== undefined) names.set(r.owner, r.domain);
    for (const r of live.rules) {
      const domain = names.get(r.owner);
      if (r.table !== "filter" || !r.chain.endsWith("-FWD") || domain === undefined) continue;
      const t = tokenize(r.spec);
      const at = (flag: string) => (t.includes(flag) ? t[t.indexOf(flag) + 1] : undefined);
      // The guest's address; its bridge is the device of its connected network (an accept holds no interface).
      const privateIp = at("--ctreplsrc")?.replace(/\/\d+$/, "");
      if (!privateIp) continue;
      for (const b of bridgesOf([{ family, privateIp } as Forward], connected)[family]) {
        add(domain, family, b);
      }
    }
  }
  for (const [domain, bridges] of state.nft ? nftBridges(state.nft) : []) {
    for (const family of FAMILIES) for (const b of bridges[family]) add(domain, family, b);
  }
  return out;
}

/**
 * Puts our accepts back in front of libvirt's nftables chains for every domain with live forwards; libvirt
 * re-creates those chains on network and daemon restarts and on reload. Returns how many commands it ran.
 */
export async function reassertAccepts(deps: ApplyDeps): Promise<number> {
  if (deps.nft === undefined) return 0;
  const state = await readState(deps);
  if (!state.nft) return 0;
  const wanted = liveBridges(state, deps.connected ?? []);
  const commands = [
    ...libvirtAccepts(state.nft, wanted),
    ...reassertHanded(state.nft, wanted, deps.acceptIn ?? []),
  ];
  if (commands.length === 0) return 0;
  const result = await deps.runner.run([deps.nft, "-f", "-"], { stdin: commands.join("\n") + "\n" });
  if (result.code !== 0) {
    throw new ApplyError(`nft failed: ${oneLine(result.stderr) || `exit ${result.code}`}`);
  }
  return commands.length;
}

/**
 * The gates no one opens for us (another program's or an administrator's base chains at the forward hook), with
 * their tables' rules; `hooks`: the base chains read already (every read lists them), else they are listed here.
 * No process at all where there are none: the common case.
 */
export async function foreignGates(deps: ApplyDeps, hooks?: BaseChain[]): Promise<ForeignGate[]> {
  if (deps.nft === undefined) return [];
  if (hooks === undefined) {
    const listed = await deps.runner.run([deps.nft, "-j", "list", "chains"]);
    if (listed.code !== 0) return [];
    hooks = forwardHooks(nftItems(listed.stdout));
  }
  const foreign = hooks.filter((h) =>
    gateKind(h, deps.acceptIn ?? [], NFT_TABLE, LIBVIRT_TABLE) === "foreign"
  );
  if (foreign.length === 0) return [];
  const tables = [...new Set(foreign.map((g) => `${g.family} ${g.table}`))];
  const result = await deps.runner.run([deps.nft, "-j", "-i"], {
    stdin: tables.map((t) => `list table ${t}`).join("\n") + "\n",
    env: { HOME: "/dev/null" },
  });
  const answered = parseInteractive(result.stdout, result.stderr);
  const items = (answered?.docs ?? []).flatMap((doc) => {
    try {
      return nftItems(doc);
    } catch {
      return [];
    }
  });
  return foreign.map((gate) => ({
    gate,
    items: items.filter((i) =>
      i.v.family === gate.family && (i.v.table === gate.table || i.v.name === gate.table)
    ),
  }));
}
