/** The native nftables backend: our own `inet` table, and our accept inside libvirt's nftables chains. */

import {
  carriedDomain,
  COMMENT_TAG,
  commentDomain,
  domainHash,
  type Forward,
  hashOnly,
  type Live,
  type LiveForward,
  ruleComment,
} from "../rules.ts";
import type { Family } from "./address.ts";
import type { BaseChain } from "./gates.ts";
import { connectedNetworkOf, type ConnectedRoute } from "./host.ts";
import { parseAddress } from "./address.ts";

/** Our table: one `inet` table holds both families, so one `nft -f` changes both atomically. */
export const NFT_TABLE = "libvirt_hook_qemu";
/** libvirt's nftables table (libvirt >= 10.4 with its nftables backend), one per family. */
export const LIBVIRT_TABLE = "libvirt_network";
/** The chain of libvirt's table that rejects new connections to guests. */
export const LIBVIRT_CHAIN = "guest_input";

/**
 * The nft commands that remove what one domain has in iptables-nft's tables (`live`: its chains and the jumps
 * into them, read with nft, so each jump has its handle): the jumps by handle, then the chains, emptied first.
 * Undefined when a jump has no handle: it cannot be deleted exactly.
 */
export function nftRemoveIptables(live: Record<Family, Live>): string[] | undefined {
  const out: string[] = [];
  for (const family of [4, 6] as const) {
    const nftFamily = family === 4 ? "ip" : "ip6";
    for (const r of live[family].rules) {
      if (r.handle === undefined) return undefined;
      out.push(`delete rule ${nftFamily} ${r.table} ${r.chain} handle ${r.handle}`);
    }
    for (const c of live[family].chains) out.push(`flush chain ${nftFamily} ${c.table} ${c.chain}`);
    for (const c of live[family].chains) out.push(`delete chain ${nftFamily} ${c.table} ${c.chain}`);
  }
  return out;
}

/** The nft object name prefix of one domain: `d<hash>`. */
export function nftPrefix(domain: string): string {
  return `d${domainHash(domain)}`;
}

/** Renders the nft commands that create one domain's objects for `forwards` (both families). */
export function nftDomainObjects(
  domain: string,
  forwards: Forward[],
  bridges: Record<Family, string[]> = { 4: [], 6: [] },
): string[] {
  if (forwards.length === 0) return [];
  const p = nftPrefix(domain);
  const t = `inet ${NFT_TABLE}`;
  const comment = `comment "${ruleComment(domain)}"`;
  const out: string[] = [];
  const dnat: string[] = [], snat: string[] = [];
  for (const family of [4, 6] as const) {
    const ip = family === 4 ? "ip" : "ip6";
    const addrType = family === 4 ? "ipv4_addr" : "ipv6_addr";
    const mine = forwards.filter((f) => f.family === family);
    // Plain pairs go into one map and one set: a lookup per packet, however many forwards there are.
    const mapped = mine.filter((f) => f.count === 1 && f.source === undefined);
    const ruled = mine.filter((f) => !mapped.includes(f));
    if (mapped.length > 0) {
      const map = `${p}-dnat${family}`, set = `${p}-to${family}`;
      const key = (f: Forward) => `${f.publicIp} . ${f.protocol} . ${f.publicPort}`;
      const to = (f: Forward) => `${f.privateIp} . ${f.privatePort}`;
      const priv = (f: Forward) => `${f.privateIp} . ${f.protocol} . ${f.privatePort}`;
      out.push(
        `add map ${t} ${map} { type ${addrType} . inet_proto . inet_service : ${addrType} . inet_service; ` +
          `elements = { ${mapped.map((f) => `${key(f)} : ${to(f)}`).join(", ")} }; }`,
      );
      out.push(
        `add set ${t} ${set} { type ${addrType} . inet_proto . inet_service; ` +
          `elements = { ${unique(mapped.map(priv)).join(", ")} }; }`,
      );
      dnat.push(`dnat ${ip} to ${ip} daddr . meta l4proto . th dport map @${map} ${comment}`);
      for (const from of unique(mapped.map((f) => f.hairpinFrom))) {
        snat.push(
          `${ip} saddr ${from} ct status dnat ${ip} daddr . meta l4proto . th dport @${set} masquerade ${comment}`,
        );
      }
    }
    for (const f of ruled) {
      const ports = (first: number) => (f.count === 1 ? `${first}` : `${first}-${first + f.count - 1}`);
      const source = f.source === undefined ? "" : `${ip} saddr ${f.source} `;
      const target = f.count > 1
        ? f.privateIp
        : family === 4
        ? `${f.privateIp}:${f.privatePort}`
        : `[${f.privateIp}]:${f.privatePort}`;
      dnat.push(
        `${source}${ip} daddr ${f.publicIp} ${f.protocol} dport ${
          ports(f.publicPort)
        } dnat ${ip} to ${target} ${comment}`,
      );
      snat.push(
        `${ip} saddr ${f.hairpinFrom} ct status dnat ${ip} daddr ${f.privateIp} ${f.protocol} dport ${
          ports(f.privatePort)
        } masquerade ${comment}`,
      );
    }
  }
  // The bridges behind the forwards, kept in our table so the accepts in libvirt's chains can be re-asserted
  // from what is live alone (libvirt re-creates its chains without telling us which guests need what).
  for (const family of [4, 6] as const) {
    if (bridges[family].length === 0) continue;
    const names = bridges[family].map((b) => `"${b}"`).join(", ");
    out.push(`add set ${t} ${p}-br${family} { type ifname; elements = { ${names} }; }`);
  }
  out.push(`add chain ${t} ${p}-dnat`, `add chain ${t} ${p}-snat`);
  for (const r of dnat) out.push(`add rule ${t} ${p}-dnat ${r}`);
  for (const r of snat) out.push(`add rule ${t} ${p}-snat ${r}`);
  // Jumps go first in our base chains, like the iptables backend's inserts.
  out.push(
    `insert rule ${t} prerouting jump ${p}-dnat ${comment}`,
    `insert rule ${t} output jump ${p}-dnat ${comment}`,
    `insert rule ${t} postrouting jump ${p}-snat ${comment}`,
  );
  return out;
}

