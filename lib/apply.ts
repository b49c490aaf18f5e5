/** Applies a domain's forwards to the live firewall, all or nothing, with whichever backend fits the host. */

import {
  buildRules,
  chainNames,
  type Forward,
  JUMP_CHAINS,
  listingsToSave,
  type Live,
  liveOf,
  parseSave,
  renderRollback,
  renderSync,
  tokenize,
  type Tools,
} from "../rules.ts";
import type { BACKENDS } from "../config.ts";
import type { Family } from "./address.ts";
import type { ConnectedRoute } from "./host.ts";
import {
  bridgesOf,
  emptyNftLive,
  LIBVIRT_CHAIN,
  LIBVIRT_TABLE,
  libvirtAccepts,
  liveAccepts,
  NFT_TABLE,
  nftBase,
  nftBridges,
  nftDomainObjects,
  type NftLive,
  nftRemoveDomain,
  parseNftJson,
} from "./nft.ts";
import { CommandError, oneLine, type Runner } from "./runner.ts";

/** What one sync changed in one backend. */
export interface Change {
  target: "iptables" | "ip6tables" | "nft";
  removed: number;
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
  /** A directory on /run where the size of the last full ruleset read is remembered (see readState). */
  hintDir?: string;
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
}

/** Reads `firewall_backend` from libvirt's network.conf (libvirt >= 10.4), if it is set there. */
export function parseNetworkConf(text: string): string | undefined {
  return /^\s*firewall_backend\s*=\s*"([a-z]+)"/m.exec(text)?.[1];
}

/** libvirt's network driver settings; its `firewall_backend` tells which backend libvirt will use. */
export const LIBVIRT_NETWORK_CONF = "/etc/libvirt/network.conf";

