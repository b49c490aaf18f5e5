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
