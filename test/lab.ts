/**
 * Throw-away network lab for integration tests: Linux network namespaces wired like a libvirt host
 * with a NAT network, real iptables (nf_tables backend) and real packets.
 *
 * Topology (every namespace name is prefixed with `lvh<5 random chars>-`, so labs can run in parallel):
 *
 * ```
 *   client ns                      host ns (ip_forward=1, libvirt-like rules)            g1 ns / g2 ns
 *   eth0 203.0.113.50/.51/.254 ─── pub0 203.0.113.1, 2001:db8:1::1
 *        2001:db8:1::50/::51/::fe       default via 203.0.113.254 / 2001:db8:1::fe
 *                                  virbr0 (bridge) 192.168.122.1, fd00:122::1
 *                                    ├─ vnet0 ──────────────────────────────────────── g1 eth0 .10 / ::10
 *                                    └─ vnet1 ──────────────────────────────────────── g2 eth0 .11 / ::11
 * ```
 *
 * The client also has routes to 192.168.122.0/24 and fd00:122::/64 via the host, so that direct
 * (non-DNAT) traffic to a guest reaches libvirt's FORWARD REJECT rules instead of dying for lack of a
 * route. Nothing here ever touches the root namespace's firewall, sysctls or interfaces: veths are
 * created directly inside their namespaces.
 *
 * Servers are not socat but one small Deno agent per namespace (Deno.listen for TCP, node:dgram for UDP;
 * started lazily with `deno eval`, it exits when its stdin closes, so it cannot outlive the test process):
 * socat 1.7.4 reports IPv6 peers as `[0000:0000:...:0001]` (bracketed, fully expanded) and its SYSTEM
 * address needs a shell string; the agent replies with the canonical address (`2001:db8:1::50`), needs no
 * shell, and reports readiness itself once the socket is bound and listening (no `ss` polling). The client
 * side (`connect`) uses netcat-openbsd (see there why not socat). Needed binaries: ip, iptables(-save/
 * -restore), ip6tables(-save/-restore), sysctl, nc (netcat-openbsd), unshare, test, cat, and deno itself.
 */

/** Addresses and prefixes of the lab topology. */
export const LAB_ADDR = {
  /** Host's public IPv4 address (on pub0, the interface holding the default route). */
  hostPub4: "203.0.113.1",
  /** Host's public IPv6 address (on pub0). */
  hostPub6: "2001:db8:1::1",
  /** Host's address on virbr0 (IPv4). */
  bridge4: "192.168.122.1",
  /** Host's address on virbr0 (IPv6). */
  bridge6: "fd00:122::1",
  /** Guest network (IPv4). */
  net4: "192.168.122.0/24",
  /** Guest network (IPv6). */
  net6: "fd00:122::/64",
  /** Guest g1 (IPv4). */
  g1v4: "192.168.122.10",
  /** Guest g1 (IPv6). */
  g1v6: "fd00:122::10",
  /** Guest g2 (IPv4). */
  g2v4: "192.168.122.11",
  /** Guest g2 (IPv6). */
  g2v6: "fd00:122::11",
  /** Client's primary IPv4 address (the source address used unless `source` is given). */
  client4: "203.0.113.50",
  /** Client's second IPv4 address, for source-restriction tests. */
  client4b: "203.0.113.51",
  /** Client's primary IPv6 address. */
  client6: "2001:db8:1::50",
  /** Client's second IPv6 address. */
  client6b: "2001:db8:1::51",
  /** Default gateway of the host (held by the client namespace), IPv4. */
  gw4: "203.0.113.254",
  /** Default gateway of the host (held by the client namespace), IPv6. */
  gw6: "2001:db8:1::fe",
} as const;

/** The "foreign" rules loaded with the base rules (not ours; a hook must leave them untouched). */
export const FOREIGN = {
  /** Filter chain jumped from the top of FORWARD (like Docker's DOCKER-USER). */
  filterChain: "FOREIGN",
  /** Nat chain jumped from PREROUTING (for locally addressed packets). */
  natChain: "FOREIGN_PRE",
  /** TCP port that FOREIGN_PRE redirects ... */
  redirectFrom: 9999,
  /** ... to this local port. */
  redirectTo: 9998,
} as const;

/** Options of {@link createLab}. */
export interface LabOptions {
  /** bridge-nf-call-iptables / -ip6tables inside the host namespace (default false = plain bridge). */
  brNetfilter?: boolean;
  /** Load the libvirt-like and foreign base rules (default true). */
  baseRules?: boolean;
  /**
   * Which firewall backend the imitated libvirt uses (default "iptables", libvirt 9.0). "nftables" loads what
   * libvirt >= 10.4 creates with its nftables backend instead (`table ip/ip6 libvirt_network`, whose
   * guest_input chain rejects new connections to the guests), plus a foreign nft table, and no iptables rules.
   */
  libvirt?: "iptables" | "nftables";
  /**
   * IPv6 LIBVIRT_FWI accept rule (default "routed"). libvirt 9.0 treats IPv6 in a NAT network as routed:
   * `-d fd00:122::/64 -o virbr0 -j ACCEPT`, so any forwarded IPv6 packet to a guest is accepted.
   * "established" uses the IPv4-like `-m conntrack --ctstate RELATED,ESTABLISHED` variant instead, so a
   * missing FORWARD accept for IPv6 DNAT gets REJECTed as it does for IPv4.
   */
  ipv6Forward?: "routed" | "established";
}

/** Options of {@link Lab.exec}. */
export interface ExecOptions {
  /** Text written to the command's stdin (stdin is /dev/null otherwise). */
  stdin?: string;
  /** Extra environment variables (or the whole environment with `clearEnv`). */
  env?: Record<string, string>;
  /** Start from an empty environment; pass PATH in `env` or use an absolute argv[0] then. */
  clearEnv?: boolean;
  /** Working directory. */
  cwd?: string;
  /** Kill (SIGTERM) the command after this many milliseconds (default 10000). */
  timeoutMs?: number;
}

