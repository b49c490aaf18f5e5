/**
 * Counters with real packets, on both libvirt variants and both of our backends: a known number of connections
 * through a forward shows as that many in `status --json` and in `qemu metrics`; a forward no one used shows 0.
 * Packets and bytes only where the entry asks for them (`"counters": true`): exact for known datagrams, both ways,
 * the hairpin's too, per forward even where two forwards share a target, whichever domain started last; gone with
 * the last counting domain.
 */

import assert from "node:assert/strict";
import { type Lab, LAB_ADDR as A } from "./lab.ts";
import { labFirewall, labTest, labVariants, runInLab } from "./lab_hook.ts";

const VARIANTS = await labVariants("counters", [
  "iptables/iptables",
  "iptables/nftables",
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

for (const v of VARIANTS) {
  labTest(v, {
    what: "counters",
    claim: '"counters": true counts each forward\'s packets and bytes, both ways and through the hairpin',
    entries: `"g1": [{"private_ip": "${A.g1v4}", "port_map": {"tcp": [[2222, 22]]}},
              {"private_ip": "${A.g1v4}", "private_ipv6": "${A.g1v6}", "public_ipv6": "${A.hostPub6}",
               "counters": true, "port_map": {"tcp": [[2224, 22]], "udp": [[5353, 53]]}}],
              "g2": {"private_ip": "${A.g2v4}", "port_map": {"tcp": [[2300, 22]]}}`,
  }, async (lab, file) => {
    const before = await labFirewall(lab);
    await lab.serve(lab.ns.g1, "tcp", 22, "g1");
    await lab.serve(lab.ns.g1, "udp", 53, "g1");
    // The counting domain starts, and again over what is live (its counters replaced in the same batch); the
    // domain that starts after it must not put its accept ahead of those counters.
    await runInLab(lab, file, ["g1", "start", "begin", "-"], "g1");
    await runInLab(lab, file, ["g1", "start", "begin", "-"], "g1");
    await runInLab(lab, file, ["g2", "start", "begin", "-"], "g2");
    // Counted once, by the backend that translates: our table's set, or the counting chain in iptables.
    assert.doesNotMatch(await labFirewall(lab), v.backend === "nftables" ? /-CNT/ : /chain traffic|count4/);
    // Datagrams of known size: "ping\n" (IPv4 + UDP headers: 28 bytes) each way, the answer back.
    let bytes = 0;
    const senders = [[lab.ns.client, A.client4], [lab.ns.client, A.client4], [lab.ns.g2, A.bridge4]] as const;
    for (const [from, expected] of senders) {
      const answer = await lab.connect(from, "udp", A.hostPub4, 5353);
      assert.equal(answer, `g1 ${expected}`);
      bytes += 28 + "ping\n".length + 28 + answer!.length + 1;
    }
    // IPv6: 48 bytes of headers each way.
    const answer6 = await lab.connect(lab.ns.client, "udp", A.hostPub6, 5353);
    assert.equal(answer6, `g1 ${A.client6}`);
    const bytes6 = 48 + "ping\n".length + 48 + answer6!.length + 1;
    for (let i = 0; i < 2; i++) {
      assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 2224), `g1 ${A.client4}`);
    }
    // The same guest port through the forward that does not count.
    assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 2222), `g1 ${A.client4}`);
    const forwards = await liveForwards(lab, file);
    const counted = (port: number, family = 4) =>
      forwards.find((f) => f.forward.includes(family === 4 ? `:${port} ->` : `]:${port} ->`))?.counters;
    assert.deepEqual(counted(5353), { connections: 3, packets: 6, bytes });
    assert.deepEqual(counted(5353, 6), { connections: 1, packets: 2, bytes: bytes6 });
    const tcp = counted(2224)!;
    assert.equal(tcp.connections, 2);
    // A TCP exchange is at least a handshake, the answer and its acknowledgement: 4 packets, 40 bytes each or more.
    assert.ok(tcp.packets! >= 8 && tcp.bytes! >= 40 * tcp.packets!, JSON.stringify(tcp));
    assert.deepEqual(counted(2222), { connections: 1 });
    assert.deepEqual(counted(2300), { connections: 0 });
    const text = (await runInLab(lab, file, ["status"])).stdout;
    assert.match(
      text,
      new RegExp(`:5353 -> 192\\.168\\.122\\.10:53\\n {4}3 connections, 6 packets, ${bytes} bytes\\n`),
    );
    const metrics = (await runInLab(lab, file, ["metrics"])).stdout;
    assert.match(
      metrics,
      new RegExp(
        `^libvirt_hook_qemu_forward_bytes_total\\{domain="g1",proto="udp",[^}]*public_port="5353"[^}]*\\} ${bytes}$`,
        "m",
      ),
    );
    // Switched off in the config, then `reload`: the counting objects go, the forwards stay.
    await Deno.writeTextFile(
      file,
      (await Deno.readTextFile(file)).replace('"counters": true', '"counters": false'),
    );
    await runInLab(lab, file, ["reload"]);
    const again = (await liveForwards(lab, file)).find((f) => f.forward.includes(":5353 ->"))?.counters;
    assert.deepEqual(Object.keys(again ?? {}), ["connections"]);
    assert.doesNotMatch(await labFirewall(lab), /-CNT|chain traffic|count4/);
    await runInLab(lab, file, ["g1", "stopped", "end", "-"], "g1");
    await runInLab(lab, file, ["g2", "stopped", "end", "-"], "g2");
    assert.equal(await labFirewall(lab), before);
  });
}

/** Every live forward of `status --json`, with its counters. */
async function liveForwards(lab: Lab, file: string) {
  const status = JSON.parse((await runInLab(lab, file, ["status", "--json"])).stdout);
  return (status.domains as { forwards: { forward: string; counters?: Record<string, number> }[] }[])
    .flatMap((d) => d.forwards);
}
