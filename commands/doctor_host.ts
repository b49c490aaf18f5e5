/** `doctor`'s findings about the host: forwarding, bridge netfilter, other firewall software and its gates. */

import {
  elsewhereProblem,
  type FirewallState,
  type ForeignGate,
  gateKind,
  gateName,
  LIBVIRT_TABLE,
  NFT_TABLE,
} from "../backends/backend.ts";
import { describeBackend } from "./live.ts";
import type { Settings } from "../config/model.ts";
import type { Family } from "../system/address.ts";
import type { HostFacts } from "../system/host.ts";
import { fail, type Finding, note, ok } from "./doctor_findings.ts";

/** A sysctl's value from its file under /proc/sys, or undefined where it cannot be read. */
export function readSysctl(path: string): string | undefined {
  try {
    return Deno.readTextFileSync(path).trim();
  } catch {
    return undefined;
  }
}

/** What hostFindings() is told beside the firewall: the host, the settings, the gates and chains, and how to read. */
export interface HostFindingOptions {
  /** The host's facts (bridge netfilter per family). */
  facts: HostFacts;
  /** The config's `"/settings"`: the backend chosen and the gates handed to us (`accept_in`). */
  settings: Settings;
  /** Other software's gates whose rules were read (see foreignGates). */
  gates: ForeignGate[];
  /** Every chain of the host as `<family> <table> <chain>` (see allChains). */
  chains: string[];
  /** The address families of the forwards examined (default both): forwarding off elsewhere is a note. */
  families?: readonly Family[];
  /** Reads a sysctl's file (default: readSysctl). */
  sysctl?: (path: string) => string | undefined;
}

/**
 * The host's own links: forwarding (a failure only for a family the forwards use), libvirt's backend, the other
 * firewall software, and every gate.
 */
export function hostFindings(
  state: FirewallState,
  { facts, settings, gates, chains, families = [4, 6], sysctl = readSysctl }: HostFindingOptions,
): Finding[] {
  const out: Finding[] = [];
  for (
    const [family, path, key] of [
      [4, "/proc/sys/net/ipv4/ip_forward", "net.ipv4.ip_forward"],
      [6, "/proc/sys/net/ipv6/conf/all/forwarding", "net.ipv6.conf.all.forwarding"],
    ] as const
  ) {
    const value = sysctl(path);
    if (value === "1") out.push(ok(`IPv${family} forwarding is on`));
    else if (!families.includes(family)) {
      // Nothing examined needs it: worth knowing, not a failure (an IPv4-only config on a host without IPv6 routing).
      out.push(
        note(
          `IPv${family} forwarding is off (${key} = ${value ?? "unknown"}); no forward here is IPv${family}`,
        ),
      );
    } else {
      out.push(fail(
        `IPv${family} forwarding is off (${key} = ${
          value ?? "unknown"
        }): the host forwards nothing of that family`,
        `sysctl -w ${key}=1 (and keep it in /etc/sysctl.d/)`,
      ));
    }
  }
  // libvirt's rules in the other iptables: no backend can work, and that finding says why, with the fix.
  const mismatch = iptablesMismatch(state);
  const backend = describeBackend(settings.backend, state);
  if (mismatch) out.push(mismatch);
  else if (backend.startsWith("none:")) out.push(fail(`firewall backend: ${backend}`));
  else out.push(ok(`firewall backend: ${backend}`));
  const others = otherSoftware(state, chains);
  out.push(note(`other firewall software: ${others.length ? others.join(", ") : "none seen"}`));
  for (const family of [4, 6] as const) {
    if (facts.bridgeNetfilter[family]) {
      out.push(note(
        `bridge netfilter is on for IPv${family} (br_netfilter): bridged frames pass the firewall; guests ` +
          "reaching their own forward need hairpin mode on their tap, which start sets",
      ));
    }
  }
  for (const hook of state.nft?.hooks ?? []) {
    const kind = gateKind(hook, settings.acceptIn, { ownTable: NFT_TABLE, libvirtTable: LIBVIRT_TABLE });
    const where = `gate ${gateName(hook)} (priority ${hook.prio}, policy ${hook.policy})`;
    if (kind === "iptables") out.push(ok(`${where}: iptables' FORWARD, our accept goes into it`));
    else if (kind === "libvirt") out.push(ok(`${where}: libvirt's, our accept goes into its guest_input`));
    else if (kind === "handed") {
      out.push(ok(`${where}: handed to us (accept_in), our accepts go first in it`));
    } else if (kind === "foreign" && hook.policy === "drop") {
      const gate = gates.find((g) => gateName(g.gate) === gateName(hook));
      out.push(note(
        `${where}: not ours to open; each forward below says whether it lets it through` +
          (gate ? "" : " (its rules could not be read)"),
      ));
    }
  }
  return out;
}

/** libvirt's iptables rules in the other iptables than the one we run, as read (see backends/elsewhere.ts). */
export function iptablesMismatch(state: FirewallState): Finding | undefined {
  if (!state.libvirtElsewhere) return undefined;
  const { what, fix } = elsewhereProblem(state.libvirtElsewhere);
  return fail(what, fix);
}

/** The firewall software this host runs besides libvirt and us, as its chains and files show it. */
function otherSoftware(state: FirewallState, chains: string[]): string[] {
  const out: string[] = [];
  const tables = new Set(chains.map((c) => c.split(" ").slice(0, 2).join(" ")));
  const named = (pattern: RegExp) => chains.some((c) => pattern.test(c.split(" ")[2] ?? ""));
  if (state.nft && Object.keys(state.nft.libvirt).length > 0) out.push("libvirt (nftables backend)");
  else if (state.ipt[4]?.libvirt) out.push("libvirt (iptables backend)");
  if (tables.has("inet firewalld")) out.push("firewalld");
  if (named(/^DOCKER/)) out.push("Docker");
  if (named(/^ufw6?-/)) out.push("ufw");
  const policy = state.ipt[4]?.forward?.policy;
  if (policy !== undefined) out.push(`iptables' FORWARD (policy ${policy})`);
  const others = [...tables].filter((t) =>
    !/^(ip|ip6) (filter|nat|mangle|raw|security)$/.test(t) && t !== "inet firewalld" &&
    !t.endsWith(` ${LIBVIRT_TABLE}`) && t !== `inet ${NFT_TABLE}`
  );
  for (const t of others) out.push(`nftables table ${t}`);
  try {
    // Debian's nftables service loads it at boot where it is enabled.
    Deno.statSync("/etc/systemd/system/sysinit.target.wants/nftables.service");
    out.push("/etc/nftables.conf (loaded at boot)");
  } catch {
    // Not loaded at boot.
  }
  return out;
}
