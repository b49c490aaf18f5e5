/** `--attribute`: where a hook call's time goes, from probes run the way the hook runs and the reads it makes. */

import type { Form } from "./forms.ts";
import { describeFailure, type Netns, run } from "./proc.ts";
import { ms, summarize, table } from "./stats.ts";

/** A config file and an unconfigured domain name to load it with. */
export interface ConfigProbe {
  label: string;
  path: string;
}

interface Variant {
  what: string;
  argv: string[];
  /** The variant its delta is reported against. */
  base?: string;
  env?: string[];
}

/** Times module imports, config loading and firewall reads inside `ns`; returns a printable section. */
export async function attribute(
  ns: Netns,
  title: string,
  forms: Form[],
  configs: ConfigProbe[],
  runs: number,
  nft: boolean,
): Promise<string> {
  const variants: Variant[] = [];
  for (const form of forms) {
    const empty = `${form.id}: empty program`;
    variants.push({ what: empty, argv: form.empty });
    const probes: [string, string][] = [
      ['import "jsonc-parser" (npm, CommonJS)', 'import "jsonc-parser";\n'],
      ['import "node:crypto"', 'import "node:crypto";\n'],
      ['import "node:util"', 'import "node:util";\n'],
      ["import main.ts (whole module graph, nothing run)", 'import "{main}";\n'],
    ];
    for (const [i, [what, code]] of probes.entries()) {
      const argv = await form.probe(`attr${i}`, code);
      if (argv) variants.push({ what: `${form.id}: ${what}`, argv, base: empty });
    }
    for (const c of configs) {
      variants.push({
        what: `${form.id}: hook start of an unconfigured domain, config ${c.label}`,
        argv: [...form.hook, "bench-unconfigured", "start", "begin", "-"],
        env: [`CONFIG_FILENAME=${c.path}`],
        base: empty,
      });
    }
  }
  const reads: [string, string[]][] = [
    ["iptables-save (what the hook reads)", ["iptables-save"]],
    ["iptables-save -t nat", ["iptables-save", "-t", "nat"]],
    ["ip6tables-save", ["ip6tables-save"]],
    ["iptables -t nat -S PREROUTING (one chain)", ["iptables", "-t", "nat", "-S", "PREROUTING"]],
    ["iptables -t filter -S FORWARD (one chain)", ["iptables", "-t", "filter", "-S", "FORWARD"]],
    ["iptables-restore --noflush of an empty *nat batch", ["iptables-restore", "--noflush"]],
  ];
  if (nft) reads.push(["nft list chains", ["nft", "list", "chains"]]);
  for (const [what, argv] of reads) variants.push({ what, argv });

  const samples = new Map<string, number[]>(variants.map((v) => [v.what, []]));
  for (let i = 0; i <= runs; i++) {
    for (const v of variants) {
      const argv = ns.hookArgv(v.argv, v.env ?? []);
      const stdin = v.argv[0] === "iptables-restore" ? "*nat\nCOMMIT\n" : "<domain><name>x</name></domain>\n";
      const r = await run(argv, { stdin, cwd: "/", timeoutMs: 60_000 });
      if (r.code !== 0 || r.timedOut) {
        throw new Error(`Attribution probe failed: ${describeFailure(argv, r)}`);
      }
      if (i > 0) samples.get(v.what)!.push(r.ms); // the first round warms the caches
    }
  }
  const medians = new Map([...samples].map(([k, s]) => [k, summarize(s)]));
  const rows = variants.map((v) => {
    const m = medians.get(v.what)!;
    const base = v.base === undefined ? undefined : medians.get(v.base)!.median;
    return [
      v.what,
      ms(m.median),
      `${ms(m.min)}–${ms(m.max)}`,
      base === undefined ? "" : `${m.median - base >= 0 ? "+" : ""}${ms(m.median - base)}`,
    ];
  });
  return `Where the time goes (${title}; medians of ${runs} runs, each run as libvirt runs the hook):\n` +
    table(["what", "median", "min–max", "vs empty"], rows, [false, true, true, true]);
}
