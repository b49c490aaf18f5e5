/**
 * A real libvirtd 11.3 (Debian bookworm-backports) with the nftables firewall backend, for end-to-end tests
 * (issue #5). Same harness as libvirt_env.ts (libvirtd in a network namespace of its own, under the subreaper,
 * with a hooks directory); this module only installs libvirt 11 and configures it:
 *
 * - the bookworm-backports apt source (same mirror as the machine's bookworm source) and an apt preferences pin
 *   that lets only packages built from src:libvirt come from backports (qemu, systemd, ... stay bookworm's);
 * - `/etc/libvirt/network.conf` with `firewall_backend = "nftables"` (Debian's default order is iptables first);
 * - a `tc` wrapper in TC_WRAPPER_DIR, put first on libvirtd's PATH by startLibvirt11(): libvirt 11's nftables
 *   backend adds a `tc filter ... action csum ...` (DHCP checksum fix) on network start, and our machines'
 *   kernel lacks act_csum, so network start would fail. The wrapper runs the real /usr/sbin/tc and, only for
 *   a command containing `action csum` that fails, logs it and exits 0. Real hosts have the module.
 *
 * installLibvirt() (libvirt_env.ts) switches back to 9.0; installLibvirt11() switches to 11.3. Both can run one
 * after the other on the same machine in either order. See test/e2e/FINDINGS-nft.md.
 */
import {
  HookRecorder,
  installLibvirtVersion,
  type InstallReport,
  type LibvirtEnv,
  type LibvirtPackageSpec,
  MINIMAL_PATH,
  prepareLibvirtHost,
  readTextOr,
  type RunResult,
  startLibvirt,
  type StartOptions,
} from "./libvirt_env.ts";

// ---------------------------------------------------------------------------------------------------------
// Constants

export const LIBVIRT11_VERSION_PREFIX = "11.3.";
export const BACKPORTS_SUITE = "bookworm-backports";
/** Packages for libvirt 11 (from backports: the src:libvirt ones), qemu and dnsmasq (bookworm), nft. */
export const LIBVIRT11_PACKAGES: readonly string[] = [
  "libvirt-daemon",
  "libvirt-daemon-common",
  "libvirt-daemon-log",
  "libvirt-daemon-driver-qemu",
  "libvirt-daemon-driver-network",
  "libvirt-common",
  "libvirt-clients",
  "libvirt0",
  "qemu-system-x86",
  "dnsmasq-base",
  "nftables",
  // not needed by libvirt 11 here, but kept so that switching back to 9.0 does not remove and re-install it
  "iptables",
];
export const BACKPORTS_SOURCES_PATH = "/etc/apt/sources.list.d/lvh-e2e-bookworm-backports.sources";
export const BACKPORTS_PIN_PATH = "/etc/apt/preferences.d/lvh-e2e-libvirt-backports";
export const BACKPORTS_PIN =
  `# Written by test/e2e/libvirt11_env.ts: only libvirt's packages may come from ${BACKPORTS_SUITE}.
# (100: never chosen over bookworm's by itself; installLibvirt11() asks for the version explicitly.)
Package: *
Pin: release n=${BACKPORTS_SUITE}
Pin-Priority: -1

Package: src:libvirt
Pin: release n=${BACKPORTS_SUITE}
Pin-Priority: 100
`;
export const NETWORK_CONF_PATH = "/etc/libvirt/network.conf";
export const NETWORK_CONF = `# Written by test/e2e/libvirt11_env.ts (libvirt 11, nftables firewall backend).
firewall_backend = "nftables"
`;
/** Directory put first on libvirtd's PATH by startLibvirt11(); holds the `tc` wrapper. */
export const TC_WRAPPER_DIR = "/usr/local/lib/lvh-e2e/bin";
/** Where the wrapper logs each call: `TIME passed: tc ARGS`, `TIME skipped (exit N): tc ARGS: ERROR`, `TIME ran: ...`. */
export const TC_WRAPPER_LOG = "/var/log/libvirt/lvh-e2e-tc-wrapper.log";
export const TC_WRAPPER = `#!/bin/sh
# Written by test/e2e/libvirt11_env.ts. libvirt 11's nftables backend runs
# "tc filter add dev BRIDGE ... action csum ip and udp" (DHCP checksums); the kernel of our test machines has no
# act_csum, so that command fails and the network does not start. This wrapper runs the real tc, and only when
# a command with "action csum" fails it logs the command and reports success. Everything else is passed through.
log='${TC_WRAPPER_LOG}'
case " $* " in
  *" action csum "*)
    out=$(/usr/sbin/tc "$@" 2>&1)
    rc=$?
    if [ "$rc" = 0 ]; then
      printf '%s ran: tc %s\\n' "$(date +%s.%N)" "$*" >> "$log" 2>/dev/null
      [ -n "$out" ] && printf '%s\\n' "$out"
      exit 0
    fi
    printf '%s skipped (exit %s): tc %s: %s\\n' "$(date +%s.%N)" "$rc" "$*" "$out" >> "$log" 2>/dev/null
    exit 0
    ;;
esac
printf '%s passed: tc %s\\n' "$(date +%s.%N)" "$*" >> "$log" 2>/dev/null
exec /usr/sbin/tc "$@"
`;

