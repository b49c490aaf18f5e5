/** The native nftables backend: our own `inet` table, and our accept inside libvirt's nftables chains. */

import { ANY_PUBLIC, countedPorts, type Forward, LOG_RATE, logPrefix, type Snat } from "./forward.ts";
import type { Live } from "./iptables_live.ts";
import {
  carriedDomain,
  COMMENT_TAG,
  CT_LABEL,
  domainHash,
  HAIRPIN_LABEL,
  LIBVIRT_CHAIN,
  LIBVIRT_TABLE,
  NFT_TABLE,
  NFT_USER_CHAIN,
  NFT_USER_HOOK,
  ruleComment,
  SHARED_ACCEPT,
} from "./names.ts";
import {
  addAccepts,
  interfaceMatch,
  type NftLive,
  nftOwners,
  type NftRule,
  ownerOf,
} from "./nftables_live.ts";
import { unique } from "../system/collections.ts";
import { nftSourceMatch } from "./sources.ts";
import { type Family, parseAddress } from "../system/address.ts";
import { connectedNetworkOf, type ConnectedRoute } from "../system/host.ts";

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

/**
 * Renders the nft commands that create one domain's objects for `forwards` (both families); `bridges`: the guest's
 * bridges per family, for the accepts; `snats`: its outgoing NAT.
 */
export function nftDomainObjects(
  domain: string,
  forwards: Forward[],
  { bridges = { 4: [], 6: [] }, snats = [] }: { bridges?: Record<Family, string[]>; snats?: Snat[] } = {},
): string[] {
  if (forwards.length === 0) return nftSnatObjects(domain, snats);
  const p = nftPrefix(domain);
  const t = `inet ${NFT_TABLE}`;
  const comment = `comment "${ruleComment(domain)}"`;
  const out: string[] = [];
  const dnat: string[] = [];
  for (const family of [4, 6] as const) {
    const mine = forwards.filter((f) => f.family === family);
    // Plain pairs go into one map and one set: a lookup per packet, however many forwards there are.
    // A forward with sources, on "*", on one interface or with a description is a rule of its own (the map is
    // by address).
    const mapped = mine.filter(isMapped);
    const ruled = mine.filter((f) => !mapped.includes(f));
    if (mapped.length > 0) {
      const objects = mappedObjects(domain, mapped, { family, comment });
      out.push(...objects.out);
      dnat.push(...objects.dnat);
    }
    for (const f of ruled) ruledForward(domain, f, { comment, dnat });
  }
  // The bridges behind the forwards, kept in our table so the accepts in libvirt's chains can be re-asserted
  // from what is live alone (libvirt re-creates its chains without telling us which guests need what).
  for (const family of [4, 6] as const) {
    if (bridges[family].length === 0) continue;
    const names = bridges[family].map((b) => `"${b}"`).join(", ");
    out.push(`add set ${t} ${p}-br${family} { type ifname; elements = { ${names} }; }`);
  }
  out.push(`add chain ${t} ${p}-dnat`);
  for (const r of dnat) out.push(`add rule ${t} ${p}-dnat ${r}`);
  // The plain pairs are found through the dispatch maps (see DISPATCH): one lookup for every domain's. A forward
  // that is a rule of its own needs the domain's chain walked for each new connection: a jump from our base chains,
  // first in them, like the iptables backend's inserts.
  for (const family of [4, 6] as const) {
    const keys = dispatchKeys(forwards.filter((f) => f.family === family && isMapped(f)));
    if (keys.length > 0) {
      out.push(
        `add element ${t} ${DISPATCH}${family} { ${keys.map((k) => `${k} : jump ${p}-dnat`).join(", ")} }`,
      );
    }
  }
  if (forwards.some((f) => !isMapped(f))) {
    out.push(
      `insert rule ${t} prerouting jump ${p}-dnat ${comment}`,
      `insert rule ${t} output jump ${p}-dnat ${comment}`,
    );
  }
  out.push(...countObjects(domain, forwards.filter((f) => f.countTraffic), comment));
  out.push(...nftSnatObjects(domain, snats));
  return out;
}

/**
 * Our base chain that counts the packets and bytes of the forwards that ask for it (see Forward.countTraffic), at
 * the forward hook just after the administrator's bans (NFT_USER_HOOK): there whenever a domain counts, and only
 * then, so that counters cost nothing per packet where no forward asks for them.
 */
export const COUNT_CHAIN = "traffic";

