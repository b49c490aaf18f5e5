/**
 * Fuzzing the config reader: random mutations of real configs (the legacy corpus and the example) never crash it,
 * never print a stack trace, always give positioned problems, and never stop a domain whose own entry is valid.
 * Seeded and bounded in time: a failure names its seed, and `LVH_FUZZ_SEED=<seed> deno task test` replays it.
 */

import assert from "node:assert/strict";
import { domainConfig } from "../config.ts";
import { type Config, formatDiagnostic } from "../config/model.ts";
import { decodeConfig } from "../config/source.ts";
import { loadParser, parseConfig } from "../config/validate.ts";

await loadParser();

const ROOT = new URL("..", import.meta.url).pathname;
const SEED = Number(Deno.env.get("LVH_FUZZ_SEED") ?? Math.floor(Math.random() * 2 ** 31));
const BUDGET_MS = Number(Deno.env.get("LVH_FUZZ_MS") ?? 6000);
const encoder = new TextEncoder();

/** mulberry32: small, fast, and the same sequence for the same seed everywhere. */
function prng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  return { next, int, pick: <T>(items: T[]): T => items[int(items.length)]! };
}

const CORPUS = [
  ...[...Deno.readDirSync(`${ROOT}test/fixtures/legacy`)].filter((e) => e.name.endsWith(".json")).map((e) =>
    Deno.readTextFileSync(`${ROOT}test/fixtures/legacy/${e.name}`)
  ),
  Deno.readTextFileSync(`${ROOT}hooks.jsonc`),
];

/** Values that go where a value goes: wrong types, huge numbers, deep nesting, very long strings, bad bytes. */
const VALUES = [
  "null",
  "true",
  "[]",
  "{}",
  '""',
  "1e400",
  "-0",
  "99999999999999999999",
  "0.5",
  '"192.168.122.300"',
  '"::ffff:1.2.3.4"',
  `"${"x".repeat(1 << 20)}"`,
  `${"[".repeat(20_000)}${"]".repeat(20_000)}`,
  `${'{"a":'.repeat(3000)}1${"}".repeat(3000)}`,
  '{"tcp": [[1, 2, 3]], "udp": "53"}',
  '[{"init_port": 65535, "ports_num": 2, "protocol": "tcp"}]',
  '"\\ud800"',
];

type Mutate = (text: string, r: ReturnType<typeof prng>) => Uint8Array;

/** Mutations of a whole file: anything may break, including its parse as a whole. */
const ANYWHERE: Record<string, Mutate> = {
  truncate: (t, r) => encoder.encode(t.slice(0, r.int(t.length + 1))),
  "random bytes": (t, r) => {
    const b = encoder.encode(t);
    const out = new Uint8Array(b);
    for (let i = r.int(8) + 1; i > 0; i--) out[r.int(out.length || 1)] = r.int(256);
    return out;
  },
  "invalid UTF-8": (t, r) => {
    const b = encoder.encode(t);
    const at = r.int(b.length + 1);
    return new Uint8Array([...b.slice(0, at), r.pick([0xff, 0xc3, 0xed, 0xf4, 0x80]), ...b.slice(at)]);
  },
  splice: (t, r) => {
    const other = r.pick(CORPUS);
    return encoder.encode(t.slice(0, r.int(t.length + 1)) + other.slice(r.int(other.length + 1)));
  },
  "value replaced": (t, r) => {
    const at = [...t.matchAll(/:\s*/g)].map((m) => m.index! + m[0].length);
    if (at.length === 0) return encoder.encode(t);
    const i = r.pick(at);
    return encoder.encode(t.slice(0, i) + r.pick(VALUES) + t.slice(i));
  },
};

/** A valid entry that no mutation can clash with: its own public address and port. */
const GOOD =
  `"untouched": {"private_ip": "192.168.122.99", "public_ip": "198.51.100.99", "port_map": {"tcp": [[6553, 22]]}}`;

/** Mutations confined to one entry's value: the file still parses, the other entries are untouched. */
const INSIDE: Record<string, (r: ReturnType<typeof prng>) => string> = {
  "wrong type or huge value": (r) => r.pick(VALUES),
  "field with a bad value": (r) =>
    `{"private_ip": "192.168.122.5", "${
      r.pick(["port_map", "interface", "public_ip", "port_range", "source_ip"])
    }": ${r.pick(VALUES)}}`,
  "duplicate keys": () =>
    `{"private_ip": "192.168.122.5", "private_ip": "192.168.122.6", "port_map": {"tcp": [1]}, "port_map": {}}`,
  "long name and address": (r) =>
    `{"private_ip": "${"1".repeat(r.int(1 << 16))}", "interface": "${"v".repeat(300)}"}`,
};

