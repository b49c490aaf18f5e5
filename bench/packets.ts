/**
 * `deno task bench:packets` (root): what our rules cost each packet (issue 25), in throw-away namespaces wired like
 * a libvirt host (test/lab.ts; nothing of this machine's firewall is touched). Per host (libvirt on iptables or on
 * nftables) and backend, and per shape (one domain of N forwards; D domains of 20): the rate of new TCP
 * connections through the last forward of the last domain, and the bulk throughput of an unrelated guest's flow
 * (g2, which has no forward, to the client: it passes FORWARD like every guest's traffic), and of a flow through
 * a forward of the last domain (client to g1), each against the smallest shape of the same host and backend. A
 * shape "counted" has `"counters": true` and `"log": true` on every entry: what counting costs each packet.
 */

import { parseArgs } from "node:util";
import { canRunLab, createLab, type Lab, LAB_ADDR as A } from "../test/lab.ts";
import { summarize } from "./stats.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const CLIENT = new URL("./connect_rate.ts", import.meta.url).pathname;
const BULK = new URL("./bulk.ts", import.meta.url).pathname;
const USAGE =
  "Usage: deno run -A bench/packets.ts [--sizes 10,10000] [--domains 500] [--runs 3] [--seconds 2] " +
  "[--workers 8] [--setups iptables/iptables,iptables/nftables,nftables/nftables]";

/** The targets of issue 25, as fractions of the smallest shape's rate. */
export const TARGETS = { connections: 0.9, bulk: 0.95 };

/** A host (what libvirt uses) and the backend our rules are written with. */
export interface Setup {
  libvirt: "iptables" | "nftables";
  backend: "iptables" | "nftables";
}

/**
 * `domains` domains of `per` forwards each; the last forward of the last domain (g1, public 2222) is measured,
 * and the one before it (public 5001) carries the forwarded flow. `counted`: every entry counts and logs.
 */
export interface Shape {
  domains: number;
  per: number;
  counted?: boolean;
}

/** A shape as the report names it: `1x10000`, `1x10000 counted`. */
export function shapeName(shape: Shape): string {
  return `${shape.domains}x${shape.per}${shape.counted ? " counted" : ""}`;
}

/** The name of the domain `i` of a shape: the last, measured, is g1. */
export function domainName(shape: Shape, i: number): string {
  return i === shape.domains - 1 ? "g1" : `d${i}`;
}

/**
 * The config of a shape: every forward to port 22 of g1's address (none to g2, the unrelated guest), public ports
 * from 20000 up, then the forwarded flow's (5001 to g1's 5001) and the measured one (2222) last.
 */
export function packetConfig(shape: Shape, backend: Setup["backend"]): string {
  const entries: string[] = [];
  const flags = shape.counted ? `"counters": true, "log": true, ` : "";
  for (let d = 0; d < shape.domains; d++) {
    const last = d === shape.domains - 1;
    const own = last ? ["[5001, 5001]", "[2222, 22]"].slice(shape.per >= 2 ? 0 : 1) : [];
    const pairs = Array.from(
      { length: shape.per - own.length },
      (_, i) => `[${20000 + d * shape.per + i}, 22]`,
    );
    pairs.push(...own);
    entries.push(
      `"${domainName(shape, d)}": {"private_ip": "${A.g1v4}", ${flags}"port_map": {"tcp": [${
        pairs.join(", ")
      }]}}`,
    );
  }
  return `{"/settings": {"backend": "${backend}"}, ${entries.join(", ")}}`;
}

async function hook(lab: Lab, file: string, args: string[]) {
  const r = await lab.exec(lab.ns.host, [Deno.execPath(), "run", "-A", MAIN, ...args], {
    stdin: `<domain><name>${args[0]}</name></domain>`,
    clearEnv: true,
    env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", CONFIG_FILENAME: file },
    timeoutMs: 120_000,
  });
  if (r.code !== 0) throw new Error(`${args.join(" ")} failed: ${r.stderr}`);
}

/** Starts every domain of a shape, `parallel` hook calls at a time (the lock orders their writes). */
async function startAll(lab: Lab, file: string, shape: Shape, parallel = 4) {
  let next = 0;
  const worker = async () => {
    while (next < shape.domains) await hook(lab, file, [domainName(shape, next++), "start", "begin", "-"]);
  };
  await Promise.all(Array.from({ length: Math.min(parallel, shape.domains) }, worker));
}

/** Our rules: iptables lines in our chains, and nftables rules with our comment (a map's elements are not rules). */
async function ourRules(lab: Lab): Promise<number> {
  // Not `nft list ruleset`: it also prints iptables-nft's tables, with a warning for each labelled rule (slow).
  const list = async (argv: string[]) =>
    (await lab.exec(lab.ns.host, argv, { timeoutMs: 120_000 })).stdout.split("\n");
  const ipt = (await list(["iptables-save"])).filter((l) => l.startsWith("-A LVH-")).length;
  const nft = (await list(["nft", "list", "table", "inet", "libvirt_hook_qemu"]))
    .filter((l) => l.includes('comment "libvirt-hook-qemu:')).length;
  return ipt + nft;
}

