/**
 * Trust boundaries with real rules and real packets: a guest's XML is written by whoever may edit that guest, so
 * what it asks beyond the guest's own is refused, positioned in the XML, and changes nothing: the host's SSH port,
 * a loopback listener, an address that is not the host's, a machine behind the host, another guest. The refused
 * rows are the hostile run's table (issue: trust boundaries); the legitimate forward still works beside them.
 */

import assert from "node:assert/strict";
import { canRunLab, createLab, LAB_ADDR as A } from "./lab.ts";
import { domstatus, envOf, hook, MAC1, MAIN, makeDirs, startXml } from "./guests.ts";

const can = await canRunLab();
if (!can.ok) console.log(`Skipping the trust boundary namespace tests: ${can.reason}`);

/** A guest's metadata holding one `<portForward>` with these attributes and one `<range>`. */
function forward(attributes: string, range: string): string {
  return `<metadata>
    <lvh:forwards xmlns:lvh="urn:libvirt-hook-qemu:1">
      <lvh:portForward ${attributes}>
        <lvh:range ${range}/>
      </lvh:portForward>
    </lvh:forwards>
  </metadata>`;
}

/** The line and column where `needle` starts in the XML, as the hook positions a problem. */
function at(xml: string, needle: string): string {
  const lines = xml.split("\n");
  const n = lines.findIndex((l) => l.includes(needle));
  return `${n + 1}:${lines[n]!.indexOf(needle) + 1}`;
}

const ALLOW = `allow it with`;
const RULE = `a "/settings".xml_forwards rule for this domain`;

for (const libvirt of ["iptables", "nftables"] as const) {
  Deno.test({
    name:
      `a guest's XML may ask only for what is its own (libvirt on ${libvirt}): each hostile row refused where ` +
      "it is, nothing changes",
    ignore: !can.ok,
    fn: (t) => hostileRows(t, libvirt),
  });
}

/** The hostile run's rows, each refused where it stands in the XML, on one libvirt variant. */
async function hostileRows(t: Deno.TestContext, libvirt: "iptables" | "nftables") {
  const lab = await createLab({ libvirt });
  const d = await makeDirs("lvh-trust-");
  try {
    await lab.serve(lab.ns.host, "tcp", 22, "host-ssh");
    await lab.serve(lab.ns.host, "tcp", 2525, "host-smtp");
    await lab.serve(lab.ns.g1, "tcp", 22, "g1");
    await lab.serve(lab.ns.g2, "tcp", 22, "g2");
    const before = await lab.ruleset(4);
    const refused = async (meta: string, needle: string, message: string) => {
      const xml = startXml("g1", MAC1, meta);
      const r = await hook(lab, d, ["g1", "start", "begin", "-"], xml);
      assert.equal(r.code, 1, r.stderr);
      assert.equal(r.stdout, "");
      const [first, last] = [r.stderr.split("\n")[0], r.stderr.trimEnd().split("\n").at(-1)];
      assert.equal(first, `domain XML of g1:${at(xml, needle)}: ${message}`);
      assert.match(
        last!,
        /^Cannot apply forwards for "g1": \d problem\(s\) in the forwards of its XML; nothing was changed$/,
      );
      assert.equal(await lab.ruleset(4), before);
      // check --domain says the same of a defined guest's XML, before any start.
      await Deno.writeTextFile(`${d.qemu}/g1.xml`, domstatus("g1", MAC1, meta));
      const check = await hook(lab, d, ["check", "--domain", "g1"]);
      await Deno.remove(`${d.qemu}/g1.xml`);
      assert.equal(check.code, 1);
      assert.ok(check.stderr.includes(message), check.stderr);
    };

    await t.step(
      "the host's SSH port, on the host's main address: refused, sshd still answers",
      async () => {
        // The lab's listeners are dual-stack sockets on [::], which take IPv4's 0.0.0.0 too.
        await refused(
          forward(`proto="tcp"`, `start="22"`),
          `<lvh:range`,
          `Public tcp ${A.hostPub4}:22 takes a port the host itself listens on ([::]:22): a guest's XML may ` +
            `not take it from the host (${ALLOW} "host_ports": true in ${RULE}) ` +
            `(forwards/portForward[1]/range[1] = "22")`,
        );
        assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 22), `host-ssh ${A.client4}`);
      },
    );

    await t.step("a loopback address: refused, the host's own listener there still answers", async () => {
      await refused(
        forward(`proto="tcp" address="127.0.0.1"`, `start="2525"`),
        `address=`,
        "127.0.0.1 is a loopback address: a forward there would take the host's own services on it; never " +
          `allowed from a guest's XML (forwards/portForward[1]/@address = "127.0.0.1")`,
      );
      assert.equal(await lab.connect(lab.ns.host, "tcp", "127.0.0.1", 2525), "host-smtp 127.0.0.1");
    });

    await t.step("an address that is not the host's (8.8.8.8, udp 53): refused", async () => {
      await refused(
        forward(`proto="udp" address="8.8.8.8"`, `start="53"`),
        `address=`,
        "8.8.8.8 is not an address of this host: its forward would capture the host's and the guests' own " +
          `connections to it (${ALLOW} "addresses": ["8.8.8.8"] in ${RULE}, or list it in ` +
          `"/settings".host_addresses if it is routed to this host) (forwards/portForward[1]/@address = "8.8.8.8")`,
      );
    });

    await t.step("a machine behind the host, on no libvirt network: refused", async () => {
      await refused(
        forward(`proto="tcp" address="${A.hostPub4}" guest="10.9.9.9"`, `start="8081" to="22"`),
        `guest=`,
        `10.9.9.9 is not this guest's address (its network's reservations and leases give ${A.g1v4}): a ` +
          "guest's XML may forward only to the guest itself (drop guest to have its address found, or " +
          `${ALLOW} "targets": ["10.9.9.9"] in ${RULE}) (forwards/portForward[1]/@guest = "10.9.9.9")`,
      );
    });

    await t.step(
      "another guest's address: refused, that guest is not published and still answers",
      async () => {
        await refused(
          forward(`proto="tcp" address="${A.hostPub4}" guest="${A.g2v4}"`, `start="8082" to="22"`),
          `guest=`,
          `${A.g2v4} is not this guest's address (its network's reservations and leases give ${A.g1v4}): a ` +
            "guest's XML may forward only to the guest itself (drop guest to have its address found, or " +
            `${ALLOW} "targets": ["${A.g2v4}"] in ${RULE}) (forwards/portForward[1]/@guest = "${A.g2v4}")`,
        );
        assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 8082), null);
        assert.equal(await lab.connect(lab.ns.host, "tcp", A.g2v4, 22), `g2 ${A.bridge4}`);
      },
    );

    await t.step(
      "the guest's own forward, on the host's address, to its own address: applied",
      async () => {
        const meta = forward(
          `proto="tcp" address="${A.hostPub4}" guest="${A.g1v4}"`,
          `start="8080" to="22"`,
        );
        const r = await hook(lab, d, ["g1", "start", "begin", "-"], startXml("g1", MAC1, meta));
        assert.equal(r.code, 0, r.stderr);
        assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 8080), `g1 ${A.client4}`);
        assert.equal(await lab.connect(lab.ns.client, "tcp", A.hostPub4, 22), `host-ssh ${A.client4}`);
        const stop = await hook(lab, d, ["g1", "stopped", "end", "-"], startXml("g1", MAC1, meta));
        assert.equal(stop.code, 0, stop.stderr);
        assert.equal(await lab.ruleset(4), before);
      },
    );
  } finally {
    await lab.close();
    await Deno.remove(d.root, { recursive: true });
  }
}

