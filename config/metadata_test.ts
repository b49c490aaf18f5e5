import assert from "node:assert/strict";
import { METADATA_NS, readMetadata } from "./metadata.ts";
import { formatDiagnostic } from "./model.ts";
import { reportClashes } from "./ports.ts";
import { loadXml, parseXml } from "../system/xml.ts";

await loadXml();

/** A domain XML with `metadata` in its <metadata>, at line 4; its problems as the hook prints them. */
function problems(metadata: string): string[] {
  const xml =
    `<domain type='kvm'>\n  <name>web1</name>\n  <metadata>\n${metadata}\n  </metadata>\n</domain>\n`;
  const read = readMetadata("web1", { root: parseXml(xml), file: "web1.xml" }, {
    defaultPublicIp: { 4: "203.0.113.1" },
  });
  if (read.diagnostics.length === 0) reportClashes(read.claims);
  return read.diagnostics.map(formatDiagnostic);
}

const OPEN = `    <lvh:forwards xmlns:lvh="${METADATA_NS}">`;
const CLOSE = `    </lvh:forwards>`;
/** Our element around `body` (its lines start at line 5). */
const ours = (...body: string[]) => [OPEN, ...body, CLOSE].join("\n");

Deno.test("readMetadata() reads the issue's example: ranges shifted, excluded, both protocols", () => {
  const xml = `<domain type='kvm'><name>web1</name><metadata>
  <lvh:forwards xmlns:lvh="urn:libvirt-hook-qemu:1">
    <lvh:portForward proto="tcp" address="203.0.113.7" source="198.51.100.0/24">
      <lvh:range start="2222" to="22"/>
      <lvh:range start="443"/>
      <lvh:range start="30000" end="30099" to="40000"/>
      <lvh:range start="30050" end="30059" exclude="yes"/>
    </lvh:portForward>
    <lvh:portForward proto="udp"><lvh:range start="51820"/></lvh:portForward>
  </lvh:forwards></metadata></domain>`;
  const read = readMetadata("web1", { root: parseXml(xml), file: "web1.xml" });
  assert.deepEqual(read.diagnostics, []);
  assert.equal(read.present, true);
  assert.deepEqual(read.entries, [
    {
      path: "forwards/portForward[1]",
      targets: [{ family: 4, publicIp: "203.0.113.7", sources: ["198.51.100.0/24"] }],
      ports: [
        { protocol: "tcp", publicPort: 2222, privatePort: 22, count: 1 },
        { protocol: "tcp", publicPort: 443, privatePort: 443, count: 1 },
        // 30050-30059 excluded: the range splits, each part keeps its shift.
        { protocol: "tcp", publicPort: 30000, privatePort: 40000, count: 50 },
        { protocol: "tcp", publicPort: 30060, privatePort: 40060, count: 40 },
      ],
    },
    {
      path: "forwards/portForward[2]",
      targets: [{ family: 4 }],
      ports: [{ protocol: "udp", publicPort: 51820, privatePort: 51820, count: 1 }],
    },
  ]);
});