/** Reads what is live for every family and backend, concurrently: a constant number of processes. */
export async function readState(deps: ApplyDeps, domain?: string): Promise<FirewallState> {
  const { runner, tools } = deps;
  // On a busy host (Docker, Kubernetes: thousands of rules of others) iptables-save takes ~70 ms, while listing one
  // chain takes ~3 ms. So where the last full read was big, a call for one domain lists only the chains that can
  // hold its rules: the four built-in chains our jumps live in, and its own three chains.
  const targeted = domain !== undefined && deps.hintDir !== undefined &&
    await Deno.stat(`${deps.hintDir}/${BUSY_HINT}`).then(() => true, () => false);
  const ipt = Promise.all(FAMILIES.map(async (family) => {
    const listed = targeted ? await readChains(runner, tools[family], domain!) : "read all";
    if (listed !== "read all") return listed;
    const result = await runner.run(tools[family].save);
    if (result.code === 127) return undefined;
    if (result.code !== 0) throw new CommandError(tools[family].save, result);
    const live = parseSave(result.stdout);
    if (family === 4 && deps.hintDir !== undefined) await rememberSize(deps.hintDir, live.foreignBytes ?? 0);
    return live;
  }));
  const nft = deps.nft === undefined ? Promise.resolve(undefined) : readNft(runner, deps.nft);
  const conf = deps.nft === undefined
    ? Promise.resolve(undefined)
    : Deno.readTextFile(LIBVIRT_NETWORK_CONF).then(parseNetworkConf, () => undefined);
  const [[v4, v6], n, setting] = await Promise.all([ipt, nft, conf]);
  return { ipt: { 4: v4, 6: v6 }, nft: n, ...(setting === undefined ? {} : { libvirtSetting: setting }) };
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

async function rememberSize(dir: string, bytes: number): Promise<void> {
  const path = `${dir}/${BUSY_HINT}`;
  try {
    if (bytes > BUSY_RULESET_BYTES) {
      await Deno.mkdir(dir, { recursive: true, mode: 0o700 });
      await Deno.writeTextFile(path, `${bytes}\n`);
    } else await Deno.remove(path);
  } catch {
    // Only a hint: a failure costs later calls some speed, nothing else.
  }
}

async function readNft(runner: Runner, nft: string): Promise<NftLive | undefined> {
  // Three targeted looks, concurrently. Not `nft list tables`: that fetches the whole ruleset first, 100 ms on a
  // host with 10 000 rules of other software, where listing one table or chain takes 3 ms.
  const lists = [
    ["list", "table", "inet", NFT_TABLE],
    ["list", "chain", "ip", LIBVIRT_TABLE, LIBVIRT_CHAIN],
    ["list", "chain", "ip6", LIBVIRT_TABLE, LIBVIRT_CHAIN],
  ];
  const results = await Promise.all(lists.map((l) => runner.run([nft, "-j", ...l])));
  if (results.some((r) => r.code === 127)) return undefined;
  const live = emptyNftLive();
  results.forEach((r, i) => {
    // A table or chain that does not exist is simply not there.
    if (r.code !== 0 && /No such file or directory/.test(r.stderr)) return;
    if (r.code !== 0) throw new CommandError([nft, "-j", ...lists[i]!], r);
    parseNftJson(r.stdout, live);
  });
  return live;
}

/** Whether libvirt runs its iptables backend here: its chains are in iptables. */
function libvirtUsesIptables(state: FirewallState): boolean {
  return state.ipt[4]?.libvirt === true || state.ipt[6]?.libvirt === true;
}

/** Chooses the backend for our rules, or explains why the configured one cannot work here. */
export function chooseBackend(setting: ApplyDeps["backend"], state: FirewallState): Backend {
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
 * Makes a domain's live rules equal to `forwards`, all or nothing: one iptables-restore batch per family and one
 * `nft -f` transaction; if any of them fails, what was already applied is put back as it was.
 */
export async function syncDomain(domain: string, forwards: Forward[], deps: ApplyDeps): Promise<Change[]> {
  const state = await readState(deps, domain);
  const backend = forwards.length === 0 ? "iptables" : chooseBackend(deps.backend, state);
  const batches: { family: Family; text: string; change: Change }[] = [];
  const before: Partial<Record<Family, Live>> = {};
  for (const family of FAMILIES) {
    const wanted = backend === "iptables" ? forwards.filter((f) => f.family === family) : [];
    const all = state.ipt[family];
    if (!all) {
      if (wanted.length > 0) throw new ApplyError(`${deps.tools[family].save[0]} is not installed`);
      continue;
    }
    const mine = liveOf(all, domain);
    before[family] = mine;
    const added = buildRules(domain, wanted);
    const text = renderSync(domain, wanted, mine, added);
    if (text === undefined) continue;
    const target = family === 4 ? "iptables" : "ip6tables";
    batches.push({
      family,
      text,
      change: { target, removed: mine.rules.length, added: added.rules.length + added.jumps.length },
    });
  }
  const nftCommands = state.nft
    ? nftSync(domain, backend === "nftables" ? forwards : [], forwards, state.nft, deps)
    : [];

  const attempted: Family[] = [];
  const undo = async (why: string) => {
    const rollback = await rollBack(domain, attempted, before, deps);
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
  const changes = batches.map((b) => b.change);
  if (nftCommands.length > 0) {
    const result = await deps.runner.run([deps.nft!, "-f", "-"], { stdin: nftCommands.join("\n") + "\n" });
    if (result.code !== 0) throw await undo(`nft failed: ${oneLine(result.stderr) || `exit ${result.code}`}`);
    changes.push({ target: "nft", removed: 0, added: nftCommands.length });
  }
  return changes;
}

/** The nft commands for one domain: our table's objects and our accepts in libvirt's chains. */
function nftSync(domain: string, ours: Forward[], all: Forward[], live: NftLive, deps: ApplyDeps): string[] {
  const table = ours.length > 0
    ? [
      ...nftBase(),
      ...nftRemoveDomain(domain, live, true),
      ...nftDomainObjects(domain, ours, bridgesOf(ours, deps.connected ?? [])),
    ]
    : nftRemoveDomain(domain, live, false);
  const wanted = liveAccepts(live);
  if (all.length > 0) wanted.set(domain, bridgesOf(all, deps.connected ?? []));
  else wanted.delete(domain);
  return [...table, ...libvirtAccepts(live, wanted)];
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
      const privateIp = at("-d")?.replace(/\/\d+$/, "");
      if (!privateIp) continue;
      const interfaceName = at("-o");
      const forward = {
        family,
        privateIp,
        ...(interfaceName ? { interface: interfaceName } : {}),
      } as Forward;
      for (const b of bridgesOf([forward], connected)[family]) add(domain, family, b);
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
  const commands = libvirtAccepts(state.nft, liveBridges(state, deps.connected ?? []));
  if (commands.length === 0) return 0;
  const result = await deps.runner.run([deps.nft, "-f", "-"], { stdin: commands.join("\n") + "\n" });
  if (result.code !== 0) {
    throw new ApplyError(`nft failed: ${oneLine(result.stderr) || `exit ${result.code}`}`);
  }
  return commands.length;
}
