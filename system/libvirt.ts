import { env } from "./env.ts";

/** What libvirt tells about this host's networks: the firewall backend its network.conf sets, and the one each
 * running network was set up with. */

/** Reads `firewall_backend` from libvirt's network.conf (libvirt >= 10.4), if it is set there. */
export function parseNetworkConf(text: string): string | undefined {
  return /^\s*firewall_backend\s*=\s*"([a-z]+)"/m.exec(text)?.[1];
}

/** libvirt's network driver settings; its `firewall_backend` tells which backend libvirt will use. */
export const LIBVIRT_NETWORK_CONF = "/etc/libvirt/network.conf";

/** Where libvirt keeps the status of its running networks; each names the firewall backend it was set up with. */
export const LIBVIRT_NETWORK_RUN_DIR = "/run/libvirt/network";

/**
 * The firewall backend a libvirt network status file names (`<firewall name=... backend='nftables'>`, written by
 * libvirt >= 10.4 with the commands that will remove the network's rules), if any.
 */
export function parseNetworkStatus(xml: string): string | undefined {
  return /<firewall\b[^>]*\bbackend=(['"])([a-z]+)\1/.exec(xml)?.[2];
}

/** The backends of libvirt's running networks, from their status files; synchronously (a few small files). */
export function libvirtBackends(dir: string): string[] {
  const out = new Set<string>();
  try {
    for (const e of Deno.readDirSync(dir)) {
      if (!e.name.endsWith(".xml")) continue;
      try {
        const backend = parseNetworkStatus(Deno.readTextFileSync(`${dir}/${e.name}`));
        if (backend) out.add(backend);
      } catch {
        // A network stopping meanwhile: it has no rules to go by.
      }
    }
  } catch {
    // No libvirt networks running here.
  }
  return [...out].sort();
}

export function readNetworkConf(path = LIBVIRT_NETWORK_CONF): Promise<string | undefined> {
  return Deno.readTextFile(path).then(parseNetworkConf, () => undefined);
}

/** Where libvirt's dnsmasq keeps its files: `<bridge>.status` holds a network's DHCP leases. */
export const LIBVIRT_DNSMASQ_DIR = "/var/lib/libvirt/dnsmasq";

/** One DHCP lease as libvirt's lease helper records it (`<bridge>.status`, JSON). */
export interface Lease {
  address: string;
  mac?: string;
  hostname?: string;
  clientId?: string;
  /** Seconds since the epoch; 0: never. */
  expiry: number;
}

/** The leases of a `<bridge>.status` file (empty before the first one: libvirt writes 0 bytes). */
export function parseLeases(text: string): Lease[] {
  if (text.trim() === "") return [];
  let list: unknown;
  try {
    list = JSON.parse(text);
  } catch {
    return [];
  }
  if (!Array.isArray(list)) return [];
  const out: Lease[] = [];
  for (const item of list) {
    if (typeof item !== "object" || item === null) continue;
    const r = item as Record<string, unknown>;
    if (typeof r["ip-address"] !== "string") continue;
    out.push({
      address: r["ip-address"],
      ...(typeof r["mac-address"] === "string" ? { mac: r["mac-address"].toLowerCase() } : {}),
      ...(typeof r["hostname"] === "string" ? { hostname: r["hostname"] } : {}),
      ...(typeof r["client-id"] === "string" ? { clientId: r["client-id"] } : {}),
      expiry: typeof r["expiry-time"] === "number" ? r["expiry-time"] : 0,
    });
  }
  return out;
}

/** Reads a bridge's leases; none where the file is not there (no lease yet, or no DHCP on the network). */
export function readLeases(bridge: string, dir = LIBVIRT_DNSMASQ_DIR): Lease[] {
  if (!/^[^/\0]+$/.test(bridge)) return [];
  try {
    return parseLeases(Deno.readTextFileSync(`${dir}/${bridge}.status`));
  } catch {
    return [];
  }
}

/** Reads a running network's status file (`<networkstatus>`), if it is running. */
export function readNetworkStatus(network: string, dir = LIBVIRT_NETWORK_RUN_DIR): string | undefined {
  if (!/^[^/\0]+$/.test(network)) return undefined;
  try {
    return Deno.readTextFileSync(`${dir}/${network}.xml`);
  } catch {
    return undefined;
  }
}

/** Where libvirt keeps the XML of running guests (`<domstatus>`); LIBVIRT_QEMU_RUN_DIR overrides it for tests. */
export function qemuRunDir(): string {
  return env("LIBVIRT_QEMU_RUN_DIR") ?? "/run/libvirt/qemu";
}

/** Whether a guest runs: libvirt keeps its status file while it does. */
export function guestRuns(domain: string): boolean {
  try {
    return /^[^/\0]+$/.test(domain) && Deno.statSync(`${qemuRunDir()}/${domain}.xml`).isFile;
  } catch {
    return false;
  }
}
