/** Runs the hook, or one of its commands, inside a lab's host as libvirt runs it: a clean environment, XML on stdin. */

import assert from "node:assert/strict";
import { canRunLab, createLab, type Lab } from "./lab.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;

/** A guest's domain XML with one interface on the lab's libvirt network (virbr0, tap vnet0). */
export function labXml(name: string): string {
  return `<domain type='kvm'><name>${name}</name><devices><interface type='network'>` +
    `<source network='default' bridge='virbr0'/><target dev='vnet0'/></interface></devices></domain>`;
}

/** Runs main.ts with `args` in the lab's host, `file` as the config, and asserts it succeeded. */
export async function runInLab(lab: Lab, file: string, args: string[], domain = "") {
  const r = await execInLab(lab, file, args, domain);
  assert.equal(r.code, 0, r.stderr);
  return r;
}

/**
 * Runs main.ts with `args` in the lab's host, `file` as the config, `stdin` on its stdin: the guest `domain`'s
 * XML unless said otherwise (the network hook gets the network's).
 */
export function execInLab(lab: Lab, file: string, args: string[], domain = "", stdin = labXml(domain)) {
  return lab.exec(lab.ns.host, [Deno.execPath(), "run", "-A", MAIN, ...args], {
    stdin,
    clearEnv: true,
    env: {
      LC_ALL: "C",
      PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
      CONFIG_FILENAME: file,
    },
    cwd: "/",
    timeoutMs: 30_000,
  });
}

/**
 * Every rule of the lab's host: both iptables families, and nftables with its tables in name order (a table
 * libvirt re-creates is listed last, with the same rules).
 */
export async function labFirewall(lab: Lab): Promise<string> {
  const tables = (await lab.nftRuleset()).split(/^(?=table )/m).map((t) => t.trimEnd()).sort().join("\n");
  return `${await lab.ruleset(4)}\n${await lab.ruleset(6)}\n${tables}`;
}

/** A host (what libvirt uses) and our backend, for the namespace tests that run each combination. */
export interface LabVariant {
  libvirt: "iptables" | "nftables";
  backend: string;
  /** Whether this machine can run it (root, namespaces, and nft where it is needed). */
  ok: boolean;
}

/**
 * The combinations `setups` (`<libvirt>/<backend>`) with whether this machine can run each; says once on the
 * console why `what` skips where it cannot (no namespaces, or no nft for a combination that needs it).
 */
export async function labVariants(what: string, setups: string[]): Promise<LabVariant[]> {
  const can = await canRunLab();
  const nft = can.ok &&
    (await new Deno.Command("nft", { args: ["--version"], stdout: "null", stderr: "null" }).output()
        .catch(() => undefined))?.success === true;
  const variants = setups.map((s) => {
    const [libvirt, backend] = s.split("/") as ["iptables" | "nftables", string];
    const needsNft = libvirt === "nftables" || backend === "nftables";
    return { libvirt, backend, ok: can.ok && (nft || !needsNft) };
  });
  if (!can.ok) console.log(`Skipping the ${what} namespace tests: ${can.reason}`);
  else if (variants.some((v) => !v.ok)) {
    console.log(`Skipping the ${what} namespace tests that need nftables: nft is not installed`);
  }
  return variants;
}

/**
 * One namespace test of a variant (see labVariants), named `<what>, libvirt on <l>, backend <b>: <claim>`: a fresh
 * lab of its libvirt, and a config file whose `/settings` pick its backend, with `entries` (the rest of the JSON
 * object) beside them; both gone after `fn`.
 */
export function labTest(
  v: LabVariant,
  { what, claim, entries }: { what: string; claim: string; entries: string },
  fn: (lab: Lab, file: string, t: Deno.TestContext) => Promise<void>,
): void {
  Deno.test({
    name: `${what}, libvirt on ${v.libvirt}, backend ${v.backend}: ${claim}`,
    ignore: !v.ok,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn(t) {
      const lab = await createLab({ libvirt: v.libvirt });
      const file = await Deno.makeTempFile({ suffix: ".jsonc" });
      try {
        await Deno.writeTextFile(file, `{"/settings": {"backend": "${v.backend}"}, ${entries}}`);
        await fn(lab, file, t);
      } finally {
        await lab.close();
        await Deno.remove(file).catch(() => {});
      }
    },
  });
}