/** Result of {@link Lab.exec}. */
export interface ExecResult {
  /** Exit code (128+n when killed by signal n). */
  code: number;
  /** Standard output. */
  stdout: string;
  /** Standard error. */
  stderr: string;
  /** True when the command was killed because of `timeoutMs`. */
  timedOut: boolean;
}

/** Options of {@link Lab.connect}. */
export interface ConnectOptions {
  /** Source address to bind to (must be an address of `ns`). */
  source?: string;
  /** Give up after this many milliseconds (default 2000). */
  timeoutMs?: number;
}

/** Namespace names of a lab. */
export interface LabNamespaces {
  /** The KVM host. */
  host: string;
  /** Guest 1 (192.168.122.10). */
  g1: string;
  /** Guest 2 (192.168.122.11). */
  g2: string;
  /** Outside client (203.0.113.50). */
  client: string;
}

/** A running lab; see {@link createLab}. */
export interface Lab {
  /** Namespace names. */
  readonly ns: LabNamespaces;
  /** Effective bridge-nf-call-iptables setting of the host namespace. */
  readonly brNetfilter: boolean;
  /** Whether the mangle CHECKSUM rule of libvirt could be loaded (false if the kernel refused it). */
  readonly checksumRule: boolean;
  /** Runs argv inside namespace `ns`; never throws on non-zero exit; timeout default 10 s. */
  exec(ns: string, argv: string[], opts?: ExecOptions): Promise<ExecResult>;
  /** Starts an IPv4+IPv6 server in `ns` answering each connection/datagram with `<label> <peer address>`. */
  serve(ns: string, proto: "tcp" | "udp", port: number, label: string): Promise<void>;
  /**
   * Starts an IPv4+IPv6 TCP echo server in `ns`: every chunk a connection sends comes back as `<label> <chunk>`,
   * for as long as the connection stays open (see session).
   */
  serveEcho(ns: string, port: number, label: string): Promise<void>;
  /** Opens one TCP connection from `ns` that stays open: an established session (see Session). */
  session(ns: string, ip: string, port: number): Promise<Session>;
  /**
   * Keeps sending a datagram every `intervalMs` (default 50) from one UDP socket of `ns`, as a VPN or game
   * client does, and records every reply with the time it came (see UdpStream).
   */
  stream(ns: string, ip: string, port: number, opts?: { intervalMs?: number }): Promise<UdpStream>;
  /** Connects (tcp) or sends one datagram (udp) from `ns`; returns the first reply line or null. */
  connect(
    ns: string,
    proto: "tcp" | "udp",
    ip: string,
    port: number,
    opts?: ConnectOptions,
  ): Promise<string | null>;
  /** iptables-save / ip6tables-save of the host namespace without comments and counters. */
  ruleset(family?: 4 | 6): Promise<string>;
  /** `nft list ruleset` of the host namespace without counters and handles. */
  nftRuleset(): Promise<string>;
  /** Kills every process started by the lab and deletes its namespaces. Idempotent. */
  close(): Promise<void>;
  /** Same as close(), for `await using lab = await createLab()`. */
  [Symbol.asyncDispose](): Promise<void>;
}

/** An established TCP session of {@link Lab.session}. */
export interface Session {
  /** Sends `text` and returns the echo server's answer, or null when none came within `timeoutMs` (default 1000). */
  say(text: string, timeoutMs?: number): Promise<string | null>;
  /** Closes the connection and ends its process. */
  close(): Promise<void>;
}

