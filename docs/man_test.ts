/** The man pages: the renderer, the committed roff, and what the pages and the README say of each field and flag. */

import assert from "node:assert/strict";
import { MAN_PAGES, renderMan } from "./man.ts";
import { configSchema } from "../config/schema.ts";
import { PORT_FORWARD_ATTRIBUTES, RANGE_ATTRIBUTES } from "../config/metadata.ts";
import { OPTIONS, TAKES } from "../commands/cli.ts";

const DOCS = new URL(".", import.meta.url);
const ROOT = new URL("..", import.meta.url);
const read = (path: string, base = DOCS) => Deno.readTextFileSync(new URL(path, base));
const page8 = read("libvirt-hook-qemu.8.md");
const page5 = read("hooks.jsonc.5.md");
const readme = read("README.md", ROOT);

Deno.test("renderMan() turns the Markdown dialect into man(7) roff", async (t) => {
  const cases: [string, string, string][] = [
    [
      "title, section, paragraph with inline markup",
      "# tool(8) -- does things\n\n## SYNOPSIS\n\n`tool` *file* [--all]\nand _more_ **here**\n",
      '.TH "TOOL" 8 "" "libvirt-hook-qemu 9.9"\n.SH NAME\ntool \\- does things\n.SH "SYNOPSIS"\n.PP\n' +
      "\\fBtool\\fR \\fIfile\\fR [\\-\\-all] and \\fImore\\fR \\fBhere\\fR\n",
    ],
    [
      "a list item continued by indented lines; a subsection",
      "# a(5) -- b\n### Sub\n- `x`: one\n  two\nafter\n",
      '.TH "A" 5 "" "libvirt-hook-qemu 9.9"\n.SH NAME\na \\- b\n.SS "Sub"\n.IP \\(bu 2\n\\fBx\\fR: one two\n' +
      ".PP\nafter\n",
    ],
    [
      "code kept as it is, backslashes escaped, a leading dot made text",
      "# a(5) -- b\n```\n.x \\ y\n  z\n```\n.dot starts\n",
      '.TH "A" 5 "" "libvirt-hook-qemu 9.9"\n.SH NAME\na \\- b\n.PP\n.RS 4\n.nf\n\\&.x \\e y\n  z\n.fi\n.RE\n' +
      ".PP\n\\&.dot starts\n",
    ],
    [
      "snake_case stays text, not italic",
      "# a(5) -- b\nprivate_ip and _it_\n",
      '.TH "A" 5 "" "libvirt-hook-qemu 9.9"\n.SH NAME\na \\- b\n.PP\nprivate_ip and \\fIit\\fR\n',
    ],
  ];
  for (const [name, markdown, roff] of cases) {
    await t.step(name, () => assert.equal(renderMan(markdown, { version: "9.9" }), roff));
  }
  await t.step("a source without a title line is refused", () => {
    assert.throws(() => renderMan("## NAME\n"), /The first line must read "# name\(section\) -- summary"/);
  });
});

Deno.test("renderMan() made the committed roff of each page (deno task man)", () => {
  for (const page of MAN_PAGES) {
    assert.equal(read(page.roff), renderMan(read(page.source)), `${page.roff} is stale: run deno task man`);
  }
});

/** Every property name the schema declares, at any depth (entry fields, port_map's, port_range's, settings). */
function schemaNames(node: unknown, into = new Set<string>()): Set<string> {
  if (Array.isArray(node)) node.forEach((n) => schemaNames(n, into));
  else if (node !== null && typeof node === "object") {
    for (const [key, value] of Object.entries(node)) {
      if (key === "properties") Object.keys(value as object).forEach((name) => into.add(name));
      schemaNames(value, into);
    }
  }
  return into;
}

/** Whether the text names `name` as code: `name`, or `"name"` inside a code span or block. */
function names(text: string, name: string): boolean {
  return text.includes(`\`${name}\``) || text.includes(`\`"${name}"\``) || text.includes(`"${name}":`);
}

Deno.test("hooks.jsonc(5) documents every field of the schema and every attribute of the XML metadata", () => {
  const fields = [...schemaNames(configSchema())];
  assert.ok(fields.includes("private_ip") && fields.includes("to_port") && fields.includes("xml_forwards"));
  const attributes = [...Object.keys(PORT_FORWARD_ATTRIBUTES), ...Object.keys(RANGE_ATTRIBUTES)];
  const missing = [...fields, ...attributes].filter((name) => !names(page5, name));
  assert.deepEqual(missing, [], "documented nowhere in docs/hooks.jsonc.5.md");
});

