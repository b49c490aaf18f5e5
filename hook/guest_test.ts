import assert from "node:assert/strict";
import { findAddress, guestForwards, type GuestLookup, waitingNote } from "./guest.ts";
import { forwardsOf } from "./domain.ts";
import { emptyConfig, loadParser, parseConfig, parseConfigs } from "../config/validate.ts";
import type { Entry } from "../config/model.ts";
import type { Lease } from "../system/libvirt.ts";
import { LeaseFileError, parseLeases } from "../system/libvirt.ts";
import type { HostFacts } from "../system/host.ts";
import { loadXml, parseXml } from "../system/xml.ts";

await loadXml();

const NOW = 1_760_000_000;
const MAC = "52:54:00:00:00:10";

/** libvirt's status file of a running network, with DHCP reservations for IPv4 (by MAC) and IPv6 (by name, DUID). */
const NETWORK = `<networkstatus><class_id bitmap='0-2'/><network>
  <name>default</name><bridge name='virbr0' stp='on' delay='0'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'><dhcp>
    <range start='192.168.122.100' end='192.168.122.254'/>
    <host mac='52:54:00:00:00:10' name='web1' ip='192.168.122.10'/>
  </dhcp></ip>
  <ip family='ipv6' address='fd00:122::1' prefix='64'><dhcp>
    <host name='web1' ip='fd00:122::10'/>
    <host id='0:3:0:1:52:54:0:0:0:20' ip='fd00:122::20'/>
  </dhcp></ip>
</network></networkstatus>`;

function lookup(leases: Lease[] = [], network = NETWORK): GuestLookup {
  return {
    networkStatus: (name) => (name === "default" ? network : undefined),
    leases: (bridge) => (bridge === "virbr0" ? leases : []),
    now: () => NOW,
  };
}

const nic = (mac = MAC) => ({ mac, network: "default" });

Deno.test("findAddress(): the reservation first, for the MAC (IPv4), the domain's name or a DUID of the MAC (IPv6)", () => {
  const lease = { address: "192.168.122.150", mac: MAC, expiry: NOW + 60 };
  assert.deepEqual(findAddress("web1", nic(), { family: 4, lookup: lookup([lease]) }), {
    address: "192.168.122.10",
    via: "reservation",
    bridge: "virbr0",
  });
  assert.equal(findAddress("web1", nic(), { family: 6, lookup: lookup() }).address, "fd00:122::10");
  assert.equal(
    findAddress("other", nic("52:54:00:00:00:20"), { family: 6, lookup: lookup() }).address,
    "fd00:122::20",
  );
});

Deno.test("findAddress(): else the newest lease that has not expired; nothing (but the bridge) before the first", () => {
  const mac = "52:54:00:00:00:99";
  const leases = parseLeases(JSON.stringify([
    { "ip-address": "192.168.122.101", "mac-address": mac, hostname: "a", "expiry-time": NOW - 1 },
    { "ip-address": "192.168.122.102", "mac-address": mac.toUpperCase(), "expiry-time": NOW + 100 },
    { "ip-address": "192.168.122.103", "mac-address": mac, "expiry-time": NOW + 50 },
    { "ip-address": "192.168.122.104", "mac-address": "52:54:00:00:00:98", "expiry-time": NOW + 500 },
  ]));
  assert.deepEqual(findAddress("web9", nic(mac), { family: 4, lookup: lookup(leases) }), {
    address: "192.168.122.102",
    via: "lease",
    bridge: "virbr0",
  });
  // libvirt's status file is empty (0 bytes) before the first lease.
  assert.deepEqual(parseLeases(""), []);
  assert.deepEqual(findAddress("web9", nic(mac), { family: 4, lookup: lookup([]) }), { bridge: "virbr0" });
  // A network that is not running: no bridge to look for a lease on either.
  assert.deepEqual(findAddress("web9", { mac, network: "gone" }, { family: 4, lookup: lookup() }), {});
});

Deno.test("findAddress(): a lease file that cannot be read gives no address, and its problem", () => {
  const broken: GuestLookup = {
    ...lookup(),
    leases: () => {
      throw new LeaseFileError("Cannot read the DHCP leases in /x/virbr0.status: not JSON");
    },
  };
  assert.deepEqual(findAddress("web9", nic("52:54:00:00:00:99"), { family: 4, lookup: broken }), {
    bridge: "virbr0",
    unreadable: "Cannot read the DHCP leases in /x/virbr0.status: not JSON",
  });
  // A reservation needs no lease file.
  assert.equal(findAddress("web1", nic(), { family: 4, lookup: broken }).address, "192.168.122.10");
});