/** A UDP stream of {@link Lab.stream}: one socket that keeps sending. */
export interface UdpStream {
  /** Every reply so far, with when it came (ms since the epoch, this machine's clock). */
  replies(): { at: number; line: string }[];
  /** Stops sending and ends its process. */
  close(): Promise<void>;
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const DEFAULT_EXEC_TIMEOUT_MS = 10_000;

const binCache = new Map<string, string>();

/** Absolute path of a system binary (so that `clearEnv` does not break the lookup). */
function bin(name: string): string {
  const cached = binCache.get(name);
  if (cached !== undefined) return cached;
  let found = name;
  for (const dir of ["/usr/sbin", "/usr/bin", "/sbin", "/bin", "/usr/local/sbin", "/usr/local/bin"]) {
    try {
      if (Deno.statSync(`${dir}/${name}`).isFile) {
        found = `${dir}/${name}`;
        break;
      }
    } catch {
      // not in this directory
    }
  }
  binCache.set(name, found);
  return found;
}

/** Runs argv (no shell) with a timeout; never throws on non-zero exit. */
async function run(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  const [program, ...args] = argv;
  if (program === undefined) throw new Error("run: empty argv");
  const signal = AbortSignal.timeout(opts.timeoutMs ?? DEFAULT_EXEC_TIMEOUT_MS);
  const child = new Deno.Command(program, {
    args,
    stdin: opts.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
    signal,
    ...(opts.env === undefined ? {} : { env: opts.env }),
    ...(opts.clearEnv === undefined ? {} : { clearEnv: opts.clearEnv }),
    ...(opts.cwd === undefined ? {} : { cwd: opts.cwd }),
  }).spawn();
  const writing = opts.stdin === undefined ? Promise.resolve() : (async () => {
    const writer = child.stdin.getWriter();
    try {
      await writer.write(encoder.encode(opts.stdin));
      await writer.close();
    } catch {
      // the command exited without reading all of its input
    }
  })();
  const out = await child.output();
  await writing;
  return {
    code: out.code,
    stdout: decoder.decode(out.stdout),
    stderr: decoder.decode(out.stderr),
    timedOut: signal.aborted && out.signal !== null,
  };
}

/** Like {@link run} but throws (with stderr) on a non-zero exit. */
async function runOk(argv: readonly string[], opts: ExecOptions = {}): Promise<ExecResult> {
  const r = await run(argv, opts);
  if (r.code !== 0) {
    throw new Error(
      `command failed (${r.code}${r.timedOut ? ", timed out" : ""}): ${argv.join(" ")}\n${r.stderr}`,
    );
  }
  return r;
}

/** argv prefix that runs a command inside network namespace `ns`. */
function inNs(ns: string, argv: readonly string[]): string[] {
  return [bin("ip"), "netns", "exec", ns, ...argv];
}

/** Random lowercase alphanumeric string. */
function randomId(length: number): string {
  const alphabet = "abcdefghijklmnopqrstuvwxyz0123456789";
  const bytes = crypto.getRandomValues(new Uint8Array(length));
  return Array.from(bytes, (b) => alphabet[b % alphabet.length]).join("");
}

/** Whether a fresh network namespace has bridge-netfilter sysctls (br_netfilter loaded). */
export async function brNetfilterAvailable(): Promise<boolean> {
  const r = await run([bin("unshare"), "--net", bin("cat"), "/proc/sys/net/bridge/bridge-nf-call-iptables"], {
    timeoutMs: 5000,
  });
  return r.code === 0;
}

/**
 * What libvirt >= 10.4 creates with its nftables backend for the NAT network virbr0 (as measured with libvirt
 * 11.3: per family a table `libvirt_network`, base chain `forward` jumping to guest_cross, guest_input,
 * guest_output; guest_input rejects new connections to the bridge), plus a foreign table of another tool.
 */
export function libvirtNftText(): string {
  const family = (ip: "ip" | "ip6", net: string, reject: string) => `
table ${ip} libvirt_network {
  chain forward {
    type filter hook forward priority filter; policy accept;
    counter jump guest_cross
    counter jump guest_input
    counter jump guest_output
  }
  chain guest_output {
    iif "virbr0" ${ip} saddr ${net} counter accept
    iif "virbr0" counter ${reject}
  }
  chain guest_input {
    oif "virbr0" ${ip} daddr ${net} ct state established,related counter accept
    oif "virbr0" counter ${reject}
  }
  chain guest_cross {
    iif "virbr0" oif "virbr0" counter accept
  }
  chain guest_nat {
    type nat hook postrouting priority srcnat; policy accept;
    ${ip} saddr ${net} ${ip} daddr != ${net} counter masquerade
  }
}`;
  return [
    family("ip", LAB_ADDR.net4, "reject"),
    family("ip6", LAB_ADDR.net6, "reject"),
    `
table inet foreign {
  chain input {
    type filter hook input priority filter + 10; policy accept;
    tcp dport 9999 counter accept
  }
}`,
  ].join("\n") + "\n";
}

/** Checks whether labs can be created here (Linux, root, ip netns, iptables incl. nat, netcat). */
export async function canRunLab(): Promise<{ ok: true } | { ok: false; reason: string }> {
  if (Deno.build.os !== "linux") return { ok: false, reason: "not Linux" };
  if (Deno.uid() !== 0) return { ok: false, reason: "not root (network namespaces need root)" };
  for (
    const tool of [
      "ip",
      "iptables",
      "ip6tables",
      "iptables-save",
      "iptables-restore",
      "nc",
      "sysctl",
      "unshare",
    ]
  ) {
    if (bin(tool) === tool) return { ok: false, reason: `${tool} not found` };
  }
  const probe = `lvh${randomId(5)}-probe`;
  try {
    const add = await run([bin("ip"), "netns", "add", probe], { timeoutMs: 5000 });
    if (add.code !== 0) return { ok: false, reason: `ip netns add failed: ${add.stderr.trim()}` };
    for (const tool of ["iptables", "ip6tables"]) {
      const r = await run(inNs(probe, [bin(tool), "-t", "nat", "-S"]), { timeoutMs: 5000 });
      if (r.code !== 0) return { ok: false, reason: `${tool} -t nat unusable: ${r.stderr.trim()}` };
    }
    return { ok: true };
  } catch (e) {
    return { ok: false, reason: `probe failed: ${e instanceof Error ? e.message : String(e)}` };
  } finally {
    await run([bin("ip"), "netns", "del", probe], { timeoutMs: 5000 });
  }
}

/**
 * iptables-restore input for the host namespace: libvirt 9.0's rules (iptables backend) for the NAT network
 * virbr0 192.168.122.0/24 + fd00:122::/64 (chains, order and jumps as libvirt's `--insert`s leave them) plus
 * the FOREIGN rules of another tool.
 */
export function baseRulesText(
  family: 4 | 6,
  opts: { ipv6Forward?: "routed" | "established"; checksum?: boolean } = {},
): string {
  const builtin = {
    mangle: ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
    nat: ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
    filter: ["INPUT", "FORWARD", "OUTPUT"],
  };
  const { redirectFrom, redirectTo } = FOREIGN;
  const foreignRedirect =
    `-A FOREIGN_PRE -p tcp -m tcp --dport ${redirectFrom} -j REDIRECT --to-ports ${redirectTo}`;
  const table = (name: keyof typeof builtin, chains: string[], rules: string[]): string[] => [
    `*${name}`,
    ...builtin[name].map((c) => `:${c} ACCEPT [0:0]`),
    ...chains.map((c) => `:${c} - [0:0]`),
    ...rules,
    "COMMIT",
  ];
  if (family === 4) {
    const net = LAB_ADDR.net4;
    return [
      ...table("mangle", ["LIBVIRT_PRT"], [
        "-A POSTROUTING -j LIBVIRT_PRT",
        ...(opts.checksum === false
          ? []
          : ["-A LIBVIRT_PRT -o virbr0 -p udp -m udp --dport 68 -j CHECKSUM --checksum-fill"]),
      ]),
      ...table("nat", ["FOREIGN_PRE", "LIBVIRT_PRT"], [
        "-A PREROUTING -m addrtype --dst-type LOCAL -j FOREIGN_PRE",
        "-A POSTROUTING -j LIBVIRT_PRT",
        "-A POSTROUTING -s 172.31.0.0/16 ! -o fbr0 -j MASQUERADE",
        foreignRedirect,
        `-A LIBVIRT_PRT -s ${net} -d 224.0.0.0/24 -j RETURN`,
        `-A LIBVIRT_PRT -s ${net} -d 255.255.255.255/32 -j RETURN`,
        `-A LIBVIRT_PRT -s ${net} ! -d ${net} -p tcp -j MASQUERADE --to-ports 1024-65535`,
        `-A LIBVIRT_PRT -s ${net} ! -d ${net} -p udp -j MASQUERADE --to-ports 1024-65535`,
        `-A LIBVIRT_PRT -s ${net} ! -d ${net} -j MASQUERADE`,
      ]),
      ...table("filter", [
        "FOREIGN",
        "LIBVIRT_FWI",
        "LIBVIRT_FWO",
        "LIBVIRT_FWX",
        "LIBVIRT_INP",
        "LIBVIRT_OUT",
      ], [
        "-A INPUT -j LIBVIRT_INP",
        "-A FORWARD -j FOREIGN",
        "-A FORWARD -j LIBVIRT_FWX",
        "-A FORWARD -j LIBVIRT_FWI",
        "-A FORWARD -j LIBVIRT_FWO",
        "-A OUTPUT -j LIBVIRT_OUT",
        "-A FOREIGN -s 198.51.100.0/24 -j DROP",
        "-A FOREIGN -j RETURN",
        `-A LIBVIRT_FWI -d ${net} -o virbr0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`,
        "-A LIBVIRT_FWI -o virbr0 -j REJECT --reject-with icmp-port-unreachable",
        `-A LIBVIRT_FWO -s ${net} -i virbr0 -j ACCEPT`,
        "-A LIBVIRT_FWO -i virbr0 -j REJECT --reject-with icmp-port-unreachable",
        "-A LIBVIRT_FWX -i virbr0 -o virbr0 -j ACCEPT",
        "-A LIBVIRT_INP -i virbr0 -p udp -m udp --dport 53 -j ACCEPT",
        "-A LIBVIRT_INP -i virbr0 -p tcp -m tcp --dport 53 -j ACCEPT",
        "-A LIBVIRT_INP -i virbr0 -p udp -m udp --dport 67 -j ACCEPT",
        "-A LIBVIRT_INP -i virbr0 -p tcp -m tcp --dport 67 -j ACCEPT",
        "-A LIBVIRT_OUT -o virbr0 -p udp -m udp --dport 53 -j ACCEPT",
        "-A LIBVIRT_OUT -o virbr0 -p tcp -m tcp --dport 53 -j ACCEPT",
        "-A LIBVIRT_OUT -o virbr0 -p udp -m udp --dport 68 -j ACCEPT",
        "-A LIBVIRT_OUT -o virbr0 -p tcp -m tcp --dport 68 -j ACCEPT",
      ]),
      "",
    ].join("\n");
  }
  const net = LAB_ADDR.net6;
  const fwiAccept = opts.ipv6Forward === "established"
    ? `-A LIBVIRT_FWI -d ${net} -o virbr0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`
    : `-A LIBVIRT_FWI -d ${net} -o virbr0 -j ACCEPT`;
  // libvirt creates its private chains (and the jumps) in ip6tables too; with no NAT for IPv6 the nat and
  // mangle LIBVIRT_PRT chains stay empty.
  return [
    ...table("mangle", ["LIBVIRT_PRT"], ["-A POSTROUTING -j LIBVIRT_PRT"]),
    ...table("nat", ["FOREIGN_PRE", "LIBVIRT_PRT"], [
      "-A PREROUTING -m addrtype --dst-type LOCAL -j FOREIGN_PRE",
      "-A POSTROUTING -j LIBVIRT_PRT",
      foreignRedirect,
    ]),
    ...table(
      "filter",
      ["FOREIGN", "LIBVIRT_FWI", "LIBVIRT_FWO", "LIBVIRT_FWX", "LIBVIRT_INP", "LIBVIRT_OUT"],
      [
        "-A INPUT -j LIBVIRT_INP",
        "-A FORWARD -j FOREIGN",
        "-A FORWARD -j LIBVIRT_FWX",
        "-A FORWARD -j LIBVIRT_FWI",
        "-A FORWARD -j LIBVIRT_FWO",
        "-A OUTPUT -j LIBVIRT_OUT",
        "-A FOREIGN -s 2001:db8:dead::/48 -j DROP",
        "-A FOREIGN -j RETURN",
        fwiAccept,
        "-A LIBVIRT_FWI -o virbr0 -j REJECT --reject-with icmp6-port-unreachable",
        `-A LIBVIRT_FWO -s ${net} -i virbr0 -j ACCEPT`,
        "-A LIBVIRT_FWO -i virbr0 -j REJECT --reject-with icmp6-port-unreachable",
        "-A LIBVIRT_FWX -i virbr0 -o virbr0 -j ACCEPT",
        "-A LIBVIRT_INP -i virbr0 -p udp -m udp --dport 547 -j ACCEPT",
        "-A LIBVIRT_INP -i virbr0 -p udp -m udp --dport 53 -j ACCEPT",
        "-A LIBVIRT_INP -i virbr0 -p tcp -m tcp --dport 53 -j ACCEPT",
        "-A LIBVIRT_OUT -o virbr0 -p udp -m udp --dport 546 -j ACCEPT",
        "-A LIBVIRT_OUT -o virbr0 -p udp -m udp --dport 53 -j ACCEPT",
        "-A LIBVIRT_OUT -o virbr0 -p tcp -m tcp --dport 53 -j ACCEPT",
      ],
    ),
    "",
  ].join("\n");
}

/**
 * Server agent, run with `deno eval` inside a namespace. Reads JSON requests
 * `{"id":1,"proto":"tcp","port":22,"label":"g1"}` from stdin, answers `{"id":1,"ok":true}` once a dual-stack
 * socket on [::] listens (Deno.listen for TCP, node:dgram for UDP since Deno.listenDatagram is unstable;
 * neither offers IPV6_V6ONLY, so one socket serves both families; IPv4 peers arrive as ::ffff:a.b.c.d and are
 * reported as a.b.c.d). Exits when stdin closes.
 */
const AGENT_SOURCE = `
import dgram from "node:dgram";
const plain = (a) => (a ?? "?").startsWith("::ffff:") && a.includes(".") ? a.slice(7) : (a ?? "?");
const keep = [];
const enc = new TextEncoder();
async function answer(conn, label) {
  // Reply, half-close, then drain until the peer closes: closing with unread input would send a RST that
  // can destroy the reply before the client has read it.
  const timer = setTimeout(() => { try { conn.close(); } catch { /* closed */ } }, 5000);
  try {
    await conn.write(enc.encode(label + " " + plain(conn.remoteAddr.hostname) + "\\n"));
    await conn.closeWrite();
    const buf = new Uint8Array(4096);
    while ((await conn.read(buf)) !== null) { /* drain */ }
  } catch { /* peer went away */ }
  clearTimeout(timer);
  try { conn.close(); } catch { /* closed */ }
}
async function listenTcp(host, port, label) {
  const listener = Deno.listen({ hostname: host, port, transport: "tcp" });
  (async () => { for await (const conn of listener) answer(conn, label); })();
  return listener;
}
async function echo(conn, label) {
  // A session: every chunk that arrives goes back as "<label> <chunk>", for as long as the peer keeps it open.
  const buf = new Uint8Array(4096);
  const dec = new TextDecoder();
  try {
    for (let n = await conn.read(buf); n !== null; n = await conn.read(buf)) {
      await conn.write(enc.encode(label + " " + dec.decode(buf.subarray(0, n))));
    }
  } catch { /* peer went away, or its connection was cut */ }
  try { conn.close(); } catch { /* closed */ }
}
async function listenEcho(host, port, label) {
  const listener = Deno.listen({ hostname: host, port, transport: "tcp" });
  (async () => { for await (const conn of listener) echo(conn, label); })();
  return listener;
}
function listenUdp(host, port, label) {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket({ type: "udp6" });
    s.on("message", (_m, r) => s.send(label + " " + plain(r.address) + "\\n", r.port, r.address, () => {}));
    s.once("error", reject);
    s.bind({ port, address: host, exclusive: true }, () => {
      s.off("error", reject);
      s.on("error", () => {});
      resolve(s);
    });
  });
}
async function handle(line) {
  let id = null;
  try {
    const req = JSON.parse(line);
    id = req.id;
    const listen = req.proto === "udp" ? listenUdp : req.proto === "echo" ? listenEcho : listenTcp;
    keep.push(await listen("::", req.port, req.label));
    console.log(JSON.stringify({ id, ok: true }));
  } catch (e) {
    console.log(JSON.stringify({ id, ok: false, error: String(e && e.message || e) }));
  }
}
let buf = "";
const dec = new TextDecoder();
for await (const chunk of Deno.stdin.readable) {
  buf += dec.decode(chunk, { stream: true });
  let i;
  while ((i = buf.indexOf("\\n")) >= 0) {
    const line = buf.slice(0, i);
    buf = buf.slice(i + 1);
    if (line.trim() !== "") handle(line);
  }
}
Deno.exit(0);
`;

/** One long-running server agent process inside a namespace. */
class Agent {
  readonly #child: Deno.ChildProcess;
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  readonly #pending = new Map<number, (r: { ok: boolean; error?: string }) => void>();
  readonly #readLoop: Promise<void>;
  readonly #stderr: Promise<string>;
  #nextId = 1;
  #exited = false;

