/** Turns a domain's entries into firewall rules, renders them as one iptables-restore batch and applies it. */

import type { Entry, Protocol } from "./config.ts";
import { type Family, formatNetwork, parseAddress } from "./lib/address.ts";
import { connectedNetworkOf, type HostFacts } from "./lib/host.ts";

/** One port forward, fully resolved: nothing in it depends on the host any more. */
export interface Forward {
  family: Family;
  protocol: Protocol;
  publicIp: string;
  publicPort: number;
  privateIp: string;
  privatePort: number;
  /** How many consecutive ports (a port_range); public and private ports are then equal. */
  count: number;
  /** Only this address or network may use the forward. */
  source?: string;
  /** The guest's bridge: where our accept in libvirt's nftables chain matches, and hairpin mode is set. */
  interface?: string;
  /** Sources masqueraded when they reach the forward through the public address (hairpin). */
  hairpinFrom: string;
}

/** Resolves a domain's entries against the host: default public addresses and hairpin networks. */
export function planForwards(
  entries: Entry[],
  facts: HostFacts,
): { forwards: Forward[]; problems: string[] } {
  const forwards: Forward[] = [];
  const problems: string[] = [];
  for (const entry of entries) {
    for (const t of entry.targets) {
      let publicIp = t.publicIp;
      if (publicIp === undefined) {
        const found = facts.defaultPublicIp[t.family];
        if (!found || "problem" in found) {
          const key = t.family === 4 && !entry.targets.some((x) => x.family === 6 && x !== t)
            ? "public_ip"
            : t.family === 6 && entry.targets.length > 1
            ? "public_ipv6"
            : "public_ip";
          problems.push(
            `${entry.path}: Cannot find the default public IPv${t.family} address: ${
              found && "problem" in found ? found.problem : "unknown"
            }; set "${key}"`,
          );
          continue;
        }
        publicIp = found.address;
      }
      const priv = parseAddress(t.privateIp)!;
      const net = connectedNetworkOf(facts.connected, priv);
      const hairpinFrom = net ? formatNetwork(net) : `${priv.text}/${priv.family === 4 ? 32 : 128}`;
      // The optional fields are the same for every port of the target: made once, not twice per port.
      const optional: Pick<Forward, "source" | "interface"> = {};
      if (t.source !== undefined) optional.source = t.source;
      if (entry.interface !== undefined) optional.interface = entry.interface;
      for (const p of entry.ports) {
        forwards.push({
          family: t.family,
          protocol: p.protocol,
          publicIp,
          publicPort: p.publicPort,
          privateIp: t.privateIp,
          privatePort: p.privatePort,
          count: p.count,
          hairpinFrom,
          ...optional,
        });
      }
    }
  }
  return { forwards, problems };
}

/** Every chain we create starts with this; nothing else is ever touched. */
export const CHAIN_PREFIX = "LVH-";
/** Our rules carry a comment `libvirt-hook-qemu:<format version>:<domain>`. */
export const COMMENT_TAG = "libvirt-hook-qemu:";
/** The version of the rule layout, written into every comment. */
export const FORMAT_VERSION = 1;

/**
 * Marks a domain known only by its hash: a rule whose comment could not hold the name. NUL can be in no name
 * libvirt passes (an argument cannot hold it, nor can XML), so the mark is never a real name.
 */
const HASH_ONLY = "\0";

/**
 * A short, stable hash of a domain name, used in chain names: 12 hex digits (48 bits) of FNV-1a 64 over its UTF-8
 * bytes. Names only need to be told apart, not kept secret; a plain hash keeps node:crypto (and the ~13 ms it
 * costs to load) off the hook's path. A domain known only by its hash (see hashOnly) has that hash.
 */
export function domainHash(domain: string): string {
  if (domain.startsWith(HASH_ONLY)) return domain.slice(HASH_ONLY.length);
  let hash = 0xcbf29ce484222325n;
  for (const byte of new TextEncoder().encode(domain)) {
    hash = ((hash ^ BigInt(byte)) * 0x100000001b3n) & 0xffffffffffffffffn;
  }
  return hash.toString(16).padStart(16, "0").slice(0, 12);
}

/** The domain whose name is lost but whose hash is known, as the other functions here take a domain. */
export function hashOnly(hash: string): string {
  return `${HASH_ONLY}${hash}`;
}

/** Whether a domain is known only by its hash (see hashOnly). */
export function isHashOnly(domain: string): boolean {
  return domain.startsWith(HASH_ONLY);
}

