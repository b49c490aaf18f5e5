/** libvirt's calls: which ones the hook acts on, and what it does for each. */

import type { HookDeps } from "./deps.ts";
import { applyDeps, install, markStopped, remove, resync } from "./domain.ts";
import { xmlKind } from "./domain_xml.ts";
import { reassertAccepts } from "../rules.ts";
import { message } from "../system/report.ts";

/** The operations libvirt passes to the qemu hook. */
export const QEMU_OPERATIONS = [
  "prepare",
  "start",
  "started",
  "stopped",
  "release",
  "migrate",
  "restore",
  "reconnect",
  "attach",
] as const;

/** The operations libvirt passes to the network hook (`/etc/libvirt/hooks/network`). */
export const NETWORK_OPERATIONS = [
  "start",
  "started",
  "stopped",
  "port-created",
  "port-deleted",
  "updated",
  "plugged",
  "unplugged",
] as const;

/** One call from libvirt: `<domain> <operation> <sub-operation> <extra>`. */
export interface HookCall {
  domain: string;
  operation: string;
  subOperation: string;
  extra: string;
}

/** Tells whether argv is a libvirt hook call: four arguments, a known operation, a known sub-operation. */
export function asHookCall(args: string[]): HookCall | undefined {
  if (args.length !== 4) return undefined;
  const [domain = "", operation = "", subOperation = "", extra = ""] = args;
  const known = [...QEMU_OPERATIONS, ...NETWORK_OPERATIONS] as readonly string[];
  if (!known.includes(operation)) return undefined;
  if (!["begin", "end", "-"].includes(subOperation)) return undefined;
  return { domain, operation, subOperation, extra };
}

/** Runs one hook call and returns its exit code: non-zero only when `start` cannot install the forwards. */
export async function runHook(call: HookCall, deps: HookDeps): Promise<number> {
  if (await hookRole(call, deps) === "network") {
    await networkHook(call, deps);
    return 0;
  }
  switch (call.operation) {
    case "start":
      return (await install(call.domain, deps)) === "failed" ? 1 : 0;
    case "reconnect":
      await resync(call.domain, deps, "reconnect");
      return 0;
    case "stopped":
      // Noted first: libvirt keeps the guest's status file a while longer, and the watcher must not put back
      // what is removed here (see stoppedMarker).
      if (deps.stateDir !== undefined) markStopped(deps.stateDir, call.domain);
      await remove(call.domain, deps, "stopped");
      return 0;
    default:
      return 0;
  }
}

/**
 * Which hook libvirt ran: the same executable serves as the qemu and the network hook (the name a compiled binary
 * was started under is not reliable). An operation only one of them has decides; for the shared ones (start,
 * started, stopped) the XML on stdin does: `<domain>` or `<hookData>`.
 */
async function hookRole(call: HookCall, deps: HookDeps): Promise<"qemu" | "network"> {
  const qemu = (QEMU_OPERATIONS as readonly string[]).includes(call.operation);
  const network = (NETWORK_OPERATIONS as readonly string[]).includes(call.operation);
  if (qemu !== network) return qemu ? "qemu" : "network";
  return await xmlKind(await deps.readStdin()) === "network" ? "network" : "qemu";
}

/**
 * The network hook: when libvirt (re)starts a network it re-creates its nftables chains, and our accepts must
 * go back in front of its reject. Never fails: a failing network hook stops the network.
 */
async function networkHook(call: HookCall, deps: HookDeps): Promise<void> {
  if (call.operation !== "started") return;
  try {
    const facts = await deps.facts();
    const count = await deps.lock(() => reassertAccepts(applyDeps(deps, undefined, facts)));
    if (count > 0) deps.log(`network ${call.domain} started: re-asserted our accepts in libvirt's chains`);
  } catch (err) {
    deps.problem(`Cannot re-assert forwards after network "${call.domain}" started: ${message(err)}`);
  }
}
