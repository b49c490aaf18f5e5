/** doctor's report and its bound on parallel probes, called directly. */

import assert from "node:assert/strict";
import { inParallel, renderReport } from "./doctor.ts";
import { fail, note, ok } from "./doctor_findings.ts";

Deno.test("inParallel() keeps the order of its slots and runs at most `limit` jobs at once", async () => {
  let running = 0, most = 0;
  const job = (value: number) => async () => {
    running++;
    most = Math.max(most, running);
    // Later jobs finish first: the order must come from the slots, not from who ends first.
    await new Promise((r) => setTimeout(r, 30 - value));
    running--;
    return value;
  };
  const slots = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9].map((v) => v % 3 === 0 ? v : job(v));
  assert.deepEqual(await inParallel(slots, 3), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
  assert.equal(most, 3);
  assert.deepEqual(await inParallel([], 3), []);
});

Deno.test("renderReport() shows each link, the fix under a failure, and counts the failures", async (t) => {
  await t.step("a failure: its fix under it, never all is well", () => {
    assert.equal(
      renderReport({
        host: [
          ok("IPv4 forwarding is on"),
          note("IPv6 forwarding is off (net.ipv6.conf.all.forwarding = 0)"),
        ],
        forwards: [{
          domain: "web 1",
          forward: "tcp 203.0.113.1:2222 -> 192.168.122.10:22",
          findings: [fail("the forward is not live", "qemu apply 'web 1'   (or restart the guest)")],
        }],
      }),
      [
        "host",
        "  ok    IPv4 forwarding is on",
        "  note  IPv6 forwarding is off (net.ipv6.conf.all.forwarding = 0)",
        "web 1: tcp 203.0.113.1:2222 -> 192.168.122.10:22",
        "  FAIL  the forward is not live",
        "        fix: qemu apply 'web 1'   (or restart the guest)",
        "1 problem(s) found.",
      ].join("\n"),
    );
  });
  await t.step("notes only: all is well", () => {
    assert.equal(
      renderReport({ host: [note("conntrack is not installed")], forwards: [] }),
      [
        "host",
        "  note  conntrack is not installed",
        "No forward to examine: no configured domain runs, and none is live.",
        "All is well.",
      ].join("\n"),
    );
  });
});