/** The CLI's flags as a user types them: --long, and -s where there is a short form. */
function cliFlags(): string[] {
  return Object.entries(OPTIONS).flatMap((
    [name, o],
  ) => [`--${name}`, ...("short" in o ? [`-${o.short}`] : [])]);
}

Deno.test("libvirt-hook-qemu(8) documents every command, every flag and every install.sh option", () => {
  const commands = [...Object.keys(TAKES), "help"];
  assert.deepEqual(commands.filter((c) => !page8.includes(`- \`${c}\``)), [], "commands without an entry");
  assert.deepEqual(cliFlags().filter((f) => !page8.includes(`\`${f}\``)), [], "flags documented nowhere");
  const installFlags = [...read("install.sh", ROOT).matchAll(/^\s+(--[a-z-]+)\)/gm)].map((m) => m[1]!);
  assert.ok(installFlags.includes("--uninstall"));
  assert.deepEqual(installFlags.filter((f) => !page8.includes(`\`${f}\``)), [], "install.sh options");
});

Deno.test("the README names no field, attribute or flag of ours that the man pages lack, and is at most 30 KB", () => {
  const prose = readme.replace(/^```[\s\S]*?^```$/gm, "");
  // Fields: the snake_case names in code spans (the names of other programs' things have no underscore, or are
  // ours in the man pages too: libvirt_network, guest_input).
  const fields = new Set([...prose.matchAll(/`"?([a-z]+(?:_[a-z0-9]+)+)"?`/g)].map((m) => m[1]!));
  assert.ok(fields.has("private_ip"));
  const pages = page5 + page8;
  assert.deepEqual([...fields].filter((f) => !pages.includes(f)), [], "in the README, not in the man pages");
  // Flags: those in our program's and install.sh's command lines, and those standing alone in a code span but
  // for the firewall's own (the README's rule listings show them: --ctorigdst).
  const code = readme.match(/^```[\s\S]*?^```$/gm)!.join("\n");
  const commandLines = [
    ...prose.matchAll(/`(?:qemu|\.?\/?install\.sh|\/etc\/libvirt\/hooks\/qemu)\b[^`]*`/g),
  ];
  const flags = new Set([
    ...commandLines.flatMap((m) => [...m[0].matchAll(/(?<=[\s[])--?[a-zA-Z][a-z-]*/g)].map((f) => f[0])),
    ...[...prose.matchAll(/`(--[a-z][a-z-]*)`/g)].map((m) => m[1]!).filter((f) => !code.includes(f)),
  ]);
  assert.ok(flags.has("--watcher") && flags.has("--json"));
  assert.deepEqual([...flags].filter((f) => !page8.includes(`\`${f}\``)), [], "flags the man page lacks");
  const size = new TextEncoder().encode(readme).length;
  assert.ok(size <= 30_000, `README.md is ${size} bytes; the reference belongs in docs/*.md`);
});

const formatters = (await tryRun("groff", ["--version"])) !== undefined &&
  (await tryRun("man", ["-w"])) !== undefined;
if (!formatters) {
  console.log(
    "man_test.ts: groff or man is not installed: the roff is not formatted here (CI installs man-db)",
  );
}

Deno.test({
  name: "the rendered pages format without a warning (groff) and show as man pages (man -l)",
  ignore: !formatters,
  async fn(t) {
    for (const page of MAN_PAGES) {
      const file = new URL(page.roff, DOCS).pathname;
      await t.step(page.roff, async () => {
        const checked = await tryRun("groff", ["-man", "-Tutf8", "-ww", "-z", file]);
        assert.deepEqual([checked?.code, checked?.stderr], [0, ""]);
        const shown = await tryRun("man", ["-l", file], { MANWIDTH: "100", MAN_KEEP_FORMATTING: "" });
        assert.equal(shown?.code, 0, shown?.stderr);
        assert.match(shown!.stdout, /^NAME\n\s+(libvirt-hook-qemu|hooks\.jsonc) - /m);
        assert.match(shown!.stdout, /^(COMMANDS|ENTRY FIELDS)$/m);
      });
    }
  },
});

async function tryRun(program: string, args: string[], env: Record<string, string> = {}) {
  try {
    const out = await new Deno.Command(program, {
      args,
      env: { ...env, PAGER: "cat" },
      stdout: "piped",
      stderr: "piped",
    })
      .output();
    const d = new TextDecoder();
    return { code: out.code, stdout: d.decode(out.stdout), stderr: d.decode(out.stderr) };
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return undefined;
    throw err;
  }
}
