/** The operator commands: check, plan, status, apply, remove, reload, migrate-legacy, watch. */

import { parseArgs } from "node:util";
import {
  type Config,
  configCandidates,
  domainConfig,
  type Entry,
  formatDiagnostic,
  jsonPath,
} from "../config.ts";
import {
  asLiveForward,
  describeForward,
  domainLabel,
  type LiveForward,
  planForwards,
  renderSync,
  ruleLines,
  tokenize,
} from "../rules.ts";
import { parseAddress } from "./address.ts";
import { connectedNetworkOf, type HostFacts, listenerAt, readListeners } from "./host.ts";
import { blockedNote, blockers, gateName, openingLine } from "./gates.ts";
import {
  type Backend,
  chooseBackend,
  type FirewallState,
  foreignGates,
  readState,
  reassertAccepts,
} from "./apply.ts";
import { bridgesOf, libvirtAccepts, nftBase, nftDomainObjects, type NftLive } from "./nft.ts";
import {
  applyDeps,
  gateLines,
  type HookDeps,
  install,
  loadFor,
  message,
  remove,
  removedMarker,
  resync,
  tools,
} from "./hook.ts";
import { runChecked } from "./runner.ts";
import { systemHookDeps } from "./system.ts";
import {
  acceptMisplaced,
  describeBackend,
  forwardsByDomain,
  hostListener,
  knownNames,
  livePacket,
  runDir,
  runningDomains,
} from "./live.ts";

/** The program's version. */
export const VERSION = "0.2.0";

const HELP: Record<string, string> = {
  "": `libvirt-hook-qemu ${VERSION}: port forwarding for libvirt guests

Usage (libvirt):  qemu <domain> <operation> <sub-operation> <extra>    (domain XML on stdin)
Usage (people):   qemu <command> [options]

Commands:
  check            Validate the config; print every problem as file:line:column
  plan <domain>    Print the batch that start would apply, touching nothing
  status [domain]  Show the forwards that are live now, read from the firewall
  apply <domain>   Apply a running guest's forwards from the current config (like start)
  remove <domain>  Remove a guest's live forwards (like stopped); --all removes every domain's
  reload           Re-apply every domain that has live rules from the current config
  migrate-legacy   Remove the old Python hook's chains and apply ours for running guests
  doctor [domain]  Walk each forward's path and say what is wrong, with the command that fixes it
  watch            Keep the forwards in place when other tools rewrite the firewall (a service)
  help [command]   Show help for a command

Options:
  -c, --config FILE  Use this config instead of CONFIG_FILENAME / CONFIG_PATH / /etc/libvirt/hooks
  -h, --help         Show help;  -V, --version  Show the version

Environment: CONFIG_FILENAME (the config file), CONFIG_PATH (its directory, default /etc/libvirt/hooks;
hooks.jsonc, else hooks.json), IPTABLES_BINARY (default iptables).

Exit codes: 0 success; 1 the config has errors, or a change failed (nothing of it was applied); 2 usage error.`,
  check: `Usage: qemu check [--config FILE]
Validates the whole config. Prints each problem as file:line:column: message (json.path = value), and warns
about what validates but will not work: a public_ip that is not an address of this host, a private_ip outside
the network of its interface, a public port the host itself listens on. Exit 0 only when there is no error.`,
  plan: `Usage: qemu plan <domain> [--config FILE]
Prints exactly the iptables-restore batch that start installs for the domain (start first removes what is live
for it). Touches nothing; needs no root.`,
  status: `Usage: qemu status [domain] [--json] [--config FILE]
Reads our live rules from the firewall and prints each forward as proto public:port -> private:port [from src].
Forwards that the current config does not explain are flagged.`,
  apply: `Usage: qemu apply <domain> [--config FILE]
Applies the domain's forwards from the current config, as libvirt's start does, for a guest that is running
(libvirt keeps /run/libvirt/qemu/<domain>.xml for running guests). Refuses a guest that is not running.`,
  remove: `Usage: qemu remove <domain> | --all
Removes what is live for the domain (or, with --all, for every domain that has rules of ours).`,
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
  watch: `Usage: qemu watch [--poll SECONDS]
Runs until stopped (SIGTERM). Follows \`nft monitor rules\`, and every SECONDS (default 30) looks anyway; after each
change of the firewall it puts our accepts back in front of libvirt's nftables chains (libvirt re-creates them on
reload, SIGHUP and restarts) and re-applies a running guest's forwards that another tool wiped (a firewalld
reload, a netfilter-persistent restore). Logs what it mended on stderr and to syslog.`,
};

