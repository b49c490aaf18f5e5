/**
 * Counters with real packets, on both libvirt variants and both of our backends: a known number of connections
 * through a forward shows as that many in `status --json` and in `qemu metrics` (new connections only: packets
 * and bytes are not counted per forward); a forward no one used shows 0.
 */

import assert from "node:assert/strict";
import { LAB_ADDR as A } from "./lab.ts";
import { labTest, labVariants, runInLab } from "./lab_hook.ts";

const VARIANTS = await labVariants("counters", [
  "iptables/iptables",
  "nftables/iptables",
  "nftables/nftables",
]);

for (const v of VARIANTS) {
  labTest(v, {
    what: "counters",
    claim: "3 connections through a forward count 3 in status --json and qemu metrics, an unused forward 0",
    entries: `"g1": [{"private_ip": "${A.g1v4}", "port_map": {"tcp": [[2222, 22], [8080, 80]]}},
              {"private_ip": "${A.g1v4}", "description": "shop", "port_map": {"tcp": [[2223, 22]]}}]`,
  }, async (lab, file) => {
    await lab.serve(lab.ns.g1, "tcp", 22, "g1");
    await runInLab(lab, file, ["g1", "start", "begin", "-"], "g1");
    for (let i = 0; i < 3; i++) {
      assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 2222), `g1 ${A.client4}`);
    }
    // A forward with a description is a rule of its own on nftables (not a map element): counted by its rule.
    for (let i = 0; i < 2; i++) {
      assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 2223), `g1 ${A.client4}`);
    }
    const status = JSON.parse((await runInLab(lab, file, ["status", "--json"])).stdout);
    const forwards = status.domains[0].forwards as {
      forward: string;
      counters?: Record<string, number>;
    }[];
    const counted = (port: number) => forwards.find((f) => f.forward.includes(`:${port} ->`))?.counters;
    const used = counted(2222)!, unused = counted(8080)!;
    assert.equal(used.connections, 3);
    assert.equal(unused.connections, 0);
    assert.equal(counted(2223)?.connections, 2);
    // Packets and bytes are not counted per forward: one accept serves every forward of the domain.
    assert.deepEqual(Object.keys(used), ["connections"]);
    const text = (await runInLab(lab, file, ["status"])).stdout;
    assert.match(text, /:2222 -> 192\.168\.122\.10:22\n {4}3 connections\n/);
    const metrics = (await runInLab(lab, file, ["metrics"])).stdout;
    assert.match(
      metrics,
      new RegExp(
        `^libvirt_hook_qemu_forward_connections_total\\{domain="g1",proto="tcp",public_ip="${A.hostPub4}",` +
          `public_port="2222",target="${A.g1v4}:22"\\} 3$`,
        "m",
      ),
    );
    assert.match(metrics, /^# TYPE libvirt_hook_qemu_forward_connections_total counter$/m);
    await runInLab(lab, file, ["g1", "stopped", "end", "-"], "g1");
  });
}
