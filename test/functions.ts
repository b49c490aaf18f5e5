/**
 * The program's top-level functions, read from its sources: how long each is and how many parameters it takes.
 * `deno run --allow-read test/functions.ts [folder...]` prints those over the bounds (see CONTRIBUTING.md).
 */

import { join } from "node:path";
import { sourceFiles } from "./layout.ts";

/** A function longer than this many lines reads as several steps: name them. */
export const MAX_LINES = 100;
/** A function with more parameters than this takes an options object instead (CONTRIBUTING.md). */
export const MAX_PARAMETERS = 3;

/** One top-level function declaration: where it stands, its length in lines, its parameters' count. */
export interface FunctionFacts {
  file: string;
  name: string;
  line: number;
  lines: number;
  parameters: number;
}

/**
 * The top-level `function` declarations of one file's text: from the line that declares one at column 0 to its
 * closing brace at column 0 (as `deno fmt` leaves every top-level function), both lines counted.
 */
export function functionsOf(file: string, text: string): FunctionFacts[] {
  const lines = text.split("\n");
  const out: FunctionFacts[] = [];
  for (let i = 0; i < lines.length; i++) {
    const m = /^(?:export\s+)?(?:async\s+)?function\*?\s*([A-Za-z_$][\w$]*)/.exec(lines[i]!);
    if (!m) continue;
    const parameters = parameterCount(lines.slice(i).join("\n").slice(m[0].length));
    let end = i;
    // A declaration without a body (an overload) ends at its semicolon; a body ends at the first "}" at column 0.
    if (!/;\s*$/.test(lines[i]!) || /\{\s*$/.test(lines[i]!)) {
      while (end < lines.length && !/^\}/.test(lines[end]!)) end++;
    }
    out.push({ file, name: m[1]!, line: i + 1, lines: end - i + 1, parameters });
  }
  return out;
}

/**
 * How many parameters a signature declares: `rest` starts after the function's name (type parameters, if any,
 * then the parenthesised list); commas are counted at the list's own depth, outside strings, brackets and types.
 */
export function parameterCount(rest: string): number {
  let start = rest.search(/\S/);
  if (rest[start] === "<") start = scan(rest, start, () => {});
  const open = rest.indexOf("(", start);
  if (open < 0) return 0;
  let count = 0, something = false;
  scan(rest, open, (c, depth) => {
    if (c === "," && depth === 1) {
      count++;
      something = false;
    } else if (depth >= 1 && !/\s/.test(c)) something = true;
  });
  return count + (something ? 1 : 0);
}

/**
 * Walks `text` from the bracket at `from` to the one that closes it, calling `each` with every other character
 * and the depth it stands at (1: the outer brackets' own level); a string counts as one character, `=>` as none.
 * Returns the index after the closing bracket.
 */
function scan(text: string, from: number, each: (c: string, depth: number) => void): number {
  let depth = 0;
  for (let i = from; i < text.length; i++) {
    const c = text[i]!;
    if (c === '"' || c === "'" || c === "`") {
      const close = text.indexOf(c, i + 1);
      each(c, depth);
      i = close < 0 ? text.length : close;
    } else if (c === "=" && text[i + 1] === ">") i++;
    else if ("([{<".includes(c)) {
      if (depth > 0) each(c, depth);
      depth++;
    } else if (")]}>".includes(c)) {
      depth--;
      if (depth === 0) return i + 1;
      each(c, depth);
    } else each(c, depth);
  }
  return text.length;
}

/** Every top-level function of the program's sources under `root` (tests left out), in the given folders. */
export function programFunctions(root: string, folders?: string[]): FunctionFacts[] {
  return sourceFiles(root)
    .filter((f) => !folders || folders.some((d) => f === d || f.startsWith(d.endsWith("/") ? d : `${d}/`)))
    .flatMap((f) => functionsOf(f, Deno.readTextFileSync(join(root, f))));
}

/** The functions over either bound, one line each: `file:line name: N lines, P parameters`. */
export function overBounds(functions: FunctionFacts[]): string[] {
  return functions.filter((f) => f.lines > MAX_LINES || f.parameters > MAX_PARAMETERS)
    .map((f) => `${f.file}:${f.line} ${f.name}: ${f.lines} lines, ${f.parameters} parameters`);
}

/** The source modules (tests left out) and which of them have a test beside them (`x.ts` and `x_test.ts`). */
export function testedBeside(root: string): { modules: string[]; tested: string[] } {
  const modules = sourceFiles(root).filter((f) => f !== "main.ts");
  const tested = modules.filter((f) => {
    try {
      return Deno.statSync(join(root, f.replace(/\.ts$/, "_test.ts"))).isFile;
    } catch {
      return false;
    }
  });
  return { modules, tested };
}

if (import.meta.main) {
  const root = new URL("..", import.meta.url).pathname;
  const folders = Deno.args.length > 0 ? Deno.args : undefined;
  for (const line of overBounds(programFunctions(root, folders))) console.log(line);
  const { modules, tested } = testedBeside(root);
  const share = Math.round((tested.length / modules.length) * 1000) / 10;
  console.log(`tests beside modules: ${tested.length} of ${modules.length} (${share} %)`);
  for (const m of modules.filter((m) => !tested.includes(m))) console.log(`  untested: ${m}`);
}
