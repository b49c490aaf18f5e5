/** `deno task bench` (root): times the hook's start/stopped calls in a throw-away netns against their floor. */

import { parseArgs } from "node:util";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import {
  BASE_TABLES,
  busyRuleset,
  chainHashOf,
  configText,
  countOurs,
  type DomainSpec,
  manyDomains,
  nftGateRemoval,
  nftStartBatch,
  nftStopBatches,
  ourLines,
  PRIVATE_IP,
  PUBLIC_IP,
  singleDomain,
  stopBatches,
  stripComments,
  withoutGate,
} from "./fixtures.ts";
import { attribute, type ConfigProbe } from "./attribution.ts";
import { type Form, type FormId, prepareForms } from "./forms.ts";
import {
  countSpawned,
  deleteStaleNamespaces,
  describeFailure,
  Netns,
  run,
  runOk,
  type RunResult,
  traceExec,
} from "./proc.ts";
import { ms, summarize, type Summary, table } from "./stats.ts";
import { GATE_CHAIN, GATE_JUMP, NFT_TABLE } from "../backends/names.ts";
import { nftRemoveDomain } from "../backends/nftables.ts";
import { nftOwners, parseNftJson } from "../backends/nftables_live.ts";

/** Slack over floor + runtime startup that the hook may use per call. */
const SLACK_MS = 20;
/** Peak memory target. */
const RSS_LIMIT_MB = 80;
const HOOK_TIMEOUT_MS = 60_000;

const REPO = resolve(fileURLToPath(new URL("..", import.meta.url)));
const USAGE = `Usage: deno run -A bench/bench.ts [options]   (as root)
  --quick            N = 1 and 10, 2 runs, no busy firewall, 5 domains x 5 (for CI: proves the bench works)
  --runs K           timed runs per configuration (default 5; the many-domain scenario makes one pass)
  --sizes 1,10,100   forwards of the single domain (default 1,10,100,1000)
  --domains D        domains of 5 forwards each in the many-domain scenario (default 100, 0 skips it)
  --busy-rules R     foreign rules loaded for the busy firewall (default 10000, 0 skips the busy variant)
  --installed-only   time only the installed form of the hook
  --source-only      time only deno run from source
  --json FILE        also write the results as JSON
  --attribute        also show where the time goes: module imports, config loading, firewall reads
  --flows 0,100,10000  connections of the domain's forwards to delete at stop, besides 1000 of the host's own
                     (default 0,100,10000; 0,100 with --quick; "none" skips; needs conntrack)
Targets: start and stop each <= floor + runtime startup + ${SLACK_MS} ms; processes per call constant;
  peak RSS < ${RSS_LIMIT_MB} MB.`;

type Op = "start" | "stopped";
const OPS: Op[] = ["start", "stopped"];
/** quiet, busy: the iptables backend; nftables: our native backend, on a host with no iptables rules. */
type Firewall = "quiet" | "busy" | "nftables";

interface Options {
  quick: boolean;
  runs: number;
  sizes: number[];
  domains: number;
  busyRules: number;
  forms: FormId[];
  json: string | undefined;
  attribute: boolean;
  /** Connections of ours to delete at stop, per row of the flows section (empty: no section). */
  flows: number[];
}

interface Scenario {
  id: string;
  label: string;
  domains: DomainSpec[];
  runs: number;
  floorRuns: number;
}

interface Spawned {
  count: number;
  names: string[];
}

interface Row {
  scenario: string;
  firewall: Firewall;
  form: FormId;
  op: Op;
  forwards: number;
  domains: number;
  samples: number[];
  time: Summary;
  floor: Summary;
  nftFloor: Summary | undefined;
  /** The floor the target is measured against: that of the program the hook changed the firewall with. */
  floorBy: "iptables-restore" | "nft";
  startup: Summary;
  launcherMs: number;
  /** median − (floor by floorBy + startup − launcher): what the hook adds beyond the floor and the runtime. */
  extraMs: number;
  ratio: number;
  timeMet: boolean;
  processes: Spawned | undefined;
  rssMb: number | undefined;
}

interface Context {
  opts: Options;
  workdir: string;
  forms: Form[];
  ns: Netns;
  firewall: Firewall;
  plans: Map<string, string>;
  nft: { ok: true } | { ok: false; reason: string };
  /** iptables is iptables-nft: where nft is there too, the hook removes a domain with one nft transaction. */
  iptablesNft: boolean;
  strace: boolean;
  gnuTime: boolean;
  notes: string[];
  cold: Map<FormId, number>;
  t0: number;
}

function parseOptions(args: string[]): Options {
  const { values } = parseArgs({
    args,
    options: {
      quick: { type: "boolean", default: false },
      runs: { type: "string" },
      sizes: { type: "string" },
      domains: { type: "string" },
      "busy-rules": { type: "string" },
      "installed-only": { type: "boolean", default: false },
      "source-only": { type: "boolean", default: false },
      json: { type: "string" },
      attribute: { type: "boolean", default: false },
      flows: { type: "string" },
      help: { type: "boolean", short: "h", default: false },
    },
    allowPositionals: false,
    strict: true,
  });
  if (values.help) {
    console.log(USAGE);
    Deno.exit(0);
  }
  const int = (name: string, text: string | undefined, fallback: number, min: number) => {
    if (text === undefined) return fallback;
    const n = Number(text);
    if (!Number.isInteger(n) || n < min) throw new Error(`--${name} needs a whole number >= ${min}`);
    return n;
  };
  const quick = values.quick;
  const sizes = values.sizes === undefined
    ? quick ? [1, 10] : [1, 10, 100, 1000]
    : values.sizes.split(",").map((s) => int("sizes", s.trim(), 0, 1));
  if (values["installed-only"] && values["source-only"]) {
    throw new Error("--installed-only and --source-only exclude each other");
  }
  return {
    quick,
    runs: int("runs", values.runs, quick ? 2 : 5, 1),
    sizes,
    domains: int("domains", values.domains, quick ? 5 : 100, 0),
    busyRules: int("busy-rules", values["busy-rules"], quick ? 0 : 10_000, 0),
    forms: values["installed-only"]
      ? ["installed"]
      : values["source-only"]
      ? ["source"]
      : ["installed", "source"],
    json: values.json,
    attribute: values.attribute,
    flows: values.flows === "none"
      ? []
      : values.flows === undefined
      ? quick ? [0, 100] : [0, 100, 10_000]
      : values.flows.split(",").map((s) => int("flows", s.trim(), 0, 0)),
  };
}

