/** The operator commands: arguments and help; each command is a file of its own here. */

import { parseArgs } from "node:util";
import { apply } from "./apply.ts";
import { check } from "./check.ts";
import { metrics } from "./metrics.ts";
import { migrateLegacy } from "./migrate_legacy.ts";
import { plan } from "./plan.ts";
import { reload } from "./reload.ts";
import { removeAll, removeOne } from "./remove.ts";
import { status } from "./status.ts";
import { MAX_POLL_SECONDS, MIN_POLL_SECONDS, watch } from "./watch.ts";
import { type HookDeps, systemHookDeps } from "../hook/deps.ts";
import { message } from "../system/report.ts";
import { loadConfig } from "../config.ts";
import { configCandidates } from "../config/source.ts";

/** The program's version. */
export const VERSION = "0.2.0";

const HELP: Record<string, string> = {
  "": `libvirt-hook-qemu ${VERSION}: port forwarding for libvirt guests

Usage (libvirt):  qemu <domain> <operation> <sub-operation> <extra>    (domain XML on stdin)
Usage (people):   qemu <command> [options]

Commands:
  check            Validate the config (--domain NAME: and that guest's XML); print each problem as file:line:column
  plan <domain>    Print the batch that start would apply, touching nothing
  status [domain]  Show the forwards that are live now, read from the firewall, with their counters
  metrics          Print the forwards' counters as Prometheus text (node_exporter textfile collector, scraping)
  apply <domain>   Apply a running guest's forwards from the current config (like start)
  remove <domain>  Remove a guest's live forwards (like stopped); --all removes every domain's
  reload           Re-apply every domain that has live rules from the current config
  migrate-legacy   Remove the old Python hook's chains and apply ours for running guests
  set add|del|list <name> [address...]
                   Change or show a named source set (source_set): stored, and live at once, no hook call
  doctor [domain]  Walk each forward's path and say what is wrong, with the command that fixes it
  watch            Keep the forwards in place when other tools rewrite the firewall (a service)
  help [command]   Show help for a command

Options:
  -c, --config FILE  Use this config instead of CONFIG_FILENAME / CONFIG_PATH / /etc/libvirt/hooks
  -h, --help         Show help;  -V, --version  Show the version

Environment: CONFIG_FILENAME (the config file), CONFIG_PATH (its directory, default /etc/libvirt/hooks;
hooks.jsonc, else hooks.json), IPTABLES_BINARY (default iptables). Every hooks.d/*.jsonc and hooks.d/*.json
beside the config file is part of it too, read in name order.

Every command needs root. Exit codes: 0 success; 1 the config has errors, a change failed (nothing of it was
applied), not root, or stdout could not be written (after the change was made); 2 usage error.
Reference: man 8 libvirt-hook-qemu (commands, files), man 5 hooks.jsonc (every field).`,
  check: `Usage: qemu check [--domain NAME] [--config FILE]
Validates the whole config. Prints each problem as file:line:column: message (json.path = value), and warns
about what validates but will not work: a public_ip that is not an address of this host, a private_ip outside
the network of its interface, a public port the host itself listens on. Exit 0 only when there is no error.
With --domain, also the forwards in that guest's XML (running: its live XML; defined: virsh dumpxml --inactive),
positioned in the XML (line:column, element path), and the guest addresses found for them.`,
  plan: `Usage: qemu plan <domain> [--config FILE]
Prints exactly the batch that start installs for the domain, from the config and the forwards in the guest's XML
(running: its live XML; defined: virsh dumpxml --inactive); forwards waiting for the guest's DHCP lease are
listed as comments. Touches nothing.`,
  status: `Usage: qemu status [domain] [--json] [--config FILE]
Reads our live rules from the firewall and prints each forward as proto public:port -> private:port [from src].
Forwards that the current config does not explain are flagged.`,
  metrics: `Usage: qemu metrics [--config FILE]
Prints each live forward's counters in the Prometheus text format: its new connections (both backends),
labelled domain, proto, public_ip, public_port and target. For
node_exporter's textfile collector: qemu metrics > /var/lib/node_exporter/lvh.prom.$$ && mv the file into place.`,
  apply: `Usage: qemu apply <domain> [--config FILE]
Applies the domain's forwards from the current config and the guest's current XML (its metadata as "virsh
metadata --live" left it), as libvirt's start does, for a guest that is running (libvirt keeps
/run/libvirt/qemu/<domain>.xml for running guests). Refuses a guest that is not running.`,
  remove: `Usage: qemu remove <domain> | --all
Removes what is live for the domain (or, with --all, for every domain that has rules of ours), and says what it
removed, or that nothing of the domain was live.`,
  reload: `Usage: qemu reload [--config FILE]
Re-applies every domain that has live rules from the current config, atomically per domain; a domain that left
the config loses its rules; a domain whose entry is invalid keeps its live rules.`,
  "migrate-legacy": `Usage: qemu migrate-legacy [--dry-run] [--config FILE]
Removes the old Python hook's chains (DNAT-<dom>, SNAT-<dom>, FWD-<dom>) and the jumps into them, for the
domains in the config and the running guests, shows what it removed, then applies ours for running guests.`,
  doctor: `Usage: qemu doctor [domain] [--json] [--config FILE]
Walks the path of each forward (of the domain, or of every running configured guest and every live one) and
says for each link OK or what is wrong, with the command that fixes it: the guest running and its tap on the
bridge; its address on the bridge's network and answering there; IPv4/IPv6 forwarding; public_ip on this host;
the live rules equal to the plan; every gate at the forward hook (iptables' FORWARD, libvirt's chains, other
tables) and whether it lets the forward through; our rules' counters; the host's own listener on the public
port; the guest listening on its port; bridge netfilter and hairpin; the other firewall software present.
Exit 0 when all is well, 1 otherwise.`,
  set: `Usage: qemu set add|del|list <name> [address|network|first-last ...]
Adds or removes members of a named source set (an entry's "source_set", a portForward's sourceSet), IPv4 and
IPv6 mixed, or lists them (without a name: every set). The members are kept in
/var/lib/libvirt-hook-qemu/sets/<name> (across starts, stops, reloads and reboots) and, under our lock, put at
once into the set's live copies where a running forward uses it: our nftables table's src-<name>-v4/-v6, the
iptables backend's ipsets lvh-<name>-v4/-v6. No hook call is needed; connections already open stay open.`,
  watch: `Usage: qemu watch [--poll SECONDS]
Runs until stopped (SIGTERM; SIGHUP re-reads the config). Follows \`nft monitor rules\` and the DHCP leases, and
every SECONDS (default 30, at least 2) looks anyway; after each change it puts our accepts back in front of
libvirt's nftables chains (libvirt re-creates them on reload, SIGHUP and restarts), re-applies a running guest's
forwards that another tool wiped (a firewalld reload, a netfilter-persistent restore) or whose lease came or
moved, and removes what a stopped guest left live. It never adds forwards for a guest whose \`stopped\` hook ran,
never moves a forward to a new default address (it says what to run), and never removes a live forward because a
lease file cannot be read (it says which). Logs what it did on stderr and to syslog.`,
};