/** Runs an operator command and returns its exit code. */
export async function runCli(args: string[], deps: HookDeps = cliDeps()): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      options: {
        help: { type: "boolean", short: "h" },
        version: { type: "boolean", short: "V" },
        config: { type: "string", short: "c" },
        json: { type: "boolean" },
        all: { type: "boolean" },
        "dry-run": { type: "boolean" },
        poll: { type: "string" },
      },
    });
  } catch (err) {
    return usage(message(err));
  }
  const { values, positionals } = parsed;
  const [command = "", ...rest] = positionals;
  if (values.version) {
    console.log(`libvirt-hook-qemu ${VERSION}`);
    return 0;
  }
  if (values.help || command === "help" || command === "") {
    const topic = command === "help" ? rest[0] ?? "" : command;
    if (!(topic in HELP)) return usage(`Unknown command "${topic}"`);
    console.log(HELP[topic]);
    return command === "" && !values.help ? 2 : 0;
  }
  if (values.config) {
    const file = values.config;
    const base = deps.env;
    deps = { ...deps, env: (name) => (name === "CONFIG_FILENAME" ? file : base(name)) };
  }
  const one = async (f: (domain: string) => Promise<number>) => {
    if (rest.length !== 1) return usage(`${command} needs exactly one domain name`);
    return await f(rest[0]!);
  };
  switch (command) {
    case "check":
      return await check(deps);
    case "plan":
      return await one((d) => plan(d, deps));
    case "status":
      if (rest.length > 1) return usage("status takes at most one domain name");
      return await status(deps, rest[0], values.json ?? false);
    case "apply":
      return await one((d) => apply(d, deps));
    case "remove":
      if (values.all && rest.length === 0) return await removeAll(deps);
      return await one(async (d) => (await removeByHand(d, deps)) ? 0 : 1);
    case "reload":
      return await reload(deps);
    case "migrate-legacy":
      return await migrateLegacy(deps, values["dry-run"] ?? false);
    case "doctor":
      if (rest.length > 1) return usage("doctor takes at most one domain name");
      return await (await import("./doctor.ts")).doctor(deps, rest[0], values.json ?? false);
    case "watch":
      return await watch(deps, Number(values.poll ?? "30") || 30);
    default:
      return usage(`Unknown command "${command}"`);
  }
}

function cliDeps(): HookDeps {
  const deps = systemHookDeps();
  // Operator commands print problems on stderr too, but never read stdin.
  return { ...deps, readStdin: () => Promise.resolve("") };
}

function usage(why: string): number {
  console.error(`${why}. Run with --help for usage.`);
  return 2;
}

