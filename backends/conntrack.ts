/** The kernel's NAT decisions of forwards that went or changed target: which to forget, and forgetting them. */

import type { Forward, LiveForward } from "./forward.ts";
import { asLiveForward } from "./forward.ts";
import { liveForwards, liveOf } from "./iptables_live.ts";
import { domainHash } from "./names.ts";
import type { NftLive } from "./nftables_live.ts";
import { nftLiveForwards } from "./nftables_live.ts";
import type { FirewallState } from "./state.ts";
import type { Family } from "../system/address.ts";
import { oneLine, type Runner } from "../system/runner.ts";

/**
 * Most `conntrack -D` lines for the single ports of forwards that share their public and private address with a
 * forward that stays. Every line is a dump of the whole table in the kernel (~2 ms each, measured with an empty
 * table: the cost is the hash table's size), so beyond this a group's line without ports is used (see
 * forgetLines).
 */
export const MAX_PORT_LINES = 64;

/** How long `conntrack -R` may take: a line per group of forwards, ~2 ms each. */
export const CONNTRACK_TIMEOUT_MS = 10_000;

/** The forwards of one domain, as read back from what is live in `state` (both backends, both families). */
export function domainForwards(state: FirewallState, domain: string): LiveForward[] {
  const out: LiveForward[] = [];
  for (const family of [4, 6] as const) {
    const live = state.ipt[family];
    if (live) out.push(...liveForwards(liveOf(live, domain), family));
  }
  if (state.nft) out.push(...nftLiveForwards(ofDomain(state.nft, domain)));
  return out.filter((f) => !f.outbound && (f.protocol === "tcp" || f.protocol === "udp"));
}

/** Only one domain's maps and rules of our nftables table (its objects are named `d<hash>-...`). */
function ofDomain(live: NftLive, domain: string): NftLive {
  const mine = `d${domainHash(domain)}-`;
  return {
    ...live,
    maps: live.maps.filter((m) => m.name.startsWith(mine)),
    rules: live.rules.filter((r) => r.chain.startsWith(mine)),
  };
}

/** A forward's DNAT as a connection's tuples show it: the public address and port(s), and where they went. */
interface Target {
  family: Family;
  protocol: string;
  publicIp: string;
  privateIp: string;
  /** First and last public port, and the private port the first went to. */
  first: number;
  last: number;
  privateFirst: number;
}

function targetOf(f: LiveForward): Target {
  const [first = 0, last = first] = f.publicPorts.split("-").map(Number);
  const [privateFirst = first] = f.privatePorts.split("-").map(Number);
  return {
    family: f.family,
    protocol: f.protocol,
    publicIp: f.publicIp,
    privateIp: f.privateIp,
    first,
    last,
    privateFirst,
  };
}

/** The text a forward compares by: what its flows are DNATed to, not who may use it (a source changes no target). */
function targetKey(t: Target): string {
  return `${t.family} ${t.protocol} ${t.publicIp} ${t.first}-${t.last} ${t.privateIp} ${t.privateFirst}`;
}

/** The group a line without ports deletes: every flow from this public address DNATed to this private one. */
function groupKey(t: Pick<Target, "family" | "protocol" | "publicIp" | "privateIp">): string {
  return `${t.family} ${t.protocol} ${t.publicIp} ${t.privateIp}`;
}

/**
 * The `conntrack -D` lines (for `conntrack -R -`) that delete the flows of the live forwards (`before`) that go or
 * change target in `after`: those whose original destination is the forward's public address (and port) and whose
 * reply comes from its old private address. The host's own connections to the public address are never matched:
 * their replies come from the public address itself. A group of forwards from one public to one private address
 * gets one line without ports, unless a forward of `after` has the same two addresses (its flows must stay): then
 * one line per port, with its private port (at most MAX_PORT_LINES in all, beyond which the group's line is used).
 * For a forward that moved (its public port taken by a forward of `after`) and keeps the port number, the old
 * guest's own connections from that port masqueraded to the public address and port go too (at most
 * MAX_PORT_LINES of those lines): they would take the client's packets back to it.
 */