/** Where a command's output goes, and who runs it: the real stdout and user unless a test says otherwise. */
export interface CliOptions {
  /** The user id the command runs as (default: Deno.uid()). */
  uid?: number | null;
  /** Where stdout's bytes go (default: Deno.stdout). */
  stdout?: { writeSync(p: Uint8Array): number };
}

/** The options each command takes (--help, --version and --config every one); any other is refused. */
export const TAKES: Record<string, string[]> = {
  check: ["domain"],
  plan: [],
  status: ["json"],
  metrics: [],
  apply: [],
  remove: ["all"],
  reload: [],
  "migrate-legacy": ["dry-run"],
  doctor: ["json"],
  watch: ["poll"],
  set: [],
};

/** Every option of every command (which command takes which: TAKES); the man page and completion list them. */
export const OPTIONS = {
  help: { type: "boolean", short: "h" },
  version: { type: "boolean", short: "V" },
  config: { type: "string", short: "c" },
  json: { type: "boolean" },
  all: { type: "boolean" },
  "dry-run": { type: "boolean" },
  poll: { type: "string" },
  domain: { type: "string", short: "d" },
} as const;

/** The hidden command shell completion runs: the config's domain names, one a line, for any user. */
export const COMPLETE_DOMAINS = "__domains";

/** Runs an operator command and returns its exit code. */
export async function runCli(
  args: string[],
  deps: HookDeps = cliDeps(),
  { uid = Deno.uid(), stdout = Deno.stdout }: CliOptions = {},
): Promise<number> {
  // A full or closed stdout must not stop a change half-way: the output fails quietly, and is said after.
  const output = guardStdout(stdout);
  let code: number;
  try {
    code = await dispatch(args, deps, uid);
  } catch (err) {
    // One line, never a stack trace: what failed is in the message.
    deps.problem(`Cannot run "qemu ${args.join(" ")}": ${message(err)}`);
    code = 1;
  } finally {
    output.restore();
  }
  const failure = output.failure();
  if (failure === undefined) return code;
  deps.problem(`Cannot write the output of "qemu ${args.join(" ")}" to stdout: ${message(failure)}`);
  return code === 0 ? 1 : code;
}

