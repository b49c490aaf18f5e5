/** Helpers shared by the tests: inline expected text, a recording runner, fixed host facts. */

import type { HostFacts } from "../lib/host.ts";
import type { CommandResult, Runner, RunOptions } from "../lib/runner.ts";

/** Removes the common indentation of a template literal and its first and last blank lines. */
export function dedent(text: string): string {
  const lines = text.replace(/^\n/, "").replace(/\n\s*$/, "").split("\n");
  const indent = Math.min(...lines.filter((l) => l.trim()).map((l) => l.match(/^ */)![0].length));
  return lines.map((l) => l.slice(indent)).join("\n") + "\n";
}

/** One command the recording runner saw. */
export interface Recorded {
  argv: string[];
  stdin?: string;
}

/** A fake runner: records every command and answers from `respond`, by default exit 0 with no output. */
export function recordingRunner(
  respond: (argv: string[], stdin?: string) => Partial<CommandResult> = () => ({}),
): Runner & { calls: Recorded[] } {
  const calls: Recorded[] = [];
  return {
    calls,
    run(argv: string[], options: RunOptions = {}) {
      calls.push({ argv, ...(options.stdin === undefined ? {} : { stdin: options.stdin }) });
      return Promise.resolve({ code: 0, stdout: "", stderr: "", ...respond(argv, options.stdin) });
    },
  };
}

/** A host with public 203.0.113.1 / 2001:db8:1::1, guests on 192.168.122.0/24 and fd00:122::/64 (virbr0). */
export const FACTS: HostFacts = {
  defaultPublicIp: { 4: { address: "203.0.113.1" }, 6: { address: "2001:db8:1::1" } },
  connected: [
    { family: 4, value: 0xc0a87a00n, prefix: 24, device: "virbr0" },
    { family: 6, value: 0xfd000122000000000000000000000000n, prefix: 64, device: "virbr0" },
  ],
  bridgeNetfilter: { 4: false, 6: false },
};
