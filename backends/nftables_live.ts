/** The nftables backend's live state: what of ours is in nft's JSON listing, and the forwards read back from it. */

import { setSource } from "./sources.ts";
import { addTraffic, type LiveForward } from "./forward.ts";
import type { BaseChain } from "./gates.ts";
import {
  COMMENT_TAG,
  commentDomain,
  domainHash,
  hashOnly,
  LIBVIRT_CHAIN,
  LIBVIRT_TABLE,
  NFT_TABLE,
  SHARED_ACCEPT,
} from "./names.ts";

import type { Family } from "../system/address.ts";
import { NftItem, nftItems } from "./nft_json.ts";

/** A rule as nft lists it: its chain, handle, comment and jump target. */
export interface NftRule {
  family: string;
  table: string;
  chain: string;
  handle: number;
  comment?: string;
  jump?: string;
  /** The expression list, kept for reading forwards back. */
  expr: unknown[];
}

/** What of ours is live in nftables. */
export interface NftLive {
  /** Whether our table exists. */
  table: boolean;
  chains: string[];
  maps: { name: string; elem: unknown[] }[];
  sets: { name: string; elem: unknown[] }[];
  rules: NftRule[];
  /** libvirt's guest_input chain per family, when libvirt uses nftables: its rules in order. */
  libvirt: Partial<Record<Family, NftRule[]>>;
  /** Every base chain at the forward hook, in any table: the gates a forwarded connection must pass. */
  hooks: BaseChain[];
  /** The chains the administrator handed us (`accept_in`) that exist, by `<family> <table> <chain>`: their rules. */
  handed: Record<string, NftRule[]>;
}

/** An empty live state. */
export function emptyNftLive(): NftLive {
  return { table: false, chains: [], maps: [], sets: [], rules: [], libvirt: {}, hooks: [], handed: {} };
}

/** Reads `nft -j list ...` output into our live state (our table and/or libvirt's chain). */
export function parseNftJson(text: string, into: NftLive = emptyNftLive()): NftLive {
  return addNftItems(nftItems(text), into);
}

/** Adds what of `items` is ours, libvirt's guest_input, or a chain of `handed` (see NftLive) to `into`. */
export function addNftItems(items: NftItem[], into: NftLive, handed: readonly string[] = []): NftLive {
  for (const { kind, v } of items) {
    const name = `${v.family} ${v.table} ${kind === "chain" ? v.name : v.chain}`;
    if ((kind === "chain" || kind === "rule") && handed.includes(name)) {
      const rules = into.handed[name] ??= [];
      if (kind === "rule") rules.push(toRule(v));
      continue;
    }
    if (kind === "table" && v.name === NFT_TABLE && v.family === "inet") into.table = true;
    if (v.table === NFT_TABLE && v.family === "inet") {
      if (kind === "chain") into.chains.push(String(v.name));
      if (kind === "map") into.maps.push({ name: String(v.name), elem: (v.elem as unknown[]) ?? [] });
      if (kind === "set") into.sets.push({ name: String(v.name), elem: (v.elem as unknown[]) ?? [] });
      if (kind === "rule") into.rules.push(toRule(v));
    } else if (v.table === LIBVIRT_TABLE && v.chain === LIBVIRT_CHAIN && kind === "rule") {
      const family: Family = v.family === "ip6" ? 6 : 4;
      (into.libvirt[family] ??= []).push(toRule(v));
    } else if (v.table === LIBVIRT_TABLE && v.name === LIBVIRT_CHAIN && kind === "chain") {
      into.libvirt[v.family === "ip6" ? 6 : 4] ??= [];
    }
  }
  return into;
}

function toRule(v: Record<string, unknown>): NftRule {
  const expr = (v.expr as unknown[]) ?? [];
  const jump = expr.map((e) => (e as { jump?: { target?: string } }).jump?.target).find((x) =>
    x !== undefined
  );
  return {
    family: String(v.family),
    table: String(v.table),
    chain: String(v.chain),
    handle: Number(v.handle),
    ...(typeof v.comment === "string" ? { comment: v.comment } : {}),
    ...(jump === undefined ? {} : { jump }),
    expr,
  };
}

/** A map element's key as nft -j lists it: plain, or with the element's counter (a map declared with `counter`). */
type MapKey = { concat: unknown[] } | { elem: { val: { concat: unknown[] }; counter?: { packets: number } } };

/** The domain hashes that own something in our table. */
export function nftOwners(live: NftLive): Set<string> {
  const owners = new Set<string>();
  for (const name of [...live.chains, ...live.sets.map((s) => s.name), ...live.maps.map((m) => m.name)]) {
    const m = /^d([0-9a-f]{12})-/.exec(name);
    if (m) owners.add(m[1]!);
  }
  return owners;
}

