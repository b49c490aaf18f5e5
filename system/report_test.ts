import assert from "node:assert/strict";
import { failed, message, type Outlet } from "./report.ts";

Deno.test("message() is the text of any thrown value", async (t) => {
  const cases: [string, unknown, string][] = [
    ["an Error: its message", new Error("iptables-restore failed"), "iptables-restore failed"],
    ["a TypeError alike", new TypeError("bad"), "bad"],
    ["a string", "plain text", "plain text"],
    ["anything else: as String() writes it", 42, "42"],
    ["undefined", undefined, "undefined"],
  ];
  for (const [name, value, want] of cases) await t.step(name, () => assert.equal(message(value), want));
});

Deno.test("failed() says the headline and why to the person, and the action, domain and outcome to syslog", () => {
  const lines: string[] = [];
  const out: Outlet = { problem: (l) => lines.push(`stderr ${l}`), log: (l) => lines.push(`syslog ${l}`) };
  const why = failed(out, {
    action: "start",
    domain: "web1",
    headline: 'Cannot apply forwards for "web1"',
    why: new Error("iptables-restore failed: line 3: bad rule"),
  });
  assert.equal(why, "iptables-restore failed: line 3: bad rule");
  failed(out, { action: "stopped", domain: "db", headline: "Cannot remove", why: "busy", outcome: "kept" });
  assert.deepEqual(lines, [
    'stderr Cannot apply forwards for "web1": iptables-restore failed: line 3: bad rule',
    "syslog start web1: failed: iptables-restore failed: line 3: bad rule",
    "stderr Cannot remove: busy",
    "syslog stopped db: kept: busy",
  ]);
});
