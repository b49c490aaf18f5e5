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

/**
 * The most of a lease file read: libvirt's are small (~150 bytes a lease; a /16 network full of leases is ~10 MB),
 * and a file beyond this is not one libvirt wrote; reading it whole cost 500 MB and seconds.
 */
export const MAX_LEASE_BYTES = 16 * 1024 * 1024;

/** A lease file that is there but cannot be read or understood (its path in the message): it proves no lease. */
export class LeaseFileError extends Error {
  override name = "LeaseFileError";
}

/**
 * The leases of a `<bridge>.status` file (empty before the first one: libvirt writes 0 bytes). Throws a
 * SyntaxError where the text is not libvirt's JSON list of leases.
 */
export function parseLeases(text: string): Lease[] {
  if (text.trim() === "") return [];
  let list: unknown;
  try {
    list = JSON.parse(text);
  } catch {
    throw new SyntaxError("not JSON");
  }
  if (!Array.isArray(list)) throw new SyntaxError("not a JSON list of leases");
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

/**
 * Reads a bridge's leases; none where the file is not there (no lease yet, or no DHCP on the network). Throws a
 * LeaseFileError, naming the file, where it is there but unreadable, not JSON, or larger than MAX_LEASE_BYTES:
 * it is read within that bound, whatever its size.
 */
export function readLeases(bridge: string, dir = LIBVIRT_DNSMASQ_DIR, max = MAX_LEASE_BYTES): Lease[] {
  if (!/^[^/\0]+$/.test(bridge)) return [];
  const path = `${dir}/${bridge}.status`;
  const cannot = (why: string) => new LeaseFileError(`Cannot read the DHCP leases in ${path}: ${why}`);
  let file: Deno.FsFile;
  try {
    file = Deno.openSync(path, { read: true });
  } catch (err) {
    if (err instanceof Deno.errors.NotFound) return [];
    throw cannot(err instanceof Error ? err.message : String(err));
  }
  try {
    const tooLarge = () => cannot(`larger than ${Math.round(max / 1024 / 1024)} MB`);
    const stated = file.statSync().size;
    if (stated > max) throw tooLarge();
    // Sized by stat, grown while it is read (a file may grow meanwhile), never beyond one byte more than allowed.
    let buf = new Uint8Array(Math.min(max + 1, stated + 4096));
    let size = 0;
    for (;;) {
      if (size === buf.length) {
        if (size > max) throw tooLarge();
        const bigger = new Uint8Array(Math.min(max + 1, buf.length * 2));
        bigger.set(buf);
        buf = bigger;
      }
      const n = file.readSync(buf.subarray(size));
      if (n === null) break;
      size += n;
    }
    if (size > max) throw tooLarge();
    let text: string;
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(buf.subarray(0, size));
    } catch {
      throw cannot("not JSON");
    }
    try {
      return parseLeases(text);
    } catch (err) {
      throw cannot(err instanceof Error ? err.message : String(err));
    }
  } catch (err) {
    if (err instanceof LeaseFileError) throw err;
    throw cannot(err instanceof Error ? err.message : String(err));
  } finally {
    file.close();
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
