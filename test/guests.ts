/**
 * libvirt's state files for guests in the lab, written as libvirt 11.3 writes them (network status with
 * `<host mac ip>`, dnsmasq's `<bridge>.status` replaced by rename, the running guest's `<domstatus>` with the
 * bridge under `<actual>`), the hook and the watcher run inside the lab's host namespace against them: shared by
 * the namespace tests of guests' XML and of the watcher.
 */

import { type Lab, LAB_ADDR as A } from "./lab.ts";

/** The program under test. */
export const MAIN = new URL("../main.ts", import.meta.url).pathname;

/** The guests' MACs: MAC1 has a DHCP reservation in NETWORK_STATUS, MAC2 none. */
export const MAC1 = "52:54:00:00:00:10", MAC2 = "52:54:00:00:00:11";

/**
 * Our forwards as `virsh metadata --set` stores them: prefixed elements in our namespace. `address`: the public
 * address, or none (the host's default address).
 */
export function metadata(
  port: number,
  { guestPort = 22, address = A.hostPub4 as string | null } = {},
): string {
  return `<metadata>
    <lvh:forwards xmlns:lvh="urn:libvirt-hook-qemu:1">
      <lvh:portForward proto="tcp"${address === null ? "" : ` address="${address}"`}>
        <lvh:range start="${port}" to="${guestPort}"/>
      </lvh:portForward>
    </lvh:forwards>
  </metadata>`;
}

/** The XML libvirt passes at `start begin`: the NIC's source names the network and the bridge. */
export function startXml(name: string, mac: string, meta: string): string {
  return `<domain type='kvm' id='1'>
  <name>${name}</name>
  ${meta}
  <devices>
    <interface type='network'>
      <mac address='${mac}'/>
      <source network='default' portid='8f4ab2a6-0d4c-4f53-a0a4-4d1f4f0c3b2e' bridge='virbr0'/>
      <target dev='vnet-${name}'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>
`;
}

/** The running guest's status file: no bridge on the source, the bridge under <actual>. */
export function domstatus(name: string, mac: string, meta: string): string {
  return `<domstatus state='running' reason='booted' pid='4242'>
  <domain type='kvm' id='1'>
    <name>${name}</name>
    ${meta}
    <devices>
      <interface type='network'>
        <mac address='${mac}'/>
        <source network='default' portid='8f4ab2a6-0d4c-4f53-a0a4-4d1f4f0c3b2e'/>
        <actual type='network'>
          <source bridge='virbr0'/>
        </actual>
        <target dev='vnet-${name}'/>
      </interface>
    </devices>
  </domain>
</domstatus>
`;
}

/** The network's status file, with a DHCP reservation for MAC1 only. */
export const NETWORK_STATUS = `<networkstatus>
  <class_id bitmap='0-2'/>
  <floor sum='0'/>
  <network>
    <name>default</name>
    <uuid>0e0b7f4e-7f2b-4f0e-9a0c-2b8f8e2f1a11</uuid>
    <forward mode='nat'>
      <nat><port start='1024' end='65535'/></nat>
    </forward>
    <bridge name='virbr0' stp='on' delay='0'/>
    <mac address='52:54:00:aa:bb:cc'/>
    <ip address='${A.bridge4}' netmask='255.255.255.0'>
      <dhcp>
        <range start='192.168.122.100' end='192.168.122.254'/>
        <host mac='${MAC1}' name='g1' ip='${A.g1v4}'/>
      </dhcp>
    </ip>
  </network>
</networkstatus>
`;

/** dnsmasq's lease records for the bridge, replaced by rename as libvirt's lease helper does. */
export async function writeLeases(dir: string, leases: { ip: string; mac: string; host: string }[]) {
  const expiry = Math.floor(Date.now() / 1000) + 3600;
  const text = JSON.stringify(
    leases.map((l) => ({
      "ip-address": l.ip,
      "mac-address": l.mac,
      hostname: l.host,
      "expiry-time": expiry,
    })),
    null,
    2,
  );
  await Deno.writeTextFile(`${dir}/virbr0.status.new`, text);
  await Deno.rename(`${dir}/virbr0.status.new`, `${dir}/virbr0.status`);
}

/** The directories standing in for libvirt's and ours, under one temporary root. */
export interface Dirs {
  root: string;
  network: string;
  dnsmasq: string;
  qemu: string;
  state: string;
  /** The config file; none by default: the guests' XML is the whole configuration. */
  config?: string;
}