function progress(ctx: { t0: number }, what: string) {
  console.error(`[${((performance.now() - ctx.t0) / 1000).toFixed(1).padStart(6)} s] ${what}`);
}

function domainXml(domain: string): string {
  const name = domain.replace(/&/g, "&amp;").replace(/</g, "&lt;");
  return `<domain type='kvm'><name>${name}</name><devices></devices></domain>\n`;
}

/** One hook call exactly as libvirt makes it (inside the namespace); throws when the hook fails. */
async function hookCall(
  ctx: Context,
  form: Form,
  config: string,
  domain: string,
  op: Op,
  wrapper: string[] = [],
): Promise<RunResult> {
  const argv = ctx.ns.hookArgv(
    [...form.hook, domain, op, op === "start" ? "begin" : "end", "-"],
    [`CONFIG_FILENAME=${config}`],
    wrapper,
  );
  const r = await run(argv, { stdin: domainXml(domain), cwd: "/", timeoutMs: HOOK_TIMEOUT_MS });
  if (r.code !== 0 || r.timedOut) throw new Error(`The hook failed: ${describeFailure(argv, r)}`);
  const err = r.stderr.trim();
  if (err && wrapper.length === 0) note(ctx, `${form.id} ${op} wrote to stderr: ${err.split("\n")[0]}`);
  return r;
}

function note(ctx: Context, line: string) {
  if (!ctx.notes.includes(line)) ctx.notes.push(line);
}

/** Loads a batch with iptables-restore --noflush --wait (as the hook does) and returns the time taken. */
async function restore(ctx: Context, batch: string): Promise<number> {
  const argv = ctx.ns.hookArgv(["iptables-restore", "--noflush", "--wait"]);
  const r = await run(argv, { stdin: batch, cwd: "/", timeoutMs: HOOK_TIMEOUT_MS });
  if (r.code !== 0 || r.timedOut) {
    throw new Error(`Floor batch failed: ${describeFailure(argv, r)}\n${batch}`);
  }
  return r.ms;
}

async function nftLoad(ctx: Context, batch: string): Promise<number> {
  const argv = ctx.ns.hookArgv(["nft", "-f", "/dev/stdin"]);
  const r = await run(argv, { stdin: batch, cwd: "/", timeoutMs: HOOK_TIMEOUT_MS });
  if (r.code !== 0 || r.timedOut) throw new Error(`nft batch failed: ${describeFailure(argv, r)}\n${batch}`);
  return r.ms;
}

async function save(ctx: Context): Promise<string> {
  return await ctx.ns.exec(["iptables-save"]);
}

async function expectOurs(ctx: Context, want: { chains: number; rules: number }, when: string) {
  const got = countOurs(await save(ctx));
  if (got.chains !== want.chains || got.rules !== want.rules) {
    throw new Error(
      `${when}: expected ${want.chains} chain(s) and ${want.rules} rule(s) of ours, found ${got.chains} and ${got.rules}`,
    );
  }
}

/** The iptables-restore batch the hook applies for a domain, from `main.ts plan` (cached across namespaces). */
async function planFor(ctx: Context, scenario: string, config: string, domain: string): Promise<string> {
  const key = `${scenario}/${domain}`;
  const cached = ctx.plans.get(key);
  if (cached !== undefined) return cached;
  const text = await runOk(
    ctx.ns.hookArgv([Deno.execPath(), "run", "-A", join(REPO, "main.ts"), "plan", domain], [
      `CONFIG_FILENAME=${config}`,
    ]),
    { cwd: "/", timeoutMs: HOOK_TIMEOUT_MS },
  );
  const batch = stripComments(text);
  ctx.plans.set(key, batch);
  return batch;
}

/** Processes spawned (strace) and peak RSS (GNU time) of one stop and one start of `domain`, which is live. */
async function extras(
  ctx: Context,
  form: Form,
  config: string,
  domain: string,
): Promise<Record<Op, { processes: Spawned | undefined; rssMb: number | undefined }>> {
  const out: Record<Op, { processes: Spawned | undefined; rssMb: number | undefined }> = {
    start: { processes: undefined, rssMb: undefined },
    stopped: { processes: undefined, rssMb: undefined },
  };
  for (const op of ["stopped", "start"] as const) {
    if (!ctx.strace) break;
    const log = join(ctx.workdir, `strace-${form.id}-${op}.log`);
    await hookCall(ctx, form, config, domain, op, traceExec(log));
    out[op].processes = countSpawned(await Deno.readTextFile(log));
  }
  for (const op of ["stopped", "start"] as const) {
    if (!ctx.gnuTime) break;
    const file = join(ctx.workdir, `time-${form.id}-${op}.txt`);
    await hookCall(ctx, form, config, domain, op, ["/usr/bin/time", "-f", "%M", "-o", file]);
    const kb = Number((await Deno.readTextFile(file)).trim().split("\n").pop());
    out[op].rssMb = Number.isFinite(kb) ? kb / 1024 : undefined;
  }
  return out;
}