// ---------------------------------------------------------------------------------------------------------
// Installation

/** Writes `text` to `path` unless it already has it; true when written. */
async function writeIfChanged(path: string, text: string, mode = 0o644): Promise<boolean> {
  if ((await readTextOr(path, "")) === text) return false;
  await Deno.writeTextFile(path, text, { mode });
  await Deno.chmod(path, mode);
  return true;
}

/**
 * The Debian mirror the machine's bookworm source uses (deb822 `.sources` or one-line `.list`), e.g.
 * `http://deb.debian.org/debian`. Falls back to deb.debian.org.
 */
export async function debianMirror(): Promise<string> {
  const files = ["/etc/apt/sources.list"];
  try {
    for await (const e of Deno.readDir("/etc/apt/sources.list.d")) {
      if (e.name.endsWith(".sources") || e.name.endsWith(".list")) {
        files.push(`/etc/apt/sources.list.d/${e.name}`);
      }
    }
  } catch {
    // no sources.list.d
  }
  for (const f of files.sort()) {
    if (f === BACKPORTS_SOURCES_PATH) continue;
    const text = await readTextOr(f, "");
    // deb822: stanzas separated by blank lines
    for (const stanza of text.split(/\n\s*\n/)) {
      const field = (k: string) =>
        stanza.split("\n").find((l) => l.toLowerCase().startsWith(`${k}:`))?.slice(k.length + 1).trim() ?? "";
      const suites = field("suites").split(/\s+/);
      const types = field("types").split(/\s+/);
      const enabled = field("enabled").toLowerCase() !== "no";
      const uri = field("uris").split(/\s+/)[0];
      if (enabled && uri && types.includes("deb") && suites.includes("bookworm")) {
        return uri.replace(/\/$/, "");
      }
    }
    for (const line of text.split("\n")) {
      const m = /^\s*deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+bookworm\s/.exec(line);
      if (m?.[1]) return m[1].replace(/\/$/, "");
    }
  }
  return "http://deb.debian.org/debian";
}

export function backportsSources(mirror: string): string {
  return `# Written by test/e2e/libvirt11_env.ts (libvirt 11 from ${BACKPORTS_SUITE} for end-to-end tests).
Types: deb
URIs: ${mirror}
Suites: ${BACKPORTS_SUITE}
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
`;
}

export interface Install11Report extends InstallReport {
  mirror: string;
  sourcesWritten: boolean;
  pinWritten: boolean;
  networkConfWritten: boolean;
  tcWrapperWritten: boolean;
}

/**
 * Installs libvirt 11.3 from bookworm-backports (switching from whatever libvirt is installed, e.g. 9.0 from
 * installLibvirt(); skipped when 11.3 is installed already), with the apt source and pin, network.conf
 * (nftables backend), the tc wrapper, and what installLibvirt() also prepares (directories, user, qemu.conf).
 * Throws unless libvirt 11.3 is installed afterwards.
 */
export async function installLibvirt11(
  opts: { log?: (msg: string) => void; versionPrefix?: string } = {},
): Promise<Install11Report> {
  const t0 = performance.now();
  const mirror = await debianMirror();
  const sourcesWritten = await writeIfChanged(BACKPORTS_SOURCES_PATH, backportsSources(mirror));
  const pinWritten = await writeIfChanged(BACKPORTS_PIN_PATH, BACKPORTS_PIN);
  const spec: LibvirtPackageSpec = {
    packages: LIBVIRT11_PACKAGES,
    versionPrefix: opts.versionPrefix ?? LIBVIRT11_VERSION_PREFIX,
  };
  if (opts.log) spec.log = opts.log;
  const apt = await installLibvirtVersion(spec);
  const host = await prepareLibvirtHost();
  const networkConfWritten = await writeIfChanged(NETWORK_CONF_PATH, NETWORK_CONF);
  await Deno.mkdir(TC_WRAPPER_DIR, { recursive: true });
  const tcWrapperWritten = await writeIfChanged(`${TC_WRAPPER_DIR}/tc`, TC_WRAPPER, 0o755);
  return {
    ...apt,
    ...host,
    mirror,
    sourcesWritten,
    pinWritten,
    networkConfWritten,
    tcWrapperWritten,
    ms: Math.round(performance.now() - t0),
  };
}

// ---------------------------------------------------------------------------------------------------------
// Starting it

/** The PATH startLibvirt11() gives libvirtd: the tc wrapper first, then libvirt's minimal PATH. */
export const LIBVIRT11_DAEMON_PATH = `${TC_WRAPPER_DIR}:${MINIMAL_PATH}`;

/**
 * startLibvirt() (libvirt_env.ts) with the tc wrapper first on libvirtd's PATH. Checks that the daemon is
 * libvirt 11 and that network.conf selects nftables. Everything else (namespace, subreaper, hooks dir,
 * stop()) is libvirt_env.ts's.
 */
