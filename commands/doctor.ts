/** `doctor`: walks each forward's path, link by link, and says what is OK, what is wrong, and what fixes it. */

import {
  asLiveForward,
  asLiveSnat,
  describeForward,
  type FirewallState,
  type ForeignGate,
  foreignGates,
  listChains,
} from "../backends/backend.ts";
import type { Config } from "../config/model.ts";
import type { HostFacts } from "../system/host.ts";
import { acceptMisplaced, forwardsByDomain, knownNames, runningDomains, runningXml } from "./live.ts";
import type { HookDeps } from "../hook/deps.ts";
import {
  applyDeps,
  defaultMoves,
  type DomainForwards,
  forwardsOf,
  loadFor,
  NO_CONNTRACK,
  pinFacts,
  pinnedDefaults,
} from "../hook/domain.ts";
import { waitingNote } from "../hook/guest.ts";
import type { Family } from "../system/address.ts";
import { message } from "../system/report.ts";
import { type DoctorReport, fail, type Finding, type ForwardReport, note, ok } from "./doctor_findings.ts";
import { forwardFindings, readCounters, readFlows } from "./doctor_forward.ts";
import { hostFindings } from "./doctor_host.ts";
import { daemonFindings, readDaemons, readInstalled } from "./doctor_daemon.ts";
import { qemuCommand, shellQuote } from "../system/shell.ts";
import { readLibvirtElsewhere, readLive } from "../rules.ts";

/** What `doctor` examines: every forward, or those of `only` one domain; reported as text, or as JSON. */
export interface DoctorOptions {
  only?: string | undefined;
  json?: boolean;
}

/** Runs doctor for one domain (or every configured or live one) and prints the report; 0 when all is well. */
export async function doctor(deps: HookDeps, { only, json = false }: DoctorOptions = {}): Promise<number> {
  const report = await examine(deps, only);
  const failed = [...report.host, ...report.forwards.flatMap((f) => f.findings)].some((f) =>
    f.level === "fail"
  );
  if (json) {
    console.log(JSON.stringify({ ok: !failed, ...report }, null, 2));
  } else {
    console.log(renderReport(report));
  }
  return failed ? 1 : 0;
}

/** The report as people read it: one line per link, `ok`, `note` or `FAIL`, and the fix under a failure. */
export function renderReport(report: DoctorReport): string {
  const lines: string[] = [];
  const add = (f: Finding) => {
    lines.push(`  ${f.level === "fail" ? "FAIL" : f.level.padEnd(4)}  ${f.what}`);
    if (f.fix) lines.push(`        fix: ${f.fix}`);
  };
  lines.push("host");
  report.host.forEach(add);
  for (const f of report.forwards) {
    lines.push(`${f.domain}: ${f.forward}`);
    f.findings.forEach(add);
  }
  if (report.forwards.length === 0) {
    lines.push("No forward to examine: no configured domain runs, and none is live.");
  }
  const failures =
    [...report.host, ...report.forwards.flatMap((f) => f.findings)].filter((f) => f.level === "fail").length;
  lines.push(failures === 0 ? "All is well." : `${failures} problem(s) found.`);
  return lines.join("\n");
}

async function examine(deps: HookDeps, only: string | undefined): Promise<DoctorReport> {
  const s = await survey(deps);
  const chains = await listChains(deps);
  // The daemon that runs each hook of ours must have started after it was installed, or it never calls it.
  const host = [...daemonFindings(readDaemons(), readInstalled()), ...conntrackFindings(deps)];
  // A forward's findings wait for its probes (up to 2 s where the guest drops them): examined in parallel, at most
  // PROBES_AT_ONCE at a time over all domains, and reported in order.
  const forwards: Slot<ForwardReport>[] = [];
  for (const domain of await domainsToExamine(s, only)) forwards.push(...await domainReports(s, domain));
  const found = hostFindings(s.state, {
    facts: s.facts,
    settings: s.config.settings,
    gates: s.gates,
    chains,
    families: [...s.families],
  });
  return { host: [...found, ...host], forwards: await inParallel(forwards, PROBES_AT_ONCE) };
}