async function check(deps: HookDeps): Promise<number> {
  const { config, facts } = await loadFor({ ...deps, problem: (line) => console.error(line) });
  if (!config.exists) {
    console.error(
      `No config file found (looked for ${configCandidates(deps.env).join(", ")}): no domain is configured`,
    );
    return 1;
  }
  const warnings = hostWarnings(config.domains, facts);
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
  for (const w of warnings) console.error(`${config.file}: warning: ${w}`);
  const errors = config.diagnostics.filter((d) => d.severity === "error").length;
  if (errors > 0) {
    console.error(`${config.file}: ${errors} error(s); the domains they name will not start`);
    return 1;
  }
  const backend = "error" in firewall
    ? `unknown (setting "${config.settings.backend}"; cannot read the firewall: ${firewall.error})`
    : describeBackend(config.settings.backend, firewall);
  console.log(`${config.file}: OK, ${config.domains.size} domain(s); firewall backend: ${backend}`);
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
  let local: Set<string> | undefined;
  try {
    local = new Set(Deno.networkInterfaces().map((i) => parseAddress(i.address)?.text ?? i.address));
  } catch {
    // Without the interface list, this check is skipped.
  }
  const listeners = readListeners();
  for (const entries of domains.values()) {
    for (const e of entries) {
      if (e.interface !== undefined && !interfaceExists(e.interface)) {
        out.push(
          `${e.path}: interface ${e.interface} does not exist on this host (is its libvirt network started?); ` +
            "the forwards accept only what leaves through it",
        );
      }
      for (const t of e.targets) {
        if (t.publicIp && local && !local.has(t.publicIp)) {
          out.push(
            `${e.path}: public_ip ${t.publicIp} is not an address of this host; nothing will arrive there`,
          );
        }
        if (e.interface) {
          const nets = connected.filter((r) => r.device === e.interface && r.family === t.family);
          const addr = parseAddress(t.privateIp)!;
          if (nets.length > 0 && !connectedNetworkOf(nets, addr)) {
            out.push(
              `${e.path}: private_ip ${t.privateIp} is outside the networks of interface ${e.interface}`,
            );
          }
        }
        const publicIp = parseAddress(t.publicIp ?? defaults[t.family] ?? "");
        for (const p of e.ports) {
          const l = publicIp &&
            listenerAt(listeners, p.protocol, publicIp, p.publicPort, p.publicPort + p.count - 1);
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

/** Whether a network interface of that name exists here (/sys/class/net lists every one, addressed or not). */
function interfaceExists(name: string): boolean {
  try {
    Deno.statSync(`/sys/class/net/${name}`);
    return true;
  } catch (err) {
    // Only a name that is surely not there is reported; without access to /sys, nothing is said.
    return !(err instanceof Deno.errors.NotFound);
  }
}

/** libvirt's chains as if none of our accepts were in them, so plan shows the accepts start would add. */
function emptyChains(live: NftLive): NftLive["libvirt"] {
  const out: NftLive["libvirt"] = {};
  for (const family of [4, 6] as const) if (live.libvirt[family]) out[family] = [];
  return out;
}

/** The live firewall, or why it cannot be read (reading it needs root). */
async function readFirewall(deps: HookDeps, config: Config): Promise<FirewallState | { error: string }> {
  try {
    return await readState(applyDeps(deps, config));
  } catch (err) {
    return { error: message(err) };
  }
}

async function plan(domain: string, deps: HookDeps): Promise<number> {
  const { config, facts } = await loadFor({ ...deps, problem: () => {} });
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
  const firewall = await readFirewall(deps, config);
  let backend: Backend = config.settings.backend === "nftables" ? "nftables" : "iptables";
  if ("error" in firewall) {
    console.error(`Cannot read the firewall (${firewall.error}): showing the ${backend} backend`);
  } else {
    try {
      backend = chooseBackend(config.settings.backend, firewall);
    } catch (err) {
      console.error(`Cannot apply forwards for "${domain}": ${message(err)}`);
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

/** Reads the live firewall and returns its forwards by domain. */
async function liveByDomain(deps: HookDeps): Promise<Map<string, LiveForward[]>> {
  const { config } = await loadFor({ ...deps, problem: () => {} });
  return forwardsByDomain(await readState(applyDeps(deps)), await knownNames(config));
}

async function status(deps: HookDeps, only: string | undefined, json: boolean): Promise<number> {
  const { config, facts } = await loadFor({ ...deps, problem: () => {} });
  // One read of the firewall serves both the forwards and the backend line.
  const state = await readState(applyDeps(deps, config));
  const live = forwardsByDomain(state, await knownNames(config));
  const listeners = readListeners();
  const gates = await foreignGates(applyDeps(deps, config), state.nft?.hooks);
  const backend = describeBackend(config.settings.backend, state);
  const report = [];
  for (const [domain, forwards] of [...live].sort(([a], [b]) => a.localeCompare(b))) {
    if (only !== undefined && domain !== only && domainLabel(domain) !== only) continue;
    const found = domainConfig(config, domain);
    const planned = new Set(
      found.kind === "ok"
        ? planForwards(found.entries, facts).forwards.map((f) => describeForward(asLiveForward(domain, f)))
        : [],
    );
    const running = await exists(`${runDir()}/${domain}.xml`);
    report.push({
      domain: domainLabel(domain),
      running,
      inConfig: found.kind !== "absent",
      forwards: forwards.map((f) => {
        const taken = hostListener(f, listeners);
        const blocked = blockers(gates, livePacket(f, facts.connected)).map(blockedNote);
        return {
          forward: describeForward(f),
          explained: planned.has(describeForward(f)),
          ...(taken ? { takenFromHost: taken } : {}),
          ...(blocked.length ? { blocked } : {}),
        };
      }),
    });
  }
  if (json) {
    console.log(JSON.stringify({ backend, domains: report }, null, 2));
    return 0;
  }
  console.log(`Firewall backend: ${backend}`);
  // Only the gates that stop some of what is shown, each with what would let our forwards through.
  const stopping = new Set(report.flatMap((d) => d.forwards.flatMap((f) => f.blocked ?? [])));
  for (const g of gates) {
    if (![...stopping].some((note) => note.endsWith(` by ${gateName(g.gate)}`))) continue;
    console.log(
      `Gate not ours to open: ${gateName(g.gate)} (priority ${g.gate.prio}, policy ${g.gate.policy}); ` +
        `let our forwards through with "${openingLine(g.gate)}" or "/settings": {"accept_in": ["${
          gateName(g.gate)
        }"]}`,
    );
  }
  if (report.length === 0) {
    console.log(only === undefined ? "No forwards are live." : `No forwards are live for "${only}".`);
  }
  for (const d of report) {
    const notes = [d.running ? "running" : "not running", ...(d.inConfig ? [] : ["not in the config"])];
    console.log(`${d.domain} (${notes.join(", ")})`);
    for (const f of d.forwards) {
      const notes = [
        ...(f.explained ? [] : ["not explained by the config"]),
        ...(f.takenFromHost ? [`takes from the host a port it listens on (${f.takenFromHost})`] : []),
        ...(f.blocked ?? []),
      ];
      console.log(`  ${f.forward}${notes.length ? `   <- ${notes.join("; ")}` : ""}`);
    }
  }
  return 0;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

async function apply(domain: string, deps: HookDeps): Promise<number> {
  const xmlPath = `${runDir()}/${domain}.xml`;
  let xml: string;
  try {
    xml = await Deno.readTextFile(xmlPath);
  } catch {
    console.error(
      `Cannot apply forwards for "${domain}": it is not running (${xmlPath} does not exist), so nothing would remove them; they are applied when it starts`,
    );
    return 1;
  }
  const result = await install(domain, { ...deps, readStdin: () => Promise.resolve(xml) }, "apply");
  if (result === "absent") {
    const file = configCandidates(deps.env).join(" or ");
    console.error(`"${domain}" is not in ${file}; to remove its forwards, use: remove ${domain}`);
  } else if (result === "installed") console.log(`Applied the forwards of "${domain}"`);
  return result === "installed" ? 0 : 1;
}

/**
 * Removes a domain's forwards at an administrator's request, and notes that on /run, so that the watcher does not
 * put back the forwards of a running guest on purpose taken away; apply or the next start clears the note.
 */
async function removeByHand(domain: string, deps: HookDeps): Promise<boolean> {
  if (!(await remove(domain, deps, "remove"))) return false;
  if (deps.stateDir !== undefined) {
    await Deno.mkdir(deps.stateDir, { recursive: true, mode: 0o700 }).catch(() => {});
    await Deno.writeTextFile(removedMarker(deps.stateDir, domain), `${domain}\n`).catch(() => {});
  }
  return true;
}

async function removeAll(deps: HookDeps): Promise<number> {
  const live = await liveByDomain(deps);
  let failed = 0;
  for (const domain of live.keys()) {
    if (await removeByHand(domain, deps)) console.log(`Removed the forwards of "${domainLabel(domain)}"`);
    else failed++;
  }
  if (live.size === 0) console.log("No forwards are live.");
  return failed ? 1 : 0;
}

async function reload(deps: HookDeps): Promise<number> {
  const live = await liveByDomain(deps);
  let failed = 0;
  for (const domain of live.keys()) {
    if (await resync(domain, deps, "reload")) console.log(`Reloaded "${domainLabel(domain)}"`);
    else failed++;
  }
  if (live.size === 0) console.log("No forwards are live; nothing to reload.");
  try {
    const facts = await deps.facts();
    const count = await deps.lock(() => reassertAccepts(applyDeps(deps, undefined, facts)));
    if (count > 0) console.log("Put our accepts back in front of libvirt's nftables chains");
  } catch (err) {
    console.error(`Cannot re-assert our accepts in libvirt's chains: ${message(err)}`);
    failed++;
  }
  return failed ? 1 : 0;
}

/**
 * Compares what is live with what the config says for every running guest, and mends it: our accepts back in
 * front of libvirt's chains, and a running guest's forwards re-applied when another tool wiped them.
 * Returns what it mended.
 */
async function heal(deps: HookDeps): Promise<string[]> {
  const mended: string[] = [];
  const { config, facts } = await loadFor({ ...deps, problem: () => {} });
  if (await deps.lock(() => reassertAccepts(applyDeps(deps, config, facts))) > 0) {
    mended.push("accepts in libvirt's chains");
  }
  if (config.broken) return mended;
  const running = await runningDomains();
  const state = await readState(applyDeps(deps));
  const live = forwardsByDomain(state, [...config.names, ...running]);
  for (const domain of running) {
    const found = domainConfig(config, domain);
    if (found.kind !== "ok") continue;
    if (deps.stateDir !== undefined && await exists(removedMarker(deps.stateDir, domain))) continue;
    const planned = planForwards(found.entries, facts);
    if (planned.problems.length > 0) continue;
    const want = planned.forwards.map((f) => describeForward(asLiveForward(domain, f))).sort().join("\n");
    const have = (live.get(domain) ?? []).map(describeForward).sort().join("\n");
    if (want === have && !acceptMisplaced(state, domain, planned.forwards)) continue;
    const xml = await Deno.readTextFile(`${runDir()}/${domain}.xml`).catch(() => "");
    if (await install(domain, { ...deps, readStdin: () => Promise.resolve(xml) }, "watch") === "installed") {
      mended.push(domain);
    }
  }
  return mended;
}

/** Watches the firewall (`nft monitor`, and a slow poll as a safety net) and heals after every change. */
async function watch(deps: HookDeps, pollSeconds: number): Promise<number> {
  const say = (line: string) => console.error(`${new Date().toISOString()} ${line}`);
  let timer: ReturnType<typeof setTimeout> | undefined;
  let running = Promise.resolve();
  const schedule = (why: string, delay = 300) => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      running = running.then(async () => {
        try {
          const mended = await heal(deps);
          if (mended.length > 0) {
            say(`after ${why}: mended ${mended.join(", ")}`);
            deps.log(`watch: after ${why}: mended ${mended.join(", ")}`);
          }
        } catch (err) {
          say(`after ${why}: cannot mend: ${message(err)}`);
        }
      });
    }, delay);
  };
  const stop = new AbortController();
  for (const signal of ["SIGTERM", "SIGINT"] as const) Deno.addSignalListener(signal, () => stop.abort());
  say(`watching the firewall (nft monitor, and every ${pollSeconds} s)`);
  schedule("start", 0);
  const poll = setInterval(() => schedule("poll", 0), pollSeconds * 1000);
  try {
    while (!stop.signal.aborted) {
      let monitor: Deno.ChildProcess;
      try {
        monitor = new Deno.Command(deps.nft ?? "nft", {
          args: ["monitor", "rules"],
          stdout: "piped",
          stderr: "null",
          signal: stop.signal,
        })
          .spawn();
      } catch {
        // No nft: the poll alone keeps watch.
        await new Promise((resolve) => stop.signal.addEventListener("abort", resolve, { once: true }));
        break;
      }
      const lines = monitor.stdout.pipeThrough(new TextDecoderStream());
      for await (const chunk of lines) {
        // Our own rules changing is our own doing; anything else may have moved or wiped ours.
        if (chunk.split("\n").some((l) => l.trim() !== "" && !l.includes("libvirt-hook-qemu"))) {
          schedule("a firewall change");
        }
      }
      await monitor.status;
      if (!stop.signal.aborted) await new Promise((r) => setTimeout(r, 1000));
    }
  } finally {
    clearInterval(poll);
    clearTimeout(timer);
    await running;
  }
  say("stopped");
  return 0;
}

/** The old hook named its chains `DNAT-<domain>`, `SNAT-<domain>`, `FWD-<domain>`, cut to 28 characters. */
function legacyChains(domain: string) {
  return {
    nat: [`DNAT-${domain}`, `SNAT-${domain}`].map((c) => c.slice(0, 28)),
    filter: [`FWD-${domain}`.slice(0, 28)],
  };
}

async function migrateLegacy(deps: HookDeps, dryRun: boolean): Promise<number> {
  const { config } = await loadFor({ ...deps, problem: () => {} });
  let running: string[] = [];
  try {
    running = [...Deno.readDirSync(runDir())].filter((e) => e.name.endsWith(".xml")).map((e) =>
      e.name.slice(0, -4)
    );
  } catch {
    // libvirt is not running here: only the config's domains are candidates.
  }
  const candidates = new Set([...config.names, ...running]);
  const t = tools(deps)[4];
  const saved = await runChecked(deps.runner, t.save);
  const wanted = new Map<string, Set<string>>([["nat", new Set()], ["filter", new Set()]]);
  for (const d of candidates) {
    const c = legacyChains(d);
    for (const name of c.nat) wanted.get("nat")!.add(name);
    for (const name of c.filter) wanted.get("filter")!.add(name);
  }
  const found = new Map<string, string[]>([["nat", []], ["filter", []]]);
  const jumps = new Map<string, string[]>([["nat", []], ["filter", []]]);
  let table = "";
  for (const line of saved.split("\n")) {
    if (line.startsWith("*")) table = line.slice(1);
    const chain = /^:(\S+) /.exec(line)?.[1];
    if (chain && wanted.get(table)?.has(chain)) found.get(table)!.push(chain);
    if (line.startsWith("-A ")) {
      const words = tokenize(line.slice(3));
      const target = words[words.indexOf("-j") + 1];
      if (target && wanted.get(table)?.has(target)) jumps.get(table)!.push(line.slice(3));
    }
  }
  const total = found.get("nat")!.length + found.get("filter")!.length;
  if (total === 0) {
    console.log("No chains of the old hook are live.");
  } else {
    const batch: string[] = [];
    for (const [tbl, chains] of found) {
      if (chains.length === 0) continue;
      batch.push(`*${tbl}`, ...chains.map((c) => `:${c} - [0:0]`));
      for (const j of jumps.get(tbl)!) batch.push(`-D ${j}`);
      for (const c of chains) batch.push(`-X ${c}`);
      batch.push("COMMIT");
    }
    console.log(`${dryRun ? "Would remove" : "Removing"} the old hook's chains and the jumps into them:`);
    for (const [tbl, chains] of found) for (const c of chains) console.log(`  ${tbl} chain ${c}`);
    for (const [tbl, js] of jumps) for (const j of js) console.log(`  ${tbl} rule -A ${j}`);
    if (dryRun) return 0;
    try {
      await deps.lock(() => runChecked(deps.runner, t.restore, { stdin: batch.join("\n") + "\n" }));
    } catch (err) {
      console.error(`Cannot remove the old hook's rules: ${message(err)}; nothing was changed`);
      return 1;
    }
    deps.log(`migrate-legacy: removed ${total} chain(s) of the old hook`);
  }
  let failed = 0;
  for (const domain of running) {
    const xml = await Deno.readTextFile(`${runDir()}/${domain}.xml`).catch(() => "");
    const result = await install(
      domain,
      { ...deps, readStdin: () => Promise.resolve(xml) },
      "migrate-legacy",
    );
    if (result === "installed") console.log(`Applied the forwards of running guest "${domain}"`);
    if (result === "failed") failed++;
  }
  return failed ? 1 : 0;
}