export async function startLibvirt11(opts: StartOptions = {}): Promise<LibvirtEnv> {
  const conf = await readTextOr(NETWORK_CONF_PATH, "");
  if (!/^\s*firewall_backend\s*=\s*"nftables"/m.test(conf)) {
    throw new Error(`${NETWORK_CONF_PATH} does not select nftables: run installLibvirt11() first`);
  }
  const env = await startLibvirt({ ...opts, daemonEnv: { PATH: LIBVIRT11_DAEMON_PATH, ...opts.daemonEnv } });
  try {
    const v = await env.virsh(["version", "--daemon"], { timeoutMs: 15_000 });
    if (!/Running against daemon: 11\./.test(v.stdout)) throw new Error(`not libvirt 11:\n${v.stdout}`);
  } catch (e) {
    await env.stop();
    throw e;
  }
  return env;
}

/** A HookRecorder (libvirt_env.ts) that saves `nft list ruleset` (in HookCall.iptablesFile) at each call. */
export function createNftRecorder(dir?: string): Promise<HookRecorder> {
  return HookRecorder.create(dir, { snapshot: "nft list ruleset" });
}

// ---------------------------------------------------------------------------------------------------------
// nftables inspection (inside the libvirt namespace)

/** `nft list ruleset` inside the libvirt namespace. */
export async function nftRuleset(env: LibvirtEnv): Promise<string> {
  return (await env.exec(["nft", "list", "ruleset"], { timeoutMs: 30_000 })).stdout;
}

/** Runs `nft ARGS` inside the libvirt namespace. */
export function nft(env: LibvirtEnv, args: string[], opts: { check?: boolean } = {}): Promise<RunResult> {
  return env.exec(["nft", ...args], { timeoutMs: 30_000, check: opts.check ?? true });
}

/** Applies an nft script (`nft -f -`, one transaction) inside the libvirt namespace. */
export function nftScript(env: LibvirtEnv, script: string): Promise<RunResult> {
  return env.exec(["nft", "-f", "-"], { stdin: script, timeoutMs: 30_000 });
}

export interface NftRule {
  handle: number;
  /** The rule as `nft -a list chain` prints it, without `# handle N` and without counter values. */
  text: string;
}

/** The rules of one chain, in order (empty when the table or chain does not exist). */
export async function nftChainRules(
  env: LibvirtEnv,
  family: string,
  table: string,
  chain: string,
): Promise<NftRule[]> {
  const r = await nft(env, ["-a", "list", "chain", family, table, chain], { check: false });
  if (!r.success) return [];
  const rules: NftRule[] = [];
  for (const raw of r.stdout.split("\n")) {
    const line = raw.trim();
    const m = /^(.*\S)\s+# handle (\d+)$/.exec(line);
    if (!m?.[1] || line.startsWith("chain ") || line.startsWith("type ")) continue;
    rules.push({
      handle: Number(m[2]),
      text: m[1].replace(/counter packets \d+ bytes \d+/, "counter"),
    });
  }
  return rules;
}

/** Comment libvirt-hook-qemu puts on its rules in this harness's experiments. */
export const HOOK_COMMENT = "libvirt-hook-qemu:1";

/**
 * The one rule that makes DNATed forwards to a libvirt network work under the nftables backend: inserted at the
 * top of libvirt's `guest_input` chain (ahead of its reject), `ct status dnat accept` for the bridge.
 */
export function guestInputAcceptRule(bridge: string, comment = HOOK_COMMENT): string[] {
  return ["oifname", bridge, "ct", "status", "dnat", "counter", "accept", "comment", `"${comment}"`];
}

/** `nft insert rule ip libvirt_network guest_input <guestInputAcceptRule>` in the libvirt namespace. */
export function insertGuestInputAccept(
  env: LibvirtEnv,
  bridge: string,
  comment = HOOK_COMMENT,
): Promise<RunResult> {
  return nft(env, [
    "insert",
    "rule",
    "ip",
    "libvirt_network",
    "guest_input",
    ...guestInputAcceptRule(bridge, comment),
  ]);
}

/**
 * Where our rule (by comment) stands in `ip libvirt_network guest_input` relative to libvirt's first reject:
 * "missing", "before-reject" (works) or "after-reject" (useless).
 */
export async function guestInputPosition(
  env: LibvirtEnv,
  comment = HOOK_COMMENT,
): Promise<{ position: "missing" | "before-reject" | "after-reject"; rules: NftRule[] }> {
  const rules = await nftChainRules(env, "ip", "libvirt_network", "guest_input");
  const ours = rules.findIndex((r) => r.text.includes(`comment "${comment}"`));
  const reject = rules.findIndex((r) => /\breject\b/.test(r.text) && !r.text.includes("comment"));
  if (ours < 0) return { position: "missing", rules };
  return { position: reject < 0 || ours < reject ? "before-reject" : "after-reject", rules };
}

/** Lines of the tc wrapper's log (TC_WRAPPER_LOG). */
export async function tcWrapperLog(): Promise<string[]> {
  return (await readTextOr(TC_WRAPPER_LOG, "")).split("\n").filter(Boolean);
}
