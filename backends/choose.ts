/** Chooses the backend for our rules, or says why the configured one cannot work on this host. */

import type { Tools } from "./iptables.ts";
import { type ApplyDeps, FAMILIES, type FirewallState } from "./state.ts";
import { ApplyError } from "./state.ts";
import { elsewhereProblem } from "./elsewhere.ts";
import type { Family } from "../system/address.ts";
import { LIBVIRT_NETWORK_CONF } from "../system/libvirt.ts";

/** The firewall backend in use for our own rules. */
export type Backend = "iptables" | "nftables";

/**
 * Whether both iptables programs drive nf_tables: each resolves (through PATH and the alternatives' symlinks) to
 * xtables-nft-multi or iptables-nft. Anything else (legacy, not found, unknown) reads with iptables-save.
 */
export function drivesNfTables(tools: Record<Family, Tools>, path: string | undefined): boolean {
  return FAMILIES.every((family) => {
    const program = tools[family].list[0] ?? "";
    const candidates = program.includes("/")
      ? [program]
      : (path || "/usr/sbin:/usr/bin:/sbin:/bin").split(":").map((dir) => `${dir}/${program}`);
    for (const candidate of candidates) {
      try {
        const real = Deno.realPathSync(candidate);
        const base = real.slice(real.lastIndexOf("/") + 1);
        return /nft/.test(base) && !/legacy/.test(base);
      } catch {
        // Not in this directory.
      }
    }
    return false;
  });
}

/** Whether libvirt runs its iptables backend here: its chains are in iptables. */
function libvirtUsesIptables(state: FirewallState): boolean {
  return state.ipt[4]?.libvirt === true || state.ipt[6]?.libvirt === true;
}

/**
 * Why a forward could not work here because a program of ours is missing where libvirt's backend needs it, if so:
 * our accept must go where libvirt rejects (its nftables chain, or ahead of LIBVIRT_FWI in iptables).
 */
function missingProgram(state: FirewallState): string | undefined {
  const says = (backend: string) => [
    ...(state.libvirtSetting === backend
      ? [`firewall_backend = "${backend}" in ${LIBVIRT_NETWORK_CONF}`]
      : []),
    ...(state.libvirtBackends?.includes(backend) ? [`its running networks use ${backend}`] : []),
  ];
  const nftables = says("nftables");
  if (state.nftMissing && nftables.length > 0) {
    return `libvirt uses nftables here (${
      nftables.join("; ")
    }), but nft is not installed or not on PATH: our ` +
      "accept cannot go into libvirt's guest_input chain, whose reject would drop every forward; install nftables";
  }
  const iptables = says("iptables");
  if (state.ipt[4] === undefined && iptables.length > 0) {
    return `libvirt uses iptables here (${
      iptables.join("; ")
    }), but iptables-save is not installed or not on ` +
      "PATH: our accept cannot go ahead of LIBVIRT_FWI's reject; install iptables";
  }
  return undefined;
}

/** Chooses the backend for our rules, or explains why the configured one cannot work here. */
export function chooseBackend(setting: ApplyDeps["backend"], state: FirewallState): Backend {
  const missing = missingProgram(state);
  if (missing) throw new ApplyError(missing);
  if (state.libvirtElsewhere) {
    const { what, fix } = elsewhereProblem(state.libvirtElsewhere);
    throw new ApplyError(`${what}; nothing was changed. Fix: ${fix}`);
  }
  // What is live decides first; libvirt's own setting counts while none of its networks runs yet.
  const libvirtNft = state.nft !== undefined &&
    (Object.keys(state.nft.libvirt).length > 0 ||
      (state.libvirtSetting === "nftables" && !libvirtUsesIptables(state)));
  if (setting === "nftables" || (setting !== "iptables" && libvirtNft)) {
    if (!state.nft) throw new ApplyError("the nftables backend needs nft, which is not installed");
    if (libvirtUsesIptables(state)) {
      throw new ApplyError(
        "libvirt uses its iptables backend here: an accept in our nftables table cannot get past LIBVIRT_FWI's " +
          'REJECT; set "backend" to "iptables" or "auto"',
      );
    }
    return "nftables";
  }
  if (state.ipt[4] === undefined && state.nft !== undefined && setting !== "iptables") return "nftables";
  return "iptables";
}
