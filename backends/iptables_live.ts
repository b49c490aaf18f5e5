/** The iptables backend's live state: our chains and rules, parsed from iptables-save or from nft's view of
 * iptables-nft's tables. */

import { setSource } from "./sources.ts";
import { addTraffic, type LiveForward } from "./forward.ts";

import {
  CHAIN_PREFIX,
  COMMENT_TAG,
  commentDomain,
  COUNT_SUFFIX,
  domainHash,
  GATE_CHAIN,
  GATE_JUMP,
  hashOnly,
  ruleComment,
  USER_CHAIN,
} from "./names.ts";
import type { NftItem } from "./nft_json.ts";
import type { Family } from "../system/address.ts";

/** A rule of ours (or one that jumps into ours) as iptables-save printed it. */
export interface LiveRule {
  table: string;
  chain: string;
  /** The rule's arguments after `-A <chain> `, exactly as saved, so `-D <chain> <spec>` deletes it. */
  spec: string;
  /** The domain hash it belongs to, from its chain, its jump target or its comment. */
  owner: string;
  /** The domain named in its comment, when it has our comment. */
  domain?: string;
  /** Its nftables handle, where it was read with nft (iptables-nft): what deletes exactly this rule. */
  handle?: number;
  /** A jump below a rule of other software in its built-in chain: no longer ahead of it (see Live). */
  buried?: true;
  /** Packets and bytes the rule matched, where it was read with `iptables-save -c`. */
  counters?: [number, number];
}

/** Our gate in filter FORWARD (see GATE_CHAIN), as far as it was read. */
export interface Gate {
  /** Whether GATE_CHAIN is there. */
  chain: boolean;
  /** Its rule in FORWARD; null: FORWARD was listed without it; undefined: FORWARD's rules were not listed. */
  jump?: { spec: string; handle?: number; buried?: true } | null;
  /** The domains (hashes) with a jump in it, where it was listed; undefined: not listed. */
  owners?: string[];
}

/** What of ours is live in one family: our chains by table and the rules that concern them. */
export interface Live {
  chains: { table: string; chain: string; owner: string }[];
  rules: LiveRule[];
  /** Our gate in FORWARD, where the filter table's chains were read (see Gate). */
  gate?: Gate;
  /** Whether libvirt's own chains (LIBVIRT_*) are there: libvirt uses its iptables backend. */
  libvirt?: boolean;
  /**
   * iptables' own filter FORWARD, where it exists: a gate every forwarded connection passes (Docker, ufw and an
   * administrator's rules live there, often with policy DROP), so our accept goes into it on either backend.
   */
  forward?: { policy: string };
  /**
   * Read with nft (iptables-nft): every chain of iptables' nat and filter tables, by table, with a base chain's
   * policy (`""` for a chain of our own or another's), so a start knows which built-in chains its batch creates.
   */
  tables?: Record<string, Record<string, string>>;
  /**
   * Read with nft, where the built-in chains were listed: per `<table> <chain>`, how many rules of other software
   * (`foreign`) and of our other domains (`ours`) it holds besides this domain's jumps.
   */
  othersIn?: Record<string, { foreign: number; ours: number }>;
  /** Whether the administrator's USER_CHAIN is there (filter table); undefined: not read. */
  user?: boolean;
  /**
   * How many rules USER_CHAIN holds, where the read counted them along with every chain of ours (a whole read, or
   * a removal's look with nft); undefined: not counted, so it is never deleted on this read.
   */
  userRules?: number;
  /** How much of the text read was other software's (bytes): what makes a host busy, whatever our own N. */
  foreignBytes?: number;
}

