import assert from "node:assert/strict";
import { attr, child, loadXml, parseXml, rootName, XmlSyntaxError } from "./xml.ts";

await loadXml();

Deno.test("parseXml() keeps where each element and attribute begins, and resolves namespaces", () => {
  const root = parseXml(`<?xml version="1.0"?>
<domain type='kvm'>
  <metadata>
    <lvh:forwards xmlns:lvh="urn:libvirt-hook-qemu:1">
      <lvh:portForward
          proto="tcp" address="203.0.113.7"/>
    </lvh:forwards>
  </metadata>
</domain>`);
  assert.deepEqual([root.local, root.line, root.column, attr(root, "type")], ["domain", 2, 1, "kvm"]);
  const ours = child(child(root, "metadata")!, "forwards")!;
  assert.deepEqual([ours.name, ours.uri, ours.line, ours.column], [
    "lvh:forwards",
    "urn:libvirt-hook-qemu:1",
    4,
    5,
  ]);
  const pf = ours.children[0]!;
  assert.deepEqual(pf.attributes.map((a) => [a.name, a.value, a.line, a.column]), [
    ["proto", "tcp", 6, 11],
    ["address", "203.0.113.7", 6, 23],
  ]);
});

Deno.test("parseXml() refuses XML that is not well-formed, saying where", () => {
  assert.throws(() => parseXml("<a>\n  <b></a>"), (e) => e instanceof XmlSyntaxError && e.line === 2);
  assert.throws(() => parseXml('<a><x:b xmlns:y="u"/></a>'), /unbound namespace prefix/);
  assert.throws(() => parseXml(""), XmlSyntaxError);
});

Deno.test("rootName() reads no further than the root: a domain's XML, a network hook's, or no XML", () => {
  assert.equal(rootName("<?xml version='1.0'?>\n<!-- c --><domain type='kvm'><x></domain>"), "domain");
  assert.equal(rootName("<hookData><network/></hookData>"), "hookData");
  assert.equal(rootName("not xml"), undefined);
  assert.equal(rootName(""), undefined);
});
