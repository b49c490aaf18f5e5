/**
 * Gates: the base chains at the forward hook that every forwarded connection must pass (nftables runs each of them,
 * whatever table it is in; an accept ends only its own), and whether one would drop a forward of ours.
 */

import type { NftItem } from "./nft_json.ts";
import { type Family, networkOf, parseAddress } from "../system/address.ts";

/** A base chain at the forward hook. */
export interface BaseChain {
  family: string;
  table: string;
  chain: string;
  prio: number;
  policy: string;
}

/**
 * Who opens a gate for our forwards: iptables' own FORWARD (our accept goes in with iptables-restore, on either
 * backend), libvirt's nftables forward chain (our accept in its guest_input), a chain the administrator handed us
 * (`accept_in`), our own table, or nobody: another program's or an administrator's, never changed unasked.
 */
export type GateKind = "iptables" | "libvirt" | "handed" | "ours" | "foreign";

/** The name a gate goes by in messages and in the `accept_in` setting: `<family> <table> <chain>`. */
export function gateName(c: Pick<BaseChain, "family" | "table" | "chain">): string {
  return `${c.family} ${c.table} ${c.chain}`;
}

/** The base chains at the forward hook among `list chains` objects. */
export function forwardHooks(items: NftItem[]): BaseChain[] {
  return items.flatMap(({ kind, v }) =>
    kind === "chain" && v.hook === "forward"
      ? [{
        family: String(v.family),
        table: String(v.table),
        chain: String(v.name),
        prio: Number(v.prio ?? 0),
        policy: String(v.policy ?? "accept"),
      }]
      : []
  );
}

/**
 * Who opens a gate (see GateKind); `handed`: the chains named in the `accept_in` setting; `ownTable`, `libvirtTable`:
 * the nftables tables that are ours and libvirt's.
 */
export function gateKind(
  c: BaseChain,
  handed: readonly string[],
  { ownTable, libvirtTable }: { ownTable: string; libvirtTable: string },
): GateKind {
  if (handed.includes(gateName(c))) return "handed";
  if ((c.family === "ip" || c.family === "ip6") && c.table === "filter" && c.chain === "FORWARD") {
    return "iptables";
  }
  if ((c.family === "ip" || c.family === "ip6") && c.table === libvirtTable) return "libvirt";
  if (c.family === "inet" && c.table === ownTable) return "ours";
  return "foreign";
}

/** The first packet of a forwarded connection, as the forward hook sees it (after our DNAT). */
export interface Packet {
  family: Family;
  protocol: string;
  /** The guest's address and port. */
  daddr: string;
  dport: number;
  /** The bridge it leaves through, where known. */
  oif?: string;
}

/** What a gate does to a packet: lets it through, drops it, or cannot be told without knowing more. */
export type Passage =
  | { verdict: "accept" }
  | { verdict: "drop"; why: string }
  | { verdict: "maybe"; why: string };

type Expr = Record<string, unknown>;

type Rule = { handle: number; expr: Expr[] };

type Tri = boolean | undefined;

/**
 * Follows a packet through a base chain of one table (`items`: `nft -j list table` of it), rule by rule, into the
 * chains it jumps to. A rule whose matches can all be told (ct status and state, interfaces out, protocol,
 * destination address and port, family) decides; one that cannot be told is passed over, and a drop met after such
 * a rule is only a "maybe". The policy decides at the end.
 */