/** Runtime startup (empty program, same way as each form) and the launcher alone, inside the namespace. */
async function measureStartup(ctx: Context): Promise<{ launcher: Summary; startup: Map<FormId, Summary> }> {
  const runs = Math.max(10, 2 * ctx.opts.runs);
  const launcher: number[] = [];
  const samples = new Map<FormId, number[]>(ctx.forms.map((f) => [f.id, []]));
  const once = async (argv: string[]) => {
    const full = ctx.ns.hookArgv(argv, [`CONFIG_FILENAME=${join(ctx.workdir, "none.jsonc")}`]);
    const r = await run(full, { stdin: domainXml("bench"), cwd: "/", timeoutMs: HOOK_TIMEOUT_MS });
    if (r.code !== 0 || r.timedOut) throw new Error(`Startup probe failed: ${describeFailure(full, r)}`);
    return r.ms;
  };
  for (const form of ctx.forms) await once(form.empty); // warm-up
  for (let i = 0; i < runs; i++) {
    launcher.push(await once(["/bin/true"]));
    for (const form of ctx.forms) samples.get(form.id)!.push(await once(form.empty));
  }
  return {
    launcher: summarize(launcher),
    startup: new Map([...samples].map(([id, s]) => [id, summarize(s)])),
  };
}

/**
 * Warm-up: the first call of each form after install fills the module/emit cache; it is reported (ctx.cold), not
 * counted. Returns the empty series the timed runs fill, per form and operation.
 */
async function warmUp(ctx: Context, config: string, domain: string): Promise<Map<string, number[]>> {
  const times = new Map<string, number[]>();
  for (const form of ctx.forms) {
    const first = await hookCall(ctx, form, config, domain, "start");
    if (!ctx.cold.has(form.id)) ctx.cold.set(form.id, first.ms);
    await hookCall(ctx, form, config, domain, "stopped");
    for (const op of OPS) times.set(timeKey(form.id, op), []);
  }
  return times;
}

async function runScenario(
  ctx: Context,
  sc: Scenario,
  startup: Map<FormId, Summary>,
  launcher: Summary,
): Promise<Row[]> {
  if (ctx.firewall === "nftables") return await runNftScenario(ctx, sc, startup, launcher);
  const config = join(ctx.workdir, `${sc.id}.jsonc`);
  await Deno.writeTextFile(config, configText(sc.domains));
  const names = sc.domains.map((d) => d.name);
  const last = names[names.length - 1]!;
  const perDomain = sc.domains[0]!.ports.length;
  // Per domain: three chains, four jumps, a DNAT and a hairpin rule a forward, the jump to LVH-USER and the one
  // accept, a log rule a forward where the entry logs, and where it counts a counting chain with a rule a
  // forward and two jumps into it (its guest's address both ways); LVH-USER itself and our gate (its chain and
  // its rule in FORWARD), made by the first start.
  const logged = sc.domains[0]!.log ? perDomain : 0;
  const counted = sc.domains[0]!.counters ? 1 : 0;
  const live = {
    chains: (3 + counted) * names.length + 2,
    rules: names.length * (2 * perDomain + 6 + logged + counted * (perDomain + 2)) + 1,
  };
  const none = { chains: 0, rules: 0 };
  const where = `${ctx.firewall} ${sc.label}`;

  progress(ctx, `${where}: plans`);
  const plans = new Map<string, string>();
  for (const d of names) plans.set(d, await planFor(ctx, sc.id, config, d));
  // Each plan is for an empty firewall, so each creates our gate; the hook's batch does that for the first domain
  // only, and the floor does the same.
  for (const d of names.slice(1)) plans.set(d, withoutGate(plans.get(d)!));

  const times = await warmUp(ctx, config, names[0]!);
  const ext = new Map<FormId, Awaited<ReturnType<typeof extras>>>();
  let hookLines: string[] = [];
  const hookRun = async (r: number) => {
    for (const form of ctx.forms) {
      progress(ctx, `${where}: ${form.id} run ${r + 1}/${sc.runs}`);
      for (const d of names) {
        times.get(timeKey(form.id, "start"))!.push((await hookCall(ctx, form, config, d, "start")).ms);
      }
      if (r === 0) {
        const text = await save(ctx);
        const got = countOurs(text);
        if (got.chains !== live.chains || got.rules !== live.rules) {
          const tables = await ctx.ns.exec(["nft", "list", "tables"]).catch(() => "?");
          const want = JSON.stringify(live), found = JSON.stringify(got);
          throw new Error(
            `${where} ${form.id}: after start expected ${want} of ours in iptables-save, found ${found}; ` +
              `did the hook use another backend? nft tables in the namespace: ${
                tables.trim().replaceAll("\n", ", ")
              }`,
          );
        }
        hookLines = ourLines(text);
        ext.set(form.id, await extras(ctx, form, config, last));
      }
      for (const d of names) {
        times.get(timeKey(form.id, "stopped"))!.push((await hookCall(ctx, form, config, d, "stopped")).ms);
      }
      if (r === 0) await expectOurs(ctx, none, `${where} ${form.id}: after stopped`);
    }
  };

  const floor = { start: [] as number[], stopped: [] as number[] };
  const floorRun = async (r: number) => {
    for (const d of names) floor.start.push(await restore(ctx, plans.get(d)!));
    const text = await save(ctx);
    if (r === 0) {
      const mine = ourLines(text);
      if (mine.join("\n") !== hookLines.join("\n")) {
        note(
          ctx,
          `${where}: the floor batch's rules differ from the hook's (${mine.length} vs ${hookLines.length} lines)`,
        );
      }
    }
    const stops = stopBatches(text);
    for (const d of names) {
      // The last domain's stop takes our gate and the empty LVH-USER too, as the hook's does.
      const userChain = d === last
        ? `*filter\n-D FORWARD ${GATE_JUMP}\n-X ${GATE_CHAIN}\n-X LVH-USER\nCOMMIT\n`
        : "";
      floor.stopped.push(await restore(ctx, stops.get(chainHashOf(plans.get(d)!))! + userChain));
    }
    if (r === 0) await expectOurs(ctx, none, `${where}: after the floor`);
  };

  const nft = { start: [] as number[], stopped: [] as number[] };
  const translated = new Map<string, string>();
  if (ctx.nft.ok) {
    for (const d of names) {
      const file = join(ctx.workdir, "translate.rules");
      await Deno.writeTextFile(file, plans.get(d)!);
      translated.set(d, nftStartBatch(await ctx.ns.exec(["iptables-restore-translate", "-f", file])));
    }
  }
  const nftRun = async (r: number) => {
    for (const d of names) nft.start.push(await nftLoad(ctx, translated.get(d)!));
    const listings = [];
    for (const table of ["nat", "filter"]) {
      listings.push({ table, text: await ctx.ns.exec(["nft", "-a", "list", "table", "ip", table]) });
    }
    const stops = nftStopBatches(listings);
    const gate = nftGateRemoval(listings[1]!.text);
    for (const d of names) {
      const userChain = d === last ? `${gate}delete chain ip filter LVH-USER\n` : "";
      nft.stopped.push(await nftLoad(ctx, stops.get(chainHashOf(plans.get(d)!))! + userChain));
    }
    if (r === 0) await expectOurs(ctx, none, `${where}: after the nft floor`);
  };

  // Interleaved, run by run: the hook and its floors see the same state of the machine, whatever drifts.
  for (let r = 0; r < Math.max(sc.runs, sc.floorRuns); r++) {
    if (r < sc.runs) await hookRun(r);
    if (r < sc.floorRuns) {
      await floorRun(r);
      if (ctx.nft.ok) await nftRun(r);
    }
  }

  return rowsOf(ctx, sc, { times, ext, startup, launcher }, (op, e) => {
    const nftFloor = ctx.nft.ok ? summarize(nft[op]) : undefined;
    // The hook removes with one nft transaction where iptables is iptables-nft (strace shows which, when there).
    const byNft = op === "stopped" && nftFloor !== undefined &&
      (e?.processes ? !e.processes.names.includes("iptables-restore") : ctx.iptablesNft);
    return { floor: summarize(floor[op]), nftFloor, byNft };
  });
}