  constructor(ns: string) {
    this.#child = new Deno.Command(
      bin("ip"),
      {
        args: ["netns", "exec", ns, Deno.execPath(), "eval", "--no-config", "--no-lock", AGENT_SOURCE],
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
      },
    ).spawn();
    this.#writer = this.#child.stdin.getWriter();
    this.#stderr = this.#child.stderr.text();
    this.#readLoop = this.#read();
  }

  async #read(): Promise<void> {
    let buf = "";
    const textDecoder = new TextDecoder();
    for await (const chunk of this.#child.stdout) {
      buf += textDecoder.decode(chunk, { stream: true });
      let i: number;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        try {
          const msg = JSON.parse(line) as { id: number; ok: boolean; error?: string };
          this.#pending.get(msg.id)?.(msg);
          this.#pending.delete(msg.id);
        } catch {
          // not a response line
        }
      }
    }
    this.#exited = true;
    for (const resolve of this.#pending.values()) resolve({ ok: false, error: "agent exited" });
    this.#pending.clear();
  }

  /** Asks the agent to listen on proto/port (IPv4 and IPv6); resolves once listening. */
  async serve(proto: "tcp" | "udp" | "echo", port: number, label: string, timeoutMs: number): Promise<void> {
    if (this.#exited) throw new Error(`server agent has exited: ${await this.#stderr}`);
    const id = this.#nextId++;
    const answer = new Promise<{ ok: boolean; error?: string }>((resolve) => this.#pending.set(id, resolve));
    await this.#writer.write(encoder.encode(JSON.stringify({ id, proto, port, label }) + "\n"));
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<{ ok: boolean; error?: string }>((resolve) => {
      timer = setTimeout(() => resolve({ ok: false, error: `no answer within ${timeoutMs} ms` }), timeoutMs);
    });
    const r = await Promise.race([answer, timeout]);
    clearTimeout(timer);
    this.#pending.delete(id);
    if (!r.ok) {
      const stderr = this.#exited ? `\n${await this.#stderr}` : "";
      throw new Error(`serve ${proto}/${port} failed: ${r.error ?? "?"}${stderr}`);
    }
  }

  /** Kills the agent and waits until it and its pipes are gone. */
  async stop(): Promise<void> {
    try {
      await this.#writer.close();
    } catch {
      // already closed
    }
    try {
      this.#child.kill("SIGKILL");
    } catch {
      // already exited
    }
    await this.#child.status;
    await this.#readLoop;
    await this.#stderr;
  }
}

/**
 * Client agent, run with `deno eval` inside a namespace, for flows that must outlive one command: `udp <ip>
 * <port> <interval>` sends from one socket every interval and prints each reply; `tcp <ip> <port>` holds one
 * connection, writes each stdin line to it and prints what comes back. Every event is one JSON line on stdout
 * (`{"ready":true}` first, then `{"at","line"}`, `{"error"}` or `{"eof":true}`). Exits when stdin closes.
 */
const CLIENT_SOURCE = `
import dgram from "node:dgram";
const [mode, host, portText, intervalText] = Deno.args;
const port = Number(portText);
const out = (o) => console.log(JSON.stringify(o));
const lines = Deno.stdin.readable.pipeThrough(new TextDecoderStream());
if (mode === "udp") {
  const s = dgram.createSocket({ type: host.includes(":") ? "udp6" : "udp4" });
  s.on("message", (m) => out({ at: Date.now(), line: String(m).trim() }));
  s.on("error", () => {});
  await new Promise((resolve) => s.bind(0, resolve));
  setInterval(() => s.send("ping\\n", port, host, () => {}), Number(intervalText));
  out({ ready: true });
  for await (const _ of lines) { /* nothing to say; ends with stdin */ }
  Deno.exit(0);
}
const conn = await Deno.connect({ hostname: host, port });
out({ ready: true });
(async () => {
  const buf = new Uint8Array(4096);
  const dec = new TextDecoder();
  try {
    for (let n = await conn.read(buf); n !== null; n = await conn.read(buf)) {
      out({ at: Date.now(), line: dec.decode(buf.subarray(0, n)).trim() });
    }
    out({ eof: true });
  } catch (e) {
    out({ error: String(e && e.message || e) });
  }
})();
const enc = new TextEncoder();
let rest = "";
for await (const chunk of lines) {
  rest += chunk;
  let i;
  while ((i = rest.indexOf("\\n")) >= 0) {
    const line = rest.slice(0, i + 1);
    rest = rest.slice(i + 1);
    try { await conn.write(enc.encode(line)); } catch (e) { out({ error: String(e && e.message || e) }); }
  }
}
Deno.exit(0);
`;

/** One client agent process (see CLIENT_SOURCE): its events as they come, and a way to write to it. */
class Client {
  readonly #child: Deno.ChildProcess;
  readonly #writer: WritableStreamDefaultWriter<Uint8Array>;
  readonly #readLoop: Promise<void>;
  readonly events: { at?: number; line?: string; error?: string; eof?: boolean; ready?: boolean }[] = [];
  #wake: (() => void) | undefined;

  constructor(ns: string, args: string[]) {
    this.#child = new Deno.Command(bin("ip"), {
      args: [
        "netns",
        "exec",
        ns,
        Deno.execPath(),
        "eval",
        "--no-config",
        "--no-lock",
        CLIENT_SOURCE,
        ...args,
      ],
      stdin: "piped",
      stdout: "piped",
      stderr: "null",
    }).spawn();
    this.#writer = this.#child.stdin.getWriter();
    this.#readLoop = this.#read();
  }

  async #read(): Promise<void> {
    let buf = "";
    for await (const chunk of this.#child.stdout.pipeThrough(new TextDecoderStream())) {
      buf += chunk;
      let i: number;
      while ((i = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        try {
          this.events.push(JSON.parse(line));
        } catch {
          // not an event line
        }
        this.#wake?.();
      }
    }
    this.events.push({ eof: true });
    this.#wake?.();
  }

  /** Waits until an event from index `from` on satisfies `test`, or `timeoutMs` passes; returns it or undefined. */
  async next(from: number, test: (e: Client["events"][number]) => boolean, timeoutMs: number) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const found = this.events.slice(from).find(test);
      if (found || Date.now() >= deadline) return found;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, deadline - Date.now());
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  async write(text: string): Promise<void> {
    await this.#writer.write(encoder.encode(text));
  }

  async stop(): Promise<void> {
    await this.#writer.close().catch(() => {});
    try {
      this.#child.kill("SIGKILL");
    } catch {
      // already exited
    }
    await this.#child.status;
    await this.#readLoop;
  }
}

