/** The JSON nodes of the config as problems name them, and how a validator reports a problem at one. */

import type { Diagnostic } from "./model.ts";
import type { Node } from "jsonc-parser";

export type Report = (
  node: Node | undefined,
  path: string,
  message: string,
  extra?: Partial<Diagnostic>,
) => void;

export function kind(node: Node): string {
  switch (node.type) {
    case "object":
      return "an object";
    case "array":
      return "a list";
    case "string":
      return "a string";
    case "number":
      return "a number";
    case "boolean":
      return "a boolean";
    default:
      return "null";
  }
}

export function show(node: Node): string {
  const text = JSON.stringify(node.value);
  return text.length > 60 ? `${text.slice(0, 57)}...` : text;
}
