import assert from "node:assert/strict";
import { type Diagnostic, formatDiagnostic, jsonPath } from "./model.ts";

Deno.test("formatDiagnostic() writes file:line:column: message (json.path = value)", async (t) => {
  const base: Diagnostic = {
    severity: "error",
    file: "hooks.jsonc",
    line: 3,
    column: 7,
    message: "Not an IP address",
    path: "",
  };
  const cases: [string, Partial<Diagnostic>, string][] = [
    ["no path", {}, "hooks.jsonc:3:7: Not an IP address"],
    ["a path", { path: "web1.private_ip" }, "hooks.jsonc:3:7: Not an IP address (web1.private_ip)"],
    [
      "a path and a value",
      { path: "web1.private_ip", value: '"10.0.0"' },
      'hooks.jsonc:3:7: Not an IP address (web1.private_ip = "10.0.0")',
    ],
    [
      "a warning",
      { severity: "warning", path: "web1" },
      "hooks.jsonc:3:7: warning: Not an IP address (web1)",
    ],
  ];
  for (const [name, d, want] of cases) {
    await t.step(name, () => assert.equal(formatDiagnostic({ ...base, ...d }), want));
  }
});

Deno.test("jsonPath() appends a plain key with a dot, and any other key in brackets, quoted", async (t) => {
  const cases: [string, string, string][] = [
    ["", "web1", "web1"],
    ["web1", "port_map", "web1.port_map"],
    ["web1[0]", "private-ip", "web1[0].private-ip"],
    ["", "web 1", '["web 1"]'],
    ["", "/settings", '["/settings"]'],
    ["web1", "1st", 'web1["1st"]'],
    ["", 'a"b', '["a\\"b"]'],
  ];
  for (const [base, key, want] of cases) {
    await t.step(`${base} + ${key}`, () => assert.equal(jsonPath(base, key), want));
  }
});