function checkRobust(config: Config, text: string, seed: number, what: string) {
  const lines = text.split("\n").length;
  for (const d of config.diagnostics) {
    const line = formatDiagnostic(d);
    assert.ok(!line.includes("\n"), `seed ${seed}, ${what}: a problem on two lines: ${line.slice(0, 200)}`);
    assert.ok(
      !/\s+at\s.*:\d+:\d+/.test(line) && !/Maximum call stack/.test(line),
      `seed ${seed}, ${what}: ${line}`,
    );
    assert.ok(d.line >= 1 && d.line <= lines && d.column >= 1, `seed ${seed}, ${what}: no position: ${line}`);
  }
}

Deno.test(`config reader fuzz (seed ${SEED}): never crashes, always positions, keeps valid entries`, () => {
  const r = prng(SEED);
  const deadline = Date.now() + BUDGET_MS;
  let runs = 0;
  for (; Date.now() < deadline && runs < 5000; runs++) {
    // Half the time a file mutated anywhere; half the time one entry mutated beside an untouched one.
    if (r.next() < 0.5) {
      const [name, mutate] = r.pick(Object.entries(ANYWHERE));
      const bytes = mutate(r.pick(CORPUS), r);
      const source = decodeConfig("hooks.jsonc", bytes);
      assert.ok("text" in source);
      let config: Config;
      try {
        config = parseConfig(source.text, "hooks.jsonc", { invalidUtf8: source.invalidUtf8 });
      } catch (err) {
        throw new Error(`seed ${SEED}, run ${runs}, ${name}: parseConfig threw: ${err}`);
      }
      checkRobust(config, source.text, SEED, `run ${runs}, ${name}`);
    } else {
      const [name, make] = r.pick(Object.entries(INSIDE));
      const text = r.next() < 0.5 ? `{${GOOD}, "victim": ${make(r)}}` : `{"victim": ${make(r)}, ${GOOD}}`;
      const config = parseConfig(text, "hooks.jsonc");
      checkRobust(config, text, SEED, `run ${runs}, ${name}`);
      assert.equal(
        domainConfig(config, "untouched").kind,
        "ok",
        `seed ${SEED}, run ${runs}, ${name}: the untouched entry stopped: ${
          config.diagnostics.map(formatDiagnostic).join("; ").slice(0, 400)
        }`,
      );
    }
  }
  assert.ok(runs > 50, `only ${runs} runs in ${BUDGET_MS} ms`);
});

Deno.test(`check on the nastiest inputs (seed ${SEED}): exit 0 or 1, no stack trace, no colour`, async () => {
  const dir = await Deno.makeTempDir();
  try {
    const nasty: Uint8Array[] = [
      encoder.encode(`{${GOOD}, "deep": ${"[".repeat(100_000)}${"]".repeat(100_000)}}`),
      encoder.encode(`{${GOOD}, "deep": ${"[".repeat(100_000)}`),
      encoder.encode(`{${GOOD}, "long": "${"x".repeat(4 << 20)}"}`),
      new Uint8Array([
        ...encoder.encode(`{${GOOD}, "bad": {"interface": "virbr0`),
        0xff,
        ...encoder.encode(`"}}`),
      ]),
      crypto.getRandomValues(new Uint8Array(65536)),
    ];
    for (const [i, bytes] of nasty.entries()) {
      const file = `${dir}/nasty${i}.jsonc`;
      await Deno.writeFile(file, bytes);
      const out = await new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", `${ROOT}main.ts`, "check", "--config", file],
        env: { LIBVIRT_HOOK_QEMU_STATE_DIR: dir },
        stdout: "piped",
        stderr: "piped",
      }).output();
      const stderr = new TextDecoder().decode(out.stderr);
      assert.ok(out.code === 0 || out.code === 1, `nasty ${i}: exit ${out.code}: ${stderr.slice(0, 500)}`);
      assert.doesNotMatch(stderr, /\s+at\s.*:\d+:\d+|Maximum call stack/, `nasty ${i}`);
      assert.ok(!stderr.includes("\u001b["), `nasty ${i}: colour codes`);
      assert.match(
        stderr,
        new RegExp(`${file.replace(/[.]/g, "\\.")}:\\d+:\\d+: `),
        `nasty ${i}: ${stderr.slice(0, 300)}`,
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