/**
 * A counting domain's objects: per family and protocol, a set of its forwards' public address and ports (`*`: any
 * address) whose every element counts, and one rule in COUNT_CHAIN that looks a packet up by its connection's
 * original destination. Only the connections our DNAT labelled (see CT_LABEL) get that far, both ways, the first
 * packet too (the forward hook comes after the DNAT). A packet of ours costs one lookup per counting domain (and
 * protocol), however many forwards it has.
 * The port needs `meta l4proto` before it: nft knows a conntrack port's type from the protocol.
 */
function countObjects(domain: string, counted: Forward[], comment: string): string[] {
  if (counted.length === 0) return [];
  const p = nftPrefix(domain);
  const t = `inet ${NFT_TABLE}`;
  const sets = new Map<string, { family: Family; protocol: string; elements: string[] }>();
  for (const f of counted) {
    const name = countSet(p, f);
    const set = sets.get(name) ?? { family: f.family, protocol: f.protocol, elements: [] };
    const address = f.publicIp !== ANY_PUBLIC ? f.publicIp : f.family === 4 ? "0.0.0.0/0" : "::/0";
    for (const [a, b] of countedPorts(f)) set.elements.push(`${address} . ${a === b ? a : `${a}-${b}`}`);
    sets.set(name, set);
  }
  const out = [`add chain ${t} ${COUNT_CHAIN} { type filter hook forward priority -9; policy accept; }`];
  for (const [name, { family, protocol, elements }] of sets) {
    const ip = family === 4 ? "ip" : "ip6";
    const type = `${family === 4 ? "ipv4_addr" : "ipv6_addr"} . inet_service`;
    // A hash where every element is one address and port; intervals (a slower kind of set) for ranges and "*".
    const interval = elements.some((e) => e.includes("-") || e.includes("/")) ? "flags interval; " : "";
    const list = elements.join(", ");
    out.push(
      `add set ${t} ${name} { type ${type}; ${interval}counter; elements = { ${list} }; }`,
      `add rule ${t} ${COUNT_CHAIN} ct label ${CT_LABEL} meta l4proto ${protocol} ` +
        `ct original ${ip} daddr . ct original proto-dst @${name} ${comment}`,
    );
  }
  return out;
}

/** The name of a domain's counting set (prefix `p`) for a forward's family and protocol: `d<hash>-count4-tcp`. */
function countSet(p: string, f: Pick<Forward, "family" | "protocol">): string {
  return `${p}-count${f.family}-${f.protocol}`;
}

/** Whether a forward is a plain pair of its domain's map: one address and port, no source, interface or name. */
function isMapped(f: Forward): boolean {
  return f.count === 1 && nftSourceMatch(f) === "" && f.publicIp !== ANY_PUBLIC && f.dev === undefined &&
    f.description === undefined;
}

/** The keys of plain pairs in the dispatch maps and the domains' sets: `<address> . <protocol> . <port>`. */
function dispatchKeys(mapped: Forward[]): string[] {
  return mapped.map((f) => `${f.publicIp} . ${f.protocol} . ${f.publicPort}`);
}

/**
 * The dispatch maps of our table, `dispatch4` and `dispatch6`: public address, protocol and port of every domain's
 * plain pairs to a jump into that domain's nat chain, looked up once by our base chains `dispatch` (prerouting)
 * and `dispatch_out` (output), which hook just ahead of `prerouting` and `output`. A new connection costs one
 * lookup however many domains there are (issue 25); the first NAT decision of a connection is the only one, so
 * the later chains do not translate again. Each element names its domain's chain: a removal deletes exactly the
 * live elements that jump there. Public pairs are one domain's each (a second claim is refused before any write).
 */
export const DISPATCH = "dispatch";

/** Our base chain that masquerades the hairpin of every domain's forwards (see HAIRPIN_LABEL). */
export const HAIRPIN_CHAIN = "hairpin";

/**
 * The rules of a forward that is not a plain pair of the map (sources, "*", a dev, a description, a range):
 * its dnat (after its all_ports returns, and the hairpin's label) into `dnat`.
 */
