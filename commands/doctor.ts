/** `doctor`: walks each forward's path, link by link, and says what is OK, what is wrong, and what fixes it. */

import { asLiveForward, asLiveSnat, describeForward, foreignGates } from "../backends/backend.ts";
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
import { allChains, hostFindings, libvirtUnseen, readSysctl } from "./doctor_host.ts";
import { qemuCommand, shellQuote } from "../system/shell.ts";
import { readLive } from "../rules.ts";

/** Runs doctor for one domain (or every configured or live one) and prints the report; 0 when all is well. */
/** What `doctor` examines: every forward, or those of `only` one domain; reported as text, or as JSON. */
export interface DoctorOptions {
  only?: string | undefined;
  json?: boolean;
}

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
  const { config, facts } = await loadFor({ ...deps, problem: () => {} });
  const state = await readLive(applyDeps(deps, config));
  const gates = await foreignGates(applyDeps(deps, config), state.nft?.hooks).catch(() => []);
  const running = await runningDomains();
  const live = forwardsByDomain(state, await knownNames(config));
  const chains = await allChains(deps);
  // The families the forwards examined use: forwarding off in another is no failure of theirs (added as found).
  const families = new Set<Family>();
  const host: Finding[] = [];
  if (deps.conntrack !== undefined) {
    const found = deps.conntrack();
    host.push(
      found === undefined
        // Forwards work without it: worth knowing, not a problem of the forwards.
        ? note(`${NO_CONNTRACK} (apt-get install conntrack)`)
        : ok(`conntrack (${found}): the connections of a forward that goes or changes target are deleted`),
    );
  }

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
  const configured = [];
  for (const d of running) if ((await planOf(d)).kind !== "absent") configured.push(d);
  const domains = only !== undefined ? [only] : [...new Set([...configured, ...live.keys()])].sort();
  // A forward's findings wait for its probes (up to 2 s where the guest drops them): examined in parallel, at most
  // PROBES_AT_ONCE at a time over all domains, and reported in order.
  const forwards: Slot<ForwardReport>[] = [];
  for (const domain of domains) {
    for (const f of live.get(domain) ?? []) families.add(f.family);
    const found = await planOf(domain);
    if (found.kind !== "ok") {
      forwards.push({
        domain,
        forward: "(no forward)",
        findings: [
          found.kind === "absent"
            ? fail(
              `"${domain}" is not in ${config.file} nor in its hooks.d/, and its XML holds no forwards`,
              "add an entry for it (qemu check validates it), or forwards to its metadata",
            )
            : fail(`its forwards have errors: ${found.why}`, `qemu check --domain=${shellQuote(domain)}`),
        ],
      });
      continue;
    }
    const moved = running.includes(domain)
      ? defaultMoves(domain, { facts, pinned: pinnedDefaults(deps.stateDir, domain) })
      : [];
    for (const line of moved) forwards.push({ domain, forward: "(default address)", findings: [note(line)] });
    for (const line of found.leaseProblems) {
      forwards.push({
        domain,
        forward: "(DHCP leases)",
        findings: [
          fail(line, "libvirt's dnsmasq rewrites it on the next lease change; its live forwards are kept"),
        ],
      });
    }
    for (const w of found.waiting) {
      forwards.push({
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
    const plan = found;
    const xml = await xmlOf(domain);
    const liveText = new Set((live.get(domain) ?? []).map(describeForward));
    let counters: Promise<Map<string, number>> | undefined;
    for (const f of [...plan.forwards, ...plan.snats]) families.add(f.family);
    for (const f of plan.forwards) {
      const text = describeForward(asLiveForward(domain, f));
      forwards.push(async () => ({
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
    for (const s of plan.snats) {
      const text = describeForward(asLiveSnat(domain, s));
      forwards.push({
        domain,
        forward: text,
        findings: [
          liveText.has(text) ? ok(`the guest's new outgoing connections leave from ${s.publicIp}`) : fail(
            "the outbound NAT is not live",
            `${qemuCommand("apply", domain)}   (or restart the guest)`,
          ),
        ],
      });
    }
  }
  // libvirt's iptables chains unseen by the iptables we run: in iptables-legacy's tables, perhaps. Only where those
  // tables are loaded: iptables-legacy-save would load the kernel's legacy modules otherwise.
  const legacySave = libvirtUnseen(state) && (readSysctl("/proc/net/ip_tables_names") ?? "") !== ""
    ? await deps.runner.run(["iptables-legacy-save"], { timeoutMs: 5000 }).then(
      (r) => r.code === 0 ? r.stdout : undefined,
      () => undefined,
    )
    : undefined;
  const found = hostFindings(state, {
    facts,
    settings: config.settings,
    gates,
    chains,
    families: [...families],
    legacySave,
  });
  return { host: [...found, ...host], forwards: await inParallel(forwards, PROBES_AT_ONCE) };
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