Deno.test('readMetadata() reads address="*", dev, description and enabled="no", and refuses what they cannot be', () => {
  const xml = `<domain><name>web1</name><metadata><f:forwards xmlns:f="urn:libvirt-hook-qemu:1">
<f:portForward proto="tcp" address="*" dev="eth1" description="shop"><f:range start="8080" to="80"/></f:portForward>
<f:portForward proto="udp" address="*" guest="fd00::5" enabled="no"><f:range start="53"/></f:portForward>
</f:forwards></metadata></domain>`;
  const read = readMetadata("web1", { root: parseXml(xml), file: "web1.xml" });
  assert.deepEqual(read.diagnostics, []);
  // "*" takes the family of the forward's other addresses (IPv4 where none is given).
  assert.deepEqual(read.entries, [
    {
      path: "forwards/portForward[1]",
      targets: [{ family: 4, publicIp: "*" }],
      ports: [{ protocol: "tcp", publicPort: 8080, privatePort: 80, count: 1 }],
      dev: "eth1",
      description: "shop",
    },
    {
      path: "forwards/portForward[2]",
      targets: [{ family: 6, privateIp: "fd00::5", publicIp: "*" }],
      ports: [{ protocol: "udp", publicPort: 53, privatePort: 53, count: 1 }],
      enabled: false,
    },
  ]);
  assert.deepEqual(
    problems(
      ours(
        `<lvh:portForward proto="tcp" address="*" dev="a b" description="a\\b" enabled="maybe" allPorts="yes"/>`,
      ),
    ),
    [
      'web1.xml:5:42: Not a valid interface name: it holds " ", which no interface name may hold here (forwards/portForward[1]/@dev = "a b")',
      `web1.xml:5:52: A description holds printable ASCII without double quotes or backslashes, found "\\\\" (forwards/portForward[1]/@description = "a\\\\b")`,
      'web1.xml:5:70: Expected "yes" or "no" (forwards/portForward[1]/@enabled = "maybe")',
      'web1.xml:5:86: allPorts needs one address, not "*" (forwards/portForward[1]/@allPorts = "yes")',
    ],
  );
});

Deno.test("readMetadata() takes IPv6 from the addresses, the guest's address and MAC where given", () => {
  const read = readMetadata("web1", {
    root: parseXml(
      `<domain><metadata><forwards xmlns="${METADATA_NS}"><portForward proto="tcp" address="2001:DB8::7" ` +
        `guest="fd00::10" mac="52:54:00:AA:BB:CC"><range start="22"/></portForward></forwards></metadata></domain>`,
    ),
    file: "web1.xml",
  });
  assert.deepEqual(read.diagnostics, []);
  assert.deepEqual(read.entries, [{
    path: "forwards/portForward[1]",
    targets: [{ family: 6, privateIp: "fd00::10", publicIp: "2001:db8::7" }],
    ports: [{ protocol: "tcp", publicPort: 22, privatePort: 22, count: 1 }],
    mac: "52:54:00:aa:bb:cc",
  }]);
});

Deno.test("readMetadata() finds nothing where the XML has nothing of ours, and reads libvirt's status file", () => {
  const other =
    `<domain><metadata><app:x xmlns:app="urn:example:app"><app:portForward/></app:x></metadata></domain>`;
  assert.deepEqual(readMetadata("web1", { root: parseXml(other), file: "web1.xml" }), {
    present: false,
    entries: [],
    places: [],
    diagnostics: [],
    claims: [],
  });
  const status = `<domstatus state='running'><domain><metadata><lvh:forwards xmlns:lvh="${METADATA_NS}">` +
    `<lvh:portForward proto="udp"><lvh:range start="53"/></lvh:portForward></lvh:forwards></metadata></domain></domstatus>`;
  assert.equal(readMetadata("web1", { root: parseXml(status), file: "web1.xml" }).entries.length, 1);
});

