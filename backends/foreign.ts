/** The gates of other software (firewalld, Docker, an administrator's table) that our forwards pass through. */

import { type BaseChain, type ForeignGate, forwardHooks, gateKind, gateName } from "./gates.ts";
import { parseInteractive } from "./iptables_live.ts";
import { LIBVIRT_TABLE, NFT_TABLE } from "./names.ts";
import { addNftItems } from "./nftables_live.ts";
import { nftItems } from "./nft_json.ts";
import type { ApplyDeps, FirewallState } from "./state.ts";
import { ApplyError } from "./state.ts";
import { batchFailure } from "../system/runner.ts";

/** Our nftables table and libvirt's, as gateKind() tells the gates apart by them. */
const TABLES = { ownTable: NFT_TABLE, libvirtTable: LIBVIRT_TABLE };

/**
 * Adds to what was read the rules of every gate at the forward hook that is neither libvirt's, iptables', ours nor
 * handed to us already: a chain the settings no longer hand us may still hold an accept of ours, which goes with
 * its domain whatever the config says now. One more nft process, only on hosts with such gates.
 */
export async function readOtherGates(deps: ApplyDeps, state: FirewallState): Promise<FirewallState> {
  const nft = state.nft;
  if (!nft || deps.nft === undefined) return state;
  const others = nft.hooks.map(gateName).filter((g) =>
    !(g in nft.handed) &&
    gateKind(nft.hooks.find((h) => gateName(h) === g)!, [], TABLES) === "foreign"
  );
  if (others.length === 0) return state;
  const result = await deps.runner.run([deps.nft, "-j", "-i"], {
    stdin: others.map((g) => `list chain ${g}`).join("\n") + "\n",
    env: { HOME: "/dev/null" },
  });
  const answered = parseInteractive(result.stdout, result.stderr);
  // A chain gone since `list chains` is simply not there; any other failure leaves the read unsure.
  if (!answered) throw new ApplyError(batchFailure("nft", result));
  const handed = { ...nft.handed };
  const live = { ...nft, handed };
  for (const doc of answered.docs) addNftItems(nftItems(doc), live, others);
  return { ...state, nft: live };
}

/**
 * The gates no one opens for us (another program's or an administrator's base chains at the forward hook), with
 * their tables' rules; `hooks`: the base chains read already (every read lists them), else they are listed here.
 * No process at all where there are none: the common case.
 */
export async function foreignGates(deps: ApplyDeps, hooks?: BaseChain[]): Promise<ForeignGate[]> {
  if (deps.nft === undefined) return [];
  if (hooks === undefined) {
    const listed = await deps.runner.run([deps.nft, "-j", "list", "chains"]);
    if (listed.code !== 0) return [];
    hooks = forwardHooks(nftItems(listed.stdout));
  }
  const foreign = hooks.filter((h) => gateKind(h, deps.acceptIn ?? [], TABLES) === "foreign");
  if (foreign.length === 0) return [];
  const tables = [...new Set(foreign.map((g) => `${g.family} ${g.table}`))];
  const result = await deps.runner.run([deps.nft, "-j", "-i"], {
    stdin: tables.map((t) => `list table ${t}`).join("\n") + "\n",
    env: { HOME: "/dev/null" },
  });
  const answered = parseInteractive(result.stdout, result.stderr);
  const items = (answered?.docs ?? []).flatMap((doc) => {
    try {
      return nftItems(doc);
    } catch {
      return [];
    }
  });
  return foreign.map((gate) => ({
    gate,
    items: items.filter((i) =>
      i.v.family === gate.family && (i.v.table === gate.table || i.v.name === gate.table)
    ),
  }));
}