/**
 * What the runs measured: new connections per second through the forward, the unrelated flow's MB/s, and the
 * MB/s of the flow through a forward.
 */
interface Measured {
  connections: number[];
  bulk: number[];
  forwarded: number[];
  failed: number;
  rules: number;
}

/** A lab with a shape's forwards in place, and the client's sink for the unrelated flow. */
interface Prepared {
  lab: Lab;
  file: string;
  sinks: Deno.ChildProcess[];
  m: Measured;
}

/** Builds a lab and starts every domain of the shape in it. */
async function prepare(setup: Setup, shape: Shape): Promise<Prepared> {
  const lab = await createLab({ libvirt: setup.libvirt });
  const file = await Deno.makeTempFile({ suffix: ".jsonc" });
  const p: Prepared = {
    lab,
    file,
    sinks: [],
    m: { connections: [], bulk: [], forwarded: [], failed: 0, rules: 0 },
  };
  try {
    await Deno.writeTextFile(file, packetConfig(shape, setup.backend));
    await lab.serve(lab.ns.g1, "tcp", 22, "g1");
    await startAll(lab, file, shape);
    if (await lab.connect(lab.ns.client, "tcp", A.hostPub4, 2222) !== `g1 ${A.client4}`) {
      throw new Error(`${setup.libvirt}/${setup.backend} ${shapeName(shape)}: the forward does not carry`);
    }
    p.m.rules = await ourRules(lab);
    // The client's ports: a wide range, reused as soon as the kernel allows.
    await lab.exec(lab.ns.client, ["sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=1024 65535"]);
    // The sinks of the unrelated flow (the client's) and of the forwarded one (g1's).
    for (const ns of [lab.ns.client, lab.ns.g1]) {
      p.sinks.push(
        new Deno.Command("ip", {
          args: ["netns", "exec", ns, Deno.execPath(), "run", "--allow-net", BULK, "sink", "5001"],
          stdout: "null",
          stderr: "null",
        }).spawn(),
      );
    }
    return p;
  } catch (err) {
    await dispose(p);
    throw err;
  }
}

/** One run: a connection rate and a bulk flow, one after the other. */
async function sample(p: Prepared, opts: { seconds: number; workers: number }): Promise<void> {
  const { lab } = p;
  const c = await lab.exec(lab.ns.client, [
    Deno.execPath(),
    "run",
    "--allow-net",
    CLIENT,
    A.hostPub4,
    "2222",
    String(opts.seconds),
    String(opts.workers),
  ], { timeoutMs: (opts.seconds + 30) * 1000 });
  const result = JSON.parse(c.stdout);
  p.m.connections.push(result.perSecond);
  p.m.failed += result.failed;
  p.m.bulk.push(await bulk(lab, { from: lab.ns.g2, to: A.client4, seconds: opts.seconds }));
  p.m.forwarded.push(await bulk(lab, { from: lab.ns.client, to: A.hostPub4, seconds: opts.seconds }));
}

async function dispose(p: Prepared): Promise<void> {
  for (const sink of p.sinks) {
    sink.kill();
    await sink.status;
  }
  await p.lab.close();
  await Deno.remove(p.file).catch(() => {});
}

/**
 * Every shape of a setup measured run by run, interleaved (each run measures every shape once, one after the
 * other): on a shared machine the ratios are taken within a run, where the load is the same.
 */
async function measureSetup(
  setup: Setup,
  shapes: Shape[],
  opts: { runs: number; seconds: number; workers: number },
): Promise<{ shape: Shape; m: Measured }[]> {
  const prepared: Prepared[] = [];
  try {
    for (const shape of shapes) prepared.push(await prepare(setup, shape));
    for (let r = 0; r < opts.runs; r++) for (const p of prepared) await sample(p, opts);
    return prepared.map((p, i) => ({ shape: shapes[i]!, m: p.m }));
  } finally {
    for (const p of prepared) await dispose(p);
  }
}

