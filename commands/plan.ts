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
import { emptyChains, guestXml, readFirewall } from "./live.ts";
import { domainConfig } from "../config.ts";
import { formatDiagnostic } from "../config/model.ts";
import type { HookDeps } from "../hook/deps.ts";
import { forwardsOf, loadFor } from "../hook/domain.ts";
import { waitingNote } from "../hook/guest.ts";
import { message } from "../system/report.ts";

export async function plan(domain: string, deps: HookDeps): Promise<number> {
  const { config, facts } = await loadFor({ ...deps, problem: () => {} });
  const invalid = domainConfig(config, domain);
  if (invalid.kind === "invalid") {
    for (const d of invalid.errors) deps.problem(formatDiagnostic(d));
    return 1;
  }
  const xml = await guestXml(deps, domain);
  const found = await forwardsOf(domain, { config, facts, xml, deps });
  if (found.kind === "invalid") {
    for (const line of found.lines) deps.problem(line);
    deps.problem(`Cannot plan the forwards of "${domain}": ${found.why}`);
    return 1;
  }
  if (found.kind === "absent") {
    deps.problem(
      `"${domain}" is not in ${config.file} nor in its hooks.d/, and ${
        xml === undefined ? "no guest of that name is defined here" : "its XML holds no forwards"
      }: start installs nothing for it`,
    );
    return 0;
  }
  const { forwards, snats } = found;
  // Forwards still without the guest's address: comments, in either batch language.
  for (const w of found.waiting) console.log(`# ${w.entry}: ${waitingNote(w)}; applied when it comes`);
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
