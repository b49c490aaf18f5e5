import assert from "node:assert/strict";
import { guestForwards, type GuestLookup } from "./guest.ts";
import type { PolicyView } from "./xml_policy.ts";
import { formatDiagnostic } from "../config/model.ts";
import { DEFAULT_XML_RULE, type XmlRule } from "../config/policy.ts";
import { loadXml, parseXml } from "../system/xml.ts";

await loadXml();

const MAC = "52:54:00:00:00:10";
const NETWORK = `<networkstatus><network><name>default</name><bridge name='virbr0'/>
  <ip address='192.168.122.1' netmask='255.255.255.0'><dhcp>
    <host mac='${MAC}' ip='192.168.122.10'/>
  </dhcp></ip></network></networkstatus>`;
const lookup: GuestLookup = {
  networkStatus: (name) => (name === "default" ? NETWORK : undefined),
  leases: () => [],
  now: () => 0,
};

/** A domain XML whose metadata holds these `<portForward>` lines, one per line from line 3 on. */
function xml(...forwards: string[]): string {
  return `<domain><name>web1</name><metadata><f:forwards xmlns:f="urn:libvirt-hook-qemu:1">
${forwards.join("\n")}
</f:forwards></metadata><devices><interface type='network'><mac address='${MAC}'/>
<source network='default' bridge='virbr0'/></interface></devices></domain>`;
}

/** The host of these tests: 203.0.113.1 (the default) and .2, sshd on 0.0.0.0:22. */
function view(rule: Partial<XmlRule> = {}): PolicyView {
  return {
    rule: { ...DEFAULT_XML_RULE, ...rule },
    addresses: ["127.0.0.1", "203.0.113.1", "203.0.113.2"],
    declared: ["198.51.100.0/29"],
    listeners: () => [{ protocol: "tcp", family: 4, address: "0.0.0.0", port: 22 }],
    defaultPublicIp: { 4: "203.0.113.1" },
  };
}

function problems(text: string, policy: PolicyView): string[] {
  const got = guestForwards("web1", {
    entries: [],
    xml: { root: parseXml(text), file: "web1.xml" },
    lookup,
    defaultPublicIp: { 4: "203.0.113.1" },
    policy,
  });
  return got.diagnostics.map(formatDiagnostic);
}

const RULE = 'a "/settings".xml_forwards rule for this domain';

Deno.test("policyProblems(): by default a guest's XML gets its own address, the host's addresses, free ports", () => {
  const ok = xml(
    `<f:portForward proto="tcp"><f:range start="8080" to="80"/></f:portForward>`,
    `<f:portForward proto="udp" address="198.51.100.3" guest="192.168.122.10"><f:range start="53"/></f:portForward>`,
  );
  assert.deepEqual(problems(ok, view()), []);
});

Deno.test("policyProblems(): each refusal of the defaults, where it is, naming the setting that allows it", async (t) => {
  const cases: [string, string, string[]][] = [
    [
      "a port the host listens on",
      `<f:portForward proto="tcp"><f:range start="20" end="25"/></f:portForward>`,
      [
        `web1.xml:2:28: Public tcp 203.0.113.1:20-25 takes a port the host itself listens on (0.0.0.0:22): a guest's ` +
        `XML may not take it from the host (allow it with "host_ports": true in ${RULE}) ` +
        '(forwards/portForward[1]/range[1] = "20-25")',
      ],
    ],
    ["snat and allPorts", `<f:portForward address="203.0.113.2" snat="yes" allPorts="yes"/>`, [
      'web1.xml:2:38: snat="yes" takes a whole public address, which a guest\'s XML may not by default (allow it ' +
      `with "snat": true in ${RULE}) (forwards/portForward[1]/@snat = "yes")`,
      'web1.xml:2:49: allPorts="yes" takes a whole public address, which a guest\'s XML may not by default ' +
      `(allow it with "all_ports": true in ${RULE}) (forwards/portForward[1]/@allPorts = "yes")`,
      "web1.xml:2:49: Public tcp 203.0.113.2:1-65535 takes a port the host itself listens on (0.0.0.0:22): a " +
      `guest's XML may not take it from the host (allow it with "host_ports": true in ${RULE}) ` +
      '(forwards/portForward[1]/@allPorts = "1-65535")',
    ]],
    [
      "a network where the guest's address goes",
      `<f:portForward proto="tcp" guest="192.168.122.11"><f:range start="81"/></f:portForward>`,
      [
        "web1.xml:2:28: 192.168.122.11 is not this guest's address (its network's reservations and leases give " +
        "192.168.122.10): a guest's XML may forward only to the guest itself (drop guest to have its address found, " +
        `or allow it with "targets": ["192.168.122.11"] in ${RULE}) ` +
        '(forwards/portForward[1]/@guest = "192.168.122.11")',
      ],
    ],
  ];
  for (const [name, forward, expected] of cases) {
    await t.step(name, () => assert.deepEqual(problems(xml(forward), view()), expected));
  }
});