/** What doctor reads once before it examines a domain: the config, the host, what is live, what runs. */
interface Survey {
  deps: HookDeps;
  config: Config;
  facts: HostFacts;
  state: FirewallState;
  gates: ForeignGate[];
  running: string[];
  live: ReturnType<typeof forwardsByDomain>;
  /** The families the forwards examined use: forwarding off in another is no failure of theirs (added as found). */
  families: Set<Family>;
  /** A running guest's XML; undefined for one that does not run. */
  xmlOf: (domain: string) => Promise<string | undefined>;
  /** A domain's forwards, planned once. */
  planOf: (domain: string) => Promise<DomainForwards>;
}

/** A domain's forwards as planned, where they are fine. */
type Planned = Extract<DomainForwards, { kind: "ok" }>;

/** Reads the config, the host's facts, the live firewall and its gates, and the running guests. */
async function survey(deps: HookDeps): Promise<Survey> {
  const { config, facts } = await loadFor({ ...deps, problem: () => {} });
  const state = await readLibvirtElsewhere(applyDeps(deps, config), await readLive(applyDeps(deps, config)));
  const gates = await foreignGates(applyDeps(deps, config), state.nft?.hooks).catch(() => []);
  const running = await runningDomains();
  const live = forwardsByDomain(state, await knownNames(config));
  // The running guests' XML: the forwards in their metadata, and the addresses found for them.
  const xmlOf = (domain: string) =>
    running.includes(domain) ? runningXml(domain) : Promise.resolve(undefined);
  const plans = new Map<string, DomainForwards>();
  const planOf = async (domain: string) => {
    const known = plans.get(domain);
    if (known) return known;
    // Planned with the default addresses its forwards took when they were applied: they stay on them.
    const pinnedFacts = pinFacts(facts, pinnedDefaults(deps.stateDir, domain));
    const found = await forwardsOf(domain, { config, facts: pinnedFacts, xml: await xmlOf(domain), deps })
      .catch((
        err,
      ) => ({
        kind: "invalid" as const,
        lines: [message(err)],
        why: "its forwards cannot be read",
      }));
    plans.set(domain, found);
    return found;
  };
  return { deps, config, facts, state, gates, running, live, families: new Set(), xmlOf, planOf };
}

/** Whether conntrack is there to delete the connections of a forward that goes or changes target. */
function conntrackFindings(deps: HookDeps): Finding[] {
  if (deps.conntrack === undefined) return [];
  const found = deps.conntrack();
  return [
    found === undefined
      // Forwards work without it: worth knowing, not a problem of the forwards.
      ? note(`${NO_CONNTRACK} (apt-get install conntrack)`)
      : ok(`conntrack (${found}): the connections of a forward that goes or changes target are deleted`),
  ];
}

/** The domains examined: `only` that one, or every running guest with forwards and every domain live, sorted. */
async function domainsToExamine(s: Survey, only: string | undefined): Promise<string[]> {
  const configured = [];
  for (const d of s.running) if ((await s.planOf(d)).kind !== "absent") configured.push(d);
  return only !== undefined ? [only] : [...new Set([...configured, ...s.live.keys()])].sort();
}

/** One domain's reports: why it has no forward, or what waits, then each forward and each outbound NAT. */
async function domainReports(s: Survey, domain: string): Promise<Slot<ForwardReport>[]> {
  for (const f of s.live.get(domain) ?? []) s.families.add(f.family);
  const found = await s.planOf(domain);
  if (found.kind !== "ok") return [unplanned(s, domain, found)];
  return [...pendingReports(s, domain, found), ...await forwardReports(s, domain, found)];
}

