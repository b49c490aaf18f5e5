/** `check`: validates the config and warns about what will not work on this host. */

import { emptySetWarnings, setsDirOf } from "./set.ts";
import { foreignGates, gateName } from "../backends/backend.ts";
import { describeBackend, guestXml, readFirewall } from "./live.ts";
import { type Config, type Entry, jsonPath } from "../config/model.ts";
import { configCandidates, DROP_IN_DIR, dropInDirOf, readConfigSource } from "../config/source.ts";
import type { HookDeps } from "../hook/deps.ts";
import { applyDeps, forwardsOf, loadFor, NO_CONNTRACK } from "../hook/domain.ts";
import { waitingNote } from "../hook/guest.ts";
import { gateLines } from "../hook/warnings.ts";
import { planForwards } from "../rules.ts";
import { parseAddress } from "../system/address.ts";
import {
  connectedNetworkOf,
  type HostFacts,
  interfaceExists,
  listenerAt,
  readListeners,
} from "../system/host.ts";

export async function check(
  deps: HookDeps,
  { domain }: { domain?: string | undefined } = {},
): Promise<number> {
  // Read once: the config and its drop-ins, validated and counted.
  const source = readConfigSource(configCandidates(deps.env));
  // A public address that is not this host's is said as a warning here: a start refuses it, the file is valid.
  const { config, facts } = await loadFor(deps, { source, foreignAddresses: "warning" });
  if (domain !== undefined) return await checkDomain(deps, { domain, config, facts });
  if (!config.exists) {
    deps.problem(
      `No config file found (looked for ${
        [...configCandidates(deps.env), `${dropInDirOf(configCandidates(deps.env))}/*.json{c,}`].join(", ")
      }): no domain is configured`,
    );
    return 1;
  }
  const warnings = [
    ...hostWarnings(config.domains, facts),
    ...emptySetWarnings(config.domains, setsDirOf(deps)),
  ];
  const firewall = await readFirewall(deps, config);
  const hooks = "error" in firewall ? undefined : firewall.nft?.hooks;
  const gates = await foreignGates(applyDeps(deps, config), hooks).catch(() => []);
  for (const gate of hooks === undefined ? [] : config.settings.acceptIn) {
    if (!hooks!.some((h) => gateName(h) === gate)) {
      warnings.push(
        `["/settings"].accept_in: ${gate} is no base chain at the forward hook on this host (not there yet, or at ` +
          "another hook): an accept of ours there lets nothing through",
      );
    }
  }
  for (const [domain, entries] of config.domains) {
    const { forwards } = planForwards(entries, facts);
    for (const line of gateLines(forwards, gates, facts.connected)) {
      warnings.push(`${jsonPath("", domain)}: ${line}`);
    }
  }
  for (const w of warnings) deps.problem(`${config.file}: warning: ${w}`);
  if (config.domains.size > 0 && deps.conntrack !== undefined && deps.conntrack() === undefined) {
    deps.problem(`warning: ${NO_CONNTRACK}`);
  }
  const errors = config.diagnostics.filter((d) => d.severity === "error").length;
  if (errors > 0) {
    deps.problem(`${config.file}: ${errors} error(s); the domains they name will not start`);
    return 1;
  }
  const backend = "error" in firewall
    ? `unknown (setting "${config.settings.backend}"; cannot read the firewall: ${firewall.error})`
    : describeBackend(config.settings.backend, firewall);
  const dropIns = source.dropIns?.length ?? 0;
  const more = dropIns === 0 ? "" : ` (and ${dropIns} drop-in file(s) in ${DROP_IN_DIR}/)`;
  console.log(`${config.file}${more}: OK, ${config.domains.size} domain(s); firewall backend: ${backend}`);
  return 0;
}

/**
 * `check --domain`: the config's problems (printed by loadFor) and the forwards in the guest's XML, positioned
 * there, with the guest addresses found for them; what start would do, in one line.
 */
async function checkDomain(
  deps: HookDeps,
  { domain, config, facts }: { domain: string; config: Config; facts: HostFacts },
): Promise<number> {
  const xml = await guestXml(deps, domain);
  if (xml === undefined) {
    deps.problem(`warning: no guest "${domain}" is defined here (virsh dumpxml found none)`);
  }
  const found = await forwardsOf(domain, { config, facts, xml, deps });
  if (found.kind === "invalid") {
    for (const line of found.lines) deps.problem(line);
    deps.problem(`${domain}: ${found.why}; its start would fail`);
    return 1;
  }
  if (found.kind === "absent") {
    console.log(`${domain}: OK, no forwards (not in ${config.file}, none in its XML)`);
    return 0;
  }
  const where = found.metadata
    ? `${config.domains.has(domain) ? "the config and " : ""}its XML`
    : config.file;
  const waiting = found.waiting.map((w) => `; ${w.entry} ${waitingNote(w)}`).join("");
  console.log(`${domain}: OK, ${found.forwards.length} forward(s) from ${where}${waiting}`);
  return 0;
}

/** Warnings about what validates but will not work on this host. */
function hostWarnings(domains: Map<string, Entry[]>, facts: HostFacts): string[] {
  const { connected } = facts;
  const defaults: Partial<Record<4 | 6, string>> = {};
  for (const family of [4, 6] as const) {
    const found = facts.defaultPublicIp[family];
    if (found && "address" in found) defaults[family] = found.address;
  }
  const out: string[] = [];
  const listeners = readListeners();
  for (const entries of domains.values()) {
    for (const e of entries) {
      if (e.interface !== undefined && !interfaceExists(e.interface)) {
        out.push(
          `${e.path}: interface ${e.interface} does not exist on this host (is its libvirt network started?); ` +
            "the forwards accept only what leaves through it",
        );
      }
      if (e.dev !== undefined && !interfaceExists(e.dev)) {
        out.push(
          `${e.path}: dev ${e.dev} does not exist on this host; the forwards take only what arrives on it`,
        );
      }
      for (const t of e.targets) {
        if (e.interface && t.privateIp !== undefined) {
          const nets = connected.filter((r) => r.device === e.interface && r.family === t.family);
          const addr = parseAddress(t.privateIp)!;
          if (nets.length > 0 && !connectedNetworkOf(nets, addr)) {
            out.push(
              `${e.path}: private_ip ${t.privateIp} is outside the networks of interface ${e.interface}`,
            );
          }
        }
        const publicIp = parseAddress(t.publicIp ?? defaults[t.family] ?? "");
        if (e.ports.some((p) => p.all) && t.publicIp !== undefined && t.publicIp === defaults[t.family]) {
          out.push(
            `${e.path}: all_ports on ${t.publicIp}, the host's main address: every port of the host's own ` +
              "services there (sshd among them) goes to the guest; give the guest an address of its own",
          );
        }
        for (const p of e.ports) {
          const l = publicIp &&
            listenerAt(listeners, {
              protocol: p.protocol,
              address: publicIp,
              first: p.publicPort,
              last: p.publicPort + p.count - 1,
            });
          if (l) {
            out.push(
              `${e.path}: public ${p.protocol} port ${l.port} is one the host itself listens on; the forward takes it away from the host`,
            );
          }
        }
      }
    }
  }
  return out;
}
