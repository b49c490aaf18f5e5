import assert from "node:assert/strict";
import { formatAddress, formatNetwork, networkOf, parseAddress } from "./address.ts";

Deno.test("parseAddress() reads IPv4 and IPv6 into canonical text (RFC 5952), and refuses the rest", async (t) => {
  const cases: [string, string | undefined][] = [
    ["192.0.2.1", "192.0.2.1"],
    ["0.0.0.0", "0.0.0.0"],
    ["255.255.255.255", "255.255.255.255"],
    ["2001:DB8:0:0:0:0:0:1", "2001:db8::1"],
    ["2001:db8:0:0:1:0:0:1", "2001:db8::1:0:0:1"],
    ["2001:db8:0:1:1:1:1:1", "2001:db8:0:1:1:1:1:1"],
    ["::", "::"],
    ["::1", "::1"],
    ["::ffff:192.0.2.1", "::ffff:c000:201"],
    ["fe80::0001", "fe80::1"],
    ["010.0.0.1", undefined],
    ["256.0.0.1", undefined],
    ["1.2.3", undefined],
    ["1.2.3.4.5", undefined],
    ["1:2:3:4:5:6:7:8:9", undefined],
    ["1::2::3", undefined],
    ["12345::1", undefined],
    ["::ffff:300.0.0.1", undefined],
    ["192.0.2.1/24", undefined],
    ["fe80::1%eth0", undefined],
    ["", undefined],
    ["web1", undefined],
  ];
  for (const [input, want] of cases) {
    await t.step(JSON.stringify(input), () => assert.equal(parseAddress(input)?.text, want));
  }
  assert.deepEqual(parseAddress("10.0.0.1"), { family: 4, text: "10.0.0.1", value: 0x0a000001n });
  assert.equal(parseAddress("::2")?.family, 6);
  assert.equal(parseAddress("::2")?.value, 2n);
});

Deno.test("formatAddress() writes a value of either family as canonical text", () => {
  assert.equal(formatAddress(4, 0xc0000201n), "192.0.2.1");
  assert.equal(formatAddress(6, 1n), "::1");
  assert.equal(formatAddress(6, (0x2001n << 112n) | (0xdb8n << 96n) | 1n), "2001:db8::1");
  // A single zero group is not compressed; of two runs the longer (or the first of equal) is.
  assert.equal(formatAddress(6, parseAddress("1:0:2:3:4:5:6:7")!.value), "1:0:2:3:4:5:6:7");
  assert.equal(formatAddress(6, parseAddress("1:0:0:2:0:0:0:3")!.value), "1:0:0:2::3");
  assert.equal(formatAddress(6, parseAddress("1:0:0:2:0:0:3:4")!.value), "1::2:0:0:3:4");
});

Deno.test("networkOf() clears the host bits, and formatNetwork() writes address/prefix", async (t) => {
  const cases: [string, number, string][] = [
    ["192.0.2.77", 24, "192.0.2.0/24"],
    ["192.0.2.77", 32, "192.0.2.77/32"],
    ["192.0.2.77", 0, "0.0.0.0/0"],
    ["10.255.255.255", 9, "10.128.0.0/9"],
    ["2001:db8:1:2::77", 64, "2001:db8:1:2::/64"],
    ["2001:db8:1:2::77", 128, "2001:db8:1:2::77/128"],
    ["2001:db8:ffff::", 36, "2001:db8:f000::/36"],
  ];
  for (const [addr, prefix, want] of cases) {
    await t.step(
      `${addr}/${prefix}`,
      () => assert.equal(formatNetwork(networkOf(parseAddress(addr)!, prefix)), want),
    );
  }
});
