/** The iptables backend behind the one interface (backends/backend.ts): a domain's part of iptables' chains. */

import type { Change, Desired, FirewallBackend } from "./backend.ts";
import type { Batch } from "./batch.ts";
import { createdBy, recordCreated } from "./created.ts";
import { renderRollback, renderSync } from "./iptables.ts";
import type { Forward, LiveForward } from "./forward.ts";
import { gateChange, type Live, liveForwards, liveOf, parseSave, userChainGoes } from "./iptables_live.ts";
import { type ApplyDeps, ApplyError, FAMILIES, type FirewallState } from "./state.ts";
import type { Family } from "../system/address.ts";
import { CommandError } from "../system/runner.ts";
import { domainHash, GATE_CHAIN } from "./names.ts";
import { readMembers } from "../system/sets.ts";
import { ipsetRestore, setsUsed } from "./sources.ts";

/**
 * One iptables-restore batch per family that changes, each undone from what is live where a later batch fails. A
 * family's batch declares the domain's chains (which flushes them), deletes its jumps, and adds what is wanted.
 */
export const iptablesBackend: FirewallBackend = {
  name: "iptables",
  batches(desired: Desired, state: FirewallState, deps: ApplyDeps): { batches: Batch[]; changes: Change[] } {
    const { domain } = desired;
    const batches: Batch[] = [];
    const changes: Change[] = [];
    const created: string[] = [];
    for (const family of FAMILIES) {
      const all = state.ipt[family];
      const part = desired.iptables[family];
      if (!all) {
        if (part.forwards.length > 0 || part.snat) {
          throw new ApplyError(`${deps.tools[family].save[0]} is not installed`);
        }
        continue;
      }
      const mine = liveOf(all, domain);
      const text = renderSync(domain, mine, {
        forwards: part.forwards,
        want: part.rules,
        additions: part.additions,
        // Not read (a partial read that listed no chain of the filter table): assumed there, never flushed.
        userChain: all.user ?? true,
        dropUser: part.forwards.length === 0 && userChainGoes(all, domain),
      });
      if (text === undefined) continue;
      const restore = deps.tools[family].restore;
      batches.push({
        argv: restore,
        stdin: text,
        name: restore[0]!,
        label: `IPv${family}`,
        // Only what was read whole can be put back: a partial read knows a family exactly only when the domain
        // had no chains there. A removal is not undone where it is not known exactly (see syncDomain).
        ...(!state.scope || mine.chains.length === 0
          ? { undo: () => undoFamily(domain, deps, { family, before: mine }) }
          : {}),
      });
      // Our gate's rule in FORWARD counts where this batch writes or deletes it (see gateChange).
      const gate = gateChange(mine.gate, {
        domain,
        wanted: part.rules.jumps.some((j) => j.chain === GATE_CHAIN),
      });
      changes.push({
        target: family === 4 ? "iptables" : "ip6tables",
        removed: state.scope && mine.chains.length > 0
          ? undefined
          : mine.rules.length + (gate === "remove" || gate === "restore" ? 1 : 0),
        added: part.rules.count + part.rules.jumps.length + (gate === "create" || gate === "restore" ? 1 : 0),
      });
      if (state.scope) created.push(...createdBy(part.rules, family, all));
    }
    // The ipsets its forwards match, as their members are stored: before the rules that name them.
    const sets = setsUsed(FAMILIES.flatMap((family) => desired.iptables[family].forwards));
    if (sets.length > 0 && batches.length > 0) {
      const ipset = deps.ipset ?? "ipset";
      batches.unshift({
        argv: [ipset, "restore"],
        stdin: ipsetRestore(sets, deps.setMembers ?? readMembers),
        name: ipset,
      });
    }
    // What the batches created (a table, a built-in chain) is recorded once they are all in.
    const last = batches.at(-1), hintDir = deps.hintDir;
    if (last && hintDir !== undefined && created.length > 0) {
      last.committed = () => recordCreated(hintDir, created);
    }
    return { batches, changes };
  },
  forwards(state: FirewallState): Map<string, LiveForward[]> {
    const out = new Map<string, LiveForward[]>();
    for (const family of FAMILIES) {
      const live = state.ipt[family];
      if (!live) continue;
      // A domain with rules but no DNAT rule left (a half-removed state) still shows up, with no forward.
      for (const r of live.rules) if (r.domain !== undefined && !out.has(r.domain)) out.set(r.domain, []);
      for (const f of liveForwards(live, family)) {
        const list = out.get(f.domain);
        if (list) list.push(f);
        else out.set(f.domain, [f]);
      }
    }
    return out;
  },
  misplaced(state: FirewallState, domain: string, forwards: Forward[]): boolean {
    // iptables' FORWARD appeared since (Docker or ufw started) without our accept in it, or another tool put its
    // rules ahead of our jumps (libvirt and firewalld insert theirs at the top when they reload).
    return FAMILIES.some((family) => {
      const live = state.ipt[family];
      if (!live || !forwards.some((f) => f.family === family)) return false;
      const mine = liveOf(live, domain);
      if (mine.rules.some((r) => r.buried)) return true;
      // Our gate: its rule below another's or gone from a FORWARD that is there, or the domain's jump gone from it.
      const gate = live.gate;
      if (live.forward === undefined || gate === undefined) return false;
      if (gate.jump === null || gate.jump?.buried) return true;
      return gate.owners !== undefined && !gate.owners.includes(domainHash(domain));
    });
  },
};

/** The batch that puts one family of a domain back as `before` had it, from what is live now (see renderRollback). */
async function undoFamily(
  domain: string,
  deps: ApplyDeps,
  { family, before }: { family: Family; before: Live },
): Promise<Batch | undefined> {
  const save = await deps.runner.run(deps.tools[family].save);
  if (save.code !== 0) throw new CommandError(deps.tools[family].save, save);
  const live = parseSave(save.stdout);
  const text = renderRollback(domain, { before, now: liveOf(live, domain), userChain: live.user ?? true });
  if (text === undefined) return undefined;
  const restore = deps.tools[family].restore;
  return { argv: restore, stdin: text, name: restore[0]! };
}