/** The domain hash one of our comments names, if it is ours. */
export function ownerOf(comment: string): string | undefined {
  const domain = commentDomain(comment);
  return domain === undefined ? undefined : domainHash(domain);
}

/**
 * How many live nftables rules a domain has: in its chains of our table and those naming it there (the jumps into
 * them, by name; others by comment), and its accepts in libvirt's chains and in those handed to us. What a sync
 * of the domain removes or replaces, as iptables' count is (see Change in rules.ts).
 */
export function nftDomainRules(live: NftLive, domain: string): number {
  const h = domainHash(domain);
  const p = `d${h}-`;
  const owned = (r: NftRule) => r.comment !== undefined && ownerOf(r.comment) === h;
  const inTable = live.rules.filter((r) => r.chain.startsWith(p) || r.jump?.startsWith(p) || owned(r)).length;
  const elsewhere =
    [...Object.values(live.libvirt), ...Object.values(live.handed)].flat().filter(owned).length;
  return inTable + elsewhere;
}

/** The domains (by name) that have accepts in libvirt's chains, with their bridges. */
export function liveAccepts(live: NftLive): Map<string, Record<Family, string[]>> {
  const out = new Map<string, Record<Family, string[]>>();
  for (const family of [4, 6] as const) addAccepts(live.libvirt[family] ?? [], [family], out);
  return out;
}

export function addAccepts(
  rules: NftRule[],
  families: Family[],
  out: Map<string, Record<Family, string[]>>,
): void {
  for (const r of rules) {
    if (!r.comment?.startsWith(COMMENT_TAG) || !r.comment.endsWith(":accept")) continue;
    if (r.comment === SHARED_ACCEPT) continue;
    const domain = commentDomain(r.comment.slice(0, -":accept".length));
    const bridge = interfaceMatch(r).split(" ")[1];
    if (domain === undefined || bridge === undefined) continue;
    const entry = out.get(domain) ?? { 4: [], 6: [] };
    for (const f of families) if (!entry[f].includes(bridge)) entry[f].push(bridge);
    out.set(domain, entry);
  }
}

/** The bridges our shared accepts in libvirt's chains name, per family (see SHARED_ACCEPT). */
export function liveSharedAccepts(live: NftLive): Record<Family, string[]> {
  const out: Record<Family, string[]> = { 4: [], 6: [] };
  for (const family of [4, 6] as const) {
    for (const r of live.libvirt[family] ?? []) {
      const bridge = interfaceMatch(r).split(" ")[1];
      if (r.comment === SHARED_ACCEPT && bridge !== undefined) out[family].push(bridge);
    }
  }
  return out;
}

/**
 * The bridges that the domains of our table (but `except`, a domain hash) send forwards to, from their
 * `d<hash>-br4/6` sets: what our shared accepts in libvirt's chains are for. Every read lists our table whole.
 */
export function tableBridges(live: NftLive, except?: string): Record<Family, string[]> {
  const out: Record<Family, Set<string>> = { 4: new Set(), 6: new Set() };
  for (const s of live.sets) {
    const m = /^d([0-9a-f]{12})-br([46])$/.exec(s.name);
    if (!m || m[1] === except) continue;
    for (const e of s.elem) if (typeof e === "string") out[m[2] === "4" ? 4 : 6].add(e);
  }
  return { 4: [...out[4]].sort(), 6: [...out[6]].sort() };
}

/**
 * The names of the domains of our table, by hash: from our comment on the rules in their chains (`d<hash>-...`)
 * and on the jumps into them (a domain whose forwards are all plain pairs has no jump: the dispatch maps reach it).
 */
function domainNames(live: NftLive): Map<string, string> {
  const names = new Map<string, string>();
  const hashIn = (name: string | undefined) =>
    name === undefined ? undefined : /^d([0-9a-f]{12})-/.exec(name)?.[1];
  for (const r of live.rules) {
    const owner = hashIn(r.jump) ?? hashIn(r.chain);
    const domain = r.comment === undefined ? undefined : commentDomain(r.comment);
    if (owner && domain !== undefined) names.set(owner, domain);
  }
  return names;
}

