/**
 * The forward model with real packets, on both libvirt variants and both of our backends: a range mapped to other
 * ports of the guest (`to_port`) reaches the shifted ports at both ends, from a client and from another guest
 * through the public address; `status` shows it as planned; stop leaves the firewall as it was.
 */

import assert from "node:assert/strict";
import { execInLab, labFirewall } from "./lab_hook.ts";
import { canRunLab, createLab, type Lab, LAB_ADDR as A } from "./lab.ts";

const can = await canRunLab();
const nft = can.ok &&
  (await new Deno.Command("nft", { args: ["--version"] }).output().catch(() => undefined))?.success;
if (!can.ok) console.log(`Skipping the forward model namespace tests: ${can.reason}`);
else if (!nft) {
  console.log("Skipping the forward model namespace tests on libvirt's nftables: nft is not installed");
}

/** Runs the hook (or a command) in the lab's host with `file` as the config, as libvirt runs it. */
async function run(lab: Lab, file: string, args: string[], domain = "", stdin?: string) {
  const r = await execInLab(lab, file, args, domain, stdin);
  assert.equal(r.stdout.startsWith("<"), false, "the hook never writes XML-like output");
  return r;
}

/** A lab wired as `options` say and a config file for it, handed to `fn`, both gone after it. */
async function withLab(
  options: Parameters<typeof createLab>[0],
  fn: (lab: Lab, file: string) => Promise<void>,
): Promise<void> {
  const lab = await createLab(options);
  const file = await Deno.makeTempFile({ suffix: ".jsonc" });
  try {
    await fn(lab, file);
  } finally {
    await lab.close();
    await Deno.remove(file);
  }
}

/** A second public address of the host (on pub0), in both families, for a guest of its own. */
async function secondAddress(lab: Lab): Promise<[string, string]> {
  const [pub4, pub6] = ["203.0.113.2", "2001:db8:1::2"];
  await lab.exec(lab.ns.host, ["ip", "address", "add", `${pub4}/24`, "dev", "pub0"]);
  await lab.exec(lab.ns.host, ["ip", "address", "add", `${pub6}/64`, "dev", "pub0", "nodad"]);
  return [pub4, pub6];
}

const VARIANTS = [
  { libvirt: "iptables" as const, backend: "iptables", ok: can.ok },
  { libvirt: "nftables" as const, backend: "iptables", ok: can.ok && nft },
  { libvirt: "nftables" as const, backend: "nftables", ok: can.ok && nft },
];

for (const v of VARIANTS) {
  Deno.test({
    name:
      `to_port, libvirt on ${v.libvirt}, backend ${v.backend}: a range reaches the guest's shifted ports ` +
      "at both ends, from outside and through the public address, and goes without residue",
    ignore: !v.ok,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      await withLab({ libvirt: v.libvirt }, async (lab, file) => {
        await Deno.writeTextFile(
          file,
          `{"/settings": {"backend": "${v.backend}"},
            "g1": {"private_ip": "${A.g1v4}", "private_ipv6": "${A.g1v6}",
                   "port_range": [{"init_port": 30000, "ports_num": 3, "protocol": "tcp", "to_port": 40000}]}}`,
        );
        for (const p of [40000, 40002]) await lab.serve(lab.ns.g1, "tcp", p, `g1-${p}`);
        const pristine = await labFirewall(lab);
        const started = await run(lab, file, ["g1", "start", "begin", "-"], "g1");
        assert.equal(started.code, 0, started.stderr);
        for (const [pub, guest] of [[30000, 40000], [30002, 40002]] as const) {
          assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, pub), `g1-${guest} ${A.client4}`);
          assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub6, pub), `g1-${guest} ${A.client6}`);
          // Another guest through the public address: hairpin, answered through the host.
          assert.equal(await lab.connect(lab.ns.g2, "tcp", A.hostPub4, pub), `g1-${guest} ${A.bridge4}`);
        }
        const status = await run(lab, file, ["status", "g1"]);
        assert.match(status.stdout, new RegExp(`tcp ${A.hostPub4}:30000-30002 -> ${A.g1v4}:40000-40002\\n`));
        assert.match(
          status.stdout,
          new RegExp(`tcp \\[${A.hostPub6}\\]:30000-30002 -> \\[${A.g1v6}\\]:40000-40002\\n`),
        );
        assert.equal((await run(lab, file, ["g1", "stopped", "end", "-"], "g1")).code, 0);
        assert.equal(await labFirewall(lab), pristine);
      });
    },
  });
}

