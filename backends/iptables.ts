/** The iptables backend's text: a domain's rules as iptables-restore batches (sync, additions, rollback). */

import { ANY_PUBLIC, countedPorts, type Forward, LOG_RATE, logPrefix, type Snat } from "./forward.ts";
import { chainLine, chainOwner, gateChange, type Live, Table, TABLES } from "./iptables_live.ts";
import {
  chainNames,
  COUNT_SUFFIX,
  CT_LABEL,
  GATE_CHAIN,
  GATE_JUMP,
  ruleComment,
  USER_CHAIN,
} from "./names.ts";
import { iptablesSourceMatches } from "./sources.ts";
import type { Family } from "../system/address.ts";
import { unique } from "../system/collections.ts";

/** A rule as data: the table and chain it goes in and its iptables arguments. */
export interface Rule {
  table: Table;
  chain: string;
  /** The rule after `-A <chain> `, as iptables-restore reads it. */
  spec: string;
  /** A jump that goes at the end of its chain, not the top (the accepts in our gate: see ruleLines). */
  append?: true;
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

/**
 * Renders a domain's rules of one family (see RuleLines); `translate: false`: our nftables table translates the
 * forwards, iptables gets their accept and the outbound NATs only (where libvirt's masquerade is in iptables).
 */
export function ruleLines(
  domain: string,
  forwards: Forward[],
  { snats = [], translate = true }: { snats?: Snat[]; translate?: boolean } = {},
): RuleLines {
  if (forwards.length === 0 && snats.length === 0) {
    return { chains: [], jumps: [], text: { nat: "", filter: "" }, count: 0 };
  }
  const c = chainNames(domain);
  const comment = `-m comment --comment ${ruleComment(domain)}`;
  const jump = (table: Table, chain: string, target: string): Rule => ({
    table,
    chain,
    spec: `${comment} -j ${target}`,
  });
  // What is the same for every forward between one pair of addresses is made once; each line is pieces of text
  // joined once per chain (far fewer objects for the garbage collector than a string per line).
  const dnat: string[] = [], snat: string[] = [];
  const parts = new Map<string, ReturnType<typeof commonParts>>();
  let added = 0;
  for (const f of translate ? forwards : []) {
    const key = `${f.family} ${f.protocol} ${f.publicIp} ${f.privateIp} ${f.sources} ${f.sourceSet} ` +
      `${f.interface} ${f.hairpinFrom} ${f.dev} ${f.description}`;
    let p = parts.get(key);
    if (!p) parts.set(key, p = commonParts(f, c, comment));
    const last = f.count - 1;
    const publicPorts = last === 0 ? `${f.publicPort}` : `${f.publicPort}:${f.publicPort + last}`;
    const privatePorts = last === 0 ? `${f.privatePort}` : `${f.privatePort}:${f.privatePort + last}`;
    const to = dnatTarget(f);
    // One DNAT rule per source item (see iptablesSourceMatches), each after its own all_ports returns.
    for (const head of p.dnat) {
      // all_ports: the ports other forwards take on the address go back to PREROUTING, to their own chains.
      for (const [first, lastTaken] of f.except ?? []) {
        dnat.push(
          head,
          first === lastTaken ? `${first}` : `${first}:${lastTaken}`,
          " ",
          comment,
          " -j RETURN\n",
        );
      }
      // `log`: the nat chain sees a connection's first packet only, so this is one line per new connection.
      if (f.log) {
        dnat.push(head, publicPorts, ` -m limit ${LOG_RATE.iptables} ${comment} -j LOG --log-prefix "`);
        dnat.push(logPrefix(domain, f), '"\n');
        added++;
      }
      dnat.push(head, publicPorts, p.dnatTo, to, "\n");
      added += 1 + (f.except?.length ?? 0);
    }
    snat.push(p.snat, privatePorts, p.translated, publicPorts, p.snatTail, "\n");
  }
  outboundLines(snats, { chain: c.snat, comment, into: snat });
  // Every line ends with a newline; the text has none at its end.
  snat[snat.length - 1] = "";
  // The administrator's bans first (see USER_CHAIN), then the accept: only the connections our DNAT labelled
  // (whichever backend translated them) come here, through our gate in FORWARD (see GATE_CHAIN), so no packet
  // forwarded on the host walks a rule per forward, nor one per domain (issue 25).
  const fwd = forwards.length === 0
    ? ""
    : `-A ${c.fwd} ${comment} -j ${USER_CHAIN}\n-A ${c.fwd} ${comment} -j ACCEPT`;
  const outbound = snats.length > 0 ? [{ table: "nat" as const, chain: c.snat, spec: "" }] : [];
  // Where our nftables table translates, it counts too (see nftDomainObjects).
  const counting = translate
    ? countingParts(forwards.filter((f) => f.countTraffic), { chain: c.cnt, comment })
    : { chains: [], jumps: [], lines: [] };
  return {
    chains: translate
      ? [
        { table: "nat", chain: c.dnat, spec: "" },
        { table: "nat", chain: c.snat, spec: "" },
        { table: "filter", chain: c.fwd, spec: "" },
        ...counting.chains,
      ]
      : [...outbound, ...(forwards.length > 0 ? [{ table: "filter" as const, chain: c.fwd, spec: "" }] : [])],
    // Inserted at the top: NAT must win over other tools'; the gate's own rule goes on top of FORWARD, ahead of
    // libvirt's REJECT (see renderSync). In the gate, the accepts are appended and the counters inserted, so that
    // every counter comes before the first accept, whichever domain started last.
    jumps: translate
      ? [
        jump("nat", "PREROUTING", c.dnat),
        jump("nat", "OUTPUT", c.dnat),
        jump("nat", "POSTROUTING", c.snat),
        { ...jump("filter", GATE_CHAIN, c.fwd), append: true },
        ...counting.jumps,
      ]
      : [
        ...outbound.map(() => jump("nat", "POSTROUTING", c.snat)),
        ...(forwards.length > 0 ? [{ ...jump("filter", GATE_CHAIN, c.fwd), append: true as const }] : []),
      ],
    text: { nat: dnat.join("") + snat.join(""), filter: [fwd, ...counting.lines].join("\n") },
    count: added + (translate ? forwards.length : 0) + (forwards.length === 0 ? 0 : 2) +
      snats.reduce((n, s) => n + (s.family === 4 ? 3 : 2), 0) + counting.lines.length,
  };
}

/**
 * Outbound 1:1 NAT, after the hairpin rules (pushed `into` them): the guest's new connections to anywhere but its
 * own network (and multicast and broadcast, which libvirt leaves alone too) leave from its public address. In
 * POSTROUTING our jump comes first, so this wins over libvirt's masquerade (LIBVIRT_PRT) on hosts where libvirt
 * uses iptables.
 */
function outboundLines(
  snats: Snat[],
  { chain, comment, into }: { chain: string; comment: string; into: string[] },
) {
  for (const s of snats) {
    const from = `-A ${chain} -s ${s.privateIp}/${s.family === 4 ? 32 : 128}`;
    for (const keep of s.family === 4 ? ["224.0.0.0/24", "255.255.255.255/32"] : ["ff00::/8"]) {
      into.push(from, ` -d ${keep} `, comment, " -j RETURN", "\n");
    }
    into.push(from, ` ! -d ${s.network} `, comment, ` -j SNAT --to-source ${s.publicIp}`, "\n");
  }
}

/**
 * A counting domain's chain (`chain`, see Forward.countTraffic), its rules and the jumps into it. A rule per
 * forward (a run of ports for all_ports) matches its connections by their original destination, both ways, and
 * returns; its own counters are the forward's packets and bytes. Only the connections our DNAT labelled come
 * here (the gate), the first packet too (FORWARD comes after the DNAT), and only those of the domain's guests:
 * the jumps match the guest's end of the connection both ways, so other guests' packets pass a jump that does not
 * match, never these rules. (Not `--ctreplsrc`: iptables-nft 1.8.9 saves it without its mask, and cannot delete
 * it by that text.)
 */
function countingParts(
  counted: Forward[],
  { chain, comment }: { chain: string; comment: string },
): { chains: Rule[]; jumps: Rule[]; lines: string[] } {
  if (counted.length === 0) return { chains: [], jumps: [], lines: [] };
  const lines = counted.flatMap((f) => {
    const to = f.publicIp === ANY_PUBLIC ? "" : ` --ctorigdst ${f.publicIp}/${f.family === 4 ? 32 : 128}`;
    return countedPorts(f).map(([a, b]) =>
      `-A ${chain} -p ${f.protocol} -m conntrack${to} --ctorigdstport ${a === b ? a : `${a}:${b}`} ` +
      `${comment} -j RETURN`
    );
  });
  const jumps = unique(counted.map((f) => f.privateIp)).flatMap((ip) =>
    ["-d", "-s"].map((way): Rule => ({
      table: "filter",
      chain: GATE_CHAIN,
      spec: `${way} ${ip}/${ip.includes(":") ? 128 : 32} ${comment} -j ${chain}`,
    }))
  );
  return { chains: [{ table: "filter", chain, spec: "" }], jumps, lines };
}

/**
 * The filter part of a domain's rules without its counting chain (`count`: how many rules are left): what
 * iptables' FORWARD gets where our nftables table translates, and counts (see nftDomainObjects).
 */
export function acceptOnly(rules: RuleLines, count: number): RuleLines {
  const counting = (text: string) => text.endsWith(COUNT_SUFFIX);
  return {
    chains: rules.chains.filter((c) => c.table === "filter" && !counting(c.chain)),
    jumps: rules.jumps.filter((j) => j.table === "filter" && !counting(j.spec)),
    text: {
      nat: "",
      filter: rules.text.filter.split("\n").filter((l) => !counting(l.split(" ", 2)[1] ?? "")).join("\n"),
    },
    count,
  };
}

/**
 * Where a forward's DNAT sends it. A range that keeps its ports names none (the kernel keeps the original one); one
 * shifted to other ports names them with the base they are counted from: port - publicPort + privatePort.
 */
function dnatTarget(f: Forward): string {
  const host = f.family === 4 ? f.privateIp : `[${f.privateIp}]`;
  return f.count === 1
    ? `${host}:${f.privatePort}`
    : f.privatePort === f.publicPort
    ? f.privateIp
    : `${host}:${f.privatePort}-${f.privatePort + f.count - 1}/${f.publicPort}`;
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
  const any = f.publicIp === ANY_PUBLIC;
  const pub = `${f.publicIp}${host}`;
  const priv = `${f.privateIp}${host}`;
  const proto = `-p ${f.protocol} -m ${f.protocol}`;
  // "*": every local address but loopback's, which would need route_localnet (a sysctl we never write).
  const dst = any ? ` ! -d ${f.family === 4 ? "127.0.0.0/8" : "::1/128"}` : ` -d ${pub}`;
  const local = any ? " -m addrtype --dst-type LOCAL" : "";
  const dev = f.dev === undefined ? "" : ` -i ${f.dev}`;
  const named = f.description === undefined ? "" : ` -m comment --comment "${f.description}"`;
  // The original destination pins the accept and the hairpin to this forward; "*" has none to name.
  const origDst = any ? "" : ` --ctorigdst ${pub}`;
  return {
    // A DNAT rule's text up to its ports, one per source item (see iptablesSourceMatches).
    dnat: iptablesSourceMatches(f).map((match) =>
      `-A ${c.dnat}${dst}${match}${local}${dev} ${proto} --dport `
    ),
    // The label our one accept in FORWARD knows the connection by (see CT_LABEL).
    dnatTo: ` -m connlabel --label ${CT_LABEL} --set ${comment}${named} -j DNAT --to-destination `,
    snat: `-A ${c.snat} -s ${f.hairpinFrom} -d ${priv} ${proto} --dport `,
    snatTail: ` ${comment} -j MASQUERADE`,
    translated: ` -m conntrack --ctstate DNAT${origDst} --ctorigdstport `,
  };
}

/** The built-in chains our jumps live in: FORWARD holds our gate's rule, which every domain's jump needs. */
export const JUMP_CHAINS: [string, string][] = [["nat", "PREROUTING"], ["nat", "OUTPUT"], [
  "nat",
  "POSTROUTING",
], [
  "filter",
  "FORWARD",
]];

/**
 * Renders one iptables-restore batch (for `--noflush`) that makes the domain's live rules (`current`, already
 * narrowed with liveOf) equal to `forwards` (none: the domain's rules removed): declaring our chains flushes them,
 * the live jumps are deleted by their saved text, chains no longer needed are deleted, then the new rules go in.
 * `want`, `additions`: the forwards' rules rendered already (see ruleLines). Undefined: nothing to do.
 */
export function renderSync(
  domain: string,
  current: Live,
  {
    forwards = [],
    want = ruleLines(domain, forwards),
    additions = renderAdditions(want),
    userChain = false,
    dropUser = false,
  }: {
    forwards?: Forward[];
    want?: RuleLines | undefined;
    additions?: Record<Table, string> | undefined;
    /** Whether USER_CHAIN is live already: declaring it would flush the rules of the administrator. */
    userChain?: boolean;
    /** Delete USER_CHAIN too: the last of our domains goes and it is empty (see userChainGoes). */
    dropUser?: boolean;
  } = {},
): string | undefined {
  const gate = gateChange(current.gate, {
    domain,
    wanted: want.jumps.some((j) => j.chain === GATE_CHAIN),
  });
  if (
    want.count === 0 && current.chains.length === 0 && current.rules.length === 0 && gate === undefined
  ) return undefined;
  const out: string[] = [];
  for (const table of TABLES) {
    const wanted = want.chains.filter((c) => c.table === table).map((c) => c.chain);
    const liveChains = current.chains.filter((c) => c.table === table).map((c) => c.chain);
    const foreignRules = current.rules.filter((r) => r.table === table && !chainOwner(r.chain));
    const gated = table === "filter" ? gate : undefined;
    if (
      wanted.length === 0 && liveChains.length === 0 && foreignRules.length === 0 && gated === undefined
    ) continue;
    out.push(`*${table}`);
    for (const chain of unique([...wanted, ...liveChains])) out.push(chainLine(chain));
    // Created where missing, never declared where it is: that would flush the administrator's rules (and the
    // gate's, the other domains' jumps).
    if (table === "filter" && wanted.length > 0 && !userChain) out.push(chainLine(USER_CHAIN));
    if (gated === "create") out.push(chainLine(GATE_CHAIN));
    for (const r of foreignRules) out.push(`-D ${r.chain} ${r.spec}`);
    const gateJump = current.gate?.jump;
    if ((gated === "remove" || gated === "restore") && gateJump) out.push(`-D FORWARD ${gateJump.spec}`);
    for (const chain of unique(liveChains)) if (!wanted.includes(chain)) out.push(`-X ${chain}`);
    if (gated === "remove") out.push(`-X ${GATE_CHAIN}`);
    if (table === "filter" && wanted.length === 0 && dropUser) out.push(`-X ${USER_CHAIN}`);
    // The gate's rule on top of FORWARD: ahead of libvirt's REJECT and of every other tool's rules.
    if (gated === "create" || gated === "restore") out.push(`-I FORWARD ${GATE_JUMP}`);
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
    const jumps = want.jumps.filter((r) => r.table === table).map((r) =>
      `${r.append ? "-A" : "-I"} ${r.chain} ${r.spec}`
    ).join("\n");
    const rules = want.text[table];
    out[table] = jumps === "" ? rules : rules === "" ? jumps : `${jumps}\n${rules}`;
  }
  return out;
}

/**
 * Renders a batch that puts a domain back exactly as `before` had it, whatever is live for it `now`; `userChain`:
 * whether USER_CHAIN is live now (where a removal took it, it comes back with the jumps to it).
 */
export function renderRollback(
  domain: string,
  { before, now, userChain = true }: { before: Live; now: Live; userChain?: boolean },
): string | undefined {
  const clear = renderSync(domain, now, { userChain }) ?? "";
  const out: string[] = [];
  for (const table of TABLES) {
    const chains = before.chains.filter((c) => c.table === table);
    const rules = before.rules.filter((r) => r.table === table);
    if (chains.length === 0 && rules.length === 0) continue;
    out.push(`*${table}`);
    for (const c of chains) out.push(chainLine(c.chain));
    if (!userChain && rules.some((r) => r.spec.endsWith(` -j ${USER_CHAIN}`))) {
      out.push(chainLine(USER_CHAIN));
    }
    // The gate comes back with the domain's jump in it, where the clearing took it or it was not there.
    const gate = rules.some((r) => r.chain === GATE_CHAIN) &&
      (!now.gate?.chain || gateChange(now.gate, { domain, wanted: false }) === "remove");
    if (gate) out.push(chainLine(GATE_CHAIN));
    for (const r of rules) if (chainOwner(r.chain)) out.push(`-A ${r.chain} ${r.spec}`);
    // Jumps were inserted at the top; inserting them in reverse order keeps their original relative order. The
    // accepts in our gate go at its end (see ruleLines).
    for (const r of [...rules].reverse()) {
      if (!chainOwner(r.chain)) out.push(`${accepting(r) ? "-A" : "-I"} ${r.chain} ${r.spec}`);
    }
    if (gate) out.push(`-I FORWARD ${GATE_JUMP}`);
    out.push("COMMIT");
  }
  const text = clear + (out.length ? out.join("\n") + "\n" : "");
  return text === "" ? undefined : text;
}

/** Whether a live rule is a domain's accept in our gate: its jump to the domain's FWD chain (see ruleLines). */
function accepting(r: { chain: string; spec: string }): boolean {
  return r.chain === GATE_CHAIN && r.spec.endsWith("-FWD");
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