async function dispatch(args: string[], deps: HookDeps, uid: number | null): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      options: OPTIONS,
    });
  } catch (err) {
    return usage(deps, message(err));
  }
  const { values, positionals } = parsed;
  const [command = "", ...rest] = positionals;
  if (values.version) {
    console.log(`libvirt-hook-qemu ${VERSION}`);
    return 0;
  }
  if (values.help || command === "help" || command === "") {
    const topic = command === "help" ? rest[0] ?? "" : command;
    if (!(topic in HELP)) return usage(deps, `Unknown command "${topic}"`);
    console.log(HELP[topic]);
    return command === "" && !values.help ? 2 : 0;
  }
  if (command === COMPLETE_DOMAINS) return await completeDomains(withConfig(deps, values.config));
  const takes = TAKES[command];
  if (takes === undefined) return usage(deps, `Unknown command "${command}"`);
  for (const [option, value] of Object.entries(values)) {
    if (value === undefined || option === "config" || takes.includes(option)) continue;
    const json = option === "json" ? " (only status and doctor print JSON)" : "";
    return usage(deps, `${command} takes no --${option}${json}`);
  }
  // Every command reads the firewall (iptables-save, nft) or changes it, which only root may: said in one line
  // before anything runs, rather than a failure half-way through.
  if (uid !== null && uid !== 0) {
    deps.problem(
      `needs root: "qemu ${command}" reads and changes the firewall, which only root may; run it as root`,
    );
    return 1;
  }
  deps = withConfig(deps, values.config);
  const one = async (f: (domain: string) => Promise<number>) => {
    if (rest.length !== 1) return usage(deps, `${command} needs exactly one domain name`);
    return await f(rest[0]!);
  };
  const none = (why: string) => rest.length > 0 ? usage(deps, `${command} takes no ${why}`) : undefined;
  switch (command) {
    case "check":
      return none("arguments (--domain NAME checks one guest)") ??
        await check(deps, { domain: values.domain });
    case "plan":
      return await one((d) => plan(d, deps));
    case "status":
      if (rest.length > 1) return usage(deps, "status takes at most one domain name");
      return await status(deps, { only: rest[0], json: values.json ?? false });
    case "metrics":
      return none("arguments") ?? await metrics(deps);
    case "apply":
      return await one((d) => apply(d, deps));
    case "remove":
      if (values.all) {
        return none("domain name with --all (--all removes every domain's)") ?? await removeAll(deps);
      }
      return await one((d) => removeOne(d, deps));
    case "reload":
      return none("arguments (it re-applies every domain with live rules)") ?? await reload(deps);
    case "migrate-legacy":
      return none("arguments") ?? await migrateLegacy(deps, { dryRun: values["dry-run"] ?? false });
    case "set": {
      const [action = "", name, ...items] = rest;
      return await (await import("./set.ts")).setCommand(deps, { action, name, items });
    }
    case "doctor":
      if (rest.length > 1) return usage(deps, "doctor takes at most one domain name");
      return await (await import("./doctor.ts")).doctor(deps, { only: rest[0], json: values.json ?? false });
    default: {
      if (rest.length > 0) return usage(deps, "watch takes no arguments");
      const poll = values.poll === undefined ? 30 : Number(values.poll);
      // A poll every few milliseconds would run the firewall's programs without end.
      if (values.poll?.trim() === "" || !(poll >= MIN_POLL_SECONDS && poll <= MAX_POLL_SECONDS)) {
        return usage(
          deps,
          `--poll takes a number of seconds from ${MIN_POLL_SECONDS} to ${MAX_POLL_SECONDS}, not "${values.poll}"`,
        );
      }
      return await watch(deps, poll);
    }
  }
}

const encoder = new TextEncoder();

/**
 * Points console.log at `stdout` for the length of a command, never throwing: the first write that fails is kept
 * (failure()) and the rest dropped, so the firewall change it reports goes on to its end.
 */
function guardStdout(stdout: { writeSync(p: Uint8Array): number }) {
  const original = console.log;
  let error: unknown;
  console.log = (...parts: unknown[]) => {
    if (error !== undefined) return;
    try {
      const text = parts.map((p) => typeof p === "string" ? p : Deno.inspect(p)).join(" ");
      const bytes = encoder.encode(`${text}\n`);
      for (let done = 0; done < bytes.length;) done += stdout.writeSync(bytes.subarray(done));
    } catch (err) {
      error = err;
    }
  };
  return { failure: () => error, restore: () => void (console.log = original) };
}

/** The deps with --config's file as CONFIG_FILENAME, where it is given. */
function withConfig(deps: HookDeps, file: string | undefined): HookDeps {
  if (file === undefined) return deps;
  const base = deps.env;
  return { ...deps, env: (name) => (name === "CONFIG_FILENAME" ? file : base(name)) };
}

/**
 * Lists the config's domain names for shell completion: reading a root-owned, world-readable file needs no root,
 * and completion must stay quiet, so problems are not said and the exit code is 0 whatever the config holds.
 */
async function completeDomains(deps: HookDeps): Promise<number> {
  const config = await loadConfig(configCandidates(deps.env));
  for (const name of [...config.names].sort()) console.log(name);
  return 0;
}

function cliDeps(): HookDeps {
  const deps = systemHookDeps();
  // Operator commands print problems on stderr too, but never read stdin.
  return { ...deps, readStdin: () => Promise.resolve("") };
}

function usage(deps: Pick<HookDeps, "problem">, why: string): number {
  deps.problem(`${why}. Run with --help for usage.`);
  return 2;
}