function ruledForward(
  domain: string,
  f: Forward,
  { comment, dnat }: { comment: string; dnat: string[] },
) {
  const ip = f.family === 4 ? "ip" : "ip6";
  const ports = (first: number) => (f.count === 1 ? `${first}` : `${first}-${first + f.count - 1}`);
  // "*": every local address but loopback's, which would need route_localnet (a sysctl we never write).
  const to = f.publicIp === ANY_PUBLIC
    ? `fib daddr type local ${ip} daddr != ${f.family === 4 ? "127.0.0.0/8" : "::1"} `
    : `${ip} daddr ${f.publicIp} `;
  const match = `${nftSourceMatch(f)}${to}${f.dev === undefined ? "" : `iifname "${f.dev}" `}`;
  // Our chain names the domain; the forward's own rule can carry its description instead of our tag.
  const named = f.description === undefined ? comment : `comment "${f.description}"`;
  // A range shifted to other ports: nft has no offset, so each port maps to its own (one lookup per packet).
  const shifted = () =>
    `${f.protocol} dport map { ${
      Array.from({ length: f.count }, (_, i) => `${f.publicPort + i} : ${f.privateIp} . ${f.privatePort + i}`)
        .join(", ")
    } }`;
  const target = f.count > 1
    ? (f.privatePort === f.publicPort ? f.privateIp : shifted())
    : f.family === 4
    ? `${f.privateIp}:${f.privatePort}`
    : `[${f.privateIp}]:${f.privatePort}`;
  // all_ports: the ports other forwards take on the address go back to the base chain, to their own chains.
  if (f.except?.length) {
    const taken = f.except.map(([a, b]) => (a === b ? `${a}` : `${a}-${b}`)).join(", ");
    dnat.push(`${match}${f.protocol} dport { ${taken} } return ${comment}`);
  }
  if (f.log) dnat.push(logRule(domain, f, { match, comment }));
  // A guest's own connection to the forward is labelled for the hairpin (see HAIRPIN_LABEL), then translated.
  dnat.push(
    `${ip} saddr ${f.hairpinFrom} ${match}${f.protocol} dport ${
      ports(f.publicPort)
    } ct label set ${HAIRPIN_LABEL} ${comment}`,
    `${match}${f.protocol} dport ${
      ports(f.publicPort)
    } ct label set ${CT_LABEL} counter dnat ${ip} to ${target} ${named}`,
  );
}

/**
 * A domain's plain forwards of one family (one address and port each, no source, interface or description): one
 * map and one set, a lookup per packet however many there are; the map counts each forward's new connections.
 */
function mappedObjects(
  domain: string,
  mapped: Forward[],
  { family, comment }: { family: Family; comment: string },
): { out: string[]; dnat: string[] } {
  const p = nftPrefix(domain);
  const t = `inet ${NFT_TABLE}`;
  const ip = family === 4 ? "ip" : "ip6";
  const addrType = family === 4 ? "ipv4_addr" : "ipv6_addr";
  const out: string[] = [], dnat: string[] = [];
  const map = `${p}-dnat${family}`, pub = `${p}-pub${family}`;
  const element = (f: Forward) =>
    `${f.publicIp} . ${f.protocol} . ${f.publicPort} : ${f.privateIp} . ${f.privatePort}`;
  // `counter`: each element counts the lookups that found it: a forward's new connections (see Counters).
  out.push(
    `add map ${t} ${map} { ${MAP_TYPE[family]}; counter; elements = { ${mapped.map(element).join(", ")} }; }`,
    `add set ${t} ${pub} { type ${addrType} . inet_proto . inet_service; ` +
      `elements = { ${mapped.map((f) => `${f.publicIp} . ${f.protocol} . ${f.publicPort}`).join(", ")} }; }`,
  );
  // `log`: one line per new connection (a nat chain), a rule per logged forward, ahead of the lookup.
  for (const f of mapped.filter((f) => f.log)) {
    dnat.push(logRule(domain, f, { match: `${ip} daddr ${f.publicIp} `, comment }));
  }
  // Labelled only where the map has the pair (see CT_LABEL): a lookup that misses must leave it unset. The check
  // is against a set of the same keys without counters, so that the map's counter sees one lookup a connection.
  const pair = `${ip} daddr . meta l4proto . th dport`;
  // A guest's own connections to the forwards are labelled for the hairpin (see HAIRPIN_LABEL) first.
  for (const from of unique(mapped.map((f) => f.hairpinFrom))) {
    dnat.push(`${ip} saddr ${from} ${pair} @${pub} ct label set ${HAIRPIN_LABEL} ${comment}`);
  }
  dnat.push(`${pair} @${pub} ct label set ${CT_LABEL} dnat ${ip} to ${pair} map @${map} ${comment}`);
  return { out, dnat };
}

/** The type of a domain's DNAT map, per family: public address, protocol and port to guest address and port. */
const MAP_TYPE = {
  4: "type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service",
  6: "type ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service",
};

