/** `doctor`'s findings about the host: forwarding, bridge netfilter, other firewall software and its gates. */

import {
  type FirewallState,
  type ForeignGate,
  gateKind,
  gateName,
  LIBVIRT_TABLE,
  NFT_TABLE,
  nftItems,
} from "../backends/backend.ts";
import { describeBackend } from "./live.ts";
import type { Settings } from "../config/model.ts";
import type { HookDeps } from "../hook/deps.ts";
import type { HostFacts } from "../system/host.ts";
import { fail, type Finding, note, ok } from "./doctor_findings.ts";

export function readSysctl(path: string): string | undefined {
  try {
    return Deno.readTextFileSync(path).trim();
  } catch {
    return undefined;
  }
}

/** The host's own links: forwarding, libvirt's backend, the other firewall software, and every gate. */
export function hostFindings(
  state: FirewallState,
  facts: HostFacts,
  settings: Settings,
  gates: ForeignGate[],
  chains: string[],
): Finding[] {
  const out: Finding[] = [];
  for (
    const [family, path, key] of [
      [4, "/proc/sys/net/ipv4/ip_forward", "net.ipv4.ip_forward"],
      [6, "/proc/sys/net/ipv6/conf/all/forwarding", "net.ipv6.conf.all.forwarding"],
    ] as const
  ) {
    const value = readSysctl(path);
    if (value === "1") out.push(ok(`IPv${family} forwarding is on`));
    else {
      out.push(fail(
        `IPv${family} forwarding is off (${key} = ${
          value ?? "unknown"
        }): the host forwards nothing of that family`,
        `sysctl -w ${key}=1 (and keep it in /etc/sysctl.d/)`,
      ));
    }
  }
  const backend = describeBackend(settings.backend, state);
  out.push(
    backend.startsWith("none:") ? fail(`firewall backend: ${backend}`) : ok(`firewall backend: ${backend}`),
  );
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
    const kind = gateKind(hook, settings.acceptIn, NFT_TABLE, LIBVIRT_TABLE);
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

/** Every chain of the host as `<family> <table> <chain>`, read with nft (empty where it cannot be). */
export async function allChains(deps: HookDeps): Promise<string[]> {
  if (deps.nft === undefined) return [];
  const r = await deps.runner.run([deps.nft, "-j", "list", "chains"]).catch(() => undefined);
  if (!r || r.code !== 0) return [];
  try {
    return nftItems(r.stdout).filter((i) => i.kind === "chain").map((i) =>
      `${i.v.family} ${i.v.table} ${i.v.name}`
    );
  } catch {
    return [];
  }
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
