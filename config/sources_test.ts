import assert from "node:assert/strict";
import {
  formatInterval,
  mergeIntervals,
  parseSourceItem,
  type SourceInterval,
  sourceTexts,
} from "./sources.ts";

const item = (text: string) => parseSourceItem(text) as SourceInterval;

Deno.test("parseSourceItem() reads addresses, networks and ranges of both families, and says why not", async (t) => {
  const cases: [string, string][] = [
    ["198.51.100.7", "198.51.100.7"],
    ["198.51.100.77/24", "198.51.100.0/24"],
    ["0.0.0.0/0", "0.0.0.0/0"],
    ["10.0.0.1-10.0.0.9", "10.0.0.1-10.0.0.9"],
    ["10.0.0.0-10.0.0.255", "10.0.0.0/24"],
    ["10.0.0.5-10.0.0.5", "10.0.0.5"],
    ["2001:DB8::1/48", "2001:db8::/48"],
    ["2001:db8::1-2001:db8::9", "2001:db8::1-2001:db8::9"],
  ];
  for (const [text, want] of cases) await t.step(text, () => assert.equal(formatInterval(item(text)), want));
  const bad: [string, string][] = [
    ["10.0.0.256", "Not an IP address, network (CIDR) or range (first-last)"],
    ["10.0.0.0/24/1", "Not a network: the prefix must be 0 to 32"],
    ["2001:db8::/129", "Not a network: the prefix must be 0 to 128"],
    ["10.0.0.9-10.0.0.1", "The range's first address is after its last"],
    ["10.0.0.1-", "Not an address range (first-last)"],
  ];
  for (const [text, want] of bad) await t.step(text, () => assert.equal(parseSourceItem(text), want));
});

Deno.test("mergeIntervals() sorts and merges overlapping and adjacent items per family, as nftables lists them", () => {
  const items = ["192.0.3.0/24", "10.1.2.3", "2001:db8::/64", "10.0.0.0/8", "192.0.4.0/24", "192.0.2.9"].map(
    item,
  );
  assert.deepEqual(mergeIntervals(items).map(formatInterval), [
    "10.0.0.0/8",
    "192.0.2.9",
    "192.0.3.0-192.0.4.255",
    "2001:db8::/64",
  ]);
  assert.deepEqual(sourceTexts(items, 6), ["2001:db8::/64"]);
});
