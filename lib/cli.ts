/** The operator commands: check, plan and friends. Human output on stdout, problems on stderr. */

import { parseArgs } from "node:util";
import { configCandidates, domainConfig, formatDiagnostic, loadConfig } from "../config.ts";
import { buildRules, planForwards, renderSync } from "../rules.ts";
import type { Family } from "./address.ts";
import { readHostFacts } from "./host.ts";
import { env } from "./system.ts";

/** The program's version. */
export const VERSION = "0.1.0";

const USAGE = `libvirt-hook-qemu ${VERSION}: port forwarding for libvirt guests

Usage (libvirt):  qemu <domain> <operation> <sub-operation> <extra>   (domain XML on stdin)
Usage (people):   qemu <command> [options]

Commands:
  check [--config FILE]         Validate the config; print every problem as file:line:column
  plan <domain> [--config FILE] Print the iptables-restore batch that start would apply
  help [command]                Show this help

Options:
  -h, --help       Show help
  -V, --version    Show the version

Environment: CONFIG_FILENAME (the config file), CONFIG_PATH (its directory, default /etc/libvirt/hooks;
hooks.jsonc, else hooks.json), IPTABLES_BINARY (default iptables).

Exit codes: 0 success; 1 the config has errors or the firewall refused; 2 usage error.`;

/** Runs an operator command and returns its exit code. */
export async function runCli(args: string[]): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      options: {
        help: { type: "boolean", short: "h" },
        version: { type: "boolean", short: "V" },
        config: { type: "string", short: "c" },
      },
    });
  } catch (err) {
    console.error(`${err instanceof Error ? err.message : String(err)}\nRun with --help for usage.`);
    return 2;
  }
  const { values, positionals } = parsed;
  const [command, ...rest] = positionals;
  if (values.version) {
    console.log(`libvirt-hook-qemu ${VERSION}`);
    return 0;
  }
  if (values.help || command === undefined || command === "help") {
    console.log(USAGE);
    return command === undefined && !values.help ? 2 : 0;
  }
  const candidates = values.config ? [values.config] : configCandidates(env);
  switch (command) {
    case "check":
      return await check(candidates);
    case "plan":
      if (rest.length !== 1) return usage("plan needs exactly one domain name");
      return await plan(rest[0]!, candidates);
    default:
      return usage(`Unknown command "${command}"`);
  }
}

function usage(why: string): number {
  console.error(`${why}. Run with --help for usage.`);
  return 2;
}

async function loadWithFacts(candidates: string[]) {
  const facts = await readHostFacts();
  const defaults: Partial<Record<Family, string>> = {};
  for (const family of [4, 6] as const) {
    const found = facts.defaultPublicIp[family];
    if (found && "address" in found) defaults[family] = found.address;
  }
  return { facts, config: await loadConfig(candidates, { defaultPublicIp: defaults }) };
}

async function check(candidates: string[]): Promise<number> {
  const { config } = await loadWithFacts(candidates);
  for (const d of config.diagnostics) console.error(formatDiagnostic(d));
  if (!config.exists) {
    console.error(`No config file found (looked for ${candidates.join(", ")}): no domain is configured`);
    return 1;
  }
  const errors = config.diagnostics.filter((d) => d.severity === "error").length;
  if (errors > 0) {
    console.error(`${config.file}: ${errors} error(s)`);
    return 1;
  }
  console.log(`${config.file}: OK, ${config.domains.size} domain(s)`);
  return 0;
}

async function plan(domain: string, candidates: string[]): Promise<number> {
  const { config, facts } = await loadWithFacts(candidates);
  const found = domainConfig(config, domain);
  if (found.kind === "invalid") {
    for (const d of found.errors) console.error(formatDiagnostic(d));
    return 1;
  }
  if (found.kind === "absent") {
    console.error(`"${domain}" is not in ${config.file}: start installs nothing for it`);
    return 0;
  }
  const { forwards, problems } = planForwards(found.entries, facts);
  for (const p of problems) console.error(`${config.file}: ${p}`);
  if (problems.length > 0) return 1;
  for (const family of [4, 6] as const) {
    const mine = forwards.filter((f) => f.family === family);
    if (mine.length === 0) continue;
    const text = renderSync(domain, mine, { chains: [], rules: [] }) ?? "";
    const count = buildRules(domain, mine).rules.length;
    console.log(
      `# ${family === 4 ? "iptables" : "ip6tables"}-restore --noflush: ${count} rule(s) for "${domain}"`,
    );
    console.log(text.trimEnd());
  }
  return 0;
}
