/**
 * Forwards written in the guest's own XML, and the guest's address found for them, with real rules and real
 * packets in the lab's namespaces: no config file at all; the address from the network's DHCP reservation, or from
 * the guest's lease when it comes (the watcher applies the waiting forwards, and moves them when the lease moves);
 * `apply` re-reads the running guest's XML. libvirt's state files are written here as libvirt 11.3 writes them
 * (network status with `<host mac ip>`, dnsmasq's `<bridge>.status` replaced by rename, the running guest's
 * `<domstatus>` with the bridge under `<actual>`); the end-to-end tests read the ones a real libvirtd writes.
 */

import assert from "node:assert/strict";
import { canRunLab, createLab, LAB_ADDR as A } from "./lab.ts";
import {
  domstatus,
  eventually,
  hook,
  MAC1,
  MAC2,
  makeDirs,
  metadata,
  startWatcher,
  startXml,
  writeLeases,
} from "./guests.ts";
import type { Watcher } from "./guests.ts";

const can = await canRunLab();
if (!can.ok) console.log(`Skipping the guest XML namespace tests: ${can.reason}`);

Deno.test({
  name:
    "forwards in the guest's XML, no config file: found by reservation, by a lease that comes later, live",
  ignore: !can.ok,
  fn: async (t) => {
    const lab = await createLab();
    const d = await makeDirs("lvh-guest-xml-");
    let watcher: Watcher | undefined;
    try {
      await lab.serve(lab.ns.g1, "tcp", 22, "g1");
      await lab.serve(lab.ns.g2, "tcp", 22, "g2");
      const before = await lab.ruleset(4);

      await t.step("a reservation: start applies the XML's forward to the reserved address", async () => {
        const r = await hook(lab, d, ["g1", "start", "begin", "-"], startXml("g1", MAC1, metadata(8080)));
        assert.equal(r.code, 0, r.stderr);
        assert.equal(r.stdout, "");
        await Deno.writeTextFile(`${d.qemu}/g1.xml`, domstatus("g1", MAC1, metadata(8080)));
        assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 8080), `g1 ${A.client4}`);
        // Another guest through the public address (hairpin), and the host itself.
        assert.equal(await lab.connect(lab.ns.g2, "tcp", A.hostPub4, 8080), `g1 ${A.bridge4}`);
        assert.match(await lab.connect(lab.ns.host, "tcp", A.hostPub4, 8080) ?? "", /^g1 /);
        const status = await hook(lab, d, ["status", "g1"]);
        assert.match(
          status.stdout,
          new RegExp(`g1 \\(running\\)\\n  tcp ${A.hostPub4}:8080 -> ${A.g1v4}:22\\n`),
        );
        const plan = await hook(lab, d, ["plan", "g1"]);
        assert.equal(plan.code, 0, plan.stderr);
        assert.match(plan.stdout, new RegExp(`--to-destination ${A.g1v4}:22`));
        const check = await hook(lab, d, ["check", "--domain", "g1"]);
        assert.deepEqual([check.code, check.stdout], [0, "g1: OK, 1 forward(s) from its XML\n"]);
      });

      await t.step("stopped: the forward is gone, the ruleset is the one before", async () => {
        const r = await hook(lab, d, ["g1", "stopped", "end", "-"], startXml("g1", MAC1, metadata(8080)));
        assert.equal(r.code, 0, r.stderr);
        await Deno.remove(`${d.qemu}/g1.xml`);
        assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 8080), null);
        assert.equal(await lab.ruleset(4), before);
      });

      await t.step("no lease yet: the guest starts, its forward waits, status says for what", async () => {
        const r = await hook(lab, d, ["g2", "start", "begin", "-"], startXml("g2", MAC2, metadata(8080)));
        assert.equal(r.code, 0, r.stderr);
        assert.equal(r.stderr, "");
        await Deno.writeTextFile(`${d.qemu}/g2.xml`, domstatus("g2", MAC2, metadata(8080)));
        const status = await hook(lab, d, ["status", "g2"]);
        assert.match(
          status.stdout,
          new RegExp(`g2 \\(running\\)\\n  waiting for a DHCP lease \\(mac ${MAC2}, network default\\)\\n`),
        );
        assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 8080), null);
        const plan = await hook(lab, d, ["plan", "g2"]);
        assert.equal(plan.code, 0, plan.stderr);
        const waiting =
          `# forwards/portForward[1]: waiting for a DHCP lease (mac ${MAC2}, network default); ` +
          "applied when it comes";
        assert.ok(plan.stdout.split("\n").includes(waiting), plan.stdout);
        // apply says the same: nothing to apply yet, and what it waits for.
        const apply = await hook(lab, d, ["apply", "g2"]);
        assert.equal(apply.code, 0, apply.stderr);
        assert.equal(
          apply.stdout,
          `Applied the forwards of "g2"\n  forwards/portForward[1]: waiting for a DHCP lease (mac ${MAC2}, network default)\n`,
        );
      });

      await t.step(
        "the lease comes: the watcher applies the forward; the lease moves: so does the forward",
        async () => {
          watcher = await startWatcher(lab, d, 600);
          await writeLeases(d.dnsmasq, [{ ip: A.g2v4, mac: MAC2, host: "g2" }]);
          assert.equal(await eventually(lab, 8080, `g2 ${A.client4}`), `g2 ${A.client4}`);
          // The guest gets another address (a new lease): the forward follows it.
          // (Its old address stays on it too: with it would go its default route.)
          await lab.exec(lab.ns.g2, ["ip", "address", "add", "192.168.122.12/24", "dev", "eth0"]);
          await writeLeases(d.dnsmasq, [{ ip: "192.168.122.12", mac: MAC2, host: "g2" }]);
          const until = Date.now() + 15_000;
          let status = "";
          while (Date.now() < until && !status.includes("192.168.122.12:22")) {
            status = (await hook(lab, d, ["status", "g2"])).stdout;
          }
          assert.match(status, new RegExp(`tcp ${A.hostPub4}:8080 -> 192.168.122.12:22\\n`));
          assert.equal(await eventually(lab, 8080, `g2 ${A.client4}`), `g2 ${A.client4}`);
        },
      );

      await t.step(
        "virsh metadata --live, then apply: the running guest's new forwards, without a restart",
        async () => {
          // What `virsh metadata --live` does: it rewrites the running guest's status file, and calls no hook.
          await Deno.writeTextFile(`${d.qemu}/g2.xml`, domstatus("g2", MAC2, metadata(8081)));
          const r = await hook(lab, d, ["apply", "g2"]);
          assert.equal(r.code, 0, r.stderr);
          assert.equal(await eventually(lab, 8081, `g2 ${A.client4}`), `g2 ${A.client4}`);
          assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 8080), null);
        },
      );

      await t.step(
        "another guest's XML claims a port a running guest's XML claims: its start fails",
        async () => {
          const xml = startXml("g4", "52:54:00:00:00:14", metadata(8081));
          const r = await hook(lab, d, ["g4", "start", "begin", "-"], xml);
          assert.equal(r.code, 1);
          const line = xml.split("\n").findIndex((l) => l.includes("8081")) + 1;
          assert.equal(
            r.stderr.split("\n")[0],
            `domain XML of g4:${line}:9: Public tcp port 8081 on ${A.hostPub4} is also claimed by ` +
              "forwards/portForward[1]/range[1] in domain XML of g2 (8081) (forwards/portForward[1]/range[1])",
          );
          // g2's forward goes on, untouched.
          assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 8081), `g2 ${A.client4}`);
        },
      );

      await t.step(
        "a mistake in the XML: start fails with its line, column and path, and changes nothing",
        async () => {
          const bad = startXml("g3", "52:54:00:00:00:12", metadata(70000));
          const live = await lab.ruleset(4);
          const r = await hook(lab, d, ["g3", "start", "begin", "-"], bad);
          assert.equal(r.code, 1);
          const line = bad.split("\n").findIndex((l) => l.includes("70000")) + 1;
          assert.match(
            r.stderr,
            new RegExp(
              `^domain XML of g3:${line}:20: Port out of range 1-65535 \\(forwards/portForward\\[1\\]/range\\[1\\]/@start = "70000"\\)$`,
              "m",
            ),
          );
          assert.equal(await lab.ruleset(4), live);
          // check --domain says the same of the guest's XML, before any start.
          await Deno.writeTextFile(`${d.qemu}/g3.xml`, domstatus("g3", "52:54:00:00:00:12", metadata(70000)));
          const check = await hook(lab, d, ["check", "--domain", "g3"]);
          await Deno.remove(`${d.qemu}/g3.xml`);
          assert.equal(check.code, 1);
          assert.match(
            check.stderr,
            /^domain XML of g3:\d+:\d+: Port out of range 1-65535 .*@start = "70000"\)$/m,
          );
        },
      );

      await t.step("stopped: nothing of ours is left", async () => {
        await watcher?.stop();
        watcher = undefined;
        const r = await hook(lab, d, ["g2", "stopped", "end", "-"], startXml("g2", MAC2, metadata(8081)));
        assert.equal(r.code, 0, r.stderr);
        assert.equal(await lab.ruleset(4), before);
      });
    } finally {
      await watcher?.stop();
      await lab.close();
      await Deno.remove(d.root, { recursive: true });
    }
  },
});
