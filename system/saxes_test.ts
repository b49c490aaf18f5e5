import assert from "node:assert/strict";
import { SaxesParser } from "./saxes.ts";

Deno.test("SaxesParser resolves our namespace whatever its prefix, and tells where each element stands", () => {
  const parser = new SaxesParser({ xmlns: true, position: true });
  const seen: string[] = [];
  parser.on("opentag", (tag) => seen.push(`${parser.line}:${tag.local} ${tag.uri}`));
  parser.write(
    '<domain>\n  <metadata>\n    <lvh:forwards xmlns:lvh="urn:libvirt-hook-qemu:1">\n' +
      '      <lvh:portForward proto="tcp"/>\n    </lvh:forwards>\n  </metadata>\n</domain>',
  ).close();
  assert.deepEqual(seen, [
    "1:domain ",
    "2:metadata ",
    "3:forwards urn:libvirt-hook-qemu:1",
    "4:portForward urn:libvirt-hook-qemu:1",
  ]);
});

Deno.test("SaxesParser is strict: a tag closed out of order is an error", () => {
  const parser = new SaxesParser({ xmlns: true, position: true });
  const errors: string[] = [];
  parser.on("error", (err) => errors.push(err.message));
  parser.write("<domain><metadata></domain>").close();
  assert.ok(errors.length > 0, "the mismatched tag is reported");
  assert.match(errors[0]!, /unexpected close tag/);
});