/** How many connections of the host's own (to its sshd on the public address) the flows section tracks. */
const HOST_FLOWS = 1000;

/** Forwards of the flows section's domain. */
const FLOW_FORWARDS = 10;

/**
 * `conntrack -I` lines (for `conntrack -R`) of `count` established TCP connections to the public address: DNATed
 * by the bench domain's forwards (`ours`, spread over its ports 10000.., replies from the guest's port 22), or the
 * host's own to its port 22 (replies from the public address itself). From 198.51.100.0/24, one port each.
 */
function flowLines(count: number, ours: boolean, firstPort = 1024): string[] {
  return Array.from({ length: count }, (_, i) => {
    const client = `198.51.100.${1 + (i % 250)}`;
    const sport = firstPort + Math.floor(i / 250);
    const dport = ours ? 10_000 + (i % FLOW_FORWARDS) : 22;
    const replySrc = ours ? PRIVATE_IP : PUBLIC_IP;
    return `-I -p tcp -s ${client} -d ${PUBLIC_IP} --sport ${sport} --dport ${dport} -r ${replySrc} ` +
      `-q ${client} --reply-port-src 22 --reply-port-dst ${sport} --state ESTABLISHED -t 600`;
  });
}

/**
 * What deleting connections costs a stop: the bench domain with FLOW_FORWARDS forwards is started, the kernel is
 * given `ours` connections through them and HOST_FLOWS of the host's own (or none at all), then it is stopped,
 * timed; afterwards none of ours may be left, and every one of the host's. Rows per form: nothing tracked (no
 * listing, no conntrack: the stop as before), the host's own only (conntrack runs, deletes nothing), and each
 * count of ours.
 */
async function runFlows(ctx: Context, flows: number[]): Promise<string> {
  const spec = singleDomain(FLOW_FORWARDS);
  const config = join(ctx.workdir, "flows.jsonc");
  await Deno.writeTextFile(config, configText(spec));
  const domain = spec[0]!.name;
  const cases = [
    { label: "nothing tracked", ours: 0, host: 0 },
    ...flows.map((n) => ({
      label: n === 0 ? "host's own only" : `${n} of ours`,
      ours: n,
      host: HOST_FLOWS,
    })),
  ];
  const count = async (filter: string[]) =>
    (await run(ctx.ns.argv(["conntrack", "-L", ...filter]), { timeoutMs: 60_000 })).stdout.split("\n")
      .filter((l) => l.trim() !== "").length;
  const load = async (c: { ours: number; host: number }) => {
    await ctx.ns.exec(["conntrack", "-F"]).catch(() => "");
    const lines = [...flowLines(c.ours, true), ...flowLines(c.host, false, 40_000)];
    if (lines.length > 0) {
      await ctx.ns.exec(["conntrack", "-R", "-"], { stdin: lines.join("\n") + "\n", timeoutMs: 300_000 });
    }
  };
  const out: string[][] = [];
  for (const form of ctx.forms) {
    await warmUp(ctx, config, domain);
    let none: Summary | undefined;
    for (const c of cases) {
      progress(ctx, `flows: ${form.id} ${c.label}`);
      const samples: number[] = [];
      for (let r = 0; r < ctx.opts.runs; r++) {
        await hookCall(ctx, form, config, domain, "start");
        await load(c);
        samples.push((await hookCall(ctx, form, config, domain, "stopped")).ms);
        if (r === 0) {
          const left = await count(["-r", PRIVATE_IP]);
          const host = await count(["-r", PUBLIC_IP]);
          if (left !== 0 || host !== c.host) {
            throw new Error(
              `flows, ${c.label}: after stop ${left} of ours left (want 0), ${host} of the host's`,
            );
          }
        }
      }
      let procs: Spawned | undefined;
      if (ctx.strace) {
        const log = join(ctx.workdir, `strace-flows-${form.id}.log`);
        await hookCall(ctx, form, config, domain, "start");
        await load(c);
        await hookCall(ctx, form, config, domain, "stopped", traceExec(log));
        procs = countSpawned(await Deno.readTextFile(log));
      }
      const time = summarize(samples);
      none ??= time;
      out.push([
        form.id,
        c.label,
        String(c.ours),
        String(c.host),
        ms(time.median),
        `${ms(time.min)}–${ms(time.max)}`,
        c === cases[0] ? "" : `${time.median - none.median >= 0 ? "+" : ""}${ms(time.median - none.median)}`,
        procs ? `${procs.count} (${procs.names.join(", ")})` : "-",
      ]);
    }
    await ctx.ns.exec(["conntrack", "-F"]).catch(() => "");
  }
  return [
    `Deleting connections at stop (quiet firewall, one domain of ${FLOW_FORWARDS} forwards, ${ctx.opts.runs} runs; ms; ` +
    "+: against nothing tracked)",
    "",
    table(
      ["form", "tracked", "ours", "host's", "median", "min–max", "extra", "processes"],
      out,
      [false, false, true, true, true, true, true, false],
    ),
  ].join("\n");
}

