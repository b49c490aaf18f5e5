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
import { message } from "../system/report.ts";
import { type DoctorReport, fail, type Finding, type ForwardReport, note, ok } from "./doctor_findings.ts";
import { forwardFindings, readCounters } from "./doctor_forward.ts";
import { allChains, hostFindings } from "./doctor_host.ts";
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
  const host = hostFindings(state, facts, config.settings, gates, await allChains(deps));
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
  const forwards: ForwardReport[] = [];
  for (const domain of domains) {
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
            : fail(`its forwards have errors: ${found.why}`, `qemu check --domain ${domain}`),
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
    const counters = await readCounters(deps, domain);
    for (const f of plan.forwards) {
      const text = describeForward(asLiveForward(domain, f));
      forwards.push({
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
          counters,
        }),
      });
    }
    // Outbound NAT (snat): live as planned, or not.
    for (const s of plan.snats) {
      const text = describeForward(asLiveSnat(domain, s));
      forwards.push({
        domain,
        forward: text,
        findings: [
          liveText.has(text)
            ? ok(`the guest's new outgoing connections leave from ${s.publicIp}`)
            : fail("the outbound NAT is not live", `qemu apply ${domain}   (or restart the guest)`),
        ],
      });
    }
  }
  return { host, forwards };
}
