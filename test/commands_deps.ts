/** Fake HookDeps for the commands' unit tests: a recording runner, a config in a scratch directory, no libvirt. */

import { FACTS, recordingRunner } from "./util.ts";
import type { HookDeps } from "../hook/deps.ts";
import type { CommandResult } from "../system/runner.ts";

/** What a command did through its deps: the programs it ran (with their input), its stderr and syslog lines. */
export interface FakeCommandDeps {
  deps: HookDeps;
  calls: { argv: string[]; stdin?: string }[];
  stderr: string[];
  logged: string[];
}

/** Every file these fakes write lives here, removed when the tests end. */
const SCRATCH = await Deno.makeTempDir();
globalThis.addEventListener("unload", () => Deno.removeSync(SCRATCH, { recursive: true }));
// No running guest of this machine's libvirt may show up in a unit test.
Deno.env.set("LIBVIRT_QEMU_RUN_DIR", await Deno.makeTempDir({ dir: SCRATCH }));

/** Deps for a command: `config` as its hooks.jsonc, `respond` answering the programs it runs (default: empty). */
export async function fakeCommandDeps(
  config: string,
  respond: (argv: string[], stdin?: string) => Partial<CommandResult> = () => ({}),
): Promise<FakeCommandDeps> {
  const dir = await Deno.makeTempDir({ dir: SCRATCH });
  await Deno.writeTextFile(`${dir}/hooks.jsonc`, config);
  const runner = recordingRunner(respond);
  const stderr: string[] = [];
  const logged: string[] = [];
  const deps: HookDeps = {
    env: (name) => (name === "CONFIG_PATH" ? dir : undefined),
    readStdin: () => Promise.resolve(""),
    runner,
    problem: (line) => stderr.push(line),
    facts: () => Promise.resolve(FACTS),
    lock: (fn) => fn(),
    setHairpin: () => Promise.resolve(),
    log: (line) => logged.push(line),
    listeners: () => [],
    nft: undefined,
    networkConf: "/nonexistent/network.conf",
    stateDir: `${dir}/run`,
  };
  return { deps, calls: runner.calls, stderr, logged };
}

/** Runs `fn` with console.log recorded (each call one line), and gives back what it returned and the lines. */
export async function captureStdout<T>(fn: () => Promise<T>): Promise<{ value: T; stdout: string[] }> {
  const original = console.log;
  const stdout: string[] = [];
  console.log = (...parts: unknown[]) => void stdout.push(parts.map(String).join(" "));
  try {
    return { value: await fn(), stdout };
  } finally {
    console.log = original;
  }
}

/** Two domains live in iptables' nat table (web1 to .10, web2 to .11, public port 2222), as iptables-save shows. */
export function twoLive(hash: (domain: string) => string): string {
  const chains: string[] = [], rules: string[] = [];
  for (const [domain, ip] of [["web1", "192.168.122.10"], ["web2", "192.168.122.11"]] as const) {
    const chain = `LVH-${hash(domain)}-DNAT`;
    const tag = `-m comment --comment "libvirt-hook-qemu:1:${domain}"`;
    chains.push(`:${chain} - [0:0]`);
    rules.push(
      `-A PREROUTING ${tag} -j ${chain}`,
      `-A ${chain} -d 203.0.113.1/32 -p tcp -m tcp --dport 2222 ${tag} -j DNAT --to-destination ${ip}:22`,
    );
  }
  return ["*nat", ":PREROUTING ACCEPT [0:0]", ...chains, ...rules, "COMMIT", ""].join("\n");
}
