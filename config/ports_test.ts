import assert from "node:assert/strict";
import type { Node } from "jsonc-parser";
import { parseTree } from "./jsonc.ts";
import type { Diagnostic } from "./model.ts";
import type { Report } from "./nodes.ts";
import {
  type Claim,
  claimSummary,
  type PortReaders,
  readPortMap,
  readPortRanges,
  reportClashes,
} from "./ports.ts";

/** Readers that record: failures and warnings as `path: message`, claims as `path protocol public->private xN`. */
function recording() {
  const lines: string[] = [];
  const readers: PortReaders = {
    fail: (_n, path, message) => lines.push(`fail ${path}: ${message}`),
    warn: (_n, path, message) => lines.push(`warn ${path}: ${message}`),
    claim: (_n, path, s) =>
      lines.push(`claim ${path} ${s.protocol} ${s.publicPort}->${s.privatePort} x${s.count}`),
  };
  return { lines, readers };
}

Deno.test("readPortMap() claims each port and pair by protocol, and fails each mistake where it is", async (t) => {
  const cases: [string, string, string[]][] = [
    ["ports and pairs", `{"tcp": [22, [8080, 80]], "udp": [53]}`, [
      "claim m.tcp[0] tcp 22->22 x1",
      "claim m.tcp[1] tcp 8080->80 x1",
      "claim m.udp[0] udp 53->53 x1",
    ]],
    ["not an object", `[22]`, ["fail m: Expected an object of protocols, found a list"]],
    ["icmp is skipped with a warning, sctp fails", `{"icmp": [1], "sctp": [2]}`, [
      "warn m.icmp: icmp cannot be forwarded by port (the old hook could never apply it); skipped",
      'fail m.sctp: Protocol "sctp" cannot be forwarded by port; use tcp or udp',
    ]],
    ["bad ports and pairs", `{"tcp": [0, 65536, "22", [1, 2, 3], [22, 70000]]}`, [
      "fail m.tcp[0]: Port out of range 1-65535",
      "fail m.tcp[1]: Port out of range 1-65535",
      "fail m.tcp[2]: Expected a port number, found a string",
      "fail m.tcp[3]: Expected a pair [public, private], found 3 items",
      "fail m.tcp[4][1]: Port out of range 1-65535",
    ]],
  ];
  for (const [name, json, want] of cases) {
    await t.step(name, () => {
      const { lines, readers } = recording();
      readPortMap(parseTree(json), "m", readers);
      assert.deepEqual(lines, want);
    });
  }
  const { lines, readers } = recording();
  readPortMap(undefined, "m", readers);
  assert.deepEqual(lines, [], "no port_map: nothing");
});

Deno.test("readPortRanges() claims each range, shifted by to_port, and fails each mistake where it is", async (t) => {
  const cases: [string, string, string[]][] = [
    [
      "a range, and one shifted",
      `[{"init_port": 5000, "ports_num": 3, "protocol": "udp"},
      {"init_port": 6000, "ports_num": 2, "protocol": "tcp", "to_port": 7000}]`,
      [
        "claim r[0] udp 5000->5000 x3",
        "claim r[1] tcp 6000->7000 x2",
      ],
    ],
    ["fields missing or unknown", `[{"init_port": 1, "size": 2}]`, [
      'fail r[0].size: Unknown field "size"; known fields: init_port, ports_num, protocol, to_port',
      'fail r[0]: Missing required field "ports_num"',
      'fail r[0]: Missing required field "protocol"',
    ]],
    [
      "past the last port",
      `[{"init_port": 65535, "ports_num": 2, "protocol": "tcp"},
      {"init_port": 10, "ports_num": 2, "protocol": "tcp", "to_port": 65535}]`,
      [
        "fail r[0].ports_num: Range 65535-65536 runs past port 65535",
        "fail r[1].to_port: The guest's range 65535-65536 runs past port 65535",
      ],
    ],
    ["a bad count", `[{"init_port": 10, "ports_num": 0, "protocol": "tcp"}]`, [
      "fail r[0].ports_num: Expected a whole number of ports, at least 1",
    ]],
    ["not a list", `{}`, ["fail r: Expected a list of ranges, found an object"]],
  ];
  for (const [name, json, want] of cases) {
    await t.step(name, () => {
      const { lines, readers } = recording();
      readPortRanges(parseTree(json), "r", readers);
      assert.deepEqual(lines, want);
    });
  }
});

/** A claim on 203.0.113.5, reported into `problems`. */
function claim(
  domain: string,
  ports: [number, number],
  extra: Partial<Claim> = {},
  problems: string[] = [],
): Claim {
  const report: Report = (_n, path, message, more: Partial<Diagnostic> = {}) =>
    problems.push(`${path}: ${message} [${more.domains}]`);
  return {
    domain,
    node: { offset: ports[0] } as Node,
    path: `${domain}.port_map.tcp[0]`,
    address: "203.0.113.5",
    protocol: "tcp",
    first: ports[0],
    last: ports[1],
    report,
    ...extra,
  };
}

Deno.test("reportClashes() reports both claims of a public port taken twice, and none that only touch", () => {
  const problems: string[] = [];
  reportClashes([
    claim("web1", [80, 80], {}, problems),
    claim("web2", [70, 90], {}, problems),
    claim("db", [91, 95], {}, problems),
    claim("other", [80, 80], { protocol: "udp" }, problems),
  ]);
  assert.deepEqual(problems.sort(), [
    "web1.port_map.tcp[0]: Public tcp port 80 on 203.0.113.5 is also claimed by web2.port_map.tcp[0] (70-90) [web1]",
    "web2.port_map.tcp[0]: Public tcp port 70-90 on 203.0.113.5 is also claimed by web1.port_map.tcp[0] (80) [web2]",
  ]);
});

Deno.test("reportClashes() gives all_ports the ports other claims take on its address, merged", () => {
  const problems: string[] = [];
  const spec = { protocol: "tcp" as const, publicPort: 1, privatePort: 1, count: 65535, all: { except: {} } };
  reportClashes([
    claim("web1", [1, 65535], { all: { spec, family: 4 } }, problems),
    claim("web2", [22, 22], {}, problems),
    claim("web3", [23, 30], {}, problems),
    claim("web4", [443, 443], {}, problems),
  ]);
  assert.deepEqual(problems, []);
  assert.deepEqual(spec.all.except, { 4: [[22, 30], [443, 443]] });
});

Deno.test("claimSummary() tells a claim's file, place and ports, its own file before the config's", () => {
  const c = claim("web1", [8080, 8081], { at: { line: 4, column: 9 } });
  assert.deepEqual(claimSummary(c, "hooks.jsonc"), {
    domain: "web1",
    file: "hooks.jsonc",
    path: "web1.port_map.tcp[0]",
    line: 4,
    column: 9,
    address: "203.0.113.5",
    protocol: "tcp",
    first: 8080,
    last: 8081,
  });
  assert.equal(
    claimSummary({ ...c, file: "hooks.d/10-web.jsonc" }, "hooks.jsonc").file,
    "hooks.d/10-web.jsonc",
  );
});
