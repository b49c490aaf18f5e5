/** The forward model's small helpers: which ports a counting forward counts, and whose counters are whose. */

import assert from "node:assert/strict";
import { addTraffic, countedPorts, type LiveForward } from "./forward.ts";

Deno.test("countedPorts() gives a forward's own public ports, all_ports less what other forwards take", async (t) => {
  await t.step("a port, a range", () => {
    assert.deepEqual(countedPorts({ publicPort: 2222, count: 1 }), [[2222, 2222]]);
    assert.deepEqual(countedPorts({ publicPort: 3000, count: 10 }), [[3000, 3009]]);
  });
  await t.step("all_ports around the ports others take, unsorted and at the edges", () => {
    assert.deepEqual(
      countedPorts({ publicPort: 1, count: 65535, except: [[443, 443], [1, 21], [8000, 8080]] }),
      [
        [22, 442],
        [444, 7999],
        [8081, 65535],
      ],
    );
    assert.deepEqual(countedPorts({ publicPort: 1, count: 65535, except: [[1, 65535]] }), []);
  });
});

Deno.test("addTraffic() adds a counter to the forward of its domain, family, protocol, address and ports only", () => {
  const forward = (publicIp: string, publicPorts: string, domain = "web1"): LiveForward => ({
    domain,
    family: 4,
    protocol: "tcp",
    publicIp,
    publicPorts,
    privateIp: "192.168.122.10",
    privatePorts: publicPorts,
    counters: { connections: 2 },
  });
  const list = [
    forward("203.0.113.7", "2222"),
    forward("*", "1-65535"),
    forward("203.0.113.7", "2222", "web2"),
  ];
  const traffic = { domain: "web1", family: 4 as const, protocol: "tcp", packets: 3, bytes: 300 };
  addTraffic(list, { ...traffic, publicIp: "203.0.113.7", first: 2222, last: 2222 });
  addTraffic(list, { ...traffic, publicIp: "*", first: 1, last: 21 });
  addTraffic(list, { ...traffic, publicIp: "*", first: 23, last: 65535 });
  // Nobody's: another protocol, another address.
  addTraffic(list, { ...traffic, protocol: "udp", publicIp: "203.0.113.7", first: 2222, last: 2222 });
  addTraffic(list, { ...traffic, publicIp: "203.0.113.9", first: 2222, last: 2222 });
  assert.deepEqual(list.map((f) => f.counters), [
    { connections: 2, packets: 3, bytes: 300 },
    { connections: 2, packets: 6, bytes: 600 },
    { connections: 2 },
  ]);
});