/** Per domain in our table: the bridges recorded in its `d<hash>-br4/6` sets, named through its comments. */
export function nftBridges(live: NftLive): Map<string, Record<Family, string[]>> {
  const names = domainNames(live);
  const out = new Map<string, Record<Family, string[]>>();
  for (const s of live.sets) {
    const m = /^d([0-9a-f]{12})-br([46])$/.exec(s.name);
    const domain = m ? names.get(m[1]!) : undefined;
    if (!m || domain === undefined) continue;
    const entry = out.get(domain) ?? { 4: [], 6: [] };
    entry[m[2] === "4" ? 4 : 6] = s.elem.filter((e): e is string => typeof e === "string");
    out.set(domain, entry);
  }
  return out;
}

/** Reads forwards back from our table (maps and per-forward rules), for status. */
export function nftLiveForwards(live: NftLive): LiveForward[] {
  const names = domainNames(live);
  const out: LiveForward[] = [];
  for (const m of live.maps) {
    const match = /^d([0-9a-f]{12})-dnat([46])$/.exec(m.name);
    if (!match) continue;
    const domain = names.get(match[1]!) ?? hashOnly(match[1]!);
    for (const e of m.elem) {
      const [element, value] = e as [MapKey, { concat: unknown[] }];
      // A map with `counter` lists each key as `{elem: {val, counter}}`: the lookups of the forward's key.
      const counting = typeof element === "object" && element !== null && "elem" in element;
      const key = counting ? element.elem.val : element as { concat: unknown[] } | undefined;
      const counted = counting ? element.elem.counter?.packets : undefined;
      const [publicIp, protocol, publicPort] = key?.concat ?? [];
      const [privateIp, privatePort] = value?.concat ?? [];
      out.push({
        ...(counted === undefined ? {} : { counters: { connections: counted } }),
        domain,
        family: match[2] === "6" ? 6 : 4,
        protocol: String(protocol),
        publicIp: String(publicIp),
        publicPorts: String(publicPort),
        privateIp: String(privateIp),
        privatePorts: String(privatePort),
      });
    }
  }
  for (const r of live.rules) {
    // An outbound 1:1 NAT: `<ip> saddr <guest> ... snat <ip> to <public>` in the domain's `-out` chain.
    const outOwner = /^d([0-9a-f]{12})-out$/.exec(r.chain)?.[1];
    if (outOwner) {
      let privateIp: string | undefined;
      let snat: { addr?: unknown; family?: string } | undefined;
      for (const e of r.expr as Record<string, Record<string, unknown>>[]) {
        const m = e.match as
          | { op?: string; left?: { payload?: { field?: string } }; right?: unknown }
          | undefined;
        if (m?.op === "==" && m.left?.payload?.field === "saddr") privateIp = showAddr(m.right);
        if (e.snat) snat = e.snat as typeof snat;
      }
      if (privateIp && typeof snat?.addr === "string") {
        out.push({
          domain: names.get(outOwner) ?? hashOnly(outOwner),
          family: snat.family === "ip6" ? 6 : 4,
          protocol: "all",
          publicIp: snat.addr,
          publicPorts: "",
          privateIp,
          privatePorts: "",
          outbound: true,
        });
      }
      continue;
    }
    const owner = /^d([0-9a-f]{12})-dnat$/.exec(r.chain)?.[1];
    const forward = owner && dnatForward(r, names.get(owner) ?? hashOnly(owner));
    if (forward) out.push(forward);
  }
  addCounted(live, { forwards: out, names });
  return out;
}

/** A counting set's element as nft -j lists it: address (or `*`'s prefix) and port (or range), with its counter. */
type CountElement = {
  elem?: {
    val?: { concat?: [string | { prefix?: { addr: string; len: number } }, number | { range?: number[] }] };
    counter?: { packets?: number; bytes?: number };
  };
};

/**
 * Adds to each counting forward the packets and bytes of its elements in the domain's counting sets
 * (`d<hash>-count<family>-<protocol>`, see nftDomainObjects): those of its address (or `*`) and protocol whose
 * ports are among its own (all_ports is counted in runs of ports).
 */
function addCounted(
  live: NftLive,
  { forwards, names }: { forwards: LiveForward[]; names: Map<string, string> },
) {
  for (const s of live.sets) {
    const m = /^d([0-9a-f]{12})-count([46])-(\w+)$/.exec(s.name);
    if (!m) continue;
    for (const e of s.elem as CountElement[]) {
      const [address, port] = e.elem?.val?.concat ?? [];
      const counter = e.elem?.counter;
      if (address === undefined || port === undefined || !counter) continue;
      const [first = NaN, last = NaN] = typeof port === "number" ? [port, port] : port.range ?? [];
      addTraffic(forwards, {
        domain: names.get(m[1]!) ?? hashOnly(m[1]!),
        family: m[2] === "6" ? 6 : 4,
        protocol: m[3]!,
        publicIp: typeof address === "string" ? address : address.prefix?.len === 0 ? "*" : "",
        first,
        last,
        packets: counter.packets ?? 0,
        bytes: counter.bytes ?? 0,
      });
    }
  }
}