for (const v of VARIANTS) {
  Deno.test({
    name:
      `all_ports, libvirt on ${v.libvirt}, backend ${v.backend}: any port of the address reaches the guest, ` +
      "a specific forward on it still goes to its own guest, whichever starts last; no residue",
    ignore: !v.ok,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      await withLab({ libvirt: v.libvirt }, async (lab, file) => {
        // A second public address of the host, given to g2 whole; g1 keeps one port of it.
        const [pub4, pub6] = await secondAddress(lab);
        await Deno.writeTextFile(
          file,
          `{"/settings": {"backend": "${v.backend}"},
            "g1": {"private_ip": "${A.g1v4}", "public_ip": "${pub4}", "port_map": {"tcp": [[2222, 22]]}},
            "g2": {"private_ip": "${A.g2v4}", "public_ip": "${pub4}", "private_ipv6": "${A.g2v6}",
                   "public_ipv6": "${pub6}", "all_ports": true}}`,
        );
        await lab.serve(lab.ns.g1, "tcp", 22, "g1");
        await lab.serve(lab.ns.g2, "tcp", 8080, "g2-8080");
        await lab.serve(lab.ns.g2, "tcp", 22, "g2-22");
        await lab.serve(lab.ns.g2, "udp", 5353, "g2-dns");
        const pristine = await labFirewall(lab);
        for (const order of [["g1", "g2"], ["g2", "g1"]]) {
          for (const d of order) {
            const r = await run(lab, file, [d, "start", "begin", "-"], d);
            assert.equal(r.code, 0, r.stderr);
          }
          assert.equal(
            await lab.connect(lab.ns.client, "tcp", pub4, 8080),
            `g2-8080 ${A.client4}`,
            `${order}`,
          );
          assert.equal(await lab.connect(lab.ns.client, "tcp", pub6, 22), `g2-22 ${A.client6}`, `${order}`);
          assert.equal(
            await lab.connect(lab.ns.client, "udp", pub4, 5353),
            `g2-dns ${A.client4}`,
            `${order}`,
          );
          // The port g1 takes on the address stays g1's, whichever domain's chain the host looks at first.
          assert.equal(await lab.connect(lab.ns.client, "tcp", pub4, 2222), `g1 ${A.client4}`, `${order}`);
          // Through the public address from the other guest (hairpin), too.
          assert.equal(await lab.connect(lab.ns.g1, "tcp", pub4, 8080), `g2-8080 ${A.bridge4}`, `${order}`);
          const status = await run(lab, file, ["status", "g2"]);
          assert.match(status.stdout, new RegExp(`tcp ${pub4}:1-65535 -> ${A.g2v4}:1-65535\\n`));
          assert.match(status.stdout, new RegExp(`udp \\[${pub6}\\]:1-65535 -> \\[${A.g2v6}\\]:1-65535\\n`));
          for (const d of order) assert.equal((await run(lab, file, [d, "stopped", "end", "-"], d)).code, 0);
          assert.equal(
            await labFirewall(lab),
            pristine,
          );
        }
      });
    },
  });
}