export function passage(items: NftItem[], gate: BaseChain, packet: Packet): Passage {
  const chains = new Map<string, Rule[]>();
  for (const { kind, v } of items) {
    if (kind !== "rule" || v.family !== gate.family || v.table !== gate.table) continue;
    const list = chains.get(String(v.chain)) ?? [];
    list.push({ handle: Number(v.handle), expr: (v.expr ?? []) as Expr[] });
    chains.set(String(v.chain), list);
  }
  let unsure: string | undefined;
  const where = (chain: string, r: Rule) => `${gateName({ ...gate, chain })} handle ${r.handle}`;
  // The verdict of one chain: accept, drop, or "return" (fall back to the caller); depth-bounded against loops.
  const walk = (chain: string, depth: number): Passage | "return" => {
    if (depth > 16) {
      return { verdict: "maybe", why: `${gateName({ ...gate, chain })}: chains nested too deep` };
    }
    for (const r of chains.get(chain) ?? []) {
      const matched = matches(r.expr, gate.family, packet);
      if (matched === false) continue;
      const verdict = verdictOf(r.expr);
      if (verdict === undefined) continue;
      if (matched === undefined) {
        // Whether this rule applies cannot be told: an accept is not counted on, a drop makes it a maybe.
        if (verdict.kind === "drop") unsure ??= `${where(chain, r)} may drop it`;
        else if (verdict.kind === "accept") unsure ??= `${where(chain, r)} may or may not accept it`;
        continue;
      }
      if (verdict.kind === "accept") return { verdict: "accept" };
      if (verdict.kind === "drop") return decide(`${where(chain, r)} drops it`);
      if (verdict.kind === "return") return "return";
      if (verdict.kind !== "jump" && verdict.kind !== "goto") continue;
      const inner = walk(verdict.target, depth + 1);
      if (inner !== "return") return inner;
      if (verdict.kind === "goto") return "return";
    }
    return "return";
  };
  const decide = (why: string): Passage =>
    unsure ? { verdict: "maybe", why: `${why}, unless ${unsure}` } : { verdict: "drop", why };
  const result = walk(gate.chain, 0);
  if (result !== "return") return result;
  if (gate.policy === "drop") return decide(`${gateName(gate)} has policy drop`);
  return { verdict: "accept" };
}

type Verdict = { kind: "accept" | "drop" | "return" } | { kind: "jump" | "goto"; target: string };

function verdictOf(expr: Expr[]): Verdict | undefined {
  for (const e of expr) {
    if ("accept" in e) return { kind: "accept" };
    if ("drop" in e || "reject" in e) return { kind: "drop" };
    if ("return" in e) return { kind: "return" };
    const jump = (e.jump ?? e.goto) as { target?: string } | undefined;
    if (jump?.target) return { kind: "jump" in e ? "jump" : "goto", target: jump.target };
  }
  return undefined;
}

/** Whether every match of a rule holds for the packet: true, false, or undefined where one cannot be told. */
function matches(expr: Expr[], tableFamily: string, packet: Packet): Tri {
  let all: Tri = true;
  for (const e of expr) {
    let one: Tri;
    if ("match" in e) {
      const m = e.match as { op?: string; left?: Expr; right?: unknown };
      const protocol = (m.left?.payload as { protocol?: string } | undefined)?.protocol;
      // An ip match holds only for IPv4 packets, ip6 for IPv6, negated or not (nft checks the family first).
      if ((protocol === "ip" || protocol === "ip6") && (protocol === "ip") !== (packet.family === 4)) {
        one = tableFamily === "inet" ? false : undefined;
      } else {
        one = matchOne(m.left ?? {}, m.right, packet);
        if (one !== undefined && m.op === "!=") one = !one;
      }
    } else if ("limit" in e || "quota" in e) one = undefined;
    else continue;
    if (one === false) return false;
    if (one === undefined) all = undefined;
  }
  return all;
}

