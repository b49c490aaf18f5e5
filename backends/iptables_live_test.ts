/** Reading back what of ours is live in iptables: iptables-save text and single-chain listings. */

import { describeForward } from "./forward.ts";
import { listingsToSave, liveForwards, liveOf, parseSave, tokenize } from "./iptables_live.ts";
import { domainHash } from "./names.ts";
import assert from "node:assert/strict";
import { SAVED } from "../test/util.ts";

Deno.test("parseSave() finds our chains, the jumps into them and rules with our comment, nothing else", () => {
  const h = domainHash("web1");
  const mine = liveOf(parseSave(SAVED(h)), "web1");
  assert.deepEqual(mine.chains.map((c) => `${c.table} ${c.chain}`), [
    `filter LVH-${h}-FWD`,
    `nat LVH-${h}-DNAT`,
  ]);
  assert.deepEqual(mine.rules.map((r) => `${r.table} ${r.chain}`), [
    "filter FORWARD",
    `filter LVH-${h}-FWD`,
    "nat PREROUTING",
    // A rule of a later format version is still recognised by its comment.
    "nat PREROUTING",
  ]);
});

Deno.test("tokenize() reads iptables-save quoting", () => {
  assert.deepEqual(tokenize(`-m comment --comment "a \\"b\\" c" -j X`), [
    "-m",
    "comment",
    "--comment",
    'a "b" c',
    "-j",
    "X",
  ]);
  assert.deepEqual(tokenize(`--comment "" -j X`), ["--comment", "", "-j", "X"]);
});

Deno.test("listingsToSave() reads single-chain listings as iptables-save text", () => {
  const h = domainHash("web1");
  const live = parseSave(listingsToSave([
    {
      table: "nat",
      text:
        `-P PREROUTING ACCEPT\n-A PREROUTING -m comment --comment "libvirt-hook-qemu:1:web1" -j LVH-${h}-DNAT\n`,
    },
    {
      table: "nat",
      text:
        `-N LVH-${h}-DNAT\n-A LVH-${h}-DNAT -d 203.0.113.1/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.1:80\n`,
    },
    { table: "filter", text: "-P FORWARD ACCEPT\n-A FORWARD -j LIBVIRT_FWX\n" },
  ]));
  assert.deepEqual(live.chains.map((c) => `${c.table} ${c.chain}`), [`nat LVH-${h}-DNAT`]);
  assert.deepEqual(live.rules.map((r) => `${r.table} ${r.chain}`), ["nat PREROUTING", `nat LVH-${h}-DNAT`]);
  assert.equal(live.libvirt, true);
});

Deno.test("liveForwards() reads a range shifted to other ports back as it was planned", () => {
  const h = domainHash("shift");
  const c = "-m comment --comment libvirt-hook-qemu:1:shift";
  const live4 = parseSave(
    `*nat\n:LVH-${h}-DNAT - [0:0]\n-A LVH-${h}-DNAT -d 203.0.113.7/32 -p tcp -m tcp --dport 30000:30099 ${c} ` +
      "-j DNAT --to-destination 192.168.122.10:40000-40099/30000\nCOMMIT\n",
  );
  const live6 = parseSave(
    `*nat\n:LVH-${h}-DNAT - [0:0]\n-A LVH-${h}-DNAT -d 2001:db8:1::7/128 -p tcp -m tcp --dport 30000:30099 ${c} ` +
      "-j DNAT --to-destination [fd00:122::10]:40000-40099/30000\nCOMMIT\n",
  );
  assert.deepEqual(
    [...liveForwards(live4, 4), ...liveForwards(live6, 6)].map(describeForward),
    [
      "tcp 203.0.113.7:30000-30099 -> 192.168.122.10:40000-40099",
      "tcp [2001:db8:1::7]:30000-30099 -> [fd00:122::10]:40000-40099",
    ],
  );
});