const XML = (metadata = "", mac = MAC) =>
  `<domain type='kvm'><name>web1</name><metadata>${metadata}</metadata><devices>
  <interface type='bridge'><mac address='52:54:00:ff:ff:ff'/><source bridge='br0'/><target dev='vnet0'/></interface>
  <interface type='network'><mac address='${mac}'/><source network='default' bridge='virbr0'/><target dev='vnet1'/></interface>
</devices></domain>`;
const META = `<lvh:forwards xmlns:lvh="urn:libvirt-hook-qemu:1"><lvh:portForward proto="tcp">` +
  `<lvh:range start="8080" to="80"/></lvh:portForward></lvh:forwards>`;
const json = (targets: Entry["targets"], port = 22): Entry => ({
  path: "web1",
  targets,
  ports: [{ protocol: "tcp", publicPort: port, privatePort: port, count: 1 }],
});

Deno.test("guestForwards(): the config's entries and the XML's together, each address found on the first libvirt NIC", () => {
  const got = guestForwards("web1", {
    entries: [json([{ family: 4 }]), json([{ family: 4, privateIp: "192.168.122.50" }], 23)],
    xml: { root: parseXml(XML(META)), file: "domain XML of web1" },
    lookup: lookup(),
  });
  assert.deepEqual(got.diagnostics, []);
  assert.deepEqual(got.problems, []);
  assert.deepEqual(got.waiting, []);
  assert.equal(got.metadata, true);
  // The found ones also get the bridge, as `interface`; the explicit one stays as written.
  assert.deepEqual(got.entries.map((e) => [e.path, e.targets, e.interface]), [
    ["web1", [{ family: 4, privateIp: "192.168.122.10" }], "virbr0"],
    ["web1", [{ family: 4, privateIp: "192.168.122.50" }], undefined],
    ["forwards/portForward[1]", [{ family: 4, privateIp: "192.168.122.10" }], "virbr0"],
  ]);
});

Deno.test("guestForwards(): no reservation, no lease: the forward waits for the lease of its MAC", () => {
  const mac = "52:54:00:00:00:77";
  const got = guestForwards("web1", {
    entries: [],
    xml: { root: parseXml(XML(META, mac)), file: "domain XML of web1" },
    lookup: lookup(),
  });
  assert.deepEqual(got.entries, []);
  assert.deepEqual(got.waiting, [{
    domain: "web1",
    entry: "forwards/portForward[1]",
    family: 4,
    mac,
    network: "default",
    bridge: "virbr0",
  }]);
  assert.equal(waitingNote(got.waiting[0]!), `waiting for a DHCP lease (mac ${mac}, network default)`);
});

Deno.test("guestForwards(): a MAC the guest does not have, or no libvirt NIC, is a problem no lease will solve", () => {
  const withMac = META.replace('proto="tcp"', 'proto="tcp" mac="52:54:00:00:00:99"');
  const a = guestForwards("web1", {
    entries: [],
    xml: { root: parseXml(XML(withMac)), file: "domain XML of web1" },
    lookup: lookup(),
  });
  assert.deepEqual(a.problems, [
    "forwards/portForward[1]: the guest has no interface with MAC 52:54:00:00:00:99",
  ]);
  const b = guestForwards("web1", {
    entries: [json([{ family: 4 }])],
    lookup: lookup(),
  });
  assert.deepEqual(b.problems, [
    "web1: the guest has no interface on a libvirt network to find its address on; give it as private_ip",
  ]);
});