Deno.test("policyProblems(): a rule widens (host ports, targets, snat, all_ports) and narrows (addresses, protocols, ports)", () => {
  const wide = view({
    path: '["/settings"].xml_forwards[0]',
    hostPorts: true,
    snat: true,
    allPorts: true,
    targets: ["10.9.9.0/24"],
  });
  const text = xml(
    `<f:portForward proto="tcp" guest="10.9.9.9"><f:range start="22"/></f:portForward>`,
    `<f:portForward address="203.0.113.2" snat="yes" allPorts="yes"/>`,
  );
  assert.deepEqual(problems(text, wide), []);
  const narrow = view({
    path: '["/settings"].xml_forwards[1]',
    addresses: ["203.0.113.2"],
    protocols: ["tcp"],
    ports: [[10000, 19999]],
  });
  assert.deepEqual(
    problems(xml(`<f:portForward proto="udp"><f:range start="9000"/></f:portForward>`), narrow),
    [
      "web1.xml:2:1: The host's default address 203.0.113.1 is not among the public addresses this guest's XML " +
      'may use (203.0.113.2) (allow it with "addresses" in ["/settings"].xml_forwards[1]) (forwards/portForward[1])',
      "web1.xml:2:16: Protocol udp is not one this guest's XML may forward (allow it with " +
      '"protocols": ["tcp", "udp"] in ["/settings"].xml_forwards[1]) (forwards/portForward[1]/@proto = "udp")',
      "web1.xml:2:28: Public port 9000 is outside the ports this guest's XML may claim (10000-19999) (allow it " +
      'with "ports" in ["/settings"].xml_forwards[1]) (forwards/portForward[1]/range[1] = "9000")',
    ],
  );
});

Deno.test('policyProblems(): address="*" only where a rule says "any_address": true, and never a port the host listens on', () => {
  const any = xml(
    `<f:portForward proto="tcp" address="*" dev="eth1"><f:range start="8080" to="80"/></f:portForward>`,
    `<f:portForward proto="tcp" address="*"><f:range start="22"/></f:portForward>`,
  );
  const refused = (line: number) =>
    `web1.xml:${line}:28: address="*" takes the port on every address of this host, which a guest's XML may not ` +
    `by default (allow it with "any_address": true in ${RULE}) (forwards/portForward[${
      line - 1
    }]/@address = "*")`;
  // Port 22 is sshd's on every address, "*" included: refused whatever the rule says of addresses.
  const sshd =
    "web1.xml:3:40: Public tcp *:22 takes a port the host itself listens on (0.0.0.0:22): a guest's XML " +
    `may not take it from the host (allow it with "host_ports": true in ${RULE}) (forwards/portForward[2]/range[1] = "22")`;
  assert.deepEqual(problems(any, view()), [refused(2), refused(3), sshd]);
  // Allowed where a rule says so, whatever "addresses" narrows.
  assert.deepEqual(problems(any, view({ anyAddress: true, addresses: ["203.0.113.9"] })), [sshd]);
});

Deno.test('guestForwards(): an entry with enabled="no" (or "enabled": false) is planned as nothing, and noted', () => {
  const got = guestForwards("web1", {
    entries: [{
      path: "web1",
      targets: [{ family: 4, privateIp: "192.168.122.10" }],
      ports: [{ protocol: "tcp", publicPort: 80, privatePort: 80, count: 1 }],
      description: "old site",
      enabled: false,
    }],
    xml: {
      root: parseXml(
        xml(
          `<f:portForward proto="tcp" enabled="no" description="shop"><f:range start="8080"/></f:portForward>`,
        ),
      ),
      file: "web1.xml",
    },
    lookup,
    defaultPublicIp: { 4: "203.0.113.1" },
    policy: view(),
  });
  assert.deepEqual(got.diagnostics, []);
  assert.deepEqual(got.entries, []);
  assert.deepEqual(got.waiting, []);
  assert.deepEqual(got.notes, [
    'web1 "old site" is switched off ("enabled": false): nothing is installed for it',
    'forwards/portForward[1] "shop" is switched off (enabled="no"): nothing is installed for it',
  ]);
});

Deno.test("guestForwards(): a rule that turns XML forwards off ignores them, and says so", () => {
  const got = guestForwards("web1", {
    entries: [],
    xml: {
      root: parseXml(xml(`<f:portForward proto="tcp"><f:range start="22"/></f:portForward>`)),
      file: "web1.xml",
    },
    lookup,
    policy: view({ path: '["/settings"].xml_forwards', enabled: false }),
  });
  assert.deepEqual([got.entries, got.diagnostics, got.metadata], [[], [], false]);
  assert.deepEqual(got.notes, [
    `its XML's forwards are off (["/settings"].xml_forwards: "enabled": false); ignored`,
  ]);
});
