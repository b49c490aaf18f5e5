/** Facts about this host that plans need, read from /proc and /sys without starting any process. */

import { type Address, type Family, formatAddress, type Network, parseAddress } from "./address.ts";

/** A directly connected route: the network a guest address lies in, and its interface. */
export interface ConnectedRoute extends Network {
  device: string;
}

/** What the host looks like: default public addresses, connected networks, bridge netfilter. */
export interface HostFacts {
  /** The default public address per family, or why there is none. */
  defaultPublicIp: Partial<Record<Family, { address: string } | { problem: string }>>;
  connected: ConnectedRoute[];
  /** Whether bridged frames pass through ip(6)tables (br_netfilter with bridge-nf-call-ip(6)tables = 1). */
  bridgeNetfilter: Record<Family, boolean>;
  /** Every address an interface of this host holds (loopback included), canonical; undefined where unknown. */
  addresses?: string[];
}

/** Reads the host facts; every file is optional, missing ones simply yield fewer facts. */
export function readHostFacts(): Promise<HostFacts> {
  // Read synchronously: five small files of the kernel's, where async reads cost more than the reading.
  const [route4 = "", route6 = "", inet6 = "", nf4 = "", nf6 = ""] = [
    "/proc/net/route",
    "/proc/net/ipv6_route",
    "/proc/net/if_inet6",
    "/proc/sys/net/bridge/bridge-nf-call-iptables",
    "/proc/sys/net/bridge/bridge-nf-call-ip6tables",
  ].map(readOptional);
  const r4 = parseRoutes4(route4);
  const r6 = parseRoutes6(route6);
  let interfaces: Deno.NetworkInterfaceInfo[] | undefined;
  try {
    interfaces = Deno.networkInterfaces();
  } catch {
    // Without the permission or the syscall, only explicit public addresses work; plans say so.
  }
  return Promise.resolve({
    defaultPublicIp: {
      4: defaultIPv4(r4.defaultDevices, interfaces ?? []),
      6: defaultIPv6(r6.defaultDevices, parseInet6(inet6)),
    },
    connected: [...r4.connected, ...r6.connected],
    bridgeNetfilter: { 4: nf4.trim() === "1", 6: nf6.trim() === "1" },
    ...(interfaces ? { addresses: hostAddresses(interfaces) } : {}),
  });
}

/** The addresses the interfaces hold, canonical (an IPv6 address's zone left out), each once. */
export function hostAddresses(interfaces: Pick<Deno.NetworkInterfaceInfo, "address">[]): string[] {
  return [...new Set(interfaces.map((i) => parseAddress(i.address.replace(/%.*$/, ""))?.text ?? i.address))];
}

function readOptional(path: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return "";
  }
}

/** Parses /proc/net/route: default route devices (best metric first) and connected networks. */
export function parseRoutes4(text: string): { defaultDevices: string[]; connected: ConnectedRoute[] } {
  const defaults: { device: string; metric: number }[] = [];
  const connected: ConnectedRoute[] = [];
  for (const line of text.split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 8) continue;
    const [device = "", dest = "", gateway = "", flagsHex = "", , , metric = "0", mask = ""] = f;
    const flags = parseInt(flagsHex, 16);
    if (!(flags & 0x1)) continue; // RTF_UP
    const prefix = popcount(le32(mask));
    if (prefix === 0) defaults.push({ device, metric: Number(metric) });
    else if (!(flags & 0x2) && le32(gateway) === 0n && prefix < 32) {
      connected.push({ family: 4, value: le32(dest), prefix, device });
    }
  }
  defaults.sort((a, b) => a.metric - b.metric);
  return { defaultDevices: defaults.map((d) => d.device), connected };
}

/** Parses /proc/net/ipv6_route: default route devices and connected networks. */
export function parseRoutes6(text: string): { defaultDevices: string[]; connected: ConnectedRoute[] } {
  const defaults: { device: string; metric: number }[] = [];
  const connected: ConnectedRoute[] = [];
  for (const line of text.split("\n")) {
    const f = line.trim().split(/\s+/);
    if (f.length < 10) continue;
    const [dest = "", plen = "", , , nextHop = "", metric = "", , , flagsHex = "", device = ""] = f;
    const flags = parseInt(flagsHex, 16);
    if (!(flags & 0x1) || device === "lo") continue;
    const prefix = parseInt(plen, 16);
    if (prefix === 0 && BigInt(`0x${dest}`) === 0n) {
      defaults.push({ device, metric: parseInt(metric, 16) });
    } else if (!(flags & 0x2) && BigInt(`0x${nextHop}`) === 0n && prefix < 128 && !dest.startsWith("fe80")) {
      if (dest.startsWith("ff")) continue;
      connected.push({ family: 6, value: BigInt(`0x${dest}`), prefix, device });
    }
  }
  defaults.sort((a, b) => a.metric - b.metric);
  return { defaultDevices: defaults.map((d) => d.device), connected };
}

/** An address line of /proc/net/if_inet6. */
export interface Inet6Address {
  address: string;
  device: string;
  scope: number;
  flags: number;
}

/** Parses /proc/net/if_inet6. */
export function parseInet6(text: string): Inet6Address[] {
  const out: Inet6Address[] = [];
  for (const line of text.split("\n")) {
    const [hex = "", , , scope = "", flags = "", device = ""] = line.trim().split(/\s+/);
    if (hex.length !== 32) continue;
    out.push({
      address: formatAddress(6, BigInt(`0x${hex}`)),
      device,
      scope: parseInt(scope, 16),
      flags: parseInt(flags, 16),
    });
  }
  return out;
}