/** A forward read back from one rule of a domain's dnat chain (a range, a source, "*", a dev), if it is one. */
function dnatForward(r: NftRule, domain: string): LiveForward | undefined {
  let source: string | undefined, publicIp: string | undefined, protocol: string | undefined;
  let ports: string | undefined, dnat: { addr?: unknown; port?: number; family?: string } | undefined;
  let dev: string | undefined, any = false, counted: number | undefined;
  for (const e of r.expr as Record<string, Record<string, unknown>>[]) {
    const m = e.match as
      | {
        op?: string;
        left?: { payload?: { protocol?: string; field?: string }; fib?: unknown; meta?: { key?: string } };
        right?: unknown;
      }
      | undefined;
    const field = m?.left?.payload?.field;
    if (field === "saddr") source = showSource(m!.right);
    // "*": `fib daddr type local` (beside `daddr != <loopback>`, which names no address of the forward).
    if (field === "daddr" && m!.op === "==") publicIp = showAddr(m!.right);
    if (m?.left?.fib !== undefined && m.right === "local") any = true;
    if (m?.left?.meta?.key === "iifname" && typeof m.right === "string") dev = m.right;
    if (field === "dport") {
      protocol = m!.left!.payload!.protocol;
      const right = m!.right as number | { range?: [number, number] };
      ports = typeof right === "number"
        ? `${right}`
        : right.range
        ? `${right.range[0]}-${right.range[1]}`
        : undefined;
    }
    if (e.dnat) dnat = e.dnat as typeof dnat;
    // The rule's own counter (a nat chain: each connection's first packet only): its new connections.
    if (e.counter) counted = (e.counter as { packets?: number }).packets;
  }
  if (any) publicIp = "*";
  if (!dnat?.addr || !publicIp || !protocol || !ports) return undefined;
  const description = r.comment !== undefined && !r.comment.startsWith(COMMENT_TAG) ? r.comment : undefined;
  // A range shifted to other ports maps each public port to `address . port` (see nftDomainObjects).
  const shifted = shiftedTarget(dnat.addr);
  return {
    domain,
    family: dnat.family === "ip6" ? 6 : 4,
    protocol,
    publicIp,
    publicPorts: ports,
    privateIp: shifted?.address ?? String(dnat.addr),
    privatePorts: shifted?.ports ?? (dnat.port === undefined ? ports : String(dnat.port)),
    ...(source === undefined ? {} : { source }),
    ...(dev === undefined ? {} : { dev }),
    ...(description === undefined ? {} : { description }),
    ...(counted === undefined ? {} : { counters: { connections: counted } }),
  };
}

/** Who may use a forward, from its `saddr` match: an item, an anonymous set of them, or a set of ours. */
function showSource(right: unknown): string {
  if (typeof right === "string") return setSource(right) ?? right;
  const set = (right as { set?: unknown[] }).set;
  return set ? set.map(showAddr).join(", ") : showAddr(right);
}

function showAddr(right: unknown): string {
  if (typeof right === "string") return right;
  const prefix = (right as { prefix?: { addr: string; len: number } }).prefix;
  const range = (right as { range?: [string, string] }).range;
  return prefix ? `${prefix.addr}/${prefix.len}` : range ? `${range[0]}-${range[1]}` : String(right);
}

/** The interface match of one of our accepts: `oifname <bridge>` or `iifname <bridge>`. */
export function interfaceMatch(r: NftRule): string {
  for (const e of r.expr) {
    const m = (e as { match?: { left?: { meta?: { key?: string } }; right?: unknown } }).match;
    const key = m?.left?.meta?.key;
    if ((key === "oifname" || key === "iifname") && typeof m!.right === "string") return `${key} ${m!.right}`;
  }
  return "";
}

/** The guest address and ports of a dnat whose address is a map `{ port : address . port, ... }`, if it is one. */
function shiftedTarget(addr: unknown): { address: string; ports: string } | undefined {
  const data = (addr as { map?: { data?: { set?: [unknown, { concat?: [string, number] }][] } } }).map?.data
    ?.set;
  const targets = data?.map(([, value]) => value?.concat).filter((c) => c !== undefined) ?? [];
  if (targets.length === 0) return undefined;
  const ports = targets.map((t) => t[1]);
  const [first, last] = [Math.min(...ports), Math.max(...ports)];
  return { address: String(targets[0]![0]), ports: first === last ? `${first}` : `${first}-${last}` };
}
