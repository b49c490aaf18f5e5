/**
 * `deno task bench:packets` (root): the per-packet cost of our rules, as the rate of new TCP connections through
 * one forward when the domain has N = 10 and N = 10 000 forwards, on each backend. In throw-away namespaces wired
 * like a libvirt host (test/lab.ts), nothing of this machine's firewall is touched. The forward measured is the
 * domain's last: on iptables every new connection walks the DNAT chain, and every packet the FORWARD accepts,
 * up to it; on nftables the plain pairs are one map lookup whatever N.
 */

import { parseArgs } from "node:util";
import { canRunLab, createLab, type Lab, LAB_ADDR as A } from "../test/lab.ts";
import { summarize } from "./stats.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const CLIENT = new URL("./connect_rate.ts", import.meta.url).pathname;
const USAGE = `Usage: deno run -A bench/packets.ts [--sizes 10,10000] [--runs 3] [--seconds 2] [--workers 8]`;

/** The config of one domain with `n` forwards to port 22 of g1, the one measured (public 2222) last. */
export function packetConfig(n: number, backend: "iptables" | "nftables"): string {
  const pairs = Array.from({ length: n - 1 }, (_, i) => `[${20000 + i}, 22]`);
  return `{"/settings": {"backend": "${backend}"}, "g1": {"private_ip": "${A.g1v4}", ` +
    `"port_map": {"tcp": [${[...pairs, "[2222, 22]"].join(", ")}]}}}`;
}

async function inHost(lab: Lab, file: string, args: string[]) {
  const r = await lab.exec(lab.ns.host, [Deno.execPath(), "run", "-A", MAIN, ...args], {
    stdin: "<domain><name>g1</name></domain>",
    clearEnv: true,
    env: { PATH: "/usr/sbin:/usr/bin:/sbin:/bin", CONFIG_FILENAME: file },
    timeoutMs: 120_000,
  });
  if (r.code !== 0) throw new Error(`${args.join(" ")} failed: ${r.stderr}`);
}

/** Connections per second through the forward, `runs` times. */
async function measure(
  backend: "iptables" | "nftables",
  n: number,
  opts: { runs: number; seconds: number; workers: number },
): Promise<{ rates: number[]; failed: number; rules: number }> {
  const lab = await createLab({ libvirt: backend });
  const file = await Deno.makeTempFile({ suffix: ".jsonc" });
  try {
    await Deno.writeTextFile(file, packetConfig(n, backend));
    await lab.serve(lab.ns.g1, "tcp", 22, "g1");
    await inHost(lab, file, ["g1", "start", "begin", "-"]);
    if (await lab.connect(lab.ns.client, "tcp", A.hostPub4, 2222) !== `g1 ${A.client4}`) {
      throw new Error(`${backend} N=${n}: the forward does not carry`);
    }
    // Our rules (an nftables map's elements are not rules: its plain pairs are one lookup).
    const rules = backend === "iptables"
      ? (await lab.ruleset(4)).split("\n").filter((l) => l.startsWith("-A LVH-")).length
      : (await lab.nftRuleset()).split("\n").filter((l) => l.includes('comment "libvirt-hook-qemu:')).length;
    // The client's ports: a wide range, reused as soon as the kernel allows.
    await lab.exec(lab.ns.client, ["sysctl", "-q", "-w", "net.ipv4.ip_local_port_range=1024 65535"]);
    const rates: number[] = [];
    let failed = 0;
    for (let r = 0; r < opts.runs; r++) {
      const out = await lab.exec(lab.ns.client, [
        Deno.execPath(),
        "run",
        "--allow-net",
        CLIENT,
        A.hostPub4,
        "2222",
        String(opts.seconds),
        String(opts.workers),
      ], { timeoutMs: (opts.seconds + 30) * 1000 });
      const result = JSON.parse(out.stdout);
      rates.push(result.perSecond);
      failed += result.failed;
    }
    await inHost(lab, file, ["g1", "stopped", "end", "-"]);
    return { rates, failed, rules };
  } finally {
    await lab.close();
    await Deno.remove(file);
  }
}

async function main(): Promise<number> {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      sizes: { type: "string", default: "10,10000" },
      runs: { type: "string", default: "3" },
      seconds: { type: "string", default: "2" },
      workers: { type: "string", default: "8" },
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
  const sizes = values.sizes.split(",").map(Number);
  console.log(
    `New TCP connections per second through one forward (the domain's last), ${opts.workers} client loops, ` +
      `${opts.runs} runs of ${opts.seconds} s; cpus ${navigator.hardwareConcurrency}, kernel ${Deno.osRelease()}`,
  );
  console.log("backend   N       our rules  conn/s median  min–max          failed");
  const medians = new Map<string, number>();
  for (const backend of ["iptables", "nftables"] as const) {
    for (const n of sizes) {
      const { rates, failed, rules } = await measure(backend, n, opts);
      const s = summarize(rates);
      medians.set(`${backend} ${n}`, s.median);
      console.log(
        `${backend.padEnd(9)} ${String(n).padEnd(7)} ${String(rules).padStart(9)}  ${
          s.median.toFixed(0).padStart(13)
        }  ${`${s.min.toFixed(0)}–${s.max.toFixed(0)}`.padEnd(15)}  ${failed}`,
      );
    }
  }
  const [small, large] = [Math.min(...sizes), Math.max(...sizes)];
  for (const backend of ["iptables", "nftables"]) {
    const a = medians.get(`${backend} ${small}`), b = medians.get(`${backend} ${large}`);
    if (a && b) {
      console.log(`${backend}: N=${large} keeps ${(100 * b / a).toFixed(0)} % of the rate at N=${small}`);
    }
  }
  return 0;
}

if (import.meta.main) Deno.exit(await main());