function defaultIPv4(devices: string[], interfaces: Deno.NetworkInterfaceInfo[]) {
  const device = devices[0];
  if (!device) return { problem: "the host has no IPv4 default route" };
  const address = interfaces.find((i) => i.name === device && i.family === "IPv4")?.address;
  if (!address) return { problem: `the default route's interface "${device}" has no IPv4 address` };
  return { address };
}

// IFA_F_TEMPORARY, IFA_F_DADFAILED, IFA_F_DEPRECATED, IFA_F_TENTATIVE: never a stable public address.
const UNSTABLE = 0x01 | 0x08 | 0x20 | 0x40;

/** Chooses the stable global IPv6 address of the default route's interface, or says why there is none. */
export function defaultIPv6(devices: string[], addresses: Inet6Address[]) {
  const device = devices[0];
  if (!device) return { problem: "the host has no IPv6 default route" };
  const stable = addresses.filter((a) => a.device === device && a.scope === 0 && !(a.flags & UNSTABLE));
  if (stable.length === 0) {
    return { problem: `the default route's interface "${device}" has no stable global IPv6 address` };
  }
  if (stable.length > 1) {
    return {
      problem: `the default route's interface "${device}" has several global IPv6 addresses (${
        stable.map((a) => a.address).join(", ")
      })`,
    };
  }
  return { address: stable[0]!.address };
}

/** The most specific connected network that holds `addr`, if any. */
export function connectedNetworkOf(routes: ConnectedRoute[], addr: Address): ConnectedRoute | undefined {
  let best: ConnectedRoute | undefined;
  for (const r of routes) {
    if (r.family !== addr.family) continue;
    const bits = BigInt(addr.family === 4 ? 32 : 128);
    const shift = bits - BigInt(r.prefix);
    if (addr.value >> shift !== r.value >> shift) continue;
    if (!best || r.prefix > best.prefix) best = r;
  }
  return best;
}

function le32(hex: string): bigint {
  const n = parseInt(hex, 16) >>> 0;
  return BigInt(((n & 0xff) << 24 | (n & 0xff00) << 8 | (n >>> 8) & 0xff00 | n >>> 24) >>> 0);
}

function popcount(v: bigint): number {
  let n = 0;
  for (let x = v; x > 0n; x >>= 1n) n += Number(x & 1n);
  return n;
}

/** A socket this host listens on: tcp in LISTEN, or a bound udp socket; `address` "0.0.0.0"/"::" for any. */
export interface Listener {
  protocol: "tcp" | "udp";
  family: Family;
  address: string;
  port: number;
}

/**
 * The host's listening sockets, from /proc/net/{tcp,tcp6,udp,udp6} (no process started). Read where a forward's
 * public port may take a port away from the host itself: sshd on 0.0.0.0:22 and a forward of public port 22.
 */
export function readListeners(): Listener[] {
  return ([
    ["/proc/net/tcp", "tcp", 4],
    ["/proc/net/tcp6", "tcp", 6],
    ["/proc/net/udp", "udp", 4],
    ["/proc/net/udp6", "udp", 6],
  ] as const).flatMap(([file, protocol, family]) => parseSockets(readOptional(file), protocol, family));
}

/** Parses one /proc/net socket table: tcp sockets in LISTEN (state 0A), udp sockets unconnected (07). */
export function parseSockets(text: string, protocol: "tcp" | "udp", family: Family): Listener[] {
  const out: Listener[] = [];
  const listening = protocol === "tcp" ? "0A" : "07";
  for (const line of text.split("\n").slice(1)) {
    const [, local = "", , state] = line.trim().split(/\s+/);
    if (state !== listening) continue;
    const [hex = "", portHex = ""] = local.split(":");
    const port = parseInt(portHex, 16);
    if (!port) continue;
    // The kernel prints the address as host-order 32-bit words (little-endian here), in hex.
    let value = 0n;
    for (let i = 0; i + 8 <= hex.length; i += 8) value = (value << 32n) | le32(hex.slice(i, i + 8));
    out.push({ protocol, family, address: formatAddress(family, value), port });
  }
  return out;
}

/** Public ports of one protocol on one address, `first` to `last`, as listenerAt() looks for them. */
export interface PortsAt {
  protocol: string;
  address: Address;
  first: number;
  last: number;
}

/**
 * The listener a public address and port range would take away from the host: one bound to that address, or to
 * any address of its family; an IPv6 socket on any address (`::`) takes IPv4 too, as Linux makes it by default
 * (dual stack, net.ipv6.bindv6only = 0).
 */
export function listenerAt(listeners: Listener[], wanted: PortsAt): Listener | undefined {
  const { protocol, address, first, last } = wanted;
  const any = address.family === 4 ? "0.0.0.0" : "::";
  // "*" (every local address but loopback's) takes the port of every listener of its family but loopback's.
  const everywhere = address.text === "*";
  return listeners.find((l) =>
    l.protocol === protocol && l.port >= first && l.port <= last &&
    ((l.family === address.family &&
      (l.address === any || l.address === address.text ||
        (everywhere && !/^(127\.|::1$)/.test(l.address)))) ||
      l.address === "::")
  );
}

/** Whether a network interface of that name exists here (/sys/class/net lists every one, addressed or not). */
export function interfaceExists(name: string): boolean {
  try {
    Deno.statSync(`/sys/class/net/${name}`);
    return true;
  } catch (err) {
    // Only a name that is surely not there is reported; without access to /sys, nothing is said.
    return !(err instanceof Deno.errors.NotFound);
  }
}