Deno.test({
  name:
    "a public_ip that is not the host's: a start refuses it where it is written, check warns, host_addresses allows",
  ignore: !can.ok,
  fn: async () => {
    const lab = await createLab();
    const d = await makeDirs("lvh-trust-json-");
    const config = `${d.root}/hooks.jsonc`;
    const entry =
      `"web8": { "private_ip": "${A.g1v4}", "public_ip": "8.8.8.8", "port_map": { "udp": [53] } }`;
    const run = (args: string[], stdin = "") =>
      lab.exec(lab.ns.host, [Deno.execPath(), "run", "-A", MAIN, ...args], {
        stdin,
        clearEnv: true,
        env: { ...envOf(d), CONFIG_FILENAME: config },
        cwd: "/",
        timeoutMs: 30_000,
      });
    try {
      const before = await lab.ruleset(4);
      await Deno.writeTextFile(config, `{\n  ${entry}\n}\n`, { mode: 0o644 });
      const why =
        "8.8.8.8 is not an address of this host: its forward would capture the host's and the guests' own " +
        'connections to 8.8.8.8; if it is routed to this host (or comes up later), list it in "/settings".host_addresses';
      const start = await run(["web8", "start", "begin", "-"], startXml("web8", MAC1, ""));
      assert.equal(start.code, 1);
      assert.equal(start.stderr.split("\n")[0], `${config}:2:58: ${why} (web8.public_ip = "8.8.8.8")`);
      assert.equal(await lab.ruleset(4), before);
      const check = await run(["check"]);
      assert.equal(check.code, 0, check.stderr);
      assert.ok(
        check.stderr.includes(`${config}:2:58: warning: ${why}; a start of "web8" refuses it here`),
        check.stderr,
      );
      // Declared as this host's (an address routed to it): applied, as any of the host's own.
      await Deno.writeTextFile(
        config,
        `{\n  ${entry},\n  "/settings": { "host_addresses": ["8.8.8.8"] }\n}\n`,
      );
      const declared = await run(["web8", "start", "begin", "-"], startXml("web8", MAC1, ""));
      assert.equal(declared.code, 0, declared.stderr);
      assert.notEqual(await lab.ruleset(4), before);
      const stop = await run(["web8", "stopped", "end", "-"], startXml("web8", MAC1, ""));
      assert.equal(stop.code, 0, stop.stderr);
      assert.equal(await lab.ruleset(4), before);
    } finally {
      await lab.close();
      await Deno.remove(d.root, { recursive: true });
    }
  },
});