Deno.test("guestForwards(): a public port the XML claims and the config claims too clashes, reported in the XML", async () => {
  await loadParser();
  const config = parseConfig(
    `{"web1": {"private_ip": "192.168.122.50", "port_map": {"tcp": [8080]}},
      "web9": {"private_ip": "192.168.122.90", "public_ip": "203.0.113.9", "all_ports": true}}`,
    "/etc/libvirt/hooks/hooks.jsonc",
    { defaultPublicIp: { 4: "203.0.113.1" } },
  );
  assert.deepEqual(config.diagnostics, []);
  const xml = (meta: string) => ({ root: parseXml(XML(meta)), file: "domain XML of web1" });
  // The guest's own entry in the file, and every port of an address another guest takes whole.
  const own = guestForwards("web1", {
    entries: config.domains.get("web1")!,
    claims: config.claims!,
    xml: xml(META),
    lookup: lookup(),
    defaultPublicIp: { 4: "203.0.113.1" },
  });
  // Both claimants named, each where it is: the XML's, and the entry's line in the file.
  assert.deepEqual(own.diagnostics.map((d) => `${d.file}:${d.line}:${d.column}: ${d.message}`), [
    "domain XML of web1:1:126: Public tcp port 8080 on 203.0.113.1 is also claimed by web1.port_map.tcp[0] in " +
    "/etc/libvirt/hooks/hooks.jsonc (8080)",
    "/etc/libvirt/hooks/hooks.jsonc:1:64: Public tcp port 8080 on 203.0.113.1 is also claimed by " +
    "forwards/portForward[1]/range[1] in domain XML of web1 (8080)",
  ]);
  const other = guestForwards("web1", {
    entries: [],
    claims: config.claims!,
    xml: xml(META.replace('proto="tcp"', 'proto="tcp" address="203.0.113.9"')),
    lookup: lookup(),
  });
  assert.deepEqual(other.diagnostics.map((d) => d.message), [
    "Public tcp port 8080 on 203.0.113.9 is also claimed by web9.all_ports in /etc/libvirt/hooks/hooks.jsonc " +
    "(1-65535)",
  ]);
  assert.deepEqual(other.entries, []);
});

const FACTS: HostFacts = {
  defaultPublicIp: { 4: { address: "203.0.113.1" }, 6: { problem: "no default route" } },
  connected: [{ family: 4, network: "192.168.122.0/24", device: "virbr0" }],
  bridgeNetfilter: { 4: false, 6: false },
} as unknown as HostFacts;

Deno.test("forwardsOf(): XML that is not well-formed, where it holds forwards of ours, is a positioned problem", async () => {
  const config = emptyConfig("hooks.jsonc", false);
  const deps = { networkRunDir: "/nonexistent", dnsmasqDir: "/nonexistent", listeners: () => [] };
  const broken = `<domain>\n<metadata><lvh:forwards xmlns:lvh="urn:libvirt-hook-qemu:1"><lvh:portForward>` +
    `</lvh:forwards></metadata></domain>`;
  assert.deepEqual(await forwardsOf("web1", { config, facts: FACTS, xml: broken, deps }), {
    kind: "invalid",
    lines: ["domain XML of web1:2:93: Not well-formed XML: unexpected close tag."],
    why: "its XML cannot be read",
  });
  // A problem no lease solves names the file the entry is in.
  await loadParser();
  const noNic = parseConfig(`{"web1": {"port_map": {"tcp": [22]}}}`, "hooks.jsonc");
  const bridgeOnly = `<domain><devices><interface type='bridge'><mac address='52:54:00:00:00:01'/>` +
    `<source bridge='br0'/></interface></devices></domain>`;
  assert.deepEqual(await forwardsOf("web1", { config: noNic, facts: FACTS, xml: bridgeOnly, deps }), {
    kind: "invalid",
    lines: [
      "hooks.jsonc: web1: the guest has no interface on a libvirt network to find its address on; give it as private_ip",
    ],
    why: "the guest's address cannot be found",
  });
  // In a drop-in (a link into hooks.d/ included), it names the drop-in as hooks.d/ names it, not the main file.
  const dropIn = parseConfigs([
    { file: "hooks.jsonc", text: `{"db": {"private_ip": "192.168.122.20", "port_map": {"tcp": [5432]}}}` },
    { file: "hooks.d/web.jsonc", text: `{"web1": {"port_map": {"tcp": [22]}}}` },
  ]);
  assert.deepEqual(await forwardsOf("web1", { config: dropIn, facts: FACTS, xml: bridgeOnly, deps }), {
    kind: "invalid",
    lines: [
      "hooks.d/web.jsonc: web1: the guest has no interface on a libvirt network to find its address on; give it " +
      "as private_ip",
    ],
    why: "the guest's address cannot be found",
  });
  // Nothing of ours in it and nothing in the config: nothing to do, the XML is not even read.
  assert.deepEqual(await forwardsOf("web1", { config, facts: FACTS, xml: "<domain><x>", deps }), {
    kind: "absent",
  });
});
