/**
 * XML as the hook reads it (libvirt's domain and network XML): a strict, namespace-aware parser (npm:saxes) that
 * keeps where each element and attribute stands, for problems that name a line and a column. Loaded only where
 * XML must be read: `await loadXml()` first.
 */

import type { SaxesParser as Parser } from "saxes";

/** An attribute, with the 1-based line and column where its name begins. */
export interface XmlAttribute {
  name: string;
  local: string;
  uri: string;
  value: string;
  line: number;
  column: number;
}

/** An element, with the 1-based line and column of its `<`; text content is not kept (libvirt's data we read is in attributes). */
export interface XmlElement {
  /** The qualified name as written (`lvh:range`). */
  name: string;
  local: string;
  uri: string;
  line: number;
  column: number;
  attributes: XmlAttribute[];
  children: XmlElement[];
}

/** XML that is not well-formed, where the parser stopped. */
export class XmlSyntaxError extends Error {
  constructor(readonly line: number, readonly column: number, readonly reason: string) {
    super(`${line}:${column}: ${reason}`);
  }
}

let saxes: typeof import("./saxes.ts") | undefined;

/** Loads the parser (a module of its own in the installed bundle: ~1 ms, paid only where XML is read). */
export async function loadXml(): Promise<void> {
  saxes ??= await import("./saxes.ts");
}

function parser(): Parser<{ xmlns: true; position: true }> {
  if (!saxes) throw new Error("Cannot read XML: the parser is not loaded (await loadXml() first)");
  return new saxes.SaxesParser({ xmlns: true, position: true });
}

/** The last document parsed: a hook call reads one domain XML in several places (its forwards, its taps). */
let last: { text: string; root: XmlElement } | undefined;

/**
 * Parses a whole document into its root element; throws XmlSyntaxError where it is not well-formed XML. The
 * same text again gives the same tree (treat it as read-only).
 */
export function parseXml(text: string): XmlElement {
  if (last?.text === text) return last.root;
  const root = parse(text);
  last = { text, root };
  return root;
}

function parse(text: string): XmlElement {
  const p = parser();
  const lines = text.split("\n");
  const stack: XmlElement[] = [];
  let root: XmlElement | undefined;
  let start = { line: 1, column: 1 };
  const attrs: XmlAttribute[] = [];
  p.on("opentagstart", (tag) => {
    // The parser stands just past the name and the character after it: the `<` is that far back on this line.
    start = { line: p.line, column: p.column - tag.name.length - 1 };
    attrs.length = 0;
  });
  p.on("attribute", (a) => {
    // The parser stands past the closing quote: the name is the last `name=` on the line before it.
    const lineText = lines[p.line - 1] ?? "";
    const at = lineText.lastIndexOf(a.name, p.column);
    const column = at >= 0 ? at + 1 : start.column;
    attrs.push({
      name: a.name,
      local: "",
      uri: "",
      value: a.value,
      line: at >= 0 ? p.line : start.line,
      column,
    });
  });
  p.on("opentag", (tag) => {
    const attributes = attrs.map((a) => {
      const resolved = tag.attributes[a.name];
      return resolved ? { ...a, local: resolved.local, uri: resolved.uri } : { ...a, local: a.name };
    });
    const el: XmlElement = {
      name: tag.name,
      local: tag.local,
      uri: tag.uri,
      ...start,
      attributes,
      children: [],
    };
    const parent = stack.at(-1);
    if (parent) parent.children.push(el);
    else root ??= el;
    stack.push(el);
  });
  p.on("closetag", () => void stack.pop());
  try {
    p.write(text).close();
  } catch (err) {
    const m = /^(?:[^:]*:)?(\d+):(\d+): ([\s\S]*)$/.exec((err as Error).message);
    if (m) throw new XmlSyntaxError(Number(m[1]), Number(m[2]) + 1, m[3]!.trim());
    throw new XmlSyntaxError(p.line, p.column + 1, (err as Error).message);
  }
  if (!root) throw new XmlSyntaxError(1, 1, "no element");
  return root;
}

/** The name of a document's root element, read no further than that; undefined where there is none. */
export function rootName(text: string): string | undefined {
  const p = parser();
  let name: string | undefined;
  const stop = new Error("root found");
  p.on("opentagstart", (tag) => {
    name = tag.name;
    throw stop;
  });
  try {
    p.write(text).close();
  } catch {
    // Stopped at the root, or not XML: either way, what was found is the answer.
  }
  return name;
}

/** An element's attribute value by its (unqualified, no namespace) name. */
export function attr(el: XmlElement, name: string): string | undefined {
  return el.attributes.find((a) => a.name === name && a.uri === "")?.value;
}

/** The children of an element with a local name (in any namespace, or in `uri`). */
export function childrenNamed(el: XmlElement, local: string, uri?: string): XmlElement[] {
  return el.children.filter((c) => c.local === local && (uri === undefined || c.uri === uri));
}

/** The first child with a local name, if any. */
export function child(el: XmlElement, local: string, uri?: string): XmlElement | undefined {
  return childrenNamed(el, local, uri)[0];
}