/** Our nftables table as nft lists it (JSON), or an empty listing where there is none. */
async function ourTable(ctx: Context): Promise<string> {
  const r = await run(ctx.ns.hookArgv(["nft", "-j", "list", "table", "inet", NFT_TABLE]), {
    timeoutMs: 30_000,
  });
  return r.code === 0 ? r.stdout : `{"nftables": []}`;
}

/**
 * The native nftables backend (`"backend": "nftables"`) on a host without iptables rules: start writes our table
 * with one `nft -f`, stopped removes the domain's objects with another. Floors: `nft -f` of the very commands
 * (start: those `main.ts plan` prints; stopped: those the hook derives from the live table, nftRemoveDomain).
 */
async function runNftScenario(
  ctx: Context,
  sc: Scenario,
  startup: Map<FormId, Summary>,
  launcher: Summary,
): Promise<Row[]> {
  const config = join(ctx.workdir, `${sc.id}-nft.jsonc`);
  await Deno.writeTextFile(config, configText(sc.domains, "nftables"));
  const names = sc.domains.map((d) => d.name);
  const last = names[names.length - 1]!;
  const where = `${ctx.firewall} ${sc.label}`;
  progress(ctx, `${where}: plans`);
  const plans = new Map<string, string>();
  for (const d of names) plans.set(d, await planFor(ctx, `${sc.id}-nft`, config, d));
  const expectMine = async (want: number, when: string) => {
    const live = parseNftJson(await ourTable(ctx));
    const owners = nftOwners(live).size;
    if (owners !== want) {
      throw new Error(`${when}: expected ${want} domain(s) in our nft table, found ${owners}`);
    }
  };
  const times = await warmUp(ctx, config, names[0]!);
  const ext = new Map<FormId, Awaited<ReturnType<typeof extras>>>();
  const hookRun = async (r: number) => {
    for (const form of ctx.forms) {
      progress(ctx, `${where}: ${form.id} run ${r + 1}/${sc.runs}`);
      for (const d of names) {
        times.get(timeKey(form.id, "start"))!.push((await hookCall(ctx, form, config, d, "start")).ms);
      }
      if (r === 0) {
        await expectMine(names.length, `${where} ${form.id}: after start`);
        ext.set(form.id, await extras(ctx, form, config, last));
      }
      for (const d of names) {
        times.get(timeKey(form.id, "stopped"))!.push((await hookCall(ctx, form, config, d, "stopped")).ms);
      }
      if (r === 0) await expectMine(0, `${where} ${form.id}: after stopped`);
    }
  };
  const nft = { start: [] as number[], stopped: [] as number[] };
  const floorRun = async (r: number) => {
    for (const d of names) nft.start.push(await nftLoad(ctx, plans.get(d)!));
    if (r === 0) await expectMine(names.length, `${where}: after the floor`);
    for (const d of names) {
      // What the hook removes, derived as it derives it: from the table as it is now.
      const commands = nftRemoveDomain(d, parseNftJson(await ourTable(ctx)));
      nft.stopped.push(await nftLoad(ctx, commands.join("\n") + "\n"));
    }
    if (r === 0) await expectMine(0, `${where}: after the floor's stops`);
  };
  for (let r = 0; r < Math.max(sc.runs, sc.floorRuns); r++) {
    if (r < sc.runs) await hookRun(r);
    if (r < sc.floorRuns) await floorRun(r);
  }
  // The iptables-restore floor does not apply: `-` in its column.
  return rowsOf(
    ctx,
    sc,
    { times, ext, startup, launcher },
    (op) => ({ floor: summarize([]), nftFloor: summarize(nft[op]), byNft: true }),
  );
}

/**
 * A scenario's rows, per form and operation: the hook's times against the floor of the program it changed the
 * firewall with (`floorOf` says which, from the processes it ran), plus the runtime's startup.
 */
