/**
 * Domain names through both backends, in a lab host with real iptables/nftables: random names libvirt would accept
 * start, show in `status` under their own name, carry traffic, and go without residue (by `stopped` and by
 * `remove --all`). libvirt refuses only "/" in a domain name (virDomainDefParseXML: "name %s cannot contain '/'")
 * and names XML cannot hold (control characters); anything else, of any length, is a name: Unicode, spaces,
 * quotes, `%`, `#`, `$()`. nftables keeps 128 bytes of a comment, iptables 255: long names are where ownership
 * used to break. Seeded: a failure names its seed, and `LVH_NAMES_SEED=<seed> deno task test` replays it.
 */

import assert from "node:assert/strict";
import { canRunLab, createLab, type Lab, LAB_ADDR as A } from "./lab.ts";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const can = await canRunLab();
const nft = can.ok &&
  (await new Deno.Command("nft", { args: ["--version"] }).output().catch(() => undefined))?.success;
if (!can.ok) console.log(`Skipping the domain name property test: ${can.reason}`);
else if (!nft) console.log("Skipping the domain name property test: nft is not installed");
const SEED = Number(Deno.env.get("LVH_NAMES_SEED") ?? Math.floor(Math.random() * 2 ** 31));
const opts = { sanitizeOps: false, sanitizeResources: false };
const PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
const SCRATCH = await Deno.makeTempDir();
globalThis.addEventListener("unload", () => Deno.removeSync(SCRATCH, { recursive: true }));

/** mulberry32. */
function prng(seed: number) {
  let a = seed >>> 0;
  return (n: number) => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return Math.floor((((t ^ (t >>> 14)) >>> 0) / 4294967296) * n);
  };
}

const bytes = (s: string) => new TextEncoder().encode(s).length;
/** The pieces random names are made of: what libvirt accepts, the awkward first. */
const PIECES = [
  ..."aZ09._-+ @=,~%#$()\"'\\`&;|*?!<>[]{}",
  "日本",
  "é",
  "😀",
  "\u200f",
  "%23",
  "$(reboot)",
  "#",
];

/** A name of about `target` UTF-8 bytes, at least one, never with "/". */
function nameOf(random: (n: number) => number, target: number): string {
  let name = "";
  while (bytes(name) < target) name += PIECES[random(PIECES.length)];
  return name.trim() === "" ? `n${name}` : name;
}

/** Names at the edges (a byte; 101/102/128/200/255 bytes around the comment limits; 1000), and random ones. */
function names(seed: number): string[] {
  const random = prng(seed);
  const fixed = [
    "a",
    "#0123456789ab",
    "%23",
    `it's "quoted" \\ here`,
    "$(reboot)",
    "with space",
    "日本語のなまえ十二文字だ",
    "😀",
    ...[100, 101, 102, 128, 200, 255].map((n) => "x".repeat(n)),
    "é".repeat(500),
  ];
  const randomNames = Array.from({ length: 6 }, () => nameOf(random, 1 + random(random(2) ? 40 : 1000)));
  return [...new Set([...fixed, ...randomNames])];
}

async function firewall(lab: Lab): Promise<string> {
  return [await lab.ruleset(4), await lab.ruleset(6), await lab.nftRuleset()].join("\n");
}

const VARIANTS = [
  { libvirt: "nftables", backend: "auto" },
  { libvirt: "nftables", backend: "iptables" },
  { libvirt: "iptables", backend: "auto" },
] as const;

for (const { libvirt, backend } of VARIANTS) {
  Deno.test({
    name: `domain names (seed ${SEED}), libvirt on ${libvirt}, backend ${backend}: start, status, traffic, ` +
      "stop and remove --all without residue",
    ignore: !can.ok || !nft,
    ...opts,
    async fn() {
      await using lab = await createLab({ libvirt });
      const list = names(SEED);
      const dir = await Deno.makeTempDir({ dir: SCRATCH });
      const config = {
        "/settings": { backend },
        ...Object.fromEntries(list.map((n, i) => [n, {
          private_ip: A.g1v4,
          port_map: { tcp: [[20000 + i, 22]] },
        }])),
      };
      await Deno.writeTextFile(`${dir}/hooks.jsonc`, JSON.stringify(config));
      const env = {
        LC_ALL: "C",
        PATH,
        CONFIG_FILENAME: `${dir}/hooks.jsonc`,
        LIBVIRT_HOOK_QEMU_STATE_DIR: `${dir}/state`,
      };
      const run = (args: string[]) =>
        lab.exec(lab.ns.host, [Deno.execPath(), "run", "-A", MAIN, ...args], {
          stdin: "<domain/>",
          clearEnv: true,
          env,
          cwd: "/",
          timeoutMs: 30_000,
        });
      await lab.serve(lab.ns.g1, "tcp", 22, "g1");
      const before = await firewall(lab);
      const say = (name: string) =>
        `seed ${SEED}, ${libvirt}/${backend}, ${JSON.stringify(name).slice(0, 80)}`;
      for (const name of list) {
        const r = await run([name, "start", "begin", "-"]);
        assert.equal(r.code, 0, `${say(name)}: start: ${r.stderr}`);
        assert.equal(r.stdout, "", say(name));
      }
      const status = JSON.parse((await run(["status", "--json"])).stdout);
      const shown = new Map<string, string[]>(
        status.domains.map((d: { domain: string; forwards: { forward: string }[] }) => [
          d.domain,
          d.forwards.map((f) => f.forward),
        ]),
      );
      list.forEach((name, i) => {
        assert.deepEqual(shown.get(name), [`tcp ${A.hostPub4}:${20000 + i} -> ${A.g1v4}:22`], say(name));
      });
      // The longest name's forward carries traffic, like any other.
      const longest = list.reduce((a, b) => (bytes(b) > bytes(a) ? b : a));
      assert.equal(
        await lab.connect(lab.ns.client, "tcp", A.hostPub4, 20000 + list.indexOf(longest)),
        `g1 ${A.client4}`,
        say(longest),
      );
      // Half go by libvirt's stopped, the rest by remove --all.
      for (const name of list.filter((_, i) => i % 2 === 0)) {
        const r = await run([name, "stopped", "end", "-"]);
        assert.equal(r.code, 0, `${say(name)}: stopped: ${r.stderr}`);
      }
      const removed = await run(["remove", "--all"]);
      assert.equal(removed.code, 0, removed.stderr);
      assert.equal(await firewall(lab), before, `seed ${SEED}, ${libvirt}/${backend}: residue after stop`);
    },
  });
}
