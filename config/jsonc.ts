/** The JSONC parser (npm:jsonc-parser) in a module of its own: validate.ts loads it only when a config must be parsed. */

export { parseTree, printParseErrorCode } from "jsonc-parser";