function rowsOf(
  ctx: Context,
  sc: Scenario,
  m: {
    times: Map<string, number[]>;
    ext: Map<FormId, Awaited<ReturnType<typeof extras>>>;
    startup: Map<FormId, Summary>;
    launcher: Summary;
  },
  floorOf: (
    op: Op,
    e: { processes: Spawned | undefined } | undefined,
  ) => { floor: Summary; nftFloor: Summary | undefined; byNft: boolean },
): Row[] {
  const rows: Row[] = [];
  for (const form of ctx.forms) {
    for (const op of OPS) {
      const samples = m.times.get(timeKey(form.id, op))!;
      const time = summarize(samples);
      const st = m.startup.get(form.id)!;
      const e = m.ext.get(form.id)?.[op];
      const { floor, nftFloor, byNft } = floorOf(op, e);
      const target = byNft ? nftFloor! : floor;
      const extraMs = time.median - (target.median + st.median - m.launcher.median);
      rows.push({
        scenario: sc.label,
        firewall: ctx.firewall,
        form: form.id,
        op,
        forwards: sc.domains[0]!.ports.length,
        domains: sc.domains.length,
        samples,
        time,
        floor,
        nftFloor,
        floorBy: byNft ? "nft" : "iptables-restore",
        startup: st,
        launcherMs: m.launcher.median,
        extraMs,
        ratio: time.median / target.median,
        timeMet: extraMs <= SLACK_MS,
        processes: e?.processes,
        rssMb: e?.rssMb,
      });
    }
  }
  return rows;
}

/** The key of one form's and operation's times in a scenario. */
function timeKey(form: FormId, op: Op): string {
  return `${form}/${op}`;
}

/** CPU time so far: of the whole machine (busy and total) and of this process with its reaped children. */
async function cpuSnapshot(): Promise<{ busy: number; total: number; ours: number } | undefined> {
  try {
    const cpu = (await Deno.readTextFile("/proc/stat")).split("\n")[0]!.trim().split(/\s+/).slice(1).map(
      Number,
    );
    const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = cpu;
    const busy = user + nice + system + irq + softirq + steal;
    const self = await Deno.readTextFile("/proc/self/stat");
    const f = self.slice(self.lastIndexOf(")") + 2).split(" ").map(Number);
    // Fields 14-17 of proc(5): utime, stime, cutime, cstime (f[0] is field 3).
    const ours = (f[11] ?? 0) + (f[12] ?? 0) + (f[13] ?? 0) + (f[14] ?? 0);
    return { busy, total: busy + idle + iowait, ours };
  } catch {
    return undefined;
  }
}

/** The share of all CPUs that other processes used between two snapshots (0..1). */
function othersShare(
  a: Awaited<ReturnType<typeof cpuSnapshot>>,
  b: Awaited<ReturnType<typeof cpuSnapshot>>,
): number | undefined {
  if (!a || !b || b.total <= a.total) return undefined;
  return Math.round(Math.max(0, (b.busy - a.busy - (b.ours - a.ours)) / (b.total - a.total)) * 100) / 100;
}

/** The commit measured, and whether the working tree had changes. */
async function gitDescribe(): Promise<string> {
  try {
    const head = (await runOk(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], { timeoutMs: 10_000 }))
      .trim();
    const dirty = (await runOk(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"], {
      timeoutMs: 10_000,
    })).trim();
    return dirty ? `${head} + uncommitted changes` : head;
  } catch {
    return "unknown";
  }
}

async function available(argv: string[]): Promise<boolean> {
  try {
    const r = await run(argv, { timeoutMs: 10_000 });
    return r.code === 0;
  } catch {
    return false;
  }
}

