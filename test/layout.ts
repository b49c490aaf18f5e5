/**
 * The program's import graph, read from its sources: which file imports which, and the layer each file is in.
 * `deno run --allow-read test/layout.ts` prints, per folder, the folders it imports from (see CONTRIBUTING.md).
 */

import { dirname, join, normalize, relative } from "node:path";

/** The layers, from the top: a file may import only from its own layer's files or from a layer below. */
export const LAYERS: { name: string; files: (path: string) => boolean }[] = [
  { name: "main.ts", files: (p) => p === "main.ts" },
  { name: "commands/", files: (p) => p.startsWith("commands/") },
  { name: "hook/", files: (p) => p.startsWith("hook/") },
  { name: "rules.ts", files: (p) => p === "rules.ts" },
  { name: "backends/", files: (p) => p.startsWith("backends/") },
  { name: "config.ts", files: (p) => p === "config.ts" },
  { name: "config/", files: (p) => p.startsWith("config/") },
  { name: "system/", files: (p) => p.startsWith("system/") },
];

/** The layer of a source file (its index in LAYERS), or -1 for a file that is no part of the program. */
export function layerOf(path: string): number {
  return LAYERS.findIndex((l) => l.files(path));
}

/** One import: from which file to which, and whether it is loaded only when needed (`import()`). */
export interface Edge {
  from: string;
  to: string;
  dynamic: boolean;
}

/** The program's source files (tests left out), relative to `root`. */
export function sourceFiles(root: string): string[] {
  const out: string[] = [];
  const walk = (dir: string) => {
    for (const e of Deno.readDirSync(join(root, dir))) {
      const path = dir === "" ? e.name : `${dir}/${e.name}`;
      if (e.isDirectory && dir === "" && LAYERS.some((l) => l.name === `${e.name}/`)) walk(path);
      else if (e.isFile && path.endsWith(".ts") && !path.endsWith("_test.ts") && layerOf(path) >= 0) {
        out.push(path);
      }
    }
  };
  walk("");
  return out.sort();
}

/** Every relative import of the program's files, static (`import ... from`) and dynamic (`import(...)`). */
export function importGraph(root: string): Edge[] {
  const edges: Edge[] = [];
  for (const from of sourceFiles(root)) {
    const text = Deno.readTextFileSync(join(root, from));
    const found = [
      ...[...text.matchAll(/^(?:import|export)\b[^;]*?\bfrom\s+"(\.[^"]+)"/gms)].map((m) =>
        [m[1], false] as const
      ),
      ...[...text.matchAll(/\bimport\(\s*"(\.[^"]+)"\s*\)/g)].map((m) => [m[1], true] as const),
    ];
    for (const [spec, dynamic] of found) {
      const to = normalize(join(dirname(from), spec!)).replaceAll("\\", "/");
      edges.push({ from, to: relative(".", to), dynamic });
    }
  }
  return edges;
}

/** The imports that run against the layers: to a layer above, or between two folders of the same layer. */
export function upward(edges: Edge[]): Edge[] {
  return edges.filter((e) => layerOf(e.to) < layerOf(e.from));
}

/** The import circles among files, each as the list of its files (none, in a house that runs one way). */
export function circles(edges: Edge[]): string[][] {
  const next = new Map<string, string[]>();
  for (const e of edges) next.set(e.from, [...next.get(e.from) ?? [], e.to]);
  const found: string[][] = [];
  const state = new Map<string, "open" | "done">();
  const visit = (file: string, path: string[]) => {
    if (state.get(file) === "done") return;
    if (state.get(file) === "open") {
      found.push(path.slice(path.indexOf(file)));
      return;
    }
    state.set(file, "open");
    for (const to of next.get(file) ?? []) visit(to, [...path, file]);
    state.set(file, "done");
  };
  for (const file of next.keys()) visit(file, []);
  return found;
}

/** Per layer: the layers its files import from, with how many imports. */
export function byLayer(edges: Edge[]): string[] {
  const lines: string[] = [];
  for (const [i, layer] of LAYERS.entries()) {
    const counts = new Map<string, number>();
    for (const e of edges) {
      if (layerOf(e.from) !== i) continue;
      const to = LAYERS[layerOf(e.to)]?.name ?? e.to;
      counts.set(to, (counts.get(to) ?? 0) + 1);
    }
    const targets = [...counts].sort((a, b) =>
      LAYERS.findIndex((l) => l.name === a[0]) - LAYERS.findIndex((l) => l.name === b[0])
    );
    lines.push(
      `${layer.name.padEnd(10)} -> ${targets.map(([t, n]) => `${t} (${n})`).join(", ") || "nothing"}`,
    );
  }
  return lines;
}

/** The backends' one interface: the only module of backends/ that commands/ and hook/ import. */
export const BACKEND_INTERFACE = "backends/backend.ts";

/** The imports from commands/ or hook/ into backends/ that go past the interface (none, in a house with one). */
export function pastInterface(edges: Edge[]): Edge[] {
  return edges.filter((e) =>
    (e.from.startsWith("commands/") || e.from.startsWith("hook/")) && e.to.startsWith("backends/") &&
    e.to !== BACKEND_INTERFACE
  );
}

/** The module that alone runs the programs that change the firewall (see batchRunners). */
export const BATCH_RUNNER = "backends/batch.ts";

/**
 * Whether a source text runs a batch: a call of a runner (`.run(`, `runChecked(`, `Deno.Command(`) whose
 * arguments name an iptables-restore (`restore`), `nft -f` (`"-f"`) or a batch's own command line (`.argv`).
 */
export function runsBatch(text: string): boolean {
  for (const m of text.matchAll(/(?:\.run|\brunChecked|\bDeno\.Command)\(/g)) {
    // The call's arguments, up to the parenthesis that closes it.
    let depth = 0, end = m.index + m[0].length - 1;
    for (; end < text.length; end++) {
      if (text[end] === "(") depth++;
      else if (text[end] === ")" && --depth === 0) break;
    }
    // `nft -f -` (a script on stdin), not any program's -f (conntrack's family).
    if (/restore|"-f",\s*"-"|\.argv\b/.test(text.slice(m.index + m[0].length, end))) return true;
  }
  return false;
}

/** The program's files that run a batch (see runsBatch): BATCH_RUNNER alone, in a house with one way out. */
export function batchRunners(root: string): string[] {
  return sourceFiles(root).filter((f) => runsBatch(Deno.readTextFileSync(join(root, f))));
}

if (import.meta.main) {
  const edges = importGraph(".");
  console.log(byLayer(edges).join("\n"));
  const bad = upward(edges), loops = circles(edges);
  for (const e of bad) console.log(`UPWARD: ${e.from} -> ${e.to}`);
  for (const c of loops) console.log(`CIRCLE: ${c.join(" -> ")}`);
  if (bad.length + loops.length > 0) Deno.exit(1);
}