export function forgetLines(before: LiveForward[], after: Forward[], domain = ""): string[] {
  const wanted = after.map((f) => targetOf(asLiveForward(domain, f)));
  const stay = new Set(wanted.map(targetKey));
  const shared = new Set(wanted.map(groupKey));
  const gone = new Map<string, Target[]>();
  const seen = new Set<string>();
  for (const f of before) {
    if (f.outbound || (f.protocol !== "tcp" && f.protocol !== "udp")) continue;
    const t = targetOf(f);
    const key = targetKey(t);
    if (stay.has(key) || seen.has(key)) continue;
    seen.add(key);
    const g = groupKey(t);
    gone.set(g, [...gone.get(g) ?? [], t]);
  }
  const lines: string[] = [];
  let portLines = 0;
  const reverse: string[] = [];
  // Public ports that a forward of `after` still takes: those of a forward that moved to another target.
  const stillPublic = (t: Target, p: number) =>
    wanted.some((w) =>
      w.family === t.family && w.protocol === t.protocol && w.publicIp === t.publicIp && w.first <= p &&
      p <= w.last
    );
  for (const targets of gone.values()) {
    for (const t of targets) {
      for (let p = t.first; p <= t.last && reverse.length < MAX_PORT_LINES; p++) {
        // Where the public port is the private one, a packet the old guest sends after its entry is gone (a
        // late reply, a keepalive) starts a connection of its own that libvirt masquerades to the public
        // address with its port kept: the client's next packets are that connection's replies, and go to the
        // old guest again. Deleted after the rest, so that a reply in flight meanwhile is caught too.
        if (t.privateFirst + p - t.first !== p || !stillPublic(t, p)) continue;
        if (t.publicIp === "*") continue;
        reverse.push(
          `-D -f ipv${t.family} -p ${t.protocol} --orig-src ${t.privateIp} --orig-port-src ${p} ` +
            `--reply-dst ${t.publicIp} --reply-port-dst ${p}`,
        );
      }
    }
  }
  for (const [g, targets] of gone) {
    const head = lineHead(targets[0]!);
    const ports = targets.reduce((n, t) => n + t.last - t.first + 1, 0);
    if (!shared.has(g) || portLines + ports > MAX_PORT_LINES) {
      lines.push(head);
      continue;
    }
    portLines += ports;
    for (const t of targets) {
      for (let p = t.first; p <= t.last; p++) {
        lines.push(`${head} --orig-port-dst ${p} --reply-port-src ${t.privateFirst + p - t.first}`);
      }
    }
  }
  return [...lines, ...reverse];
}

function lineHead(t: Target): string {
  // "*": the flows of any local address that were translated to the guest (`--dst-nat`).
  const to = t.publicIp === "*" ? "--dst-nat" : `--orig-dst ${t.publicIp}`;
  return `-D -f ipv${t.family} -p ${t.protocol} ${to} --reply-src ${t.privateIp}`;
}

/**
 * How many connections the kernel tracks in this network namespace (a read of /proc, ~0.02 ms); 0 where
 * connection tracking is not loaded, so no NAT can have happened either.
 */
export function trackedConnections(): number {
  try {
    return Number(Deno.readTextFileSync("/proc/sys/net/netfilter/nf_conntrack_count").trim()) || 0;
  } catch (err) {
    // Not loaded: no connection tracked. Unreadable otherwise: assume there are some.
    return err instanceof Deno.errors.NotFound ? 0 : Number.POSITIVE_INFINITY;
  }
}

/** What forgetting did: how many flows were deleted, or why it could not. */
export type Forgotten =
  | { deleted: number }
  | { missing: true }
  | { error: string };

/**
 * Deletes the flows `lines` name (see forgetLines) with one `conntrack -R -` process, whatever their number; none
 * when there are no lines. `conntrack` prints each deleted flow on stdout.
 */
export async function forget(
  runner: Runner,
  { conntrack, lines }: { conntrack: string; lines: string[] },
): Promise<Forgotten> {
  if (lines.length === 0) return { deleted: 0 };
  const result = await runner.run([conntrack, "-R", "-"], {
    stdin: lines.join("\n") + "\n",
    timeoutMs: CONNTRACK_TIMEOUT_MS,
  });
  if (result.code === 127) return { missing: true };
  if (result.code !== 0) {
    return { error: `${conntrack} failed: ${oneLine(result.stderr) || `exit ${result.code}`}` };
  }
  return { deleted: result.stdout.split("\n").filter((l) => l.trim() !== "").length };
}