/** The base chains of our table; `add` is idempotent, so they are declared in every batch that adds. */
export function nftBase(): string[] {
  const t = `inet ${NFT_TABLE}`;
  return [
    `add table ${t}`,
    `add chain ${t} prerouting { type nat hook prerouting priority dstnat; policy accept; }`,
    `add chain ${t} output { type nat hook output priority -100; policy accept; }`,
    `add chain ${t} postrouting { type nat hook postrouting priority srcnat; policy accept; }`,
  ];
}

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

/** One object of `nft -j` output: its kind (table, chain, rule, ...) and its fields. */
export interface NftItem {
  kind: string;
  v: Record<string, unknown>;
}

/** The objects of one `nft -j list ...` document; throws on text that is not one. */
export function nftItems(text: string): NftItem[] {
  if (text.trim() === "") return [];
  const doc = JSON.parse(text) as { nftables?: Record<string, Record<string, unknown>>[] };
  const out: NftItem[] = [];
  for (const item of doc.nftables ?? []) {
    const [kind, v] = Object.entries(item)[0] ?? [];
    if (kind && v) out.push({ kind, v });
  }
  return out;
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

/** The domain hashes that own something in our table. */
export function nftOwners(live: NftLive): Set<string> {
  const owners = new Set<string>();
  for (const name of [...live.chains, ...live.sets.map((s) => s.name), ...live.maps.map((m) => m.name)]) {
    const m = /^d([0-9a-f]{12})-/.exec(name);
    if (m) owners.add(m[1]!);
  }
  return owners;
}

/** Commands that remove everything of one domain from our table (and the table, when nothing else is left). */
export function nftRemoveDomain(domain: string, live: NftLive, keepTable: boolean): string[] {
  if (!live.table) return [];
  const p = nftPrefix(domain);
  const t = `inet ${NFT_TABLE}`;
  const h = domainHash(domain);
  const others = [...nftOwners(live)].filter((o) => o !== h);
  if (others.length === 0 && !keepTable) return [`delete table ${t}`];
  const out: string[] = [];
  for (const r of live.rules) {
    const mine = r.jump?.startsWith(`${p}-`) ||
      (r.comment !== undefined && ownerOf(r.comment) === h && !r.chain.startsWith(`${p}-`));
    if (mine) out.push(`delete rule ${t} ${r.chain} handle ${r.handle}`);
  }
  const chains = live.chains.filter((c) => c.startsWith(`${p}-`));
  for (const c of chains) out.push(`flush chain ${t} ${c}`);
  for (const c of chains) out.push(`delete chain ${t} ${c}`);
  for (const m of live.maps) if (m.name.startsWith(`${p}-`)) out.push(`delete map ${t} ${m.name}`);
  for (const s of live.sets) if (s.name.startsWith(`${p}-`)) out.push(`delete set ${t} ${s.name}`);
  return out;
}

/** The domain hash one of our comments names, if it is ours. */
function ownerOf(comment: string): string | undefined {
  const domain = commentDomain(comment);
  return domain === undefined ? undefined : domainHash(domain);
}

/** The comment of our accept inside libvirt's chain. */
export function acceptComment(domain: string): string {
  return `${ruleComment(domain)}:accept`;
}

/** The bridges a domain's forwards go out of: the configured interface, else the device of the guest's network. */
export function bridgesOf(forwards: Forward[], connected: ConnectedRoute[]): Record<Family, string[]> {
  const out: Record<Family, Set<string>> = { 4: new Set(), 6: new Set() };
  // A domain's forwards mostly share one guest address: look each address up once (1000 forwards: 2 ms -> 0).
  const networks = new Map<string, string | undefined>();
  for (const f of forwards) {
    let device = f.interface;
    if (device === undefined) {
      if (!networks.has(f.privateIp)) {
        networks.set(f.privateIp, connectedNetworkOf(connected, parseAddress(f.privateIp)!)?.device);
      }
      device = networks.get(f.privateIp);
    }
    if (device) out[f.family].add(device);
  }
  return { 4: [...out[4]].sort(), 6: [...out[6]].sort() };
}

/**
 * Commands that make our accepts in libvirt's `guest_input` chains exactly `wanted` (per family, per domain:
 * bridges), each ahead of every rule of libvirt's. Nothing of libvirt's is ever changed: our rules carry our
 * comment and are removed by handle only.
 */
export function libvirtAccepts(
  live: NftLive,
  wanted: Map<string, Record<Family, string[]>>,
): string[] {
  const out: string[] = [];
  for (const family of [4, 6] as const) {
    const chain = live.libvirt[family];
    if (!chain) continue;
    const want: string[] = [];
    for (const [domain, bridges] of wanted) {
      for (const bridge of bridges[family]) want.push(`${acceptComment(domain)} oifname ${bridge}`);
    }
    out.push(...acceptsIn(chain, `${family === 4 ? "ip" : "ip6"} ${LIBVIRT_TABLE} ${LIBVIRT_CHAIN}`, want));
  }
  return out;
}

/**
 * Commands that keep our accepts in the chains handed to us (`accept_in`) right for one domain: its DNATed
 * connections both ways (out to its bridges, the replies in from them), ahead of every rule of the chain's owner,
 * in each chain the settings hand us; gone from a chain no longer handed, and at its stop (`bridges` undefined).
 * Other domains' accepts stay as they are. Tagged as ours, removed by handle.
 */
export function handedAccepts(
  live: NftLive,
  domain: string,
  bridges: Record<Family, string[]> | undefined,
  acceptIn: readonly string[],
): string[] {
  const out: string[] = [];
  for (const [gate, chain] of Object.entries(live.handed)) {
    const families = handedFamilies(gate);
    const wanted = new Map<string, Record<Family, string[]>>();
    addAccepts(chain, families, wanted);
    if (bridges && acceptIn.includes(gate)) wanted.set(carriedDomain(domain), bridges);
    else wanted.delete(carriedDomain(domain));
    out.push(...acceptsIn(chain, gate, handedWant(wanted, families)));
  }
  return out;
}

/** Our accepts in each chain of `acceptIn` for every domain of `wanted` (domain: bridges), put back in front. */
export function reassertHanded(
  live: NftLive,
  wanted: Map<string, Record<Family, string[]>>,
  acceptIn: readonly string[],
): string[] {
  return Object.entries(live.handed).flatMap(([gate, chain]) =>
    acceptIn.includes(gate) ? acceptsIn(chain, gate, handedWant(wanted, handedFamilies(gate))) : []
  );
}

function handedFamilies(gate: string): Family[] {
  const family = gate.split(" ")[0];
  return family === "ip" ? [4] : family === "ip6" ? [6] : [4, 6];
}

function handedWant(wanted: Map<string, Record<Family, string[]>>, families: Family[]): string[] {
  const want: string[] = [];
  for (const [domain, bridges] of wanted) {
    for (const bridge of new Set(families.flatMap((f) => bridges[f]))) {
      for (const key of ["oifname", "iifname"]) want.push(`${acceptComment(domain)} ${key} ${bridge}`);
    }
  }
  return want;
}

/**
 * Commands that make our accepts in one chain (`where`: family, table, chain) exactly `want` (each
 * `<comment> <oifname|iifname> <bridge>`) and all ahead of the chain's other rules; nothing when they are.
 */
function acceptsIn(chain: NftRule[], where: string, want: string[]): string[] {
  const ours = chain.filter((r) => r.comment?.startsWith(COMMENT_TAG) && r.comment.endsWith(":accept"));
  const firstForeign = chain.findIndex((r) => !ours.includes(r));
  const inFront = firstForeign < 0 || ours.every((r) => chain.indexOf(r) < firstForeign);
  const have = ours.map((r) => `${r.comment} ${interfaceMatch(r)}`).sort();
  if (inFront && have.join("\n") === [...want].sort().join("\n")) return [];
  const out = ours.map((r) => `delete rule ${where} handle ${r.handle}`);
  for (const w of [...want].reverse()) {
    const [comment, key, bridge] = w.split(" ");
    out.push(`insert rule ${where} ${key} "${bridge}" ct status dnat counter accept comment "${comment}"`);
  }
  return out;
}

/** The interface match of one of our accepts: `oifname <bridge>` or `iifname <bridge>`. */
function interfaceMatch(r: NftRule): string {
  for (const e of r.expr) {
    const m = (e as { match?: { left?: { meta?: { key?: string } }; right?: unknown } }).match;
    const key = m?.left?.meta?.key;
    if ((key === "oifname" || key === "iifname") && typeof m!.right === "string") return `${key} ${m!.right}`;
  }
  return "";
}

/** The domains (by name) that have accepts in libvirt's chains, with their bridges. */
export function liveAccepts(live: NftLive): Map<string, Record<Family, string[]>> {
  const out = new Map<string, Record<Family, string[]>>();
  for (const family of [4, 6] as const) addAccepts(live.libvirt[family] ?? [], [family], out);
  return out;
}

function addAccepts(rules: NftRule[], families: Family[], out: Map<string, Record<Family, string[]>>): void {
  for (const r of rules) {
    if (!r.comment?.startsWith(COMMENT_TAG) || !r.comment.endsWith(":accept")) continue;
    const domain = commentDomain(r.comment.slice(0, -":accept".length));
    const bridge = interfaceMatch(r).split(" ")[1];
    if (domain === undefined || bridge === undefined) continue;
    const entry = out.get(domain) ?? { 4: [], 6: [] };
    for (const f of families) if (!entry[f].includes(bridge)) entry[f].push(bridge);
    out.set(domain, entry);
  }
}

/** Per domain in our table: the bridges recorded in its `d<hash>-br4/6` sets, named through its comments. */
export function nftBridges(live: NftLive): Map<string, Record<Family, string[]>> {
  const names = new Map<string, string>();
  for (const r of live.rules) {
    const owner = /^d([0-9a-f]{12})-/.exec(r.jump ?? "")?.[1];
    const domain = r.comment === undefined ? undefined : commentDomain(r.comment);
    if (owner && domain !== undefined) names.set(owner, domain);
  }
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

function unique<T>(items: T[]): T[] {
  return [...new Set(items)];
}

/** Reads forwards back from our table (maps and per-forward rules), for status. */
export function nftLiveForwards(live: NftLive): LiveForward[] {
  const names = new Map<string, string>();
  for (const r of live.rules) {
    const owner = /^d([0-9a-f]{12})-/.exec(r.jump ?? "")?.[1];
    const domain = r.comment === undefined ? undefined : commentDomain(r.comment);
    if (owner && domain !== undefined) names.set(owner, domain);
  }
  const out: LiveForward[] = [];
  for (const m of live.maps) {
    const match = /^d([0-9a-f]{12})-dnat([46])$/.exec(m.name);
    if (!match) continue;
    const domain = names.get(match[1]!) ?? hashOnly(match[1]!);
    for (const e of m.elem) {
      const [key, value] = e as [{ concat: unknown[] }, { concat: unknown[] }];
      const [publicIp, protocol, publicPort] = key?.concat ?? [];
      const [privateIp, privatePort] = value?.concat ?? [];
      out.push({
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
    const owner = /^d([0-9a-f]{12})-dnat$/.exec(r.chain)?.[1];
    if (!owner) continue;
    let source: string | undefined, publicIp: string | undefined, protocol: string | undefined;
    let ports: string | undefined, dnat: { addr?: string; port?: number; family?: string } | undefined;
    for (const e of r.expr as Record<string, Record<string, unknown>>[]) {
      const m = e.match as
        | { left?: { payload?: { protocol?: string; field?: string } }; right?: unknown }
        | undefined;
      const field = m?.left?.payload?.field;
      if (field === "saddr") source = showAddr(m!.right);
      if (field === "daddr") publicIp = showAddr(m!.right);
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
    }
    if (!dnat?.addr || !publicIp || !protocol || !ports) continue;
    out.push({
      domain: names.get(owner) ?? hashOnly(owner),
      family: dnat.family === "ip6" ? 6 : 4,
      protocol,
      publicIp,
      publicPorts: ports,
      privateIp: dnat.addr,
      privatePorts: dnat.port === undefined ? ports : String(dnat.port),
      ...(source === undefined ? {} : { source }),
    });
  }
  return out;
}

function showAddr(right: unknown): string {
  if (typeof right === "string") return right;
  const prefix = (right as { prefix?: { addr: string; len: number } }).prefix;
  return prefix ? `${prefix.addr}/${prefix.len}` : String(right);
}
