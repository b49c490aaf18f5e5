/** `plan`: the rules a domain's start would write, without writing them. */

import { type Backend, chooseBackend } from "../backends/choose.ts";
import { renderSync, ruleLines } from "../backends/iptables.ts";
import {
  bridgesOf,
  libvirtAccepts,
  nftBase,
  nftDomainObjects,
  nftSnatObjects,
} from "../backends/nftables.ts";
import { emptyChains, readFirewall } from "./live.ts";
import { domainConfig } from "../config.ts";
import { formatDiagnostic } from "../config/model.ts";
import type { HookDeps } from "../hook/deps.ts";
import { loadFor } from "../hook/domain.ts";
import { planForwards } from "../rules.ts";
import { message } from "../system/report.ts";

export async function plan(domain: string, deps: HookDeps): Promise<number> {
  const { config, facts } = await loadFor({ ...deps, problem: () => {} });
  const found = domainConfig(config, domain);
  if (found.kind === "invalid") {
    for (const d of found.errors) deps.problem(formatDiagnostic(d));
    return 1;
  }
  if (found.kind === "absent") {
    deps.problem(`"${domain}" is not in ${config.file} nor in its hooks.d/: start installs nothing for it`);
    return 0;
  }
  const { forwards, snats, problems } = planForwards(found.entries, facts);
  for (const p of problems) deps.problem(`${config.file}: ${p}`);
  if (problems.length > 0) return 1;
  const firewall = await readFirewall(deps, config);
  let backend: Backend = config.settings.backend === "nftables" ? "nftables" : "iptables";
  if ("error" in firewall) {
    deps.problem(`Cannot read the firewall (${firewall.error}): showing the ${backend} backend`);
  } else {
    try {
      backend = chooseBackend(config.settings.backend, firewall);
    } catch (err) {
      deps.problem(`Cannot apply forwards for "${domain}": ${message(err)}`);
      return 1;
    }
  }
  if (backend === "nftables") {
    const bridges = bridgesOf(forwards, facts.connected);
    const libvirt = "error" in firewall || !firewall.nft
      ? []
      : libvirtAccepts({ ...firewall.nft, libvirt: emptyChains(firewall.nft) }, new Map([[domain, bridges]]));
    const commands = [...nftBase(), ...nftDomainObjects(domain, forwards, bridges, { snats }), ...libvirt];
    console.log(`# nft -f -: ${commands.length} command(s) for "${domain}"`);
    console.log(commands.join("\n"));
    return 0;
  }
  // Outbound NAT goes where libvirt's masquerade is (see syncState): nftables where libvirt uses it.
  const snatNft = snats.length > 0 && !("error" in firewall) &&
    (firewall.nft?.libvirt[4] !== undefined || firewall.nft?.libvirt[6] !== undefined);
  for (const family of [4, 6] as const) {
    const mine = forwards.filter((f) => f.family === family);
    const out = snatNft ? [] : snats.filter((s) => s.family === family);
    if (mine.length === 0 && out.length === 0) continue;
    const want = ruleLines(domain, mine, { snats: out });
    console.log(
      `# ${family === 4 ? "iptables" : "ip6tables"}-restore --noflush: ${want.count} rule(s) for "${domain}"`,
    );
    console.log((renderSync(domain, mine, { chains: [], rules: [] }, { want }) ?? "").trimEnd());
  }
  if (snatNft) {
    const commands = [...nftBase(), ...nftSnatObjects(domain, snats)];
    console.log(
      `# nft -f -: ${commands.length} command(s) for "${domain}" (outbound NAT, ahead of libvirt's)`,
    );
    console.log(commands.join("\n"));
  }
  return 0;
}
