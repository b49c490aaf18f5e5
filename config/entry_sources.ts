/** An entry's allowed sources: source_ip (one item, or a list of both families), source_ipv6 and source_set. */

import type { Node } from "jsonc-parser";
import { jsonPath, type Target } from "./model.ts";
import { kind, type Report } from "./nodes.ts";
import { parseSourceItem, type SourceInterval, sourceSetProblem, sourceTexts } from "./sources.ts";
import type { Family } from "../system/address.ts";

/** What an entry's source fields say, read and checked (see readSources). */
export interface EntrySources {
  /** source_ip's items; `list`: it was given as a list, which speaks for every family. */
  ip: { items: SourceInterval[]; list: boolean; node: Node } | undefined;
  /** source_ipv6's items (IPv6 only). */
  ipv6: { items: SourceInterval[]; node: Node } | undefined;
  set: string | undefined;
}

/** What reading the source fields needs: the entry's fields, its path, and how to fail or warn. */
export interface SourcesAt {
  fields: Map<string, Node>;
  path: string;
  fail: Report;
  report: Report;
}

/** One field's items: a string (one item) or a non-empty list of them, each positioned where it fails. */
function readItems(
  at: SourcesAt,
  key: string,
): { items: SourceInterval[]; list: boolean; node: Node } | undefined {
  const node = at.fields.get(key);
  if (!node) return undefined;
  const path = jsonPath(at.path, key);
  const one = (n: Node, p: string): SourceInterval | undefined => {
    if (n.type !== "string") {
      at.fail(n, p, `Expected an address, network or range as a string, found ${kind(n)}`);
      return undefined;
    }
    const item = parseSourceItem(String(n.value));
    if (typeof item === "string") at.fail(n, p, item);
    return typeof item === "string" ? undefined : item;
  };
  if (node.type === "array") {
    const children = node.children ?? [];
    if (children.length === 0) {
      at.fail(
        node,
        path,
        "Expected at least one address, network or range; leave the field out to allow all",
      );
      return undefined;
    }
    const items = children.map((c, i) => one(c, `${path}[${i}]`));
    return items.every((i) => i !== undefined)
      ? { items: items as SourceInterval[], list: true, node }
      : undefined;
  }
  const item = one(node, path);
  return item ? { items: [item], list: false, node } : undefined;
}

/** Reads source_ip, source_ipv6 and source_set; a bad item fails at its own position. */
export function readSources(at: SourcesAt): EntrySources {
  const ip = readItems(at, "source_ip");
  const ipv6 = readItems(at, "source_ipv6");
  const v4in6 = ipv6?.items.findIndex((i) => i.family === 4) ?? -1;
  if (ipv6 && v4in6 >= 0) {
    const n = ipv6.node.type === "array" ? ipv6.node.children![v4in6] : ipv6.node;
    const p = jsonPath(at.path, "source_ipv6") + (ipv6.node.type === "array" ? `[${v4in6}]` : "");
    at.fail(n, p, "Expected an IPv6 address, found IPv4");
  }
  const setNode = at.fields.get("source_set");
  let set: string | undefined;
  if (setNode) {
    const p = jsonPath(at.path, "source_set");
    if (setNode.type !== "string") at.fail(setNode, p, `Expected a set name, found ${kind(setNode)}`);
    else {
      const problem = sourceSetProblem(String(setNode.value));
      if (problem) at.fail(setNode, p, problem);
      else if (ip || ipv6) {
        at.fail(
          setNode,
          p,
          "Give source_set or source_ip/source_ipv6, not both: add those addresses to the set",
        );
      } else set = String(setNode.value);
    }
  }
  return { ip, ipv6, set };
}

/**
 * Gives each target its sources and drops the targets of a family left closed: a source_ip list speaks for every
 * family, so a family with no item of its own (in source_ip or source_ipv6) is not published, and a warning says
 * so. A single string (the old form) restricts only its own family's target, as it always did. One result per
 * target, in order: the target with its sources, or undefined where it is not published.
 */
export function applySources(
  targets: Target[],
  sources: EntrySources,
  at: SourcesAt,
): (Target | undefined)[] {
  const out: (Target | undefined)[] = [];
  for (const t of targets) {
    const items = [
      ...(sources.ip && (sources.ip.list || t === targets[0]) ? sources.ip.items : []),
      ...(t.family === 6 && sources.ipv6 ? sources.ipv6.items : []),
    ];
    const texts = sourceTexts(items, t.family);
    if (sources.set !== undefined) out.push({ ...t, sourceSet: sources.set });
    else if (texts.length > 0) out.push({ ...t, sources: texts });
    else if (sources.ip?.list) {
      out.push(undefined);
      at.report(
        sources.ip.node,
        jsonPath(at.path, "source_ip"),
        `No IPv${t.family} item: the entry's IPv${t.family} forwards are not published`,
        { severity: "warning" },
      );
    } else out.push(t);
  }
  for (const family of [4, 6] as Family[]) {
    if (!sources.ip?.list || targets.some((t) => t.family === family)) continue;
    if (sources.ip.items.some((i) => i.family === family)) {
      at.report(
        sources.ip.node,
        jsonPath(at.path, "source_ip"),
        `The IPv${family} items are not used: the entry forwards no IPv${family}`,
        { severity: "warning" },
      );
    }
  }
  return out;
}