/** A domain as people read it: its name, or `#<hash>` where only the hash is known. */
export function domainLabel(domain: string): string {
  return isHashOnly(domain) ? `#${domainHash(domain)}` : domain;
}
/** The chains one domain owns: `LVH-<hash>-DNAT` etc., 21 characters, under iptables' 28. */
export function chainNames(domain: string): { dnat: string; snat: string; fwd: string } {
  const h = domainHash(domain);
  return {
    dnat: `${CHAIN_PREFIX}${h}-DNAT`,
    snat: `${CHAIN_PREFIX}${h}-SNAT`,
    fwd: `${CHAIN_PREFIX}${h}-FWD`,
  };
}

/**
 * The longest name, percent-encoded, that our comments carry: nftables keeps at most 128 bytes of a comment, and
 * ours is `libvirt-hook-qemu:1:<name>:accept` at most (20 + 100 + 7). A longer name is carried as `#<hash>`:
 * ownership always goes by the hash, never by a name a comment may have had to drop.
 */
export const MAX_COMMENT_NAME = 100;

/** The comment on every rule of a domain; odd characters are percent-encoded so it needs no quoting. */
export function ruleComment(domain: string): string {
  return `${COMMENT_TAG}${FORMAT_VERSION}:${commentName(domain)}`;
}

/** The name part of our comment: the percent-encoded name, or `#<hash>` where it would not fit. */
function commentName(domain: string): string {
  if (isHashOnly(domain)) return `#${domainHash(domain)}`;
  const name = domain.replace(
    /[^A-Za-z0-9._~+@=,-]/gu,
    (c) =>
      [...new TextEncoder().encode(c)].map((b) => `%${b.toString(16).toUpperCase().padStart(2, "0")}`).join(
        "",
      ),
  );
  return name.length > MAX_COMMENT_NAME ? `#${domainHash(domain)}` : name;
}

/**
 * The domain as our comments carry it, so that what is read back compares equal: the name itself, or, for a name
 * too long for a comment, the domain known only by its hash.
 */
export function carriedDomain(domain: string): string {
  return commentName(domain).startsWith("#") ? hashOnly(domainHash(domain)) : domain;
}

/**
 * Decodes the domain named in one of our comments (undefined when the comment is not ours): its name, or the
 * domain known only by its hash (`#<hash>`, see hashOnly). A `#` of a real name is always percent-encoded.
 */
export function commentDomain(comment: string): string | undefined {
  if (!comment.startsWith(COMMENT_TAG)) return undefined;
  const rest = comment.slice(COMMENT_TAG.length);
  const name = rest.slice(rest.indexOf(":") + 1);
  const hashed = /^#([0-9a-f]{12})$/.exec(name);
  if (hashed) return hashOnly(hashed[1]!);
  try {
    return decodeURIComponent(name);
  } catch {
    return name;
  }
}

/** The iptables tables our rules live in. */
export type Table = "nat" | "filter";
const TABLES: Table[] = ["nat", "filter"];

/** A rule as data: the table and chain it goes in and its iptables arguments. */
export interface Rule {
  table: Table;
  chain: string;
  /** The rule after `-A <chain> `, as iptables-restore reads it. */
  spec: string;
}

/**
 * The rules one family of a domain's forwards needs, as the hook applies them: our chains, the jumps into them,
 * and per table the `-A <chain> <spec>` lines that fill our chains, as text. Text, not objects: at 1000 forwards
 * this runs once, uncompiled, while libvirt waits, and text is what iptables-restore reads.
 */
export interface RuleLines {
  chains: Rule[];
  jumps: Rule[];
  /** Per table, the lines that fill our chains, joined by newlines ("" for none). */
  text: Record<Table, string>;
  /** How many rules the text holds. */
  count: number;
}