/**
 * The rule that logs a forward's new connections (see Forward.log), in the domain's nat chain; `match`: what picks
 * the forward's packets before its protocol and ports (source, address or "*", interface).
 */
function logRule(domain: string, f: Forward, { match, comment }: { match: string; comment: string }): string {
  const ports = f.count === 1 ? `${f.publicPort}` : `${f.publicPort}-${f.publicPort + f.count - 1}`;
  return `${match}${f.protocol} dport ${ports} ${LOG_RATE.nft} log prefix "${
    logPrefix(domain, f)
  }" ${comment}`;
}

/** An element's key as nft -j prints it (`{"concat": [...]}` or a value), as nft -f reads it. */
function elemText(key: unknown): string {
  const parts = (key as { concat?: unknown[] })?.concat;
  return Array.isArray(parts) ? parts.map(String).join(" . ") : String(key);
}

/**
 * The base chains of our table; `add` is idempotent, so they are declared in every batch that adds. The dispatch
 * chains hold nothing but their lookups (see DISPATCH): emptied and filled again, they are always exactly these.
 */
export function nftBase(): string[] {
  const t = `inet ${NFT_TABLE}`;
  const lookups = (chain: string) => [
    `flush chain ${t} ${chain}`,
    `add rule ${t} ${chain} ip daddr . meta l4proto . th dport vmap @${DISPATCH}4`,
    `add rule ${t} ${chain} ip6 daddr . meta l4proto . th dport vmap @${DISPATCH}6`,
  ];
  return [
    `add table ${t}`,
    `add map ${t} ${DISPATCH}4 { type ipv4_addr . inet_proto . inet_service : verdict; }`,
    `add map ${t} ${DISPATCH}6 { type ipv6_addr . inet_proto . inet_service : verdict; }`,
    `add chain ${t} ${DISPATCH} { type nat hook prerouting priority dstnat - 1; policy accept; }`,
    ...lookups(DISPATCH),
    `add chain ${t} ${DISPATCH}_out { type nat hook output priority -101; policy accept; }`,
    ...lookups(`${DISPATCH}_out`),
    `add chain ${t} prerouting { type nat hook prerouting priority dstnat; policy accept; }`,
    `add chain ${t} output { type nat hook output priority -100; policy accept; }`,
    // The hairpin of every domain's forwards: the connections our DNAT labelled for it (see HAIRPIN_LABEL).
    `add chain ${t} ${HAIRPIN_CHAIN} { type nat hook postrouting priority srcnat - 1; policy accept; }`,
    `flush chain ${t} ${HAIRPIN_CHAIN}`,
    `add rule ${t} ${HAIRPIN_CHAIN} ct label ${HAIRPIN_LABEL} masquerade`,
    // The administrator's chain (see NFT_USER_CHAIN): `add` leaves it, and its rules, as they are.
    `add chain ${t} ${NFT_USER_CHAIN} { ${NFT_USER_HOOK} }`,
  ];
}

/** Commands that remove everything of one domain from our table (and the table, when nothing else is left and
 * `keepTable` is not set). */
export function nftRemoveDomain(domain: string, live: NftLive, { keepTable = false } = {}): string[] {
  if (!live.table) return [];
  const p = nftPrefix(domain);
  const t = `inet ${NFT_TABLE}`;
  const h = domainHash(domain);
  const others = [...nftOwners(live)].filter((o) => o !== h);
  if (others.length === 0 && !keepTable && !holdsTheUsers(live)) return [`delete table ${t}`];
  const out: string[] = [];
  // Its elements in the dispatch maps first: they jump into the chains that go below.
  for (const family of [4, 6] as const) {
    const keys = live.maps.find((m) => m.name === `${DISPATCH}${family}`)?.elem.flatMap((e) => {
      const [key, verdict] = Array.isArray(e) ? e : [];
      return (verdict as { jump?: { target?: string } })?.jump?.target === `${p}-dnat` ? [elemText(key)] : [];
    }) ?? [];
    if (keys.length > 0) out.push(`delete element ${t} ${DISPATCH}${family} { ${keys.join(", ")} }`);
  }
  for (const r of live.rules) {
    const mine = r.jump?.startsWith(`${p}-`) ||
      (r.comment !== undefined && ownerOf(r.comment) === h && !r.chain.startsWith(`${p}-`));
    if (mine) out.push(`delete rule ${t} ${r.chain} handle ${r.handle}`);
  }
  // COUNT_CHAIN goes with the last counting domain (a start that counts declares it again after this).
  const counting = live.rules.filter((r) => r.chain === COUNT_CHAIN);
  if (live.chains.includes(COUNT_CHAIN) && counting.every((r) => r.comment && ownerOf(r.comment) === h)) {
    out.push(`delete chain ${t} ${COUNT_CHAIN}`);
  }
  const chains = live.chains.filter((c) => c.startsWith(`${p}-`));
  for (const c of chains) out.push(`flush chain ${t} ${c}`);
  for (const c of chains) out.push(`delete chain ${t} ${c}`);
  for (const m of live.maps) if (m.name.startsWith(`${p}-`)) out.push(`delete map ${t} ${m.name}`);
  for (const s of live.sets) if (s.name.startsWith(`${p}-`)) out.push(`delete set ${t} ${s.name}`);
  return out;
}