/** Extracts our chains and rules from iptables-save output; everything else is skipped unread. */
export function parseSave(text: string): Live {
  const gate: Gate = { chain: false, jump: null, owners: [] };
  const live: Live = { chains: [], rules: [], user: false, userRules: 0, gate };
  let table = "", foreign = 0;
  // The built-in chains of ours where a rule of other software came first: a jump of ours after it is buried.
  const foreignFirst = new Set<string>();
  for (let line of text.split("\n")) {
    // `iptables-save -c` (status, metrics): a rule's packets and bytes ahead of it.
    let counters: [number, number] | undefined;
    if (line.startsWith("[")) {
      const m = /^\[(\d+):(\d+)\] /.exec(line);
      if (m) {
        counters = [Number(m[1]), Number(m[2])];
        line = line.slice(m[0].length);
      }
    }
    if (line.startsWith("*")) {
      table = line.slice(1).trim();
      continue;
    }
    if (line.startsWith(":LIBVIRT_")) live.libvirt = true;
    if (table === "filter" && line.startsWith(":FORWARD ")) {
      live.forward = { policy: line.split(" ")[1] ?? "" };
    }
    // Cheap filter first: on a busy host almost every line is someone else's.
    if (!line.includes(CHAIN_PREFIX) && !line.includes(COMMENT_TAG)) {
      foreign += line.length + 1;
      if (line.startsWith("-A ")) foreignFirst.add(`${table} ${line.slice(3, line.indexOf(" ", 3))}`);
      continue;
    }
    if (line.startsWith(":")) {
      const chain = line.slice(1).split(" ")[0] ?? "";
      const owner = chainOwner(chain);
      if (owner) live.chains.push({ table, chain, owner });
      if (table === "filter" && chain === USER_CHAIN) live.user = true;
      if (table === "filter" && chain === GATE_CHAIN) gate.chain = true;
      continue;
    }
    if (!line.startsWith("-A ")) continue;
    if (table === "filter" && line.startsWith(`-A ${USER_CHAIN} `)) live.userRules!++;
    const rest = line.slice(3);
    const space = rest.indexOf(" ");
    const chain = space < 0 ? rest : rest.slice(0, space);
    const spec = space < 0 ? "" : rest.slice(space + 1);
    const own = chainOwner(chain);
    if (own) {
      // Inside our own chains the chain names the owner; only the jumps into them need reading.
      live.rules.push({ table, chain, spec, owner: own, ...(counters ? { counters } : {}) });
      continue;
    }
    const tokens = tokenize(spec);
    const target = tokens[tokens.indexOf("-j") + 1] ?? tokens[tokens.indexOf("-g") + 1];
    if (table === "filter" && chain === "FORWARD" && target === GATE_CHAIN) {
      gate.jump = { spec, ...(foreignFirst.has("filter FORWARD") ? { buried: true as const } : {}) };
      continue;
    }
    const commentAt = tokens.indexOf("--comment");
    const comment = commentAt >= 0 ? tokens[commentAt + 1] : undefined;
    const domain = comment === undefined ? undefined : commentDomain(comment);
    const owner = (target === undefined ? undefined : chainOwner(target)) ??
      (domain === undefined ? undefined : domainHash(domain));
    if (!owner) {
      foreignFirst.add(`${table} ${chain}`);
      continue;
    }
    if (table === "filter" && chain === GATE_CHAIN) gate.owners!.push(owner);
    live.rules.push({
      table,
      chain,
      spec,
      owner,
      ...(domain === undefined ? {} : { domain }),
      ...(foreignFirst.has(`${table} ${chain}`) ? { buried: true as const } : {}),
    });
  }
  live.foreignBytes = foreign;
  return live;
}

/**
 * Whether a removal of `domain` takes USER_CHAIN with it: the chain is there, empty as counted (no ban, no jump of
 * fail2ban's: an administrator's chain in use is never deleted), and no other domain of ours has chains in this
 * family (each one's FWD chain jumps to it). Like our table in nftables, so that a stop leaves nothing behind.
 */
export function userChainGoes(live: Live, domain: string): boolean {
  if (live.user !== true || live.userRules !== 0) return false;
  const h = domainHash(domain);
  const other = (chain: string) => {
    const owner = chainOwner(chain);
    return owner !== undefined && owner !== h;
  };
  if (live.tables) return !Object.values(live.tables).some((chains) => Object.keys(chains).some(other));
  return !live.chains.some((c) => other(c.chain));
}