function matchOne(left: Expr, right: unknown, p: Packet): Tri {
  const values = (r: unknown): unknown[] =>
    typeof r === "object" && r !== null && "set" in r
      ? (r as { set: unknown[] }).set
      : Array.isArray(r)
      ? r
      : [r];
  const ct = left.ct as { key?: string; dir?: string } | undefined;
  if (ct && ct.dir === undefined) {
    // The first packet of a connection our DNAT made: state new, status dnat.
    if (ct.key === "status") return values(right).includes("dnat");
    if (ct.key === "state") return values(right).includes("new");
    return undefined;
  }
  const meta = (left.meta as { key?: string } | undefined)?.key;
  if (meta === "oifname") {
    if (p.oif === undefined) return undefined;
    return values(right).some((v) => typeof v === "string" && nameMatches(v, p.oif!));
  }
  if (meta === "l4proto") return values(right).includes(p.protocol);
  if (meta === "nfproto") return values(right).includes(p.family === 4 ? "ipv4" : "ipv6");
  const payload = left.payload as { protocol?: string; field?: string } | undefined;
  if (payload) {
    const { protocol, field } = payload;
    if (protocol === "ip" || protocol === "ip6") {
      if (field === "daddr") return addressIn(p.daddr, values(right));
      if (field === "protocol" || field === "nexthdr") return values(right).includes(p.protocol);
      return undefined;
    }
    if (protocol === "tcp" || protocol === "udp" || protocol === "th") {
      if (protocol !== "th" && protocol !== p.protocol) return false;
      if (field === "dport") return portIn(p.dport, values(right));
      return undefined;
    }
  }
  return undefined;
}

/** nftables' interface names: exact, or a prefix with `*` at the end. */
function nameMatches(pattern: string, name: string): boolean {
  return pattern.endsWith("*") ? name.startsWith(pattern.slice(0, -1)) : pattern === name;
}

function addressIn(address: string, values: unknown[]): Tri {
  const a = parseAddress(address);
  if (!a) return undefined;
  for (const v of values) {
    if (typeof v === "string") {
      if (parseAddress(v)?.text === a.text) return true;
      continue;
    }
    const prefix = (v as { prefix?: { addr: string; len: number } }).prefix;
    const net = prefix && parseAddress(prefix.addr);
    if (
      net && net.family === a.family && networkOf(a, prefix.len).value === networkOf(net, prefix.len).value
    ) {
      return true;
    }
    if (!prefix) return undefined;
  }
  return false;
}

function portIn(port: number, values: unknown[]): Tri {
  for (const v of values) {
    if (typeof v === "number") {
      if (v === port) return true;
      continue;
    }
    const range = (v as { range?: [number, number] }).range;
    if (!range) return undefined;
    if (port >= range[0] && port <= range[1]) return true;
  }
  return false;
}

/** The one nft command an administrator can add to let our forwards (every DNATed connection) through a gate. */
export function openingLine(gate: BaseChain): string {
  return `nft insert rule ${gateName(gate)} ct status dnat accept`;
}

/** A gate no one opens for us, with the rules of its table (`nft -j list table`). */
export interface ForeignGate {
  gate: BaseChain;
  items: NftItem[];
}

/** What stops one forwarded connection: each gate that drops it, or may. */
export interface Blocker {
  gate: BaseChain;
  passage: Exclude<Passage, { verdict: "accept" }>;
}

/** The gates among `gates` that drop (or may drop) a connection shaped like `packet`. */
export function blockers(gates: ForeignGate[], packet: Packet): Blocker[] {
  const out: Blocker[] = [];
  for (const { gate, items } of gates) {
    const p = passage(items, gate, packet);
    if (p.verdict !== "accept") out.push({ gate, passage: p });
  }
  return out;
}

/** How status marks a forward a gate stops: `blocked by <family> <table> <chain>` (or `may be`). */
export function blockedNote(b: Blocker): string {
  return `${b.passage.verdict === "drop" ? "blocked" : "may be blocked"} by ${gateName(b.gate)}`;
}

/** One line about a gate that stops a forward: where it is, why, and the line that would let it through. */
export function describeBlocker(b: Blocker): string {
  return `${blockedNote(b)} (priority ${b.gate.prio}): ${b.passage.why}; let it through with ` +
    `"${openingLine(b.gate)}", or hand us the chain: "/settings": {"accept_in": ["${gateName(b.gate)}"]}`;
}
