/**
 * libvirt's iptables rules in the other iptables than the one we run: iptables-legacy selected while they are in
 * iptables-nft (nf_tables), or the reverse. Our accept would then go where no packet meets libvirt's reject
 * first, and nothing would pass it: a start refuses, saying why, and `doctor` names it.
 */

import { nftItems } from "./nft_json.ts";
import type { ApplyDeps, Elsewhere, FirewallState } from "./state.ts";

export type { Elsewhere };

/** Whether libvirt's firewall chains are nowhere we read them: neither in our iptables nor in nftables. */
export function libvirtUnseen(state: FirewallState): boolean {
  const nftables = state.nft !== undefined && Object.keys(state.nft.libvirt).length > 0;
  return !nftables && !state.ipt[4]?.libvirt && !state.ipt[6]?.libvirt;
}

/**
 * Where libvirt's iptables chains are, from what was read of the other iptables: `chains`, every chain as
 * `<family> <table> <chain>` listed with nft (iptables-nft's tables among them); `legacySave`, what
 * iptables-legacy-save printed.
 */
export function libvirtElsewhere(
  { chains = [], legacySave }: { chains?: string[]; legacySave?: string | undefined },
): Elsewhere | undefined {
  if (chains.some((c) => /^ip6? (filter|nat|mangle) LIBVIRT_/.test(c))) return "iptables-nft";
  if (legacySave !== undefined && /^:LIBVIRT_/m.test(legacySave)) return "iptables-legacy";
  return undefined;
}

/** What is wrong where libvirt's rules are in the other iptables, and the fix. */
export function elsewhereProblem(where: Elsewhere): { what: string; fix: string } {
  const ours = where === "iptables-nft" ? "iptables-legacy" : "iptables-nft (nf_tables)";
  const there = where === "iptables-nft" ? "iptables-nft (nf_tables)" : "iptables-legacy";
  const to = where === "iptables-nft" ? "nft" : "legacy";
  return {
    what: `libvirt's iptables rules are in ${there}, but the iptables this hook runs is ${ours}: our rules ` +
      "would go where libvirt's reject is not, and it drops every forward",
    fix: `update-alternatives --set iptables /usr/sbin/iptables-${to} and --set ip6tables ` +
      `/usr/sbin/ip6tables-${to} (or IPTABLES_BINARY=iptables-${to}), then qemu reload`,
  };
}

/** How long a look into the other iptables may take. */
const LOOK_MS = 5000;

/** Whether any iptables-legacy table is loaded in this network namespace (a file read, no process). */
export function legacyTablesLoaded(): boolean {
  try {
    return Deno.readTextFileSync("/proc/net/ip_tables_names").trim() !== "" ||
      Deno.readTextFileSync("/proc/net/ip6_tables_names").trim() !== "";
  } catch {
    return false;
  }
}

/**
 * `state` with `libvirtElsewhere` where libvirt's chains are in the other iptables. Only where they are nowhere
 * we read (libvirtUnseen): there, one look into the other iptables (nft's chains where we run iptables-legacy;
 * iptables-legacy-save where we run iptables-nft and a legacy table is loaded at all). Elsewhere, nothing is run.
 */
export async function readLibvirtElsewhere(
  deps: Pick<ApplyDeps, "runner" | "nft" | "iptablesNft">,
  state: FirewallState,
  { legacyLoaded = legacyTablesLoaded }: { legacyLoaded?: () => boolean } = {},
): Promise<FirewallState> {
  if (!libvirtUnseen(state) || state.ipt[4] === undefined) return state;
  let where: Elsewhere | undefined;
  if (!deps.iptablesNft && deps.nft !== undefined) {
    where = libvirtElsewhere({ chains: await listChains(deps) });
  } else if (deps.iptablesNft && legacyLoaded()) {
    const r = await deps.runner.run(["iptables-legacy-save"], { timeoutMs: LOOK_MS }).catch(() => undefined);
    where = libvirtElsewhere({ legacySave: r?.code === 0 ? r.stdout : undefined });
  }
  return where === undefined ? state : { ...state, libvirtElsewhere: where };
}

/** Every chain of the host as `<family> <table> <chain>`, read with nft (none where it cannot be). */
export async function listChains(
  deps: { runner: ApplyDeps["runner"]; nft?: string | undefined },
): Promise<string[]> {
  if (deps.nft === undefined) return [];
  const r = await deps.runner.run([deps.nft, "-j", "list", "chains"], { timeoutMs: LOOK_MS }).catch(() =>
    undefined
  );
  if (r?.code !== 0) return [];
  try {
    return nftItems(r.stdout).filter((i) => i.kind === "chain").map((i) =>
      `${i.v.family} ${i.v.table} ${i.v.name}`
    );
  } catch {
    return [];
  }
}