/** The domain hash a chain of ours (`LVH-<hash>-...`) belongs to; undefined for any other chain. */
export function chainOwner(chain: string): string | undefined {
  return /^LVH-([0-9a-f]{12})-/.exec(chain)?.[1];
}

/** Splits an iptables-save rule into words, honouring its double quotes and backslash escapes. */
export function tokenize(spec: string): string[] {
  const out: string[] = [];
  // A word is a run of quoted parts ("..." with backslash escapes) and bare characters, up to a space.
  for (const m of spec.matchAll(/(?:"(?:[^"\\]|\\.)*"|[^\s"])+/g)) {
    const word = m[0];
    out.push(
      word.includes('"')
        ? word.replace(/"((?:[^"\\]|\\.)*)"/g, (_, q: string) => q.replace(/\\(.)/g, "$1"))
        : word,
    );
  }
  return out;
}

/**
 * Turns `iptables -t <table> -S <chain>` listings into iptables-save text, so parseSave reads both: `-N` declares
 * a chain, `-A` lines stay, policies go. A jump to LIBVIRT_* shows that libvirt uses its iptables backend.
 */
export function listingsToSave(listings: { table: string; text: string }[]): string {
  const out: string[] = [];
  for (const table of TABLES) {
    out.push(`*${table}`);
    for (const l of listings.filter((x) => x.table === table)) {
      for (const line of l.text.split("\n")) {
        if (line.startsWith("-N ")) out.push(chainLine(line.slice(3).trim()));
        else if (line.startsWith("-P ")) {
          out.push(chainLine(...line.slice(3).trim().split(" ") as [string, string]));
        } else if (line.startsWith("-A ")) {
          out.push(line);
          const libvirt = / -j (LIBVIRT_\w+)/.exec(line)?.[1];
          if (libvirt) out.push(chainLine(libvirt));
        }
      }
    }
    out.push("COMMIT");
  }
  return out.join("\n") + "\n";
}

/** Keeps only what belongs to one domain. */
export function liveOf(live: Live, domain: string): Live {
  const h = domainHash(domain);
  return {
    chains: live.chains.filter((c) => c.owner === h),
    rules: live.rules.filter((r) => r.owner === h),
    ...(live.gate ? { gate: live.gate } : {}),
  };
}

/**
 * What a sync of `domain` does with our gate (see GATE_CHAIN) in one family, from what is live (`gate`, as liveOf
 * carries it) and whether the domain wants a jump in it: create it (chain and rule), put its rule back on top
 * (missing, or below another's rule), remove it (the domain's jump was the last), or nothing. A gate whose other
 * jumps were not listed is kept: only a read that saw it whole takes it away.
 */
export function gateChange(
  gate: Gate | undefined,
  { domain, wanted }: { domain: string; wanted: boolean },
): "create" | "restore" | "remove" | undefined {
  if (!gate?.chain) return wanted ? "create" : undefined;
  const h = domainHash(domain);
  const others = gate.owners === undefined ? 1 : gate.owners.filter((o) => o !== h).length;
  if (!wanted && others === 0) return gate.jump === undefined ? undefined : "remove";
  return gate.jump === null || gate.jump?.buried ? "restore" : undefined;
}

