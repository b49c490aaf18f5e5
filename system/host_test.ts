/** Host facts from /proc text: default routes, connected networks, the default public IPv6 address. */

import assert from "node:assert/strict";
import { defaultIPv6, parseInet6, parseRoutes4, parseRoutes6 } from "./host.ts";

Deno.test("parseRoutes4() finds the default route's device and the connected networks", () => {
  const text = [
    "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT",
    "eth0\t00000000\tFE7100CB\t0003\t0\t0\t100\t00000000\t0\t0\t0",
    "eth0\t007100CB\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0",
    "virbr0\t007AA8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0",
  ].join("\n");
  const r = parseRoutes4(text);
  assert.deepEqual(r.defaultDevices, ["eth0"]);
  assert.deepEqual(r.connected.map((c) => [c.device, c.value.toString(16), c.prefix]), [
    ["eth0", "cb007100", 24],
    ["virbr0", "c0a87a00", 24],
  ]);
});

Deno.test("parseRoutes6() and parseInet6() give what the default IPv6 address is chosen from", () => {
  const routes = parseRoutes6([
    "00000000000000000000000000000000 00 00000000000000000000000000000000 00 20010db80001000000000000000000fe 00000400 00000001 00000000 00000003     eth0",
    "fd000122000000000000000000000000 40 00000000000000000000000000000000 00 00000000000000000000000000000000 00000100 00000001 00000000 00000001   virbr0",
  ].join("\n"));
  assert.deepEqual(routes.defaultDevices, ["eth0"]);
  assert.deepEqual(routes.connected.map((c) => [c.device, c.prefix]), [["virbr0", 64]]);
  const addrs = parseInet6([
    "20010db8000100000000000000000001 02 40 00 80     eth0",
    "20010db80001000000000000000000aa 02 40 00 01     eth0",
    "fe800000000000000000000000000001 02 40 20 80     eth0",
  ].join("\n"));
  assert.deepEqual(addrs.map((a) => [a.address, a.scope, a.flags]), [
    ["2001:db8:1::1", 0, 0x80],
    ["2001:db8:1::aa", 0, 0x01],
    ["fe80::1", 0x20, 0x80],
  ]);
});

Deno.test("defaultIPv6() takes the one stable global address and says so when there is none or several", () => {
  const a = (address: string, flags: number, scope = 0) => ({ address, device: "eth0", scope, flags });
  assert.deepEqual(
    defaultIPv6(["eth0"], [a("2001:db8::1", 0x80), a("2001:db8::99", 0x01), a("fe80::1", 0x80, 0x20)]),
    {
      address: "2001:db8::1",
    },
  );
  assert.deepEqual(defaultIPv6(["eth0"], [a("2001:db8::1", 0x80 | 0x20), a("2001:db8::2", 0x40)]), {
    problem: 'the default route\'s interface "eth0" has no stable global IPv6 address',
  });
  assert.deepEqual(defaultIPv6(["eth0"], [a("2001:db8::1", 0x80), a("2001:db8::2", 0)]), {
    problem:
      'the default route\'s interface "eth0" has several global IPv6 addresses (2001:db8::1, 2001:db8::2)',
  });
  assert.deepEqual(defaultIPv6([], []), { problem: "the host has no IPv6 default route" });
});
