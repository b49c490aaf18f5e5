/** What a start warns about: a public port taken from the host, gates of other software on the forward's way. */

import {
  type ApplyDeps,
  type BaseChain,
  type Blocker,
  blockers,
  bridgesOf,
  describeBlocker,
  type ForeignGate,
  foreignGates,
  type Forward,
  gateName,
  type Packet,
} from "../backends/backend.ts";
import { publicAddress } from "../system/address.ts";
import { type ConnectedRoute, type Listener, listenerAt } from "../system/host.ts";

/**
 * The forwards whose public port the host itself listens on, each said as one line: legitimate (a port 22 on an
 * address of its own for the guest), but a forward on an address sshd listens on locks the administrator out.
 */
export function takenFromHost(forwards: Forward[], listeners: Listener[]): string[] {
  const out: string[] = [];
  for (const f of forwards) {
    const last = f.publicPort + f.count - 1;
    const l = listenerAt(listeners, {
      protocol: f.protocol,
      address: publicAddress(f.publicIp, f.family)!,
      first: f.publicPort,
      last,
    });
    if (!l) continue;
    const at = (ip: string, port: number | string) => `${ip.includes(":") ? `[${ip}]` : ip}:${port}`;
    const ports = f.count === 1 ? `${f.publicPort}` : `${f.publicPort}-${last}`;
    out.push(
      `public ${f.protocol} ${at(f.publicIp, ports)} takes from the host a port it listens on ` +
        `(${at(l.address, l.port)}): connections there now reach the guest, not the host`,
    );
  }
  return out;
}

/** The first packet of a forward's connections, as a gate at the forward hook sees it (after our DNAT). */
export function packetOf(f: Forward, connected: ConnectedRoute[]): Packet {
  const oif = bridgesOf([f], connected)[f.family][0];
  return {
    family: f.family,
    protocol: f.protocol,
    daddr: f.privateIp,
    dport: f.privatePort,
    ...(oif === undefined ? {} : { oif }),
  };
}

/**
 * One line per gate no one opens for us that drops (or may drop) some of these forwards: the guest still starts,
 * but a forward that says OK and carries nothing must never go unsaid. Reads gates only where there are some.
 */
export async function gateWarnings(
  forwards: Forward[],
  deps: ApplyDeps,
  hooks?: BaseChain[],
): Promise<string[]> {
  try {
    return gateLines(forwards, await foreignGates(deps, hooks), deps.connected ?? []);
  } catch {
    return [];
  }
}

/** One line per gate among `gates` that stops some of `forwards`: how many, where, why, and what opens it. */
export function gateLines(forwards: Forward[], gates: ForeignGate[], connected: ConnectedRoute[]): string[] {
  if (gates.length === 0) return [];
  const byGate = new Map<string, { blocker: Blocker; count: number }>();
  for (const f of forwards) {
    for (const b of blockers(gates, packetOf(f, connected))) {
      const key = gateName(b.gate);
      const seen = byGate.get(key);
      if (seen) seen.count++;
      else byGate.set(key, { blocker: b, count: 1 });
    }
  }
  return [...byGate.values()].map(({ blocker, count }) =>
    `${count} of ${forwards.length} forward(s) ${describeBlocker(blocker)}`
  );
}
