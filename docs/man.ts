/** Renders the man pages' Markdown sources (docs/*.[58].md, which GitHub shows as they are) to roff. */

import { VERSION } from "../commands/cli.ts";

/** The man pages: their Markdown source and the roff file made from it, relative to docs/. */
export const MAN_PAGES = [
  { source: "libvirt-hook-qemu.8.md", roff: "man/libvirt-hook-qemu.8" },
  { source: "hooks.jsonc.5.md", roff: "man/hooks.jsonc.5" },
] as const;

/** What `renderMan` needs beside the text: the version and date the page's header shows. */
export interface ManOptions {
  /** The program's version (default: VERSION). */
  version?: string;
  /** The date in the header, YYYY-MM-DD (default: none, so that a page renders the same every day). */
  date?: string;
}

/**
 * Renders the small Markdown dialect of docs/*.md to man(7) roff: a title line `# name(section) -- summary`,
 * `##` sections, `###` subsections, paragraphs, `- ` lists (continued by indented lines), fenced code, and
 * inline `code`, **bold** and *italic* (or _italic_, as deno fmt writes it).
 */
export function renderMan(markdown: string, { version = VERSION, date = "" }: ManOptions = {}): string {
  const lines = markdown.replace(/\r\n/g, "\n").split("\n");
  const title = /^# ([\w.-]+)\((\d)\) -- (.+)$/.exec(lines[0] ?? "");
  if (!title) {
    throw new SyntaxError(`The first line must read "# name(section) -- summary", not "${lines[0]}"`);
  }
  const [, name, section, summary] = title;
  const out = [
    `.TH ${quote(name!.toUpperCase())} ${section} ${quote(date)} ${quote(`libvirt-hook-qemu ${version}`)}`,
    ".SH NAME",
    `${escape(name!)} \\- ${inline(summary!)}`,
  ];
  out.push(...renderBlocks(lines.slice(1)));
  return out.join("\n") + "\n";
}

function renderBlocks(lines: string[]): string[] {
  const out: string[] = [];
  let paragraph: string[] = [];
  let item: string[] | undefined;
  const flush = () => {
    if (item) out.push(".IP \\(bu 2", textLine(item.join(" ")));
    else if (paragraph.length > 0) out.push(".PP", textLine(paragraph.join(" ")));
    item = undefined;
    paragraph = [];
  };
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (line.startsWith("```")) {
      flush();
      const end = lines.findIndex((l, j) => j > i && l.startsWith("```"));
      if (end < 0) throw new SyntaxError(`Line ${i + 2}: a code block that never ends`);
      out.push(
        ".PP",
        ".RS 4",
        ".nf",
        ...lines.slice(i + 1, end).map((l) => lineStart(escape(l))),
        ".fi",
        ".RE",
      );
      i = end;
    } else if (/^#{2,3} /.test(line)) {
      flush();
      const [, hashes, text] = /^(#+) (.*)$/.exec(line)!;
      out.push(`${hashes === "##" ? ".SH" : ".SS"} ${quote(text!)}`);
    } else if (line.startsWith("- ")) {
      flush();
      item = [line.slice(2)];
    } else if (line.trim() === "") flush();
    else if (item && line.startsWith("  ")) item.push(line.trim());
    else {
      if (item) flush();
      paragraph.push(line.trim());
    }
  }
  flush();
  return out;
}

/** A text line: inline markup rendered, never starting with a control character. */
function textLine(text: string): string {
  return lineStart(inline(text));
}

function lineStart(line: string): string {
  return /^[.']/.test(line) ? `\\&${line}` : line;
}

/** Inline markup: `code` and **bold** in bold, *italic* and _italic_ in italic; everything else as text. */
function inline(text: string): string {
  let out = "";
  const pattern = /`([^`]+)`|\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*|(?<!\w)_([^_\s][^_]*)_(?!\w)/g;
  let last = 0;
  for (const m of text.matchAll(pattern)) {
    out += escape(text.slice(last, m.index));
    const italic = m[3] ?? m[4];
    out += italic === undefined ? `\\fB${escape(m[1] ?? m[2]!)}\\fR` : `\\fI${escape(italic)}\\fR`;
    last = m.index + m[0].length;
  }
  return out + escape(text.slice(last));
}

/** Text as roff shows it literally: backslashes escaped, hyphens as the minus signs options need. */
function escape(text: string): string {
  return text.replace(/\\/g, "\\e").replace(/-/g, "\\-");
}

function quote(text: string): string {
  return `"${text.replace(/"/g, "\\(dq")}"`;
}

if (import.meta.main) {
  const docs = new URL(".", import.meta.url);
  for (const page of MAN_PAGES) {
    const text = await Deno.readTextFile(new URL(page.source, docs));
    await Deno.mkdir(new URL("man/", docs), { recursive: true });
    await Deno.writeTextFile(new URL(page.roff, docs), renderMan(text));
  }
}