/** Reads the forwards back from our live DNAT rules; a domain is named by its rules' comment. */
export function liveForwards(live: Live, family: Family): LiveForward[] {
  const out: LiveForward[] = [];
  const names = new Map<string, string>();
  for (const r of live.rules) if (r.domain !== undefined) names.set(r.owner, r.domain);
  for (const r of live.rules) {
    if (r.table !== "nat" || !chainOwner(r.chain)) continue;
    const t = tokenize(r.spec);
    if (r.chain.endsWith("-SNAT")) {
      // An outbound 1:1 NAT: `-s <guest> ! -d <its network> -j SNAT --to-source <public>`.
      const i = t.indexOf("--to-source"), s = t.indexOf("-s");
      if (i >= 0 && s >= 0 && t.includes("SNAT")) {
        out.push({
          domain: names.get(r.owner) ?? hashOnly(r.owner),
          family,
          protocol: "all",
          publicIp: t[i + 1]!,
          publicPorts: "",
          privateIp: t[s + 1]!.replace(/\/(32|128)$/, ""),
          privatePorts: "",
          outbound: true,
        });
      }
      continue;
    }
    if (!r.chain.endsWith("-DNAT")) continue;
    const arg = (flag: string) => {
      const i = t.indexOf(flag);
      return i >= 0 ? t[i + 1] : undefined;
    };
    const to = arg("--to-destination");
    const dport = arg("--dport");
    if (to === undefined || dport === undefined) continue;
    const bare = (a: string) => a.replace(/\/(32|128)$/, "");
    // `ip:port`, `[ip]:port`, or a shifted range `ip:first-last/base`.
    const m = /^\[(.*)\]:(\d+(?:-\d+)?)(?:\/\d+)?$/.exec(to) ?? /^([^:]+):(\d+(?:-\d+)?)(?:\/\d+)?$/.exec(to);
    const publicPorts = dport.replace(":", "-");
    const set = arg("--match-set");
    const source = set !== undefined
      ? setSource(set) ?? set
      : arg("--src-range") ?? (arg("-s") === undefined ? undefined : bare(arg("-s")!));
    // "*": `! -d <loopback> -m addrtype --dst-type LOCAL`; a description: a comment beside ours.
    const any = arg("--dst-type") === "LOCAL";
    const dev = arg("-i");
    const description = t.filter((_, i) => t[i - 1] === "--comment").find((c) => !c.startsWith(COMMENT_TAG));
    // The DNAT rule sees a connection's first packet only (nat): its packets are the new connections. Packets and
    // bytes are counted by the domain's counting chain, where a forward asks for them (below).
    addLive(out, {
      domain: names.get(r.owner) ?? hashOnly(r.owner),
      family,
      protocol: arg("-p") ?? "?",
      publicIp: any ? "*" : bare(arg("-d") ?? "?"),
      publicPorts,
      privateIp: m ? m[1]! : to,
      privatePorts: m ? m[2]! : publicPorts,
      ...(source === undefined ? {} : { source }),
      ...(dev === undefined ? {} : { dev }),
      ...(description === undefined ? {} : { description }),
      ...(r.counters ? { counters: { connections: r.counters[0] } } : {}),
    });
  }
  for (const r of live.rules) if (r.chain.endsWith(COUNT_SUFFIX)) addCounted(out, r, { names, family });
  return out;
}

/**
 * Adds what one rule of a domain's counting chain counted (see countingParts in iptables.ts) to its forward:
 * `-p <proto> -m conntrack [--ctorigdst <address>] --ctorigdstport <ports> ... -j RETURN`.
 */
function addCounted(
  out: LiveForward[],
  r: LiveRule,
  { names, family }: { names: Map<string, string>; family: Family },
) {
  if (!r.counters) return;
  const t = tokenize(r.spec);
  const arg = (flag: string) => (t.includes(flag) ? t[t.indexOf(flag) + 1] : undefined);
  const [first = NaN, last = first] = (arg("--ctorigdstport") ?? "").split(":").map(Number);
  const to = arg("--ctorigdst");
  addTraffic(out, {
    domain: names.get(r.owner) ?? hashOnly(r.owner),
    family,
    protocol: arg("-p") ?? "?",
    publicIp: to === undefined ? "*" : to.replace(/\/(32|128)$/, ""),
    first,
    last,
    packets: r.counters[0],
    bytes: r.counters[1],
  });
}

/**
 * Adds a forward read from a DNAT rule, or joins its source to the forward before it where the rule is another
 * source of the same forward (a DNAT rule per source item, see iptablesSourceMatches).
 */
