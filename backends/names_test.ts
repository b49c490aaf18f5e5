/** What makes a rule ours: chain names within iptables' limits, and comments that name the domain. */

import {
  carriedDomain,
  chainNames,
  commentDomain,
  domainHash,
  domainLabel,
  hashOnly,
  isHashOnly,
  ruleComment,
} from "./names.ts";
import assert from "node:assert/strict";

Deno.test("chainNames() stays within 28 characters and tells apart long names that share a prefix", () => {
  const a = chainNames("example-guest-vm-name-please-change");
  const b = chainNames("example-guest-vm-name-please-change-2");
  for (const name of [...Object.values(a), ...Object.values(b)]) assert.ok(name.length <= 28, name);
  assert.notEqual(a.dnat, b.dnat);
  assert.match(a.dnat, /^LVH-[0-9a-f]{12}-DNAT$/);
});

Deno.test("ruleComment() names the domain so that commentDomain() reads it back", async (t) => {
  const names = [
    "web1",
    "$VM_NAME",
    'my guest "quoted"',
    "ünïcode:name",
    "#0123456789ab",
    "%23",
    "x".repeat(100),
    "x".repeat(101),
    "x".repeat(300),
    "日本語のなまえ十二文字だよ",
    "😀",
    "😀".repeat(250),
  ];
  for (const name of names) {
    await t.step(name.slice(0, 20), () => {
      const comment = ruleComment(name);
      // nftables keeps 128 bytes of a comment, and our accept in libvirt's chain adds ":accept".
      assert.ok(new TextEncoder().encode(`${comment}:accept`).length <= 128, comment);
      assert.match(
        comment,
        /^libvirt-hook-qemu:1:[A-Za-z0-9._~+@=,%-]+$|^libvirt-hook-qemu:1:#[0-9a-f]{12}$/,
      );
      const read = commentDomain(comment)!;
      // Read back: the name itself, or (too long for a comment) the domain known by its hash, the same hash.
      assert.equal(read, carriedDomain(name));
      assert.equal(domainHash(read), domainHash(name));
      assert.equal(isHashOnly(read), comment.includes("#"));
    });
  }
  await t.step("a real name that looks like a hash is never taken for one", () => {
    assert.equal(commentDomain(ruleComment("#0123456789ab")), "#0123456789ab");
    assert.notEqual(domainHash("#0123456789ab"), "0123456789ab");
  });
  await t.step("a domain known only by its hash keeps it, and reads as #<hash>", () => {
    const known = hashOnly(domainHash("x".repeat(300)));
    assert.equal(ruleComment(known), ruleComment("x".repeat(300)));
    assert.deepEqual(chainNames(known), chainNames("x".repeat(300)));
    assert.equal(domainLabel(known), `#${domainHash("x".repeat(300))}`);
    assert.equal(domainLabel("web1"), "web1");
  });
});