/** Renders a domain's rules of one family (see RuleLines). */
export function ruleLines(domain: string, forwards: Forward[]): RuleLines {
  if (forwards.length === 0) return { chains: [], jumps: [], text: { nat: "", filter: "" }, count: 0 };
  const c = chainNames(domain);
  const comment = `-m comment --comment ${ruleComment(domain)}`;
  const jump = (table: Table, chain: string, target: string): Rule => ({
    table,
    chain,
    spec: `${comment} -j ${target}`,
  });
  // What is the same for every forward between one pair of addresses is made once; each line is pieces of text
  // joined once per chain (far fewer objects for the garbage collector than a string per line).
  const dnat: string[] = [], snat: string[] = [], fwd: string[] = [];
  const parts = new Map<string, ReturnType<typeof commonParts>>();
  for (const f of forwards) {
    const key =
      `${f.family} ${f.protocol} ${f.publicIp} ${f.privateIp} ${f.source} ${f.interface} ${f.hairpinFrom}`;
    let p = parts.get(key);
    if (!p) parts.set(key, p = commonParts(f, c, comment));
    const last = f.count - 1;
    const publicPorts = last === 0 ? `${f.publicPort}` : `${f.publicPort}:${f.publicPort + last}`;
    const privatePorts = last === 0 ? `${f.privatePort}` : `${f.privatePort}:${f.privatePort + last}`;
    // A range keeps its ports, so DNAT names no port and the kernel keeps the original one.
    const to = f.count > 1
      ? f.privateIp
      : f.family === 4
      ? `${f.privateIp}:${f.privatePort}`
      : `[${f.privateIp}]:${f.privatePort}`;
    dnat.push(p.dnat, publicPorts, p.dnatTo, to, "\n");
    snat.push(p.snat, privatePorts, p.translated, publicPorts, p.snatTail, "\n");
    fwd.push(p.fwd, publicPorts, p.fwdReply, privatePorts, p.fwdTail, "\n");
  }
  // Every line ends with a newline; the text has none at its end.
  snat[snat.length - 1] = "";
  fwd[fwd.length - 1] = "";
  return {
    chains: [
      { table: "nat", chain: c.dnat, spec: "" },
      { table: "nat", chain: c.snat, spec: "" },
      { table: "filter", chain: c.fwd, spec: "" },
    ],
    // Inserted at the top: FORWARD must accept before libvirt's REJECT, and NAT must win over other tools'.
    jumps: [
      jump("nat", "PREROUTING", c.dnat),
      jump("nat", "OUTPUT", c.dnat),
      jump("nat", "POSTROUTING", c.snat),
      jump("filter", "FORWARD", c.fwd),
    ],
    text: { nat: dnat.join("") + snat.join(""), filter: fwd.join("") },
    count: 3 * forwards.length,
  };
}

/** The same rules as data (table, chain, spec): for tests and for reading, not on the hook's path. */
export function buildRules(
  domain: string,
  forwards: Forward[],
): { chains: Rule[]; jumps: Rule[]; rules: Rule[] } {
  const { chains, jumps, text } = ruleLines(domain, forwards);
  const rules = TABLES.flatMap((table) =>
    text[table] === "" ? [] : text[table].split("\n").map((line): Rule => {
      const end = line.indexOf(" ", 3);
      return { table, chain: line.slice(3, end), spec: line.slice(end + 1) };
    })
  );
  return { chains, jumps, rules };
}

/** The parts of a forward's three rules that are the same for every forward between the same two addresses. */
function commonParts(f: Forward, c: ReturnType<typeof chainNames>, comment: string) {
  const host = f.family === 4 ? "/32" : "/128";
  const pub = `${f.publicIp}${host}`;
  const priv = `${f.privateIp}${host}`;
  const proto = `-p ${f.protocol} -m ${f.protocol}`;
  const source = f.source === undefined ? "" : ` -s ${f.source}`;
  return {
    dnat: `-A ${c.dnat} -d ${pub}${source} ${proto} --dport `,
    dnatTo: ` ${comment} -j DNAT --to-destination `,
    snat: `-A ${c.snat} -s ${f.hairpinFrom} -d ${priv} ${proto} --dport `,
    snatTail: ` ${comment} -j MASQUERADE`,
    // The whole connection, both directions: conntrack's tuples pin it to this forward (the client's packets to
    // the guest and the guest's replies), so it passes a FORWARD whose policy drops everything else.
    fwd: `-A ${c.fwd} -p ${f.protocol} -m conntrack --ctstate DNAT --ctorigdst ${pub} --ctorigdstport `,
    fwdReply: ` --ctreplsrc ${priv} --ctreplsrcport `,
    fwdTail: ` ${comment} -j ACCEPT`,
    translated: ` -m conntrack --ctstate DNAT --ctorigdst ${pub} --ctorigdstport `,
  };
}

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
}

/** What of ours is live in one family: our chains by table and the rules that concern them. */
export interface Live {
  chains: { table: string; chain: string; owner: string }[];
  rules: LiveRule[];
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
  /** How much of the text read was other software's (bytes): what makes a host busy, whatever our own N. */
  foreignBytes?: number;
}