Deno.test("readMetadata() reports each mistake as file:line:column: message (element path = value)", async (t) => {
  const cases: [string, string, string[]][] = [
    ["an element of ours that is not <forwards>", `    <lvh:forward xmlns:lvh="${METADATA_NS}"/>`, [
      "web1.xml:4:5: Unknown element <lvh:forward>; ours is <forwards> (forward)",
    ]],
    ["an empty <forwards>", ours(), ["web1.xml:4:5: <forwards> holds no <portForward> (forwards)"]],
    ["an unknown element in <forwards>", ours(`      <lvh:portforward proto="tcp"/>`), [
      "web1.xml:5:7: Unknown element <lvh:portforward>; <forwards> holds <portForward> (forwards/portforward)",
    ]],
    [
      "an unknown attribute, and no proto",
      ours(`      <lvh:portForward protocol="tcp"><lvh:range start="22"/></lvh:portForward>`),
      [
        'web1.xml:5:24: Unknown attribute "protocol"; known: proto, address, source, sourceSet, guest, mac, snat, allPorts, dev, description, enabled, log, counters (forwards/portForward[1]/@protocol)',
        'web1.xml:5:7: Missing required attribute "proto" (tcp or udp) (forwards/portForward[1])',
      ],
    ],
    [
      "a protocol that has no ports",
      ours(`      <lvh:portForward proto="icmp"><lvh:range start="22"/></lvh:portForward>`),
      [
        'web1.xml:5:24: Protocol "icmp" cannot be forwarded by port; use tcp or udp (forwards/portForward[1]/@proto = "icmp")',
      ],
    ],
    [
      "addresses that are none, a network where one address goes, a MAC that is none",
      ours(
        `      <lvh:portForward proto="tcp" address="203.0.113.300" source="10.0.0.0/33"`,
        `                       guest="192.168.122.10/24" mac="52:54:00:zz:00:01"><lvh:range start="22"/></lvh:portForward>`,
      ),
      [
        'web1.xml:5:36: Not an IP address (forwards/portForward[1]/@address = "203.0.113.300")',
        'web1.xml:5:60: Not a network: the prefix must be 0 to 32 (item "10.0.0.0/33") (forwards/portForward[1]/@source = "10.0.0.0/33")',
        'web1.xml:6:24: Not an IP address (forwards/portForward[1]/@guest = "192.168.122.10/24")',
        'web1.xml:6:50: Not a MAC address (six hex pairs, as 52:54:00:12:34:56) (forwards/portForward[1]/@mac = "52:54:00:zz:00:01")',
      ],
    ],
    [
      "addresses of two families",
      ours(
        `      <lvh:portForward proto="tcp" address="2001:db8::1" guest="192.168.122.10"><lvh:range start="22"/></lvh:portForward>`,
      ),
      [
        'web1.xml:5:58: Cannot forward between families: address is IPv6, guest is IPv4 (forwards/portForward[1]/@guest = "192.168.122.10")',
      ],
    ],
    [
      "no range, and an unknown element",
      ours(`      <lvh:portForward proto="tcp"><lvh:port start="22"/></lvh:portForward>`),
      [
        "web1.xml:5:36: Unknown element <lvh:port>; <portForward> holds <range> (forwards/portForward[1]/port)",
      ],
    ],
    ["no range at all", ours(`      <lvh:portForward proto="tcp"/>`), [
      "web1.xml:5:7: <portForward> holds no <range> (forwards/portForward[1])",
    ]],
    [
      "ports that are none, out of range, missing",
      ours(
        `      <lvh:portForward proto="tcp">`,
        `        <lvh:range start="ssh"/>`,
        `        <lvh:range start="70000"/>`,
        `        <lvh:range end="22" port="22"/>`,
        `      </lvh:portForward>`,
      ),
      [
        'web1.xml:6:20: Expected a port number (forwards/portForward[1]/range[1]/@start = "ssh")',
        'web1.xml:7:20: Port out of range 1-65535 (forwards/portForward[1]/range[2]/@start = "70000")',
        'web1.xml:8:29: Unknown attribute "port"; known: start, end, to, exclude (forwards/portForward[1]/range[3]/@port)',
        'web1.xml:8:9: Missing required attribute "start" (forwards/portForward[1]/range[3])',
      ],
    ],
    [
      "an exclude that is not yes or no, an excluded range with a target, a range that ends before it starts",
      ours(
        `      <lvh:portForward proto="tcp">`,
        `        <lvh:range start="22" exclude="true"/>`,
        `        <lvh:range start="23" exclude="yes" to="24"/>`,
        `        <lvh:range start="30" end="29"/>`,
        `      </lvh:portForward>`,
      ),
      [
        'web1.xml:6:31: Expected "yes" or "no" (forwards/portForward[1]/range[1]/@exclude = "true")',
        'web1.xml:7:45: An excluded range goes nowhere: drop to (forwards/portForward[1]/range[2]/@to = "24")',
        'web1.xml:8:31: The range ends (29) before it starts (30) (forwards/portForward[1]/range[3]/@end = "29")',
      ],
    ],
    [
      "a guest range past 65535, and everything excluded",
      ours(
        `      <lvh:portForward proto="tcp"><lvh:range start="100" end="200" to="65500"/></lvh:portForward>`,
        `      <lvh:portForward proto="udp"><lvh:range start="53"/><lvh:range start="50" end="60" exclude="yes"/></lvh:portForward>`,
      ),
      [
        `web1.xml:5:69: The guest's range 65500-65600 runs past port 65535 (forwards/portForward[1]/range[1]/@to = "65500")`,
        "web1.xml:6:7: Every port of this <portForward> is excluded: it forwards nothing (forwards/portForward[2])",
      ],
    ],
    [
      "two forwards of the same public port (the default address and the same address given)",
      ours(
        `      <lvh:portForward proto="tcp"><lvh:range start="8000" end="8010"/></lvh:portForward>`,
        `      <lvh:portForward proto="tcp" address="203.0.113.1"><lvh:range start="8010"/></lvh:portForward>`,
      ),
      [
        "web1.xml:6:58: Public tcp port 8010 on 203.0.113.1 is also claimed by forwards/portForward[1]/range[1] " +
        "(8000-8010) (forwards/portForward[2]/range[1])",
        "web1.xml:5:36: Public tcp port 8000-8010 on 203.0.113.1 is also claimed by forwards/portForward[2]/range[1] " +
        "(8010) (forwards/portForward[1]/range[1])",
      ],
    ],
  ];
  for (const [name, metadata, expected] of cases) {
    await t.step(name, () => assert.deepEqual(problems(metadata), expected));
  }
});