/** Reads `stream` until the first newline (returns the line) or EOF (returns what was read). */
async function firstLine(stream: ReadableStream<Uint8Array>): Promise<string> {
  const reader = stream.getReader();
  const textDecoder = new TextDecoder();
  let buf = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return buf;
      buf += textDecoder.decode(value, { stream: true });
      const i = buf.indexOf("\n");
      if (i >= 0) return buf.slice(0, i);
    }
  } finally {
    await reader.cancel().catch(() => {});
  }
}

/** Builds the lab: namespaces, links, addresses, routes, sysctls and (optionally) base rules. */
export async function createLab(opts: LabOptions = {}): Promise<Lab> {
  const brNetfilter = opts.brNetfilter ?? false;
  const baseRules = opts.baseRules ?? true;
  const prefix = `lvh${randomId(5)}-`;
  const ns: LabNamespaces = {
    host: `${prefix}host`,
    g1: `${prefix}g1`,
    g2: `${prefix}g2`,
    client: `${prefix}client`,
  };
  const all = [ns.host, ns.g1, ns.g2, ns.client];
  const agents = new Map<string, Agent>();
  const clients = new Set<Client>();
  let closed = false;
  let checksumRule = false;

  const close = async (): Promise<void> => {
    if (closed) return;
    closed = true;
    await Promise.all([...agents.values(), ...clients].map((a) => a.stop()));
    agents.clear();
    clients.clear();
    for (const name of all) {
      await run([bin("ip"), "netns", "del", name], { timeoutMs: 5000 });
    }
  };

  const batch = (netns: string | null, lines: string[]) =>
    runOk(netns === null ? [bin("ip"), "-batch", "-"] : [bin("ip"), "-n", netns, "-batch", "-"], {
      stdin: lines.join("\n") + "\n",
    });

  try {
    // Namespaces and veth pairs, created directly inside their namespaces (nothing appears in the root one).
    await batch(null, [
      ...all.map((n) => `netns add ${n}`),
      `link add pub0 netns ${ns.host} type veth peer name eth0 netns ${ns.client}`,
      `link add vnet0 netns ${ns.host} type veth peer name eth0 netns ${ns.g1}`,
      `link add vnet1 netns ${ns.host} type veth peer name eth0 netns ${ns.g2}`,
    ]);

    // ICMP rate limits off, so that a REJECT answers every time (not only once per second and peer).
    const hostSysctls = [
      "net.ipv4.ip_forward=1",
      "net.ipv6.conf.all.forwarding=1",
      "net.ipv4.icmp_ratelimit=0",
      "net.ipv6.icmp.ratelimit=0",
    ];
    const brAvailable = await run(
      inNs(ns.host, [bin("test"), "-e", "/proc/sys/net/bridge/bridge-nf-call-iptables"]),
    );
    if (brAvailable.code === 0) {
      const v = brNetfilter ? "1" : "0";
      hostSysctls.push(`net.bridge.bridge-nf-call-iptables=${v}`, `net.bridge.bridge-nf-call-ip6tables=${v}`);
    } else if (brNetfilter) {
      throw new Error("brNetfilter requested but br_netfilter is not available (see brNetfilterAvailable())");
    }
    // No DAD anywhere (also for link-local addresses), so IPv6 works as soon as links are up.
    const noDad = ["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"];
    const sysctl = (n: string, kv: string[]) => runOk(inNs(n, [bin("sysctl"), "-q", "-w", ...kv]));
    await Promise.all([
      sysctl(ns.host, [
        ...hostSysctls,
        ...noDad,
        ...["pub0", "vnet0", "vnet1"].map((i) => `net.ipv6.conf.${i}.accept_dad=0`),
      ]),
      sysctl(ns.g1, [...noDad, "net.ipv6.conf.eth0.accept_dad=0"]),
      sysctl(ns.g2, [...noDad, "net.ipv6.conf.eth0.accept_dad=0"]),
      sysctl(ns.client, [...noDad, "net.ipv6.conf.eth0.accept_dad=0"]),
    ]);

    const guest = (v4: string, v6: string) => [
      "link set lo up",
      "link set eth0 up",
      `addr add ${v4}/24 dev eth0`,
      `addr add ${v6}/64 dev eth0 nodad`,
      `route add default via ${LAB_ADDR.bridge4} dev eth0`,
      `route add default via ${LAB_ADDR.bridge6} dev eth0`,
    ];
    await Promise.all([
      batch(ns.host, [
        "link set lo up",
        "link add virbr0 type bridge stp_state 0 forward_delay 0",
        "link set virbr0 up",
        "link set vnet0 master virbr0",
        "link set vnet1 master virbr0",
        "link set vnet0 up",
        "link set vnet1 up",
        "link set pub0 up",
        `addr add ${LAB_ADDR.hostPub4}/24 dev pub0`,
        `addr add ${LAB_ADDR.hostPub6}/64 dev pub0 nodad`,
        `addr add ${LAB_ADDR.bridge4}/24 dev virbr0`,
        `addr add ${LAB_ADDR.bridge6}/64 dev virbr0 nodad`,
        `route add default via ${LAB_ADDR.gw4} dev pub0`,
        `route add default via ${LAB_ADDR.gw6} dev pub0`,
      ]),
      batch(ns.g1, guest(LAB_ADDR.g1v4, LAB_ADDR.g1v6)),
      batch(ns.g2, guest(LAB_ADDR.g2v4, LAB_ADDR.g2v6)),
      batch(ns.client, [
        "link set lo up",
        "link set eth0 up",
        ...[LAB_ADDR.client4, LAB_ADDR.client4b, LAB_ADDR.gw4].map((a) => `addr add ${a}/24 dev eth0`),
        // Secondary IPv6 addresses are deprecated (preferred_lft 0): still usable as explicit source or
        // destination, but never picked as default source, so the client speaks from ::50 like from .50.
        `addr add ${LAB_ADDR.client6}/64 dev eth0 nodad`,
        ...[LAB_ADDR.client6b, LAB_ADDR.gw6].map((a) => `addr add ${a}/64 dev eth0 nodad preferred_lft 0`),
        `route add ${LAB_ADDR.net4} via ${LAB_ADDR.hostPub4} dev eth0`,
        `route add ${LAB_ADDR.net6} via ${LAB_ADDR.hostPub6} dev eth0`,
      ]),
    ]);

    if (baseRules && opts.libvirt === "nftables") {
      await runOk(inNs(ns.host, [bin("nft"), "-f", "-"]), { stdin: libvirtNftText() });
    } else if (baseRules) {
      const v6 = opts.ipv6Forward === undefined ? {} : { ipv6Forward: opts.ipv6Forward };
      const restore4 = (checksum: boolean) =>
        run(inNs(ns.host, [bin("iptables-restore")]), { stdin: baseRulesText(4, { checksum }) });
      // The CHECKSUM target (xt_CHECKSUM) may be refused by a kernel without it; libvirt itself only
      // warns in that case, so the rules are then loaded without that one rule (see Lab.checksumRule).
      const [r4] = await Promise.all([
        restore4(true),
        runOk(inNs(ns.host, [bin("ip6tables-restore")]), { stdin: baseRulesText(6, v6) }),
      ]);
      checksumRule = r4.code === 0;
      if (!checksumRule) {
        const again = await restore4(false);
        if (again.code !== 0) throw new Error(`iptables-restore failed: ${r4.stderr}\n${again.stderr}`);
      }
    }

    // Make sure both families really work end to end before handing the lab out.
    const probes = [
      [ns.client, LAB_ADDR.hostPub4],
      [ns.client, LAB_ADDR.hostPub6],
      [ns.host, LAB_ADDR.g1v4],
      [ns.host, LAB_ADDR.g1v6],
      [ns.host, LAB_ADDR.g2v4],
      [ns.host, LAB_ADDR.g2v6],
    ] as const;
    await Promise.all(probes.map(([n, ip]) => waitReachable(n, ip)));
  } catch (e) {
    await close();
    throw e;
  }

  const serveWith = async (netns: string, proto: "tcp" | "udp" | "echo", port: number, label: string) => {
    if (closed) throw new Error("lab is closed");
    if (!/^[A-Za-z0-9_.:@-]+$/.test(label)) {
      throw new Error(`serve: unsupported label ${JSON.stringify(label)}`);
    }
    let agent = agents.get(netns);
    if (agent === undefined) {
      agent = new Agent(netns);
      agents.set(netns, agent);
    }
    await agent.serve(proto, port, label, 10_000);
  };

  const lab: Lab = {
    ns,
    brNetfilter,
    get checksumRule() {
      return checksumRule;
    },
    async exec(netns, argv, execOpts = {}) {
      if (argv.length === 0) throw new Error("exec: empty argv");
      return await run(inNs(netns, argv), execOpts);
    },
    serve: (netns, proto, port, label) => serveWith(netns, proto, port, label),
    serveEcho: (netns, port, label) => serveWith(netns, "echo", port, label),
    async session(netns, ip, port) {
      if (closed) throw new Error("lab is closed");
      const client = new Client(netns, ["tcp", ip, String(port)]);
      clients.add(client);
      const ready = await client.next(
        0,
        (e) => e.ready === true || e.error !== undefined || e.eof === true,
        5000,
      );
      if (!ready?.ready) {
        await client.stop();
        throw new Error(`session to ${ip} port ${port} failed: ${ready?.error ?? "no connection"}`);
      }
      return {
        async say(text, timeoutMs = 1000) {
          const from = client.events.length;
          await client.write(`${text}\n`).catch(() => {});
          const e = await client.next(
            from,
            (e) => e.line !== undefined || e.error !== undefined || !!e.eof,
            timeoutMs,
          );
          return e?.line ?? null;
        },
        async close() {
          clients.delete(client);
          await client.stop();
        },
      };
    },
    async stream(netns, ip, port, streamOpts = {}) {
      if (closed) throw new Error("lab is closed");
      const client = new Client(netns, ["udp", ip, String(port), String(streamOpts.intervalMs ?? 50)]);
      clients.add(client);
      if (!(await client.next(0, (e) => e.ready === true, 5000))) {
        await client.stop();
        throw new Error(`stream to ${ip} port ${port} did not start`);
      }
      return {
        replies: () =>
          client.events.filter((e) => e.line !== undefined).map((e) => ({ at: e.at ?? 0, line: e.line! })),
        async close() {
          clients.delete(client);
          await client.stop();
        },
      };
    },
    async connect(netns, proto, ip, port, connectOpts = {}) {
      const timeoutMs = connectOpts.timeoutMs ?? 2000;
      // netcat-openbsd rather than socat: socat 1.7.4 reports a REJECTed (ICMP port unreachable) TCP
      // connect only after the first SYN retransmission (~1 s), and it half-closes on stdin EOF.
      const args = ["netns", "exec", netns, bin("nc"), "-n", `-w${Math.max(1, Math.ceil(timeoutMs / 1000))}`];
      if (connectOpts.source !== undefined) args.push("-s", connectOpts.source);
      // TCP: -d (ignore stdin, so no half-close and no data the server might not read). UDP: one datagram.
      args.push(...(proto === "udp" ? ["-u", "-W1"] : ["-d"]), ip, String(port));
      const child = new Deno.Command(bin("ip"), {
        args,
        stdin: proto === "udp" ? "piped" : "null",
        stdout: "piped",
        stderr: "null",
        signal: AbortSignal.timeout(timeoutMs),
      }).spawn();
      if (proto === "udp") {
        const writer = child.stdin.getWriter();
        try {
          await writer.write(encoder.encode("ping\n"));
          await writer.close();
        } catch {
          // nc already gave up
        }
      }
      const line = await firstLine(child.stdout);
      try {
        child.kill("SIGKILL");
      } catch {
        // already exited
      }
      await child.status;
      const trimmed = line.trim();
      return trimmed === "" ? null : trimmed;
    },
    async ruleset(family = 4) {
      const r = await runOk(inNs(ns.host, [bin(family === 4 ? "iptables-save" : "ip6tables-save")]));
      return r.stdout
        .split("\n")
        .filter((l) => !l.startsWith("#"))
        .map((l) => l.replace(/ \[\d+:\d+\]$/, ""))
        .join("\n");
    },
    async nftRuleset() {
      const r = await runOk(inNs(ns.host, [bin("nft"), "list", "ruleset"]));
      return r.stdout.replace(/counter packets \d+ bytes \d+/g, "counter");
    },
    close,
    [Symbol.asyncDispose]: close,
  };
  return lab;
}

/**
 * Waits until `ip` answers from namespace `ns` (max ~3 s): a TCP connection to the closed port 9 must be
 * refused, i.e. the SYN got there (ARP/ND, routes, forwarding) and the RST came back. No ping binary needed.
 */
async function waitReachable(ns: string, ip: string): Promise<void> {
  const deadline = Date.now() + 3000;
  let last: ExecResult | undefined;
  while (Date.now() < deadline) {
    last = await run(inNs(ns, [bin("nc"), "-n", "-v", "-z", "-w1", ip, "9"]), { timeoutMs: 2000 });
    if (/refused/.test(last.stderr)) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`lab: ${ip} unreachable from ${ns}: ${last?.stderr ?? ""}`);
}
