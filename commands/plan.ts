/** `plan`: the rules a domain's start would write, without writing them. */

import { type Backend, chooseBackend } from "../backends/choose.ts";
import { renderSync, ruleLines } from "../backends/iptables.ts";
import { bridgesOf, libvirtAccepts, nftBase, nftDomainObjects } from "../backends/nftables.ts";
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
  const { forwards, problems } = planForwards(found.entries, facts);
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
    const commands = [...nftBase(), ...nftDomainObjects(domain, forwards, bridges), ...libvirt];
    console.log(`# nft -f -: ${commands.length} command(s) for "${domain}"`);
    console.log(commands.join("\n"));
    return 0;
  }
  for (const family of [4, 6] as const) {
    const mine = forwards.filter((f) => f.family === family);
    if (mine.length === 0) continue;
    const count = ruleLines(domain, mine).count;
    console.log(
      `# ${family === 4 ? "iptables" : "ip6tables"}-restore --noflush: ${count} rule(s) for "${domain}"`,
    );
    console.log((renderSync(domain, mine, { chains: [], rules: [] }) ?? "").trimEnd());
  }
  return 0;
}