Deno.test("readMetadata() reads source as a list of the forward's family, and sourceSet", async (t) => {
  const xml = (attrs: string) =>
    `<domain><name>web1</name><metadata><lvh:forwards xmlns:lvh="urn:libvirt-hook-qemu:1">
  <lvh:portForward proto="tcp" address="203.0.113.7" ${attrs}><lvh:range start="22"/></lvh:portForward>
</lvh:forwards></metadata></domain>`;
  const read = (attrs: string) => readMetadata("web1", { root: parseXml(xml(attrs))!, file: "web1.xml" });
  await t.step("a list, merged and sorted", () => {
    const r = read(`source="198.51.100.0/24, 192.0.2.10-192.0.2.20 198.51.100.9"`);
    assert.deepEqual(r.diagnostics, []);
    assert.deepEqual(r.entries[0]?.targets, [
      { family: 4, publicIp: "203.0.113.7", sources: ["192.0.2.10-192.0.2.20", "198.51.100.0/24"] },
    ]);
  });
  await t.step("an item of the other family, positioned", () => {
    const r = read(`source="198.51.100.0/24 2001:db8::/32"`);
    assert.deepEqual(r.diagnostics.map(formatDiagnostic), [
      'web1.xml:2:54: Cannot forward between families: address is IPv4, source has IPv6 (forwards/portForward[1]/@source = "198.51.100.0/24 2001:db8::/32")',
    ]);
  });
  await t.step("sourceSet", () => {
    const r = read(`sourceSet="office"`);
    assert.deepEqual(r.entries[0]?.targets, [{ family: 4, publicIp: "203.0.113.7", sourceSet: "office" }]);
  });
});

for (const flag of ["log", "counters"] as const) {
  Deno.test(`readMetadata() reads ${flag}="yes" onto the entry, "no" as nothing, anything else as a mistake`, () => {
    const read = (value: string) => {
      const xml = `<domain type='kvm'><name>web1</name><metadata>
  <lvh:forwards xmlns:lvh="urn:libvirt-hook-qemu:1">
    <lvh:portForward proto="tcp" ${flag}="${value}"><lvh:range start="2222" to="22"/></lvh:portForward>
  </lvh:forwards></metadata></domain>`;
      return readMetadata("web1", { root: parseXml(xml), file: "web1.xml" });
    };
    assert.equal(read("yes").entries[0]?.[flag], true);
    assert.equal(read("no").entries[0]?.[flag], undefined);
    assert.deepEqual(read("maybe").diagnostics.map(formatDiagnostic), [
      `web1.xml:3:34: Expected "yes" or "no" (forwards/portForward[1]/@${flag} = "maybe")`,
    ]);
  });
}
