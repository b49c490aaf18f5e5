import assert from "node:assert/strict";
import { cacheKey, digest, readCache, readView, writeCache, writeView } from "./cache.ts";
import { loadParser, parseConfig } from "./validate.ts";

await loadParser();

const TEXT = `{
  "web1": {"private_ip": "10.0.0.1", "port_map": {"tcp": [80]}},
  "db": {"private_ip": "10.0.0.2", "port_map": {"tcp": [70000]}},
  "b": {"private_ip": "10.0.0.3", "port_map": {"tcp": [80]}}
}`;

Deno.test("cacheKey() changes with the file, the options, the text, and where the bytes were not UTF-8", () => {
  const base = cacheKey({ file: "hooks.jsonc", text: TEXT, invalidUtf8: [] }, {});
  assert.equal(
    cacheKey({ file: "hooks.jsonc", text: TEXT, invalidUtf8: [] }, {}),
    base,
    "the same input, the same key",
  );
  const others = [
    cacheKey({ file: "other.jsonc", text: TEXT, invalidUtf8: [] }, {}),
    cacheKey({ file: "hooks.jsonc", text: `${TEXT} `, invalidUtf8: [] }, {}),
    cacheKey({ file: "hooks.jsonc", text: TEXT, invalidUtf8: [3] }, {}),
    cacheKey({ file: "hooks.jsonc", text: TEXT, invalidUtf8: [] }, { defaultPublicIp: { 4: "203.0.113.1" } }),
  ];
  assert.equal(new Set([base, ...others]).size, 5);
});

Deno.test("writeCache() and readCache() keep a validated config whole, under its key only", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const config = parseConfig(TEXT, "hooks.jsonc");
    const key = cacheKey({ file: "hooks.jsonc", text: TEXT, invalidUtf8: [] }, {});
    assert.equal(readCache(dir, key), undefined, "nothing saved yet");
    await writeCache(`${dir}/made`, key, config);
    const back = readCache(`${dir}/made`, key)!;
    assert.deepEqual([...back.domains.keys()], [...config.domains.keys()]);
    assert.deepEqual(back.domains.get("web1"), config.domains.get("web1"));
    assert.deepEqual(back.names, config.names);
    assert.deepEqual(back.diagnostics, config.diagnostics);
    assert.equal(readCache(`${dir}/made`, `${key}x`), undefined, "another key finds nothing");
    assert.equal((await Deno.stat(`${dir}/made`)).mode! & 0o777, 0o700);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writeView() and readView() give one domain its entries and the problems that concern it", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const config = parseConfig(TEXT, "hooks.jsonc", { defaultPublicIp: { 4: "203.0.113.1" } });
    const messages = (domain: string) =>
      readView(dir, "k", domain)!.diagnostics.map((d) => `${d.path}: ${d.message}`);
    writeView(dir, "k", config);
    assert.equal(readView(dir, "other key", "web1"), undefined);
    const web1 = readView(dir, "k", "web1")!;
    assert.deepEqual([...web1.domains.keys()], [], "web1 clashes with b: it has no entries to start");
    assert.deepEqual(messages("web1"), [
      // Its own problem, and the file's first ones (db's here), in the file's order.
      "db.port_map.tcp[0]: Port out of range 1-65535",
      "b.port_map.tcp[0]: Public tcp port 80 on 203.0.113.1 is also claimed by web1.port_map.tcp[0] (80)",
      "web1.port_map.tcp[0]: Public tcp port 80 on 203.0.113.1 is also claimed by b.port_map.tcp[0] (80)",
    ]);
    assert.deepEqual(web1.diagnostics, config.diagnostics);
    assert.equal(web1.diagnosticCount, 3);
    const clean = parseConfig(
      `{"web1": {"private_ip": "10.0.0.1", "port_map": {"tcp": [80]}}}`,
      "hooks.jsonc",
    );
    writeView(dir, "k2", clean);
    const view = readView(dir, "k2", "web1")!;
    assert.deepEqual(view.domains.get("web1"), clean.domains.get("web1"));
    assert.deepEqual([...view.names], ["web1"]);
    assert.deepEqual([...readView(dir, "k2", "absent")!.names], [], "a domain the file does not name: none");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("readView() keeps the file's first 40 problems and the domain's own, not another domain's later ones", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const names = Array.from({ length: 50 }, (_, i) => `d${i}`);
    const text = `{${
      names.map((n) => `"${n}": {"private_ip": "10.0.0.1", "port_map": {"tcp": [0]}}`).join(",\n")
    }}`;
    const config = parseConfig(text, "hooks.jsonc");
    assert.equal(config.diagnostics.length, 50);
    writeView(dir, "k", config);
    const paths = (domain: string) =>
      readView(dir, "k", domain)!.diagnostics.map((d) => d.path.split(".")[0]);
    assert.deepEqual(paths("d49"), [...names.slice(0, 40), "d49"]);
    assert.deepEqual(paths("d3"), names.slice(0, 40));
    assert.equal(readView(dir, "k", "d49")!.diagnosticCount, 50);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("digest() is 16 hex digits, the same for the same text and another for another", () => {
  assert.match(digest(TEXT), /^[0-9a-f]{16}$/);
  assert.equal(digest(TEXT), digest(`${TEXT}`));
  assert.notEqual(digest(TEXT), digest(TEXT.replace("80", "81")));
  assert.notEqual(digest("ab"), digest("ba"));
  assert.equal(digest(""), digest(""));
});