function addLive(out: LiveForward[], f: LiveForward): void {
  const prev = out.at(-1);
  const same = prev && !prev.outbound && prev.source !== undefined && f.source !== undefined &&
    ([
      "domain",
      "protocol",
      "publicIp",
      "publicPorts",
      "privateIp",
      "privatePorts",
      "dev",
      "description",
    ] as const)
      .every((k) => prev[k] === f[k]);
  if (!same) return void out.push(f);
  prev.source = `${prev.source}, ${f.source}`;
  // One DNAT rule per source item: the forward's new connections are theirs together (its accept is one).
  if (prev.counters && f.counters) prev.counters.connections += f.counters.connections;
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
    4: { chains: [], rules: [], tables: {}, user: false, gate: { chain: false } },
    6: { chains: [], rules: [], tables: {}, user: false, gate: { chain: false } },
  };
  for (const { kind, v, family } of iptablesItems(chains)) {
    if (kind !== "chain") continue;
    const name = String(v.name);
    ((out[family].tables ??= {})[String(v.table)] ??= {})[name] = String(v.policy ?? "");
    if (name.startsWith("LIBVIRT_")) out[family].libvirt = true;
    if (name.startsWith(ours)) out[family].chains.push({ table: String(v.table), chain: name, owner });
    if (v.table === "filter" && name === USER_CHAIN) out[family].user = true;
    if (v.table === "filter" && name === GATE_CHAIN) out[family].gate!.chain = true;
    if (v.table === "filter" && name === "FORWARD") {
      out[family].forward = { policy: String(v.policy ?? "accept").toUpperCase() };
    }
  }
  // A rule that is not a jump into chains of ours, ahead of one that is, buries it (see LiveRule).
  const foreignFirst = new Set<string>();
  for (const { kind, v, family } of listings.flatMap(iptablesItems)) {
    // Each chain listed has its count of other rules, none yet: a chain not listed has none (not known).
    if (kind === "chain") (out[family].othersIn ??= {})[`${v.table} ${v.name}`] ??= { foreign: 0, ours: 0 };
    // The administrator's chain, listed: its rules are counted (see userChainGoes).
    if (kind === "chain" && v.table === "filter" && v.name === USER_CHAIN) out[family].userRules ??= 0;
    // FORWARD listed: the gate's rule is known there or not; the gate listed: every domain's jump in it is known.
    if (kind === "chain" && v.table === "filter" && v.name === "FORWARD") out[family].gate!.jump ??= null;
    if (kind === "chain" && v.table === "filter" && v.name === GATE_CHAIN) out[family].gate!.owners ??= [];
    if (kind !== "rule") continue;
    const where = `${family} ${v.table} ${v.chain}`;
    const targets = ((v.expr ?? []) as { jump?: { target?: string } }[]).map((e) => e.jump?.target);
    if (!targets.some((t) => t?.startsWith(CHAIN_PREFIX))) foreignFirst.add(where);
    const count = (out[family].othersIn ??= {})[`${v.table} ${v.chain}`] ??= { foreign: 0, ours: 0 };
    if (!targets.some((t) => t?.startsWith(CHAIN_PREFIX))) count.foreign++;
    else if (!targets.some((t) => t?.startsWith(ours))) count.ours++;
    if (v.table === "filter" && v.chain === USER_CHAIN) out[family].userRules = count.foreign + count.ours;
    if (v.table === "filter" && v.chain === "FORWARD" && targets.includes(GATE_CHAIN)) {
      out[family].gate!.jump = {
        spec: GATE_JUMP,
        ...(typeof v.handle === "number" ? { handle: v.handle } : {}),
        ...(foreignFirst.has(where) ? { buried: true as const } : {}),
      };
    }
    if (v.table === "filter" && v.chain === GATE_CHAIN) {
      for (const t of targets) {
        if (t !== undefined && chainOwner(t)) (out[family].gate!.owners ??= []).push(chainOwner(t)!);
      }
    }
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

/** The iptables tables our rules live in. */
export type Table = "nat" | "filter";

export const TABLES: Table[] = ["nat", "filter"];

/** The iptables-restore line that declares a chain (and flushes it): `:<chain> <policy> [0:0]`; `-` for ours. */
export function chainLine(chain: string, policy = "-"): string {
  return `:${chain} ${policy} [0:0]`;
}