for (const v of VARIANTS) {
  Deno.test({
    name:
      `snat, libvirt on ${v.libvirt}, backend ${v.backend}: the guest's outgoing connections leave from its ` +
      "public address (the others' from the host's), guest to guest untouched, forwards unchanged; no residue",
    ignore: !v.ok,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      await withLab({ libvirt: v.libvirt, ipv6Forward: "routed" }, async (lab, file) => {
        // The guest's own public address, beside the host's.
        const [pub4, pub6] = await secondAddress(lab);
        await Deno.writeTextFile(
          file,
          `{"/settings": {"backend": "${v.backend}"},
            "g1": {"private_ip": "${A.g1v4}", "public_ip": "${pub4}", "private_ipv6": "${A.g1v6}",
                   "public_ipv6": "${pub6}", "snat": true, "port_map": {"tcp": [[2222, 22]]}},
            "g2": {"private_ip": "${A.g2v4}", "port_map": {"tcp": [[2223, 22]]}}}`,
        );
        await lab.serve(lab.ns.client, "tcp", 9000, "client");
        await lab.serve(lab.ns.g1, "tcp", 22, "g1");
        await lab.serve(lab.ns.g2, "tcp", 22, "g2");
        const outgoing = (ns: string, ip: string) => lab.connect(ns, "tcp", ip, 9000);
        // libvirt's masquerade: the guests leave from the host's address.
        assert.equal(await outgoing(lab.ns.g1, A.client4), `client ${A.hostPub4}`);
        const pristine = await labFirewall(lab);
        for (const d of ["g1", "g2"]) {
          const r = await run(lab, file, [d, "start", "begin", "-"], d);
          assert.equal(r.code, 0, r.stderr);
        }
        assert.equal(await outgoing(lab.ns.g1, A.client4), `client ${pub4}`);
        assert.equal(await outgoing(lab.ns.g1, A.client6), `client ${pub6}`);
        assert.equal(await outgoing(lab.ns.g2, A.client4), `client ${A.hostPub4}`);
        if (v.libvirt === "nftables") {
          // libvirt re-creates its table (libvirtd restarted, the network restarted): its masquerade hooks in anew,
          // and of two NAT chains at the same priority the newer runs first. Ours still runs before it.
          let tables = "";
          for (const family of ["ip", "ip6"]) {
            tables +=
              (await lab.exec(lab.ns.host, ["nft", "list", "table", family, "libvirt_network"])).stdout;
            await lab.exec(lab.ns.host, ["nft", "delete", "table", family, "libvirt_network"]);
          }
          const again = await lab.exec(lab.ns.host, ["nft", "-f", "-"], { stdin: tables });
          assert.equal(again.code, 0, again.stderr);
          assert.equal(await outgoing(lab.ns.g1, A.client4), `client ${pub4}`);
          assert.equal(await outgoing(lab.ns.g2, A.client4), `client ${A.hostPub4}`);
          // Our accept in its chain goes with it until the network hook (or the watcher) puts it back.
          const hookData = "<hookData><network><name>default</name></network></hookData>";
          assert.equal((await run(lab, file, ["default", "started", "begin", "-"], "", hookData)).code, 0);
        }
        // Guest to guest, on the bridge: untouched. Forwards in, and through the public address: as before.
        assert.equal(await lab.connect(lab.ns.g1, "tcp", A.g2v4, 22), `g2 ${A.g1v4}`);
        assert.equal(await lab.connect(lab.ns.client, "tcp", pub4, 2222), `g1 ${A.client4}`);
        assert.equal(await lab.connect(lab.ns.g2, "tcp", pub4, 2222), `g1 ${A.bridge4}`);
        const status = await run(lab, file, ["status", "g1"]);
        assert.match(status.stdout, new RegExp(`  snat ${A.g1v4} -> ${pub4} \\(outgoing connections\\)\\n`));
        assert.match(status.stdout, new RegExp(`  snat ${A.g1v6} -> ${pub6} \\(outgoing connections\\)\\n`));
        assert.doesNotMatch(status.stdout, /not explained by the config/);
        const doctor = await run(lab, file, ["doctor", "g1"]);
        assert.match(
          doctor.stdout,
          new RegExp(`ok +the guest's new outgoing connections leave from ${pub4}\n`),
        );
        for (const d of ["g1", "g2"]) {
          assert.equal((await run(lab, file, [d, "stopped", "end", "-"], d)).code, 0);
        }
        assert.equal(
          await labFirewall(lab),
          pristine,
        );
        assert.equal(await outgoing(lab.ns.g1, A.client4), `client ${A.hostPub4}`);
        const after = await run(lab, file, ["doctor", "g1"]);
        assert.match(after.stdout, /FAIL +the outbound NAT is not live\n/);
      });
    },
  });
}