/** Extracts our chains and rules from iptables-save output; everything else is skipped unread. */
export function parseSave(text: string): Live {
  const live: Live = { chains: [], rules: [] };
  let table = "", foreign = 0;
  // The built-in chains of ours where a rule of other software came first: a jump of ours after it is buried.
  const foreignFirst = new Set<string>();
  for (const line of text.split("\n")) {
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
      continue;
    }
    if (!line.startsWith("-A ")) continue;
    const rest = line.slice(3);
    const space = rest.indexOf(" ");
    const chain = space < 0 ? rest : rest.slice(0, space);
    const spec = space < 0 ? "" : rest.slice(space + 1);
    const own = chainOwner(chain);
    if (own) {
      // Inside our own chains the chain names the owner; only the jumps into them need reading.
      live.rules.push({ table, chain, spec, owner: own });
      continue;
    }
    const tokens = tokenize(spec);
    const target = tokens[tokens.indexOf("-j") + 1] ?? tokens[tokens.indexOf("-g") + 1];
    const commentAt = tokens.indexOf("--comment");
    const comment = commentAt >= 0 ? tokens[commentAt + 1] : undefined;
    const domain = comment === undefined ? undefined : commentDomain(comment);
    const owner = (target === undefined ? undefined : chainOwner(target)) ??
      (domain === undefined ? undefined : domainHash(domain));
    if (!owner) {
      foreignFirst.add(`${table} ${chain}`);
      continue;
    }
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

function chainOwner(chain: string): string | undefined {
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

/** The built-in chains our jumps live in. */
export const JUMP_CHAINS: [string, string][] = [["nat", "PREROUTING"], ["nat", "OUTPUT"], [
  "nat",
  "POSTROUTING",
], [
  "filter",
  "FORWARD",
]];

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
        if (line.startsWith("-N ")) out.push(`:${line.slice(3).trim()} - [0:0]`);
        else if (line.startsWith("-P ")) out.push(`:${line.slice(3).trim()} [0:0]`);
        else if (line.startsWith("-A ")) {
          out.push(line);
          const libvirt = / -j (LIBVIRT_\w+)/.exec(line)?.[1];
          if (libvirt) out.push(`:${libvirt} - [0:0]`);
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
  return { chains: live.chains.filter((c) => c.owner === h), rules: live.rules.filter((r) => r.owner === h) };
}

/**
 * Renders one iptables-restore batch (for `--noflush`) that makes the domain's live rules (`current`, already
 * narrowed with liveOf) equal to `forwards`: declaring our chains flushes them, the live jumps are deleted by
 * their saved text, chains no longer needed are deleted, then the new rules go in. Undefined: nothing to do.
 */
export function renderSync(
  domain: string,
  forwards: Forward[],
  current: Live,
  want: RuleLines = ruleLines(domain, forwards),
  additions: Record<Table, string> = renderAdditions(want),
): string | undefined {
  if (want.count === 0 && current.chains.length === 0 && current.rules.length === 0) return undefined;
  const out: string[] = [];
  for (const table of TABLES) {
    const wanted = want.chains.filter((c) => c.table === table).map((c) => c.chain);
    const liveChains = current.chains.filter((c) => c.table === table).map((c) => c.chain);
    const foreignRules = current.rules.filter((r) => r.table === table && !chainOwner(r.chain));
    if (wanted.length === 0 && liveChains.length === 0 && foreignRules.length === 0) continue;
    out.push(`*${table}`);
    for (const chain of unique([...wanted, ...liveChains])) out.push(`:${chain} - [0:0]`);
    for (const r of foreignRules) out.push(`-D ${r.chain} ${r.spec}`);
    for (const chain of unique(liveChains)) if (!wanted.includes(chain)) out.push(`-X ${chain}`);
    if (additions[table]) out.push(additions[table]);
    out.push("COMMIT");
  }
  return out.join("\n") + "\n";
}

/**
 * The lines of a batch that add the wanted rules, per table: they do not depend on what is live, so the hook
 * renders them while it reads the firewall (3000 lines at 1000 forwards). Jumps go in at the top of built-in
 * chains, the rules at the end of our own.
 */
export function renderAdditions(want: RuleLines): Record<Table, string> {
  const out = {} as Record<Table, string>;
  for (const table of TABLES) {
    const jumps = want.jumps.filter((r) => r.table === table).map((r) => `-I ${r.chain} ${r.spec}`).join(
      "\n",
    );
    const rules = want.text[table];
    out[table] = jumps === "" ? rules : rules === "" ? jumps : `${jumps}\n${rules}`;
  }
  return out;
}

/** Renders a batch that puts a domain back exactly as `before` had it, whatever is live for it `now`. */
export function renderRollback(domain: string, before: Live, now: Live): string | undefined {
  const clear = renderSync(domain, [], now) ?? "";
  const out: string[] = [];
  for (const table of TABLES) {
    const chains = before.chains.filter((c) => c.table === table);
    const rules = before.rules.filter((r) => r.table === table);
    if (chains.length === 0 && rules.length === 0) continue;
    out.push(`*${table}`);
    for (const c of chains) out.push(`:${c.chain} - [0:0]`);
    for (const r of rules) if (chainOwner(r.chain)) out.push(`-A ${r.chain} ${r.spec}`);
    // Jumps were inserted at the top; inserting them in reverse order keeps their original relative order.
    for (const r of [...rules].reverse()) if (!chainOwner(r.chain)) out.push(`-I ${r.chain} ${r.spec}`);
    out.push("COMMIT");
  }
  const text = clear + (out.length ? out.join("\n") + "\n" : "");
  return text === "" ? undefined : text;
}

function unique<T>(items: T[]): T[] {
  return [...new Set(items)];
}

/** The iptables programs of one family. */
export interface Tools {
  save: string[];
  restore: string[];
  /** The plain program, for listing single chains (`-t nat -S PREROUTING`). */
  list: string[];
}

/** Derives the save, restore and list programs from IPTABLES_BINARY (default `iptables`) for each family. */
export function iptablesTools(binary = "iptables"): Record<Family, Tools> {
  const slash = binary.lastIndexOf("/");
  const dir = binary.slice(0, slash + 1);
  const base = binary.slice(slash + 1);
  const v6 = base.replace(/^iptables/, "ip6tables");
  const tools = (name: string): Tools => ({
    save: [`${dir}${name}-save`],
    restore: [`${dir}${name}-restore`, "--noflush", "--wait"],
    list: [`${dir}${name}`, "--wait"],
  });
  return { 4: tools(base), 6: tools(v6) };
}

/** A forward as read back from a live DNAT rule, for status. */
export interface LiveForward {
  domain: string;
  family: Family;
  protocol: string;
  publicIp: string;
  publicPorts: string;
  privateIp: string;
  privatePorts: string;
  source?: string;
}

/** Reads the forwards back from our live DNAT rules; a domain is named by its rules' comment. */
export function liveForwards(live: Live, family: Family): LiveForward[] {
  const out: LiveForward[] = [];
  const names = new Map<string, string>();
  for (const r of live.rules) if (r.domain !== undefined) names.set(r.owner, r.domain);
  for (const r of live.rules) {
    if (r.table !== "nat" || !r.chain.endsWith("-DNAT") || !chainOwner(r.chain)) continue;
    const t = tokenize(r.spec);
    const arg = (flag: string) => {
      const i = t.indexOf(flag);
      return i >= 0 ? t[i + 1] : undefined;
    };
    const to = arg("--to-destination");
    const dport = arg("--dport");
    if (to === undefined || dport === undefined) continue;
    const bare = (a: string) => a.replace(/\/(32|128)$/, "");
    const m = /^\[(.*)\]:(\d+)$/.exec(to) ?? /^([^:]+):(\d+)$/.exec(to);
    const publicPorts = dport.replace(":", "-");
    const source = arg("-s") === undefined ? undefined : bare(arg("-s")!);
    out.push({
      domain: names.get(r.owner) ?? hashOnly(r.owner),
      family,
      protocol: arg("-p") ?? "?",
      publicIp: bare(arg("-d") ?? "?"),
      publicPorts,
      privateIp: m ? m[1]! : to,
      privatePorts: m ? m[2]! : publicPorts,
      ...(source === undefined ? {} : { source }),
    });
  }
  return out;
}

/** Renders a forward as `proto public:port -> private:port [from source]`, the same for live and planned ones. */
export function describeForward(f: LiveForward): string {
  const host = (ip: string) => (f.family === 6 ? `[${ip}]` : ip);
  const from = f.source === undefined ? "" : ` from ${f.source}`;
  return `${f.protocol} ${host(f.publicIp)}:${f.publicPorts} -> ${
    host(f.privateIp)
  }:${f.privatePorts}${from}`;
}

/** The live form of a planned forward, so planned and live ones compare as text. */
export function asLiveForward(domain: string, f: Forward): LiveForward {
  const ports = (p: number) => (f.count === 1 ? `${p}` : `${p}-${p + f.count - 1}`);
  return {
    domain,
    family: f.family,
    protocol: f.protocol,
    publicIp: f.publicIp,
    publicPorts: ports(f.publicPort),
    privateIp: f.privateIp,
    privatePorts: ports(f.privatePort),
    ...(f.source === undefined ? {} : { source: f.source }),
  };
}