function report(
  rows: Row[],
  ctx: { notes: string[]; cold: Map<FormId, number> },
  meta: Record<string, unknown>,
) {
  const header = [
    "scenario",
    "fw",
    "form",
    "op",
    "median",
    "min–max",
    "floor",
    "nft",
    "startup",
    "ratio",
    "extra",
    "target",
    "procs",
    "RSS MB",
  ];
  const body = rows.map((r) => [
    r.scenario,
    r.firewall,
    r.form,
    r.op,
    ms(r.time.median),
    `${ms(r.time.min)}–${ms(r.time.max)}`,
    `${ms(r.floor.median)}${r.floorBy === "iptables-restore" ? "*" : ""}`,
    r.nftFloor ? `${ms(r.nftFloor.median)}${r.floorBy === "nft" ? "*" : ""}` : "skip",
    ms(r.startup.median),
    `${ms(r.ratio)}x`,
    `${r.extraMs >= 0 ? "+" : ""}${ms(r.extraMs)}`,
    r.timeMet ? "met" : "MISSED",
    r.processes ? String(r.processes.count) : "n/a",
    r.rssMb === undefined ? "n/a" : ms(r.rssMb),
  ]);
  console.log(`libvirt-hook-qemu benchmark  ${JSON.stringify(meta)}`);
  console.log("");
  console.log(table(header, body, header.map((_, i) => i >= 4 && i !== 11)));
  console.log("");
  console.log(
    "All times in ms, medians over the runs (many-domain rows: over every domain's call). floor: iptables-restore " +
      "--noflush --wait of the very batch the hook applies (start: `main.ts plan`; stopped: -D the jumps, flush and " +
      "-X the chains). nft: nft -f of the same rules (translated with iptables-restore-translate; stopped: delete " +
      "the jumps by handle, flush and delete the chains, one transaction). *: the floor of the program the hook " +
      "changed the firewall with (on iptables-nft it removes with one nft transaction), which ratio and extra " +
      "use. nftables rows: our native backend on a host without iptables rules; its floor is nft -f of the very " +
      "commands the hook applies (start: `main.ts plan`; stopped: what it derives from the live table), so the " +
      "iptables floor is -. startup: an empty program run the same way. ratio: median / floor*. extra: median − (floor* + " +
      "startup − launcher), " +
      `where launcher (ip netns exec + env -i, in every figure) is ${
        [...new Set(rows.map((r) => `${r.firewall} ${ms(r.launcherMs)}`))].join(", ")
      } ms. target: extra <= ${SLACK_MS} ms.`,
  );
  // The target is about N: within one firewall (quiet or busy), form and operation the count must not move.
  // Across firewalls it may: on a busy host the hook lists single chains instead of reading everything.
  const byForm = new Map<string, { counts: Set<number>; names: Set<string> }>();
  for (const r of rows) {
    if (!r.processes) continue;
    const k = `${r.firewall} ${r.form} ${r.op}`;
    const e = byForm.get(k) ?? { counts: new Set(), names: new Set() };
    e.counts.add(r.processes.count);
    e.names.add(r.processes.names.join(", "));
    byForm.set(k, e);
  }
  console.log("");
  console.log(
    "Processes spawned per call (strace -f -e trace=execve, not counting env, the hook's own sh and deno):",
  );
  for (const [k, e] of byForm) {
    console.log(`  ${k}: ${[...e.counts].join(" / ")}  (${[...e.names].join(" | ")})`);
  }
  for (const [id, t] of ctx.cold) console.log(`First call of ${id} (cold caches, not counted): ${ms(t)} ms`);
  for (const n of ctx.notes) console.log(`Note: ${n}`);

  const missedTime = rows.filter((r) => !r.timeMet);
  const procsKnown = rows.some((r) => r.processes);
  const procsConstant = [...byForm.values()].every((e) => e.counts.size === 1);
  const rss = rows.map((r) => r.rssMb).filter((x): x is number => x !== undefined);
  const maxRss = rss.length ? Math.max(...rss) : undefined;
  console.log("");
  console.log("Targets:");
  console.log(
    `  time (start and stop <= floor + startup + ${SLACK_MS} ms at every N): ${
      missedTime.length === 0 ? "MET" : `NOT MET in ${missedTime.length} of ${rows.length} rows`
    }`,
  );
  for (const r of missedTime) {
    console.log(
      `    missed: ${r.firewall} ${r.scenario} ${r.form} ${r.op}: ${ms(r.time.median)} ms, ${
        ms(r.extraMs)
      } ms over ` +
        `${r.floorBy} floor ${ms((r.floorBy === "nft" ? r.nftFloor! : r.floor).median)} + startup ${
          ms(r.startup.median)
        } − launcher ${ms(r.launcherMs)}`,
    );
  }
  console.log(
    `  processes per call the same whatever N: ${
      !procsKnown ? "UNKNOWN (strace not installed)" : procsConstant ? "MET" : "NOT MET"
    }`,
  );
  console.log(
    `  peak memory < ${RSS_LIMIT_MB} MB: ${
      maxRss === undefined
        ? "UNKNOWN (/usr/bin/time not installed)"
        : maxRss < RSS_LIMIT_MB
        ? `MET (max ${ms(maxRss)} MB)`
        : `NOT MET (max ${ms(maxRss)} MB)`
    }`,
  );
}