/**
 * Whether our table holds anything of the administrator's: a rule in NFT_USER_CHAIN (a ban), or a set, map or
 * chain that is not ours (fail2ban's nftables action keeps its set in the table it is given). Then our table stays
 * when our last domain goes; only our objects leave it.
 */
export function holdsTheUsers(live: NftLive): boolean {
  // Our base chains, and the domains' objects (`d<hash>-...`).
  const base = [
    "prerouting",
    "output",
    "postrouting",
    SNAT_CHAIN,
    NFT_USER_CHAIN,
    DISPATCH,
    `${DISPATCH}_out`,
    `${DISPATCH}4`,
    `${DISPATCH}6`,
    HAIRPIN_CHAIN,
    COUNT_CHAIN,
  ];
  const ours = (name: string) => /^d[0-9a-f]{12}-/.test(name) || base.includes(name);
  return live.rules.some((r) => r.chain === NFT_USER_CHAIN) ||
    live.chains.some((c) => !ours(c)) ||
    [...live.sets, ...live.maps].some((x) => !ours(x.name));
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
 * Commands that make our accepts in libvirt's `guest_input` chains exactly these, each ahead of every rule of
 * libvirt's: one per bridge of `shared` for all the domains our table translates (see SHARED_ACCEPT), and one per
 * domain and bridge of `wanted` for the domains whose forwards iptables translates. Nothing of libvirt's is ever
 * changed: our rules carry our comment and are removed by handle only.
 */
export function libvirtAccepts(
  live: NftLive,
  wanted: Map<string, Record<Family, string[]>>,
  shared: Record<Family, string[]> = { 4: [], 6: [] },
): string[] {
  const out: string[] = [];
  for (const family of [4, 6] as const) {
    const chain = live.libvirt[family];
    if (!chain) continue;
    const want = shared[family].map((bridge) => `${SHARED_ACCEPT} oifname ${bridge}`);
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
  { bridges, acceptIn }: { bridges: Record<Family, string[]> | undefined; acceptIn: readonly string[] },
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

/** The base chain of our outbound NATs: ahead of libvirt's masquerade (its guest_nat hooks at srcnat). */
export const SNAT_CHAIN = "outbound";

/**
 * Outbound 1:1 NAT for one domain (see Snat), in a chain `d<hash>-out` jumped from our base chain `outbound`, which
 * hooks postrouting at srcnat - 5: the kernel takes the first NAT decision of a connection, so it runs, and wins,
 * before libvirt's guest_nat (srcnat) and before iptables' nat POSTROUTING (srcnat too).
 */
export function nftSnatObjects(domain: string, snats: Snat[]): string[] {
  if (snats.length === 0) return [];
  const p = nftPrefix(domain);
  const t = `inet ${NFT_TABLE}`;
  const comment = `comment "${ruleComment(domain)}"`;
  const out = [
    `add chain ${t} ${SNAT_CHAIN} { type nat hook postrouting priority srcnat - 5; policy accept; }`,
    `add chain ${t} ${p}-out`,
  ];
  for (const s of snats) {
    const ip = s.family === 4 ? "ip" : "ip6";
    const keep = s.family === 4 ? ["224.0.0.0/24", "255.255.255.255"] : ["ff00::/8"];
    out.push(
      `add rule ${t} ${p}-out ${ip} saddr ${s.privateIp} ${ip} daddr != ${s.network} ` +
        keep.map((k) => `${ip} daddr != ${k} `).join("") + `snat ${ip} to ${s.publicIp} ${comment}`,
    );
  }
  out.push(`insert rule ${t} ${SNAT_CHAIN} jump ${p}-out ${comment}`);
  return out;
}