/** One bulk flow to a sink's port 5001 (retried while the sink starts listening), in MB/s. */
async function bulk(lab: Lab, { from, to, seconds }: { from: string; to: string; seconds: number }) {
  for (let attempt = 0; attempt < 50; attempt++) {
    const r = await lab.exec(from, [
      Deno.execPath(),
      "run",
      "--allow-net",
      BULK,
      "send",
      to,
      "5001",
      String(seconds),
    ], { timeoutMs: (seconds + 30) * 1000 });
    if (r.code === 0) return JSON.parse(r.stdout).mbPerSecond as number;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error(`the flow to ${to} does not reach its sink`);
}

/** The report's lines for one setup: a row per shape, then the ratios against the first shape and the targets. */
export function report(setup: Setup, rows: { shape: Shape; m: Measured }[]): string[] {
  const name = `${setup.libvirt}/${setup.backend}`;
  const lines: string[] = [];
  for (const { shape, m } of rows) {
    const c = summarize(m.connections), b = summarize(m.bulk), f = summarize(m.forwarded);
    lines.push(
      `${name.padEnd(18)} ${shapeName(shape).padEnd(15)} ${String(m.rules).padStart(6)}  ${
        c.median.toFixed(0).padStart(7)
      }  ${`${c.min.toFixed(0)}–${c.max.toFixed(0)}`.padEnd(12)} ${b.median.toFixed(0).padStart(7)}  ${
        `${b.min.toFixed(0)}–${b.max.toFixed(0)}`.padEnd(10)
      } ${f.median.toFixed(0).padStart(7)}  ${
        `${f.min.toFixed(0)}–${f.max.toFixed(0)}`.padEnd(10)
      } ${m.failed}`,
    );
  }
  const [base, ...rest] = rows;
  if (!base) return lines;
  // Ratios run by run (the shapes of a run were measured under the same load): their median and spread.
  const ratios = (of: number[], to: number[]) => summarize(of.map((x, i) => x / (to[i] ?? NaN)));
  // A ratio's median and spread; with a target, whether it is met.
  const share = (x: ReturnType<typeof summarize>, target?: number) =>
    `${(100 * x.median).toFixed(0)} % (${(100 * x.min).toFixed(0)}–${(100 * x.max).toFixed(0)}${
      target === undefined ? "" : `; target ${100 * target} %: ${x.median >= target ? "met" : "MISSED"}`
    })`;
  for (const { shape, m } of rest) {
    // The targets are for forwards as they are by default; a counted shape's cost is reported, not judged.
    const judged = (x: ReturnType<typeof summarize>, target: number) =>
      share(x, shape.counted ? undefined : target);
    lines.push(
      `${name}: ${shapeName(shape)} against ${shapeName(base.shape)}: new connections ` +
        `${judged(ratios(m.connections, base.m.connections), TARGETS.connections)}, unrelated flow ${
          judged(ratios(m.bulk, base.m.bulk), TARGETS.bulk)
        }, forwarded flow ${share(ratios(m.forwarded, base.m.forwarded))}`,
    );
  }
  return lines;
}

/** The setups named by `--setups` (`<libvirt>/<backend>`, comma-separated). */
export function parseSetups(text: string): Setup[] {
  return text.split(",").map((s) => {
    const [libvirt, backend] = s.split("/");
    const ok = (x: string | undefined): x is "iptables" | "nftables" => x === "iptables" || x === "nftables";
    if (!ok(libvirt) || !ok(backend)) {
      throw new Error(`--setups: "${s}" is not <iptables|nftables>/<iptables|nftables>`);
    }
    return { libvirt, backend };
  });
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      sizes: { type: "string", default: "10,10000" },
      domains: { type: "string", default: "500" },
      runs: { type: "string", default: "3" },
      seconds: { type: "string", default: "2" },
      workers: { type: "string", default: "8" },
      setups: { type: "string", default: "iptables/iptables,iptables/nftables,nftables/nftables" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const can = await canRunLab();
  if (!can.ok) {
    console.error(`bench:packets: ${can.reason}`);
    return 1;
  }
  const opts = {
    runs: Number(values.runs),
    seconds: Number(values.seconds),
    workers: Number(values.workers),
  };
  const shapes: Shape[] = values.sizes.split(",").map((n) => ({ domains: 1, per: Number(n) }));
  if (Number(values.domains) > 0) shapes.push({ domains: Number(values.domains), per: 20 });
  // The smallest and the largest one domain again with counters and logging on: what counting costs, and
  // what it costs at scale.
  const single = shapes.filter((s) => s.domains === 1).map((s) => s.per);
  for (const per of new Set([Math.min(...single), Math.max(...single)])) {
    shapes.push({ domains: 1, per, counted: true });
  }
  console.log(
    `New TCP connections per second through one forward (the last domain's last), ${opts.workers} client loops, ` +
      `MB/s of an unrelated guest's bulk flow and of one through a forward; ${opts.runs} runs of ${opts.seconds} s ` +
      `each; "counted": every entry with "counters" and "log"; ` +
      `cpus ${navigator.hardwareConcurrency}, kernel ${Deno.osRelease()}`,
  );
  console.log(
    "libvirt/backend    shape            rules   conn/s  min–max         MB/s  min–max    fwd MB/s min–max    failed",
  );
  for (const setup of parseSetups(values.setups)) {
    for (const line of report(setup, await measureSetup(setup, shapes, opts))) console.log(line);
  }
  return 0;
}

if (import.meta.main) Deno.exit(await main());