async function main(args: string[]): Promise<number> {
  let opts: Options;
  try {
    opts = parseOptions(args);
  } catch (err) {
    console.error(`${err instanceof Error ? err.message : String(err)}\n${USAGE}`);
    return 2;
  }
  if (Deno.uid() !== 0) {
    console.error("bench: needs root (network namespaces and iptables); run it with sudo");
    return 1;
  }
  const t0 = performance.now();
  const workdir = await Deno.makeTempDir({ prefix: "lvh-bench-" });
  const namespaces = new Set<Netns>();
  const created: string[] = [];
  // One cleanup, however many callers (the signal handler and the main flow) wait for it.
  let cleaning: Promise<void> | undefined;
  const cleanup = () =>
    cleaning ??= (async () => {
      for (const ns of namespaces) await ns.delete();
      await Deno.remove(workdir, { recursive: true }).catch(() => {});
      for (const f of created) await Deno.remove(f).catch(() => {});
      await Deno.remove(join(REPO, ".bench")).catch(() => {}); // only when empty
    })();
  let interrupted = false;
  const onSignal = () => {
    interrupted = true;
    console.error("bench: interrupted; deleting the namespace and the temporary files");
    cleanup().finally(() => Deno.exit(130));
  };
  Deno.addSignalListener("SIGINT", onSignal);
  Deno.addSignalListener("SIGTERM", onSignal);
  try {
    for (const tool of [["ip", "-V"], ["iptables-restore", "--version"], ["iptables-save", "--version"]]) {
      if (!(await available(tool))) {
        throw new Error(`${tool[0]} is needed (apt-get install iproute2 iptables)`);
      }
    }
    for (const name of await deleteStaleNamespaces("lvhbench-")) {
      progress({ t0 }, `deleted the namespace ${name}, left by an earlier run that was killed`);
    }
    const strace = await available(["strace", "-V"]);
    const gnuTime = await available(["/usr/bin/time", "-f", "%M", "true"]);
    const cpuBefore = await cpuSnapshot();
    // The tree as install.sh and deno run see it now, before anything is measured.
    const tree = await gitDescribe();
    const { forms, kind } = await prepareForms(
      opts.forms,
      REPO,
      workdir,
      (l) => progress({ t0 }, l),
      created,
    );
    const nftOk = await available(["nft", "--version"]);
    const iptablesNft = /nf_tables/.test(
      (await run(["iptables", "--version"], { timeoutMs: 10_000 }).catch(() => undefined))?.stdout ?? "",
    );
    const translateOk = await available(["iptables-restore-translate", "--version"]);
    const ctx: Context = {
      opts,
      workdir,
      forms,
      ns: undefined as unknown as Netns,
      firewall: "quiet",
      plans: new Map(),
      nft: nftOk && translateOk ? { ok: true } : {
        ok: false,
        reason: nftOk ? "iptables-restore-translate is not installed" : "nft is not installed",
      },
      iptablesNft,
      strace,
      gnuTime,
      notes: [],
      cold: new Map(),
      t0,
    };
    if (!strace) note(ctx, "processes: n/a, strace is not installed (apt-get install strace)");
    if (!gnuTime) note(ctx, "peak memory: n/a, /usr/bin/time is not installed (apt-get install time)");
    if (!ctx.nft.ok) note(ctx, `nft floor: skipped (${ctx.nft.reason})`);

    const scenarios: Scenario[] = opts.sizes.map((n) => ({
      id: `n${n}`,
      label: `N=${n}`,
      domains: singleDomain(n),
      runs: opts.runs,
      floorRuns: Math.max(opts.runs, 5),
    }));
    // The largest N again with `"log": true` and `"counters": true` (new connections are counted in every row).
    const largest = Math.max(...opts.sizes);
    scenarios.push({
      id: `n${largest}log`,
      label: `N=${largest}, log, counters`,
      domains: singleDomain(largest).map((d) => ({ ...d, log: true, counters: true })),
      runs: opts.runs,
      floorRuns: Math.max(opts.runs, 5),
    });
    if (opts.domains > 0) {
      scenarios.push({
        id: `d${opts.domains}`,
        label: `${opts.domains}x5`,
        domains: manyDomains(opts.domains, 5),
        runs: 1,
        floorRuns: 1,
      });
    }
    const firewalls: Firewall[] = [
      ...(opts.busyRules > 0 ? ["quiet", "busy"] as const : ["quiet"] as const),
      ...(nftOk ? ["nftables"] as const : []),
    ];
    if (!nftOk) note(ctx, "nftables backend rows: skipped (nft is not installed)");
    const rows: Row[] = [];
    const startups: Record<string, unknown> = {};
    const sections: string[] = [];
    const attributionConfigs: ConfigProbe[] = [];
    if (opts.attribute) {
      const sizes = [...new Set([Math.min(...opts.sizes), Math.max(...opts.sizes)])];
      for (const n of sizes) {
        const path = join(workdir, `attribute-n${n}.jsonc`);
        await Deno.writeTextFile(path, configText(singleDomain(n)));
        attributionConfigs.push({ label: `N=${n}`, path });
      }
      if (opts.domains > 0) {
        const path = join(workdir, `attribute-d${opts.domains}.jsonc`);
        await Deno.writeTextFile(path, configText(manyDomains(opts.domains, 5)));
        attributionConfigs.push({ label: `${opts.domains}x5`, path });
      }
    }
    for (const fw of firewalls) {
      const ns = await Netns.create(`lvhbench-${Deno.pid}-${fw}`);
      namespaces.add(ns);
      ctx.ns = ns;
      ctx.firewall = fw;
      // The nftables variant is a host with no iptables rules at all: our table is all there is.
      if (fw !== "nftables") {
        await ns.exec(["iptables-restore", "--noflush"], { stdin: BASE_TABLES });
        await ns.exec(["ip6tables-restore", "--noflush"], { stdin: BASE_TABLES });
      }
      if (fw === "busy") {
        progress(ctx, `busy: loading ${opts.busyRules} foreign rules`);
        await ns.exec(["iptables-restore", "--noflush"], {
          stdin: busyRuleset(opts.busyRules),
          timeoutMs: 300_000,
        });
      }
      progress(ctx, `${fw}: runtime startup`);
      const { launcher, startup } = await measureStartup(ctx);
      startups[fw] = { launcher, startup: Object.fromEntries(startup) };
      for (const sc of scenarios) rows.push(...await runScenario(ctx, sc, startup, launcher));
      if (fw === "quiet" && opts.flows.length > 0) {
        if (await available(["conntrack", "--version"])) sections.push(await runFlows(ctx, opts.flows));
        else note(ctx, "flows section: skipped (conntrack is not installed: apt-get install conntrack)");
      }
      if (opts.attribute) {
        progress(ctx, `${fw}: attribution`);
        const title = fw === "busy" ? `busy firewall, ${opts.busyRules} foreign rules` : "quiet firewall";
        sections.push(
          await attribute(ns, title, forms, attributionConfigs, Math.max(opts.runs, 5), ctx.nft.ok),
        );
      }
      await ns.delete();
      namespaces.delete(ns);
    }
    const ipt = (await runOk(["iptables", "--version"], { timeoutMs: 10_000 })).trim();
    const meta = {
      installed: kind,
      forms: forms.map((f) => `${f.id}: ${f.label}`),
      deno: Deno.version.deno,
      iptables: ipt,
      kernel: Deno.osRelease(),
      cpus: navigator.hardwareConcurrency,
      runs: opts.runs,
      busyRules: opts.busyRules,
      seconds: Math.round((performance.now() - t0) / 1000),
      otherCpuShare: othersShare(cpuBefore, await cpuSnapshot()),
      tree,
    };
    const others = meta.otherCpuShare;
    if (others !== undefined && others > 0.1) {
      note(
        ctx,
        `other processes used ${
          Math.round(others * 100)
        } % of the CPUs during the bench: the figures are noisy`,
      );
    }
    report(rows, ctx, meta);
    for (const section of sections) console.log(`\n${section}`);
    if (opts.json) {
      await Deno.writeTextFile(
        opts.json,
        JSON.stringify(
          { meta, startups, cold: Object.fromEntries(ctx.cold), notes: ctx.notes, rows },
          null,
          1,
        ) +
          "\n",
      );
      console.log(`\nWrote ${opts.json}`);
    }
    return 0;
  } catch (err) {
    // After a signal, the namespace vanishing under a running step is expected: no stack trace for that.
    if (interrupted) return 130;
    console.error(`bench: ${err instanceof Error ? err.stack ?? err.message : String(err)}`);
    return 1;
  } finally {
    await cleanup();
    Deno.removeSignalListener("SIGINT", onSignal);
    Deno.removeSignalListener("SIGTERM", onSignal);
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