/** A domain without forwards to examine: not configured anywhere, or its forwards have errors. */
function unplanned(s: Survey, domain: string, found: Exclude<DomainForwards, Planned>): ForwardReport {
  return {
    domain,
    forward: "(no forward)",
    findings: [
      found.kind === "absent"
        ? fail(
          `"${domain}" is not in ${s.config.file} nor in its hooks.d/, and its XML holds no forwards`,
          "add an entry for it (qemu check validates it), or forwards to its metadata",
        )
        : fail(`its forwards have errors: ${found.why}`, `qemu check --domain=${shellQuote(domain)}`),
    ],
  };
}

/** What keeps a domain's forwards from being as planned: a default address moved, bad leases, guests waited for. */
function pendingReports(s: Survey, domain: string, found: Planned): ForwardReport[] {
  const out: ForwardReport[] = [];
  const moved = s.running.includes(domain)
    ? defaultMoves(domain, { facts: s.facts, pinned: pinnedDefaults(s.deps.stateDir, domain) })
    : [];
  for (const line of moved) out.push({ domain, forward: "(default address)", findings: [note(line)] });
  // Entries switched off (and XML forwards the policy turns off): configured, and nothing of them is live.
  for (const line of found.notes) out.push({ domain, forward: "(switched off)", findings: [note(line)] });
  for (const line of found.leaseProblems) {
    out.push({
      domain,
      forward: "(DHCP leases)",
      findings: [
        fail(line, "libvirt's dnsmasq rewrites it on the next lease change; its live forwards are kept"),
      ],
    });
  }
  for (const w of found.waiting) {
    out.push({
      domain,
      forward: "(waiting)",
      findings: [
        fail(
          `${w.entry}: ${waitingNote(w)}`,
          "the watcher applies it when the guest gets its lease (qemu watch)",
        ),
      ],
    });
  }
  return out;
}

/** Each planned forward's links (a job: it probes the guest), and whether each outbound NAT is live. */
async function forwardReports(s: Survey, domain: string, plan: Planned): Promise<Slot<ForwardReport>[]> {
  const out: Slot<ForwardReport>[] = [];
  const { deps, config, facts, state, gates } = s;
  const xml = await s.xmlOf(domain);
  const liveText = new Set((s.live.get(domain) ?? []).map(describeForward));
  let counters: Promise<Map<string, number>> | undefined;
  for (const f of [...plan.forwards, ...plan.snats]) s.families.add(f.family);
  for (const f of plan.forwards) {
    const text = describeForward(asLiveForward(domain, f));
    out.push(async () => ({
      domain,
      forward: text,
      findings: await forwardFindings(domain, f, {
        acceptIn: config.settings.acceptIn,
        xml,
        facts,
        hostAddresses: config.settings.hostAddresses,
        state,
        gates,
        live: liveText.has(text),
        misplaced: acceptMisplaced(state, domain, [f]),
        counters: await (counters ??= readCounters(deps, domain)),
        flows: await readFlows(deps, f),
      }),
    }));
  }
  // Outbound NAT (snat): live as planned, or not.
  for (const snat of plan.snats) {
    const text = describeForward(asLiveSnat(domain, snat));
    out.push({
      domain,
      forward: text,
      findings: [
        liveText.has(text) ? ok(`the guest's new outgoing connections leave from ${snat.publicIp}`) : fail(
          "the outbound NAT is not live",
          `${qemuCommand("apply", domain)}   (or restart the guest)`,
        ),
      ],
    });
  }
  return out;
}

/** How many forwards doctor examines at once: bounds its processes and sockets whatever the number of guests. */
export const PROBES_AT_ONCE = 64;

/** A value, or a job that makes it (see inParallel). */
type Slot<T> = T | (() => Promise<T>);

/** The values of `slots` in their order, the jobs among them run with at most `limit` at once. */
export async function inParallel<T>(slots: Slot<T>[], limit: number): Promise<T[]> {
  const out: T[] = [];
  let next = 0;
  const worker = async () => {
    while (next < slots.length) {
      const i = next++;
      const slot = slots[i]!;
      out[i] = typeof slot === "function" ? await (slot as () => Promise<T>)() : slot;
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, slots.length)) }, worker));
  return out;
}
