import assert from "node:assert/strict";
import { guestInterfaces, interfacesOf, xmlKind } from "./domain_xml.ts";
import { loadXml, parseXml } from "../system/xml.ts";

Deno.test("xmlKind() tells the qemu hook's XML from the network hook's, at once or through the parser", async () => {
  assert.equal(await xmlKind("<domain type='kvm' id='3'>\n<name>a</name></domain>"), "domain");
  assert.equal(await xmlKind("<hookData>\n  <network>"), "network");
  // What libvirt never writes, but a person might: a declaration or a comment first.
  assert.equal(await xmlKind("<?xml version='1.0'?>\n<!-- <hookData> --><domain><x/></domain>"), "domain");
  assert.equal(await xmlKind("<?xml version='1.0'?><hookData/>"), "network");
  assert.equal(await xmlKind("<domainx/>"), "unknown");
  assert.equal(await xmlKind(""), "unknown");
});

Deno.test("interfacesOf() reads MAC, network, bridge and tap: at start (source bridge) and running (<actual>)", async () => {
  await loadXml();
  const start = `<domain><devices>
    <interface type='network'><mac address='52:54:00:AA:00:01'/>
      <source network='default' portid='x' bridge='virbr0'/><target dev='vnet0'/></interface>
    <interface type='bridge'><mac address='52:54:00:aa:00:02'/><source bridge='br0'/></interface>
  </devices></domain>`;
  assert.deepEqual(interfacesOf(parseXml(start)), [
    { mac: "52:54:00:aa:00:01", network: "default", bridge: "virbr0", device: "vnet0" },
    { mac: "52:54:00:aa:00:02", bridge: "br0" },
  ]);
  const running = `<domstatus state='running'><domain><devices><interface type='network'>
    <mac address='52:54:00:aa:00:01'/><source network='default' portid='x'/>
    <actual type='network'><source bridge='virbr1'/></actual><target dev='vnet9'/>
  </interface></devices></domain></domstatus>`;
  assert.deepEqual(interfacesOf(parseXml(running)), [
    { mac: "52:54:00:aa:00:01", network: "default", bridge: "virbr1", device: "vnet9" },
  ]);
  assert.deepEqual(guestInterfaces(running), [
    { mac: "52:54:00:aa:00:01", network: "default", bridge: "virbr1", device: "vnet9" },
  ]);
  assert.deepEqual(guestInterfaces("not xml"), []);
});