/**
 * Makes the directories, with the network's status file and an empty lease file (as libvirt has it before the
 * first lease).
 */
export async function makeDirs(prefix: string): Promise<Dirs> {
  const root = await Deno.makeTempDir({ prefix });
  const d: Dirs = {
    root,
    network: `${root}/network`,
    dnsmasq: `${root}/dnsmasq`,
    qemu: `${root}/qemu`,
    state: `${root}/state`,
  };
  for (const dir of [d.network, d.dnsmasq, d.qemu, d.state]) await Deno.mkdir(dir);
  await Deno.writeTextFile(`${d.network}/default.xml`, NETWORK_STATUS);
  await Deno.writeTextFile(`${d.dnsmasq}/virbr0.status`, "");
  return d;
}

/** The environment libvirt gives a hook, with our and libvirt's places pointed at `d`. */
export function envOf(d: Dirs): Record<string, string> {
  return {
    LC_ALL: "C",
    PATH: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    // No config file at all unless given: the guest's XML is the whole configuration.
    CONFIG_FILENAME: d.config ?? `${d.root}/no-such-hooks.jsonc`,
    LIBVIRT_NETWORK_RUN_DIR: d.network,
    LIBVIRT_DNSMASQ_DIR: d.dnsmasq,
    LIBVIRT_QEMU_RUN_DIR: d.qemu,
    LIBVIRT_HOOK_QEMU_STATE_DIR: d.state,
  };
}

/** Runs the program (a hook call, or a command) in the lab's host namespace, as libvirt runs the hook. */
export async function hook(lab: Lab, d: Dirs, args: string[], stdin = "") {
  return await lab.exec(lab.ns.host, [Deno.execPath(), "run", "-A", MAIN, ...args], {
    stdin,
    clearEnv: true,
    env: envOf(d),
    cwd: "/",
    timeoutMs: 30_000,
  });
}

/** Retries a connection until it answers as expected (the watcher acts on its own time), or gives up. */
export async function eventually(lab: Lab, port: number, want: string, ms = 15_000): Promise<string | null> {
  const until = Date.now() + ms;
  let got: string | null = null;
  while (Date.now() < until) {
    got = await lab.connect(lab.ns.client, "tcp", A.hostPub4, port, { timeoutMs: 1000 });
    if (got === want) return got;
    await new Promise((r) => setTimeout(r, 250));
  }
  return got;
}

/** A watcher running in the lab's host namespace, its stderr collected. */
export interface Watcher {
  child: Deno.ChildProcess;
  /** Its stderr so far. */
  stderr(): string;
  /** Waits until its stderr matches, or gives up after `ms`; true when it matched. */
  said(pattern: RegExp, ms?: number): Promise<boolean>;
  /** Stops it (SIGTERM) and waits for it; idempotent. */
  stop(): Promise<void>;
}

/** Starts `watch --poll <poll>` in the lab's host namespace and waits until it watches. */
export async function startWatcher(lab: Lab, d: Dirs, poll: number, extra: string[] = []): Promise<Watcher> {
  const child = new Deno.Command("ip", {
    args: [
      "netns",
      "exec",
      lab.ns.host,
      Deno.execPath(),
      "run",
      "-A",
      MAIN,
      "watch",
      "--poll",
      String(poll),
      ...extra,
    ],
    clearEnv: true,
    env: envOf(d),
    stdout: "null",
    stderr: "piped",
  }).spawn();
  let text = "";
  const reading = (async () => {
    for await (const chunk of child.stderr.pipeThrough(new TextDecoderStream())) text += chunk;
  })().catch(() => {});
  let stopped = false;
  const w: Watcher = {
    child,
    stderr: () => text,
    async said(pattern, ms = 15_000) {
      const until = Date.now() + ms;
      while (Date.now() < until) {
        if (pattern.test(text)) return true;
        await new Promise((r) => setTimeout(r, 100));
      }
      return pattern.test(text);
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      try {
        child.kill("SIGTERM");
      } catch {
        // Gone already.
      }
      await child.status;
      await reading;
    },
  };
  if (!await w.said(/watching the firewall/)) {
    await w.stop();
    throw new Error(`the watcher did not start: ${text}`);
  }
  return w;
}
