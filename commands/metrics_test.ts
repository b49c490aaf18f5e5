/** metrics() and exposition(): the forwards' counters as Prometheus text, read through a recording runner. */

import assert from "node:assert/strict";
import { exposition, metrics } from "./metrics.ts";
import type { LiveForward } from "../backends/backend.ts";
import { domainHash } from "../backends/names.ts";
import { captureStdout, fakeCommandDeps } from "../test/commands_deps.ts";

/**
 * The text format's grammar (Prometheus exposition format 0.0.4) for what we print: HELP and TYPE comments, and
 * samples `name{label="value",...} value`, label values with only `\\`, `\"` and `\n` escaped.
 */
function assertExposition(text: string): void {
  assert.ok(text.endsWith("\n"), "ends with a newline");
  const name = "[a-zA-Z_:][a-zA-Z0-9_:]*";
  const label = `[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\\\\n]|\\\\[\\\\"n])*"`;
  const sample = new RegExp(`^(${name})\\{${label}(?:,${label})*\\} \\d+$`);
  const typed = new Set<string>();
  for (const line of text.slice(0, -1).split("\n")) {
    const help = new RegExp(`^# HELP (${name}) \\S.*$`).exec(line);
    const type = new RegExp(`^# TYPE (${name}) counter$`).exec(line);
    if (type) typed.add(type[1]!);
    const s = sample.exec(line);
    assert.ok(help || type || s, `not in the text format: ${line}`);
    // Every sample after its metric's TYPE line, and a counter's name ends in _total.
    if (s) assert.ok(typed.has(s[1]!) && s[1]!.endsWith("_total"), `sample before its TYPE: ${line}`);
  }
}

const WEB1: LiveForward = {
  domain: "web1",
  family: 4,
  protocol: "tcp",
  publicIp: "203.0.113.1",
  publicPorts: "2222",
  privateIp: "192.168.122.10",
  privatePorts: "22",
  counters: { connections: 3, packets: 40, bytes: 2400 },
};

Deno.test("exposition() prints HELP, TYPE and one labelled sample per forward and counter", async (t) => {
  await t.step("iptables: connections, packets and bytes", () => {
    const text = exposition([WEB1]);
    assertExposition(text);
    const labels =
      'domain="web1",proto="tcp",public_ip="203.0.113.1",public_port="2222",target="192.168.122.10:22"';
    assert.equal(
      text,
      [
        "# HELP libvirt_hook_qemu_forward_connections_total New connections through the port forward since its rules were last written.",
        "# TYPE libvirt_hook_qemu_forward_connections_total counter",
        `libvirt_hook_qemu_forward_connections_total{${labels}} 3`,
        "# HELP libvirt_hook_qemu_forward_packets_total Packets of the forward's connections, both directions, as the host forwards them, since its rules were last written (forwards with counters on).",
        "# TYPE libvirt_hook_qemu_forward_packets_total counter",
        `libvirt_hook_qemu_forward_packets_total{${labels}} 40`,
        "# HELP libvirt_hook_qemu_forward_bytes_total Bytes of the forward's connections, both directions, as the host forwards them, since its rules were last written (forwards with counters on).",
        "# TYPE libvirt_hook_qemu_forward_bytes_total counter",
        `libvirt_hook_qemu_forward_bytes_total{${labels}} 2400`,
        "",
      ].join("\n"),
    );
  });
  await t.step("nftables: connections only; IPv6 in brackets; a name with quotes escaped", () => {
    const v6: LiveForward = {
      ...WEB1,
      domain: 'we"b\\2',
      family: 6,
      publicIp: "2001:db8:1::1",
      privateIp: "fd00:122::10",
      counters: { connections: 7 },
    };
    const text = exposition([v6]);
    assertExposition(text);
    assert.match(
      text,
      /^libvirt_hook_qemu_forward_connections_total\{domain="we\\"b\\\\2",proto="tcp",public_ip="2001:db8:1::1",public_port="2222",target="\[fd00:122::10\]:22"\} 7$/m,
    );
    assert.doesNotMatch(text, /packets|bytes/);
  });
  await t.step("no counters read (an outbound NAT, or nothing live): nothing", () => {
    const { counters: _, ...unread } = WEB1;
    assert.equal(exposition([unread, { ...WEB1, outbound: true }]), "");
    assert.equal(exposition([]), "");
  });
});

Deno.test("metrics() reads iptables-save -c and prints each live forward's counters", async () => {
  const h = domainHash("web1");
  const tag = '-m comment --comment "libvirt-hook-qemu:1:web1"';
  const saved = [
    "*nat",
    `:LVH-${h}-DNAT - [0:0]`,
    `[5:300] -A PREROUTING ${tag} -j LVH-${h}-DNAT`,
    `[3:180] -A LVH-${h}-DNAT -d 203.0.113.1/32 -p tcp -m tcp --dport 2222 ${tag} -j DNAT --to-destination 192.168.122.10:22`,
    "COMMIT",
    "*filter",
    `:LVH-${h}-FWD - [0:0]`,
    `[40:2400] -A LVH-${h}-FWD -m connlabel --label 127 ${tag} -j ACCEPT`,
    "COMMIT",
    "",
  ].join("\n");
  const f = await fakeCommandDeps(
    `{"web1": {"private_ip": "192.168.122.10", "port_map": {"tcp": [[2222, 22]]}}}`,
    (argv) => argv[0] === "iptables-save" && argv.includes("-c") ? { stdout: saved } : {},
  );
  const { value, stdout } = await captureStdout(() => metrics(f.deps));
  assert.equal(value, 0);
  assert.equal(stdout.length, 1, "one write");
  assertExposition(stdout[0]! + "\n");
  const samples = stdout[0]!.split("\n").filter((l) => !l.startsWith("#")).map((l) =>
    l.replace(/\{.*\}/, "")
  );
  // The domain's one accept counts every forward's packets together: no per-forward packets or bytes.
  assert.deepEqual(samples, ["libvirt_hook_qemu_forward_connections_total 3"]);
});
