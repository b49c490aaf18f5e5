/**
 * A real libvirtd 9.0 (Debian 12 packages) for end-to-end tests, run inside a network namespace of its own.
 *
 * Everything libvirt creates (virbr*, vnet*, its iptables rules, dnsmasq) lives in that namespace; the root
 * namespace's firewall is never touched. The daemons run under a small subreaper (a perl-base script, see
 * LAUNCHER_PL) because PID 1 on our machines reaps orphans only every ~2 s and libvirt waits for qemu to be gone.
 *
 * Only processes this module started are ever killed, by PID: every process inside a namespace created here
 * (the namespace names are unique per run), and nothing else.
 *
 * See test/e2e/FINDINGS.md for what was measured with this environment.
 */

// ---------------------------------------------------------------------------------------------------------
// Constants

export const QEMU_URI = "qemu:///system";
/** The PATH libvirtd (and so every hook) gets: exactly libvirt's minimal environment. */
export const MINIMAL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
export const LIBVIRT_PACKAGES: readonly string[] = [
  "libvirt-daemon",
  "libvirt-daemon-driver-qemu",
  "libvirt-clients",
  "qemu-system-x86",
  "dnsmasq-base",
  "iptables",
];
export const QEMU_CONF_PATH = "/etc/libvirt/qemu.conf";
export const QEMU_CONF =
  `# Written by test/e2e/libvirt_env.ts (end-to-end tests: libvirtd runs as root in a network namespace).
user = "root"
group = "root"
dynamic_ownership = 0
security_driver = "none"
cgroup_controllers = [ ]
`;
export const HOOKS_DIR = "/etc/libvirt/hooks";
const STATE_ROOT = "/run/lvh-e2e";
const LIBVIRTD_PIDFILE = "/run/libvirtd.pid";
const VIRTLOGD_PIDFILE = "/run/virtlogd.pid";
const DAEMON_SOCKETS = [
  "/run/libvirt/libvirt-sock",
  "/run/libvirt/libvirt-sock-ro",
  "/run/libvirt/libvirt-admin-sock",
  "/run/libvirt/virtlogd-sock",
  "/run/libvirt/virtlogd-admin-sock",
];

/** The environment libvirtd is started with (`env -i` + these). */
const DAEMON_ENV = ["LC_ALL=C", `PATH=${MINIMAL_PATH}`];

// ---------------------------------------------------------------------------------------------------------
// Running commands

export interface RunOptions {
  /** Kill the command (SIGKILL) after this many ms. Default 60 s. */
  timeoutMs?: number;
  /** Written to the command's stdin, which is then closed. Without it stdin is /dev/null. */
  stdin?: string;
  env?: Record<string, string>;
  clearEnv?: boolean;
  /** Throw when the command fails (non-zero exit, signal or timeout). Default true. */
  check?: boolean;
}

export interface RunResult {
  argv: string[];
  code: number;
  signal: Deno.Signal | null;
  success: boolean;
  timedOut: boolean;
  stdout: string;
  stderr: string;
  ms: number;
}

export class CommandError extends Error {
  constructor(readonly result: RunResult) {
    super(
      `command failed (${
        result.timedOut ? "timed out" : result.signal ? `signal ${result.signal}` : `exit ${result.code}`
      }): ${result.argv.join(" ")}\n${result.stderr.trim()}${
        result.stdout.trim() ? `\nstdout: ${result.stdout.trim()}` : ""
      }`,
    );
    this.name = "CommandError";
  }
}

/** Runs argv (no shell), collects its output, kills it after a timeout. */
export async function run(argv: string[], opts: RunOptions = {}): Promise<RunResult> {
  const [cmd, ...args] = argv;
  if (cmd === undefined) throw new Error("run: empty argv");
  const timeoutMs = opts.timeoutMs ?? 60_000;
  const t0 = performance.now();
  const commandOptions: Deno.CommandOptions = {
    args,
    stdin: opts.stdin === undefined ? "null" : "piped",
    stdout: "piped",
    stderr: "piped",
  };
  if (opts.env) commandOptions.env = opts.env;
  if (opts.clearEnv) commandOptions.clearEnv = true;
  const child = new Deno.Command(cmd, commandOptions).spawn();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    try {
      child.kill("SIGKILL");
    } catch {
      // already gone
    }
  }, timeoutMs);
  try {
    if (opts.stdin !== undefined) {
      const writer = child.stdin.getWriter();
      try {
        await writer.write(new TextEncoder().encode(opts.stdin));
        await writer.close();
      } catch {
        // the command exited without reading all of its input; its status tells what happened
      }
    }
    const out = await child.output();
    const dec = new TextDecoder();
    const result: RunResult = {
      argv,
      code: out.code,
      signal: out.signal,
      success: out.success && !timedOut,
      timedOut,
      stdout: dec.decode(out.stdout),
      stderr: dec.decode(out.stderr),
      ms: Math.round(performance.now() - t0),
    };
    if (!result.success && (opts.check ?? true)) throw new CommandError(result);
    return result;
  } finally {
    clearTimeout(timer);
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `fn` until it returns a value other than undefined/false, or throws after timeoutMs. */
export async function waitFor<T>(
  what: string,
  fn: () => Promise<T | undefined | false> | T | undefined | false,
  timeoutMs: number,
  intervalMs = 50,
): Promise<T> {
  const deadline = performance.now() + timeoutMs;
  let lastError: unknown;
  while (true) {
    try {
      const v = await fn();
      if (v !== undefined && v !== false) return v;
    } catch (e) {
      lastError = e;
    }
    if (performance.now() > deadline) {
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}${lastError ? `: ${String(lastError)}` : ""}`,
      );
    }
    await sleep(intervalMs);
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.lstat(path);
    return true;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return false;
    throw e;
  }
}

/** The text of `path`, or `fallback` when it does not exist. */
export async function readTextOr(path: string, fallback: string): Promise<string> {
  try {
    return await Deno.readTextFile(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return fallback;
    throw e;
  }
}

async function removeIfExists(path: string, recursive = false): Promise<void> {
  try {
    await Deno.remove(path, { recursive });
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
}

async function copyTree(src: string, dst: string): Promise<void> {
  const st = await Deno.stat(src);
  if (st.isDirectory) {
    await Deno.mkdir(dst, { recursive: true });
    await Deno.chmod(dst, (st.mode ?? 0o755) & 0o7777);
    for await (const e of Deno.readDir(src)) await copyTree(`${src}/${e.name}`, `${dst}/${e.name}`);
  } else {
    await Deno.copyFile(src, dst);
    await Deno.chmod(dst, (st.mode ?? 0o644) & 0o7777);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Processes and namespaces

function pidAlive(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    // a zombie is as good as gone for us
    const state = stat.slice(stat.lastIndexOf(")") + 2, stat.lastIndexOf(")") + 3);
    return state !== "Z" && state !== "X";
  } catch {
    return false;
  }
}

function procCmdline(pid: number): string {
  try {
    return Deno.readTextFileSync(`/proc/${pid}/cmdline`).split("\0").join(" ").trim();
  } catch {
    return "";
  }
}

/** The inode of a named network namespace, or undefined when it does not exist. */
async function netnsInode(ns: string): Promise<number | undefined> {
  try {
    const st = await Deno.stat(`/run/netns/${ns}`);
    return st.ino ?? undefined;
  } catch {
    return undefined;
  }
}

/** PIDs of all processes living in network namespace `ns` (all of them were started by this module). */
export async function pidsInNetns(ns: string): Promise<number[]> {
  const ino = await netnsInode(ns);
  if (ino === undefined) return [];
  const want = `net:[${ino}]`;
  const pids: number[] = [];
  for await (const e of Deno.readDir("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      if ((await Deno.readLink(`/proc/${e.name}/ns/net`)) === want) pids.push(Number(e.name));
    } catch {
      // gone, or a kernel thread
    }
  }
  return pids;
}

function signal(pid: number, sig: Deno.Signal): void {
  try {
    Deno.kill(pid, sig);
  } catch {
    // already gone
  }
}

/** SIGTERM, wait up to graceMs, then SIGKILL; resolves when the processes are gone (or reaped zombies). */
async function terminate(pids: number[], graceMs = 10_000): Promise<void> {
  const live = pids.filter(pidAlive);
  if (live.length === 0) return;
  for (const pid of live) signal(pid, "SIGTERM");
  const deadline = performance.now() + graceMs;
  while (live.some(pidAlive) && performance.now() < deadline) await sleep(25);
  const stubborn = live.filter(pidAlive);
  for (const pid of stubborn) signal(pid, "SIGKILL");
  const deadline2 = performance.now() + 5_000;
  while (stubborn.some(pidAlive) && performance.now() < deadline2) await sleep(25);
}

/**
 * Kills every process in namespace `ns` (by PID) and deletes the namespace. `lastPid` (the subreaper) is killed
 * after the others, so that it reaps them at once.
 */
async function destroyNetns(ns: string, lastPid = 0): Promise<void> {
  if ((await netnsInode(ns)) === undefined) return;
  for (let round = 0; round < 3; round++) {
    const pids = (await pidsInNetns(ns)).filter((p) => p !== lastPid);
    if (pids.length === 0) break;
    await terminate(pids, round === 0 ? 5_000 : 1_000);
  }
  if (lastPid && (await pidsInNetns(ns)).includes(lastPid)) await terminate([lastPid], 2_000);
  await run(["ip", "netns", "del", ns], { timeoutMs: 10_000, check: false });
}

export async function netnsWorks(): Promise<{ ok: true } | { ok: false; reason: string }> {
  const ns = `lvhprobe-${Deno.pid}`;
  try {
    const add = await run(["ip", "netns", "add", ns], { timeoutMs: 10_000, check: false });
    if (!add.success) return { ok: false, reason: `ip netns add failed: ${add.stderr.trim()}` };
    const ex = await run(["ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up"], {
      timeoutMs: 10_000,
      check: false,
    });
    if (!ex.success) return { ok: false, reason: `ip netns exec failed: ${ex.stderr.trim()}` };
    return { ok: true };
  } catch (e) {
    return { ok: false, reason: String(e) };
  } finally {
    await run(["ip", "netns", "del", ns], { timeoutMs: 10_000, check: false }).catch(() => undefined);
  }
}

export function isRoot(): boolean {
  return Deno.uid() === 0;
}

// ---------------------------------------------------------------------------------------------------------
// Installation

export interface InstallReport {
  /** Packages that were missing and installed with apt (empty: apt was skipped). */
  installed: string[];
  userCreated: boolean;
  qemuConfWritten: boolean;
  ms: number;
  /** The libvirt version (of package libvirt-daemon) installed before, when apt had to change it. */
  switchedFrom?: string;
  /** The libvirt version (of package libvirt-daemon) installed now. */
  libvirtVersion: string;
  /** Time spent in apt-get (update + install), 0 when apt was skipped. */
  aptMs: number;
}

/** The libvirt of Debian 12 (bookworm) that installLibvirt() installs and verifies. */
export const LIBVIRT9_VERSION_PREFIX = "9.0.0-";

/** What libvirt installLibvirtVersion() must leave installed. */
export interface LibvirtPackageSpec {
  /** Packages that must be installed (the libvirt ones among them in `versionPrefix`). */
  packages: readonly string[];
  /** Every installed package built from source package `libvirt` must have a version starting with this. */
  versionPrefix: string;
  log?: (msg: string) => void;
}

async function missingPackages(pkgs: readonly string[]): Promise<string[]> {
  const r = await run(["dpkg-query", "-W", "-f=${Package} ${db:Status-Abbrev}\n", ...pkgs], {
    check: false,
    timeoutMs: 30_000,
  });
  const ok = new Set<string>();
  for (const line of r.stdout.split("\n")) {
    const [name, status] = line.split(" ");
    if (name && status === "ii") ok.add(name.replace(/:.*$/, ""));
  }
  return pkgs.filter((p) => !ok.has(p));
}

/** Installed packages built from source package `libvirt`: name → version. */
export async function installedLibvirtPackages(): Promise<Map<string, string>> {
  const r = await run(
    ["dpkg-query", "-W", "-f=${db:Status-Abbrev}\t${Package}\t${Version}\t${source:Package}\n"],
    { check: false, timeoutMs: 30_000 },
  );
  const out = new Map<string, string>();
  for (const line of r.stdout.split("\n")) {
    const [status, name, version, source] = line.split("\t");
    if (status?.trim() === "ii" && name && version && source === "libvirt") out.set(name, version);
  }
  return out;
}

/** Versions apt knows for a package (`apt-cache madison`), newest first. */
async function aptVersions(pkg: string): Promise<string[]> {
  const r = await run(["apt-cache", "madison", pkg], { check: false, timeoutMs: 30_000 });
  return r.stdout.split("\n").map((l) => l.split("|")[1]?.trim() ?? "").filter(Boolean);
}

/**
 * Makes apt's state match `spec`: the packages installed, every src:libvirt package in the wanted version
 * (`apt-get install PKG=VERSION --allow-downgrades`; libvirt packages that do not exist in that version are
 * removed by apt). No service may start meanwhile (policy-rc.d), and changed config files are kept
 * (dpkg --force-confold). Throws when the result does not match. Returns what it did.
 */
export async function installLibvirtVersion(
  spec: LibvirtPackageSpec,
): Promise<{ installed: string[]; switchedFrom?: string; libvirtVersion: string; aptMs: number }> {
  const log = spec.log ?? (() => {});
  const before = await installedLibvirtPackages();
  const missing = await missingPackages(spec.packages);
  const wrong = [...before].filter(([, v]) => !v.startsWith(spec.versionPrefix)).map(([p]) => p);
  const previous = before.get("libvirt-daemon");
  let aptMs = 0;
  if (missing.length > 0 || wrong.length > 0) {
    log(
      `apt: missing ${missing.join(" ") || "-"}; libvirt not ${spec.versionPrefix}*: ${
        wrong.join(" ") || "-"
      }`,
    );
    // No service may start during the install (there is no init here to start one into anyway, but an init script
    // starting libvirtd in the root namespace would touch the host's firewall).
    const policy = "/usr/sbin/policy-rc.d";
    const ownPolicy = !(await exists(policy));
    if (ownPolicy) await Deno.writeTextFile(policy, "#!/bin/sh\nexit 101\n", { mode: 0o755 });
    const t0 = performance.now();
    try {
      const env = { DEBIAN_FRONTEND: "noninteractive" };
      await run(["apt-get", "update"], { env, timeoutMs: 300_000 });
      const targetVersion = (await aptVersions("libvirt-daemon")).find((v) =>
        v.startsWith(spec.versionPrefix)
      );
      if (targetVersion === undefined) {
        throw new Error(
          `apt knows no libvirt-daemon ${spec.versionPrefix}* (apt-cache madison libvirt-daemon)`,
        );
      }
      const libvirtPkgs = new Set([...before.keys()]);
      for (const p of spec.packages) {
        if (before.has(p) || (await aptVersions(p)).includes(targetVersion)) libvirtPkgs.add(p);
      }
      const args: string[] = [];
      for (const p of new Set([...spec.packages, ...libvirtPkgs])) {
        const versions = libvirtPkgs.has(p) ? await aptVersions(p) : [];
        // src:libvirt packages that do not exist in the target version are left to apt (it removes them)
        if (!libvirtPkgs.has(p)) args.push(p);
        else if (versions.includes(targetVersion)) args.push(`${p}=${targetVersion}`);
      }
      await run([
        "apt-get",
        "install",
        "-y",
        "--no-install-recommends",
        "--allow-downgrades",
        "-o",
        "Dpkg::Options::=--force-confdef",
        "-o",
        "Dpkg::Options::=--force-confold",
        ...args,
      ], { env, timeoutMs: 900_000 });
      // Switching versions moves files between packages (libvirt 11's libvirt-common took over files of libvirt
      // 9's libvirt0, e.g. /usr/share/libvirt/cpu_map/): removing the old owner after the new one was unpacked
      // deletes them, and dpkg no longer lists them (`dpkg --verify` does not see it). So after a switch,
      // re-install every libvirt package (from apt's cache).
      if (wrong.length > 0) {
        const now = [...(await installedLibvirtPackages())].map(([p, v]) => `${p}=${v}`);
        log(`apt: re-installing ${now.join(" ")} (files lost in the switch)`);
        await run([
          "apt-get",
          "install",
          "-y",
          "--reinstall",
          "--no-install-recommends",
          "-o",
          "Dpkg::Options::=--force-confdef",
          "-o",
          "Dpkg::Options::=--force-confold",
          ...now,
        ], {
          env,
          timeoutMs: 900_000,
        });
      }
    } finally {
      aptMs = Math.round(performance.now() - t0);
      if (ownPolicy) await removeIfExists(policy);
    }
  }
  const after = await installedLibvirtPackages();
  const stillWrong = [...after].filter(([, v]) => !v.startsWith(spec.versionPrefix));
  const stillMissing = await missingPackages(spec.packages);
  if (stillWrong.length > 0 || stillMissing.length > 0) {
    throw new Error(
      `libvirt ${spec.versionPrefix}* not installed as asked: missing ${stillMissing.join(" ") || "-"}, ` +
        `other versions: ${stillWrong.map(([p, v]) => `${p}=${v}`).join(" ") || "-"}`,
    );
  }
  const libvirtVersion = after.get("libvirt-daemon") ?? "";
  const res: { installed: string[]; switchedFrom?: string; libvirtVersion: string; aptMs: number } = {
    installed: missing,
    libvirtVersion,
    aptMs,
  };
  if (previous !== undefined && previous !== libvirtVersion) res.switchedFrom = previous;
  return res;
}

/** Creates libvirt's directories and the `libvirt-qemu` user, writes /etc/libvirt/qemu.conf when it differs. */
export async function prepareLibvirtHost(): Promise<{ userCreated: boolean; qemuConfWritten: boolean }> {
  // /etc/libvirt/qemu: a libvirt switch removes it when empty; the daemon would re-create it during a test
  for (
    const dir of ["/var/log/libvirt", "/var/lib/libvirt", "/run/libvirt", HOOKS_DIR, "/etc/libvirt/qemu"]
  ) {
    await Deno.mkdir(dir, { recursive: true });
  }
  let userCreated = false;
  if (!(await run(["getent", "passwd", "libvirt-qemu"], { check: false })).success) {
    await run([
      "useradd",
      "--system",
      "--no-create-home",
      "--home-dir",
      "/var/lib/libvirt",
      "--shell",
      "/usr/sbin/nologin",
      "libvirt-qemu",
    ]);
    userCreated = true;
  }
  let qemuConfWritten = false;
  if ((await readTextOr(QEMU_CONF_PATH, "")) !== QEMU_CONF) {
    await Deno.writeTextFile(QEMU_CONF_PATH, QEMU_CONF);
    qemuConfWritten = true;
  }
  return { userCreated, qemuConfWritten };
}

/**
 * Installs libvirt 9.0 and qemu from Debian 12 (skipped when already installed), creates libvirt's directories
 * and the `libvirt-qemu` system user, and writes /etc/libvirt/qemu.conf (only when it differs).
 *
 * When another libvirt is installed (e.g. 11.3 from bookworm-backports by libvirt11_env.ts's installLibvirt11()),
 * it is switched back to 9.0.0 (`apt-get install PKG=9.0.0-... --allow-downgrades`; libvirt 11's extra packages
 * are removed). Throws unless libvirt 9.0.0 is installed afterwards.
 */
export async function installLibvirt(opts: { log?: (msg: string) => void } = {}): Promise<InstallReport> {
  const t0 = performance.now();
  const spec: LibvirtPackageSpec = { packages: LIBVIRT_PACKAGES, versionPrefix: LIBVIRT9_VERSION_PREFIX };
  if (opts.log) spec.log = opts.log;
  const apt = await installLibvirtVersion(spec);
  const host = await prepareLibvirtHost();
  return { ...apt, ...host, ms: Math.round(performance.now() - t0) };
}

// ---------------------------------------------------------------------------------------------------------
// The subreaper / launcher

/**
 * A subreaper that also launches commands, so that the daemons (and the qemu and dnsmasq processes they fork)
 * are its descendants and are reaped at once. Only perl-base modules (perl-base is Essential in Debian).
 *
 * argv: STATE_DIR SYS_prctl. It creates the FIFO STATE_DIR/ctl, daemonizes (the process that `ip netns exec`
 * ran exits at once), becomes a child subreaper and writes STATE_DIR/launcher.pid. Each line written to the
 * FIFO is `ID\0ARGV0\0ARGV1...\n`: it runs that argv (stdin /dev/null, output to cmd-ID.out), writes its pid to
 * cmd-ID.pid and, when it exits, `exit N` or `signal N` to cmd-ID.rc. The line `ID\0__exit__\n` ends it.
 */
export const LAUNCHER_PL = String.raw`use strict; use warnings;
use POSIX qw(setsid WNOHANG _exit mkfifo);
my ($dir, $sysno) = @ARGV;
mkfifo("$dir/ctl", 0600) or die "mkfifo $dir/ctl: $!";
my $pid = fork() // die "fork: $!";
exit 0 if $pid;
setsid();
open(STDIN, '<', '/dev/null') or die;
open(STDOUT, '>>', "$dir/launcher.log") or die;
open(STDERR, '>&', \*STDOUT) or die;
$| = 1;
syscall($sysno, 36, 1, 0, 0, 0) == 0 or die "prctl(PR_SET_CHILD_SUBREAPER): $!";
chdir('/');
$SIG{CHLD} = sub {};
$SIG{PIPE} = 'IGNORE';
open(my $ctl, '+<', "$dir/ctl") or die "open ctl: $!";
sub put {
  my ($name, $text) = @_;
  open(my $f, '>', "$dir/$name.tmp") or die "$name: $!"; print $f $text; close($f);
  rename("$dir/$name.tmp", "$dir/$name") or die "$name: $!";
}
put('launcher.pid', "$$\n");
my %ids; my $buf = '';
while (1) {
  while ((my $p = waitpid(-1, WNOHANG)) > 0) {
    my $st = $?;
    if (defined(my $id = delete $ids{$p})) {
      put("cmd-$id.rc", ($st & 127) ? "signal " . ($st & 127) . "\n" : "exit " . ($st >> 8) . "\n");
    }
  }
  my $rin = ''; vec($rin, fileno($ctl), 1) = 1;
  my $n = select(my $rout = $rin, undef, undef, 0.05);
  next unless $n && $n > 0;
  sysread($ctl, $buf, 65536, length $buf);
  while ((my $i = index($buf, "\n")) >= 0) {
    my @argv = split(/\0/, substr($buf, 0, $i), -1); substr($buf, 0, $i + 1) = '';
    my $id = shift @argv;
    if (!@argv || $argv[0] eq '__exit__') { print "exit requested\n"; exit 0; }
    my $c = fork();
    if (!defined $c) { put("cmd-$id.rc", "forkerror $!\n"); next; }
    if ($c == 0) {
      open(STDOUT, '>', "$dir/cmd-$id.out"); open(STDERR, '>&', \*STDOUT);
      $SIG{CHLD} = 'DEFAULT'; $SIG{PIPE} = 'DEFAULT';
      { no warnings 'exec'; exec { $argv[0] } @argv; }
      print STDERR "exec $argv[0]: $!\n"; _exit(127);
    }
    $ids{$c} = $id;
    put("cmd-$id.pid", "$c\n");
  }
}
`;

function sysPrctl(): number {
  switch (Deno.build.arch) {
    case "x86_64":
      return 157;
    case "aarch64":
      return 167;
    default:
      throw new Error(`no SYS_prctl number for ${Deno.build.arch}`);
  }
}

interface Launched {
  id: number;
  pid: number;
  status: string;
  output: string;
}

// ---------------------------------------------------------------------------------------------------------
// The environment

export interface StartOptions {
  /**
   * A directory copied to /etc/libvirt/hooks before libvirtd starts (e.g. containing `qemu`, `network`,
   * `qemu.d/...`). What was in /etc/libvirt/hooks before is moved aside and put back by stop().
   * Without it, /etc/libvirt/hooks is left as it is.
   */
  hooksDir?: string;
  log?: (msg: string) => void;
  /** How long to wait for `virsh version` to answer after `libvirtd -d`. Default 30 s. */
  answerTimeoutMs?: number;
  /**
   * Extra environment for libvirtd on top of `LC_ALL=C PATH=MINIMAL_PATH` (e.g. `{ HOME: "/root" }`, to see what
   * hooks get under a daemon that has HOME). Default none: exactly libvirt's minimal environment. A key given
   * here replaces the default (e.g. `PATH`, to put a directory of wrappers first: libvirt looks up `tc`,
   * `nft`, `iptables` ... on the daemon's PATH).
   */
  daemonEnv?: Record<string, string>;
}

export interface Timing {
  step: string;
  ms: number;
}

export interface LibvirtEnv {
  /** The network namespace libvirtd (and everything it creates) lives in. */
  readonly ns: string;
  /** A private directory for this run (/run/lvh-e2e/NS). */
  readonly stateDir: string;
  readonly launcherPid: number;
  readonly virtlogdPid: number;
  readonly libvirtdPid: number;
  /** Steps and how long they took (start, restart, network/guest helpers, stop). */
  readonly timings: Timing[];
  /** `virsh -c qemu:///system ARGS` (it talks to the daemon over /run/libvirt/libvirt-sock, from anywhere). */
  virsh(args: string[], opts?: RunOptions): Promise<RunResult>;
  /** Runs argv inside the libvirt namespace (`ip netns exec NS ...`), e.g. `["iptables-save"]`. */
  exec(argv: string[], opts?: RunOptions): Promise<RunResult>;
  /** Kills libvirtd (SIGTERM, by PID) and starts it again; resolves when it answers. Optionally swaps hooks. */
  restartDaemon(opts?: { hooksDir?: string }): Promise<void>;
  /** Creates another namespace owned by this environment (deleted by stop()); returns its name. */
  addNamespace(suffix: string): Promise<string>;
  /** Registers something stop() must undo first (servers, ...). */
  onStop(fn: () => Promise<void>): void;
  /** Records a timing. */
  time<T>(step: string, fn: () => Promise<T>): Promise<T>;
  /** Destroys guests and networks, kills the daemons and everything else in our namespaces, deletes them,
   * removes leftovers and restores /etc/libvirt/hooks. Idempotent; never throws for a cleanup step (it logs). */
  stop(): Promise<void>;
}

interface Meta {
  owner: number;
  launcherPid?: number;
  namespaces: string[];
  /** Where the previous /etc/libvirt/hooks was moved, "none" when there was none, absent when untouched. */
  hooksBackup?: string;
  domains: string[];
  networks: string[];
}

async function writeMeta(stateDir: string, meta: Meta): Promise<void> {
  await Deno.writeTextFile(`${stateDir}/meta.json.tmp`, JSON.stringify(meta, null, 1));
  await Deno.rename(`${stateDir}/meta.json.tmp`, `${stateDir}/meta.json`);
}

async function installHooks(hooksDir: string, meta: Meta, stateDir: string): Promise<void> {
  if (meta.hooksBackup === undefined) {
    if (await exists(HOOKS_DIR)) {
      const backup = `${HOOKS_DIR}.lvh-e2e-backup.${meta.namespaces[0]}`;
      await Deno.rename(HOOKS_DIR, backup);
      meta.hooksBackup = backup;
    } else {
      meta.hooksBackup = "none";
    }
    await writeMeta(stateDir, meta);
  } else {
    await removeIfExists(HOOKS_DIR, true);
  }
  await copyTree(hooksDir, HOOKS_DIR);
}

async function restoreHooks(meta: Meta): Promise<void> {
  if (meta.hooksBackup === undefined) return;
  await removeIfExists(HOOKS_DIR, true);
  if (meta.hooksBackup !== "none") await Deno.rename(meta.hooksBackup, HOOKS_DIR);
  delete meta.hooksBackup;
}

/** Undoes what a run whose owning process died left behind (its namespaces, processes, hooks). */
export async function cleanupStale(log: (msg: string) => void = () => {}): Promise<void> {
  let entries: Deno.DirEntry[] = [];
  try {
    entries = await Array.fromAsync(Deno.readDir(STATE_ROOT));
  } catch {
    return;
  }
  for (const e of entries) {
    const dir = `${STATE_ROOT}/${e.name}`;
    let meta: Meta;
    try {
      meta = JSON.parse(await Deno.readTextFile(`${dir}/meta.json`)) as Meta;
    } catch {
      continue;
    }
    if (pidAlive(meta.owner) && /deno/.test(procCmdline(meta.owner))) continue;
    log(`cleaning up stale run ${e.name} (owner ${meta.owner} is gone)`);
    for (const ns of [...meta.namespaces].reverse()) await destroyNetns(ns, meta.launcherPid);
    await restoreHooks(meta);
    await removeLeftovers(meta);
    await removeIfExists(dir, true);
  }
}

/** Runs when no daemon of ours is left: state a killed daemon could not clean up itself. */
async function removeLeftovers(meta: Meta): Promise<void> {
  // persistent definitions of guests/networks we defined, if libvirtd could not undefine them
  for (const d of meta.domains) await removeIfExists(`/etc/libvirt/qemu/${d}.xml`);
  for (const n of meta.networks) {
    await removeIfExists(`/etc/libvirt/qemu/networks/${n}.xml`);
    await removeIfExists(`/etc/libvirt/qemu/networks/autostart/${n}.xml`);
  }
  for (const name of meta.domains) {
    for (const ext of ["xml", "pid"]) await removeIfExists(`/run/libvirt/qemu/${name}.${ext}`);
  }
  for (const name of meta.networks) {
    for (const ext of ["xml", "pid"]) await removeIfExists(`/run/libvirt/network/${name}.${ext}`);
    // network ports (ports/UUID.xml) a killed daemon did not delete
    await removeIfExists(`/run/libvirt/network/${name}`, true);
  }
  for (const pidfile of [LIBVIRTD_PIDFILE, VIRTLOGD_PIDFILE]) {
    const pid = Number((await readTextOr(pidfile, "")).trim());
    if (!pid || !pidAlive(pid)) await removeIfExists(pidfile);
  }
  const libvirtdPid = Number((await readTextOr(LIBVIRTD_PIDFILE, "")).trim());
  const virtlogdPid = Number((await readTextOr(VIRTLOGD_PIDFILE, "")).trim());
  if (!libvirtdPid && !virtlogdPid) {
    for (const s of DAEMON_SOCKETS) await removeIfExists(s);
  }
}

async function daemonAnswers(): Promise<boolean> {
  const r = await run(["virsh", "-c", QEMU_URI, "version"], { check: false, timeoutMs: 10_000 });
  return r.success;
}

/** Starts virtlogd + libvirtd in a fresh network namespace. On failure everything is torn down again. */
export async function startLibvirt(opts: StartOptions = {}): Promise<LibvirtEnv> {
  const log = opts.log ?? (() => {});
  const answerTimeoutMs = opts.answerTimeoutMs ?? 30_000;
  if (!isRoot()) throw new Error("startLibvirt needs root");
  await cleanupStale(log);
  const running = Number((await readTextOr(LIBVIRTD_PIDFILE, "")).trim());
  if (
    (running && pidAlive(running) && procCmdline(running).includes("libvirtd")) || (await daemonAnswers())
  ) {
    throw new Error(`a libvirtd is already running on this machine (${LIBVIRTD_PIDFILE}: ${running || "-"})`);
  }

  const ns = `lvhe2e-${Deno.pid}-${crypto.randomUUID().slice(0, 6)}`;
  const stateDir = `${STATE_ROOT}/${ns}`;
  await Deno.mkdir(stateDir, { recursive: true, mode: 0o700 });
  const meta: Meta = { owner: Deno.pid, namespaces: [ns], domains: [], networks: [] };
  await writeMeta(stateDir, meta);
  const timings: Timing[] = [];
  const stopHooks: (() => Promise<void>)[] = [];
  let launcherPid = 0;
  let virtlogdPid = 0;
  let libvirtdPid = 0;
  let nextId = 1;
  let stopped = false;

  const time = async <T>(step: string, fn: () => Promise<T>): Promise<T> => {
    const t0 = performance.now();
    try {
      return await fn();
    } finally {
      const ms = Math.round(performance.now() - t0);
      timings.push({ step, ms });
      log(`${step}: ${ms} ms`);
    }
  };
  const nsExec = (argv: string[], o: RunOptions = {}) => run(["ip", "netns", "exec", ns, ...argv], o);

  /** Runs argv under the launcher (inside the namespace) and waits until it exits. */
  const launch = async (argv: string[], timeoutMs = 30_000): Promise<Launched> => {
    const id = nextId++;
    const line = [String(id), ...argv].join("\0") + "\n";
    if (argv.some((a) => a.includes("\0") || a.includes("\n"))) throw new Error("launch: bad argv");
    // opening the FIFO for writing would block for good without its reader
    if (!launcherPid || !pidAlive(launcherPid)) throw new Error("launch: the subreaper is not running");
    const f = await Deno.open(`${stateDir}/ctl`, { write: true });
    try {
      await f.write(new TextEncoder().encode(line));
    } finally {
      f.close();
    }
    const status = await waitFor(
      `${argv.join(" ")} to exit`,
      async () => (await readTextOr(`${stateDir}/cmd-${id}.rc`, "")).trim() || undefined,
      timeoutMs,
      20,
    );
    return {
      id,
      pid: Number((await readTextOr(`${stateDir}/cmd-${id}.pid`, "0")).trim()),
      status,
      output: await readTextOr(`${stateDir}/cmd-${id}.out`, ""),
    };
  };

  const inOurNs = async (pid: number): Promise<boolean> => {
    const ino = await netnsInode(ns);
    try {
      return ino !== undefined && (await Deno.readLink(`/proc/${pid}/ns/net`)) === `net:[${ino}]`;
    } catch {
      return false;
    }
  };

  const extraEnv = Object.entries(opts.daemonEnv ?? {}).map(([k, v]) => `${k}=${v}`);
  // daemonEnv may replace a default (e.g. PATH, to put a wrapper directory first)
  const baseEnv = DAEMON_ENV.filter((kv) =>
    !Object.hasOwn(opts.daemonEnv ?? {}, kv.slice(0, kv.indexOf("=")))
  );
  const startDaemon = async (name: "virtlogd" | "libvirtd", pidfile: string): Promise<number> => {
    const r = await launch(["/usr/bin/env", "-i", ...baseEnv, ...extraEnv, name, "-d"]);
    if (r.status !== "exit 0") throw new Error(`${name} -d: ${r.status}\n${r.output}`);
    return await waitFor(`${pidfile} of our ${name}`, async () => {
      const pid = Number((await readTextOr(pidfile, "")).trim());
      return pid && pidAlive(pid) && (await inOurNs(pid)) ? pid : undefined;
    }, 10_000);
  };

  const startLibvirtd = async (): Promise<void> => {
    libvirtdPid = await startDaemon("libvirtd", LIBVIRTD_PIDFILE);
    await waitFor("libvirtd to answer `virsh version`", () => daemonAnswers(), answerTimeoutMs, 50);
  };

  const stopDaemon = async (pid: number): Promise<void> => {
    if (pid && (await inOurNs(pid))) await terminate([pid], 15_000);
  };

  const virsh = (args: string[], o: RunOptions = {}) => run(["virsh", "-c", QEMU_URI, ...args], o);

  const stop = async (): Promise<void> => {
    if (stopped) return;
    stopped = true;
    const step = async (what: string, fn: () => Promise<unknown>) => {
      try {
        await fn();
      } catch (e) {
        log(`stop: ${what} failed: ${e instanceof Error ? e.message : String(e)}`);
      }
    };
    await time("stop", async () => {
      for (const fn of stopHooks.reverse()) await step("stop hook", fn);
      if (libvirtdPid && pidAlive(libvirtdPid)) {
        await step("destroy guests", async () => {
          const list = await virsh(["list", "--name"], { timeoutMs: 15_000 });
          for (const dom of list.stdout.split("\n").map((s) => s.trim()).filter(Boolean)) {
            await virsh(["destroy", dom], { timeoutMs: 30_000, check: false });
          }
        });
        await step("undefine guests", async () => {
          for (const dom of meta.domains) await virsh(["undefine", dom], { timeoutMs: 15_000, check: false });
        });
        await step("destroy networks", async () => {
          const list = await virsh(["net-list", "--name"], { timeoutMs: 15_000 });
          for (const net of list.stdout.split("\n").map((s) => s.trim()).filter(Boolean)) {
            await virsh(["net-destroy", net], { timeoutMs: 30_000, check: false });
          }
          for (const net of meta.networks) {
            await virsh(["net-undefine", net], { timeoutMs: 15_000, check: false });
          }
        });
      }
      await step("stop libvirtd", () => stopDaemon(libvirtdPid));
      await step("stop virtlogd", () => stopDaemon(virtlogdPid));
      for (const n of [...meta.namespaces].reverse()) {
        await step(`delete namespace ${n}`, () => destroyNetns(n, launcherPid));
      }
      await step("restore hooks", async () => {
        await restoreHooks(meta);
        await writeMeta(stateDir, meta);
      });
      await step("remove leftovers", () => removeLeftovers(meta));
      await step("remove state dir", () => removeIfExists(stateDir, true));
    });
  };

  const env: LibvirtEnv = {
    ns,
    stateDir,
    get launcherPid() {
      return launcherPid;
    },
    get virtlogdPid() {
      return virtlogdPid;
    },
    get libvirtdPid() {
      return libvirtdPid;
    },
    timings,
    virsh,
    exec: nsExec,
    restartDaemon: (o = {}) =>
      time("restart libvirtd", async () => {
        await time("  stop libvirtd (SIGTERM until gone)", () => stopDaemon(libvirtdPid));
        libvirtdPid = 0;
        if (o.hooksDir !== undefined) await installHooks(o.hooksDir, meta, stateDir);
        await time("  start libvirtd (until it answers)", startLibvirtd);
      }),
    addNamespace: async (suffix: string) => {
      const name = `${ns}-${suffix}`;
      meta.namespaces.push(name);
      await writeMeta(stateDir, meta);
      await run(["ip", "netns", "add", name], { timeoutMs: 10_000 });
      await run(["ip", "-n", name, "link", "set", "lo", "up"], { timeoutMs: 10_000 });
      return name;
    },
    onStop: (fn) => {
      stopHooks.push(fn);
    },
    time,
    stop,
  };
  // used by the helpers below to record what must be undefined at stop()
  trackers.set(env, { meta, stateDir });

  try {
    await time("create namespace", async () => {
      await run(["ip", "netns", "add", ns], { timeoutMs: 10_000 });
      await run(["ip", "-n", ns, "link", "set", "lo", "up"], { timeoutMs: 10_000 });
      await nsExec(["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"], { timeoutMs: 10_000 });
    });
    if (opts.hooksDir !== undefined) {
      const hooksDir = opts.hooksDir;
      await time("install hooks", () => installHooks(hooksDir, meta, stateDir));
    }
    await time("start subreaper", async () => {
      await Deno.writeTextFile(`${stateDir}/launcher.pl`, LAUNCHER_PL);
      await run(
        ["ip", "netns", "exec", ns, "perl", `${stateDir}/launcher.pl`, stateDir, String(sysPrctl())],
        { clearEnv: true, env: { LC_ALL: "C", PATH: MINIMAL_PATH }, timeoutMs: 10_000 },
      );
      launcherPid = await waitFor(
        "launcher.pid",
        async () => {
          const pid = Number((await readTextOr(`${stateDir}/launcher.pid`, "")).trim());
          return pid || undefined;
        },
        10_000,
        10,
      );
      meta.launcherPid = launcherPid;
      await writeMeta(stateDir, meta);
    });
    virtlogdPid = await time("start virtlogd", () => startDaemon("virtlogd", VIRTLOGD_PIDFILE));
    await time("start libvirtd (until it answers)", startLibvirtd);
    return env;
  } catch (e) {
    await stop();
    throw e;
  }
}

const trackers = new WeakMap<LibvirtEnv, { meta: Meta; stateDir: string }>();

async function track(env: LibvirtEnv, kind: "domains" | "networks", name: string): Promise<void> {
  const t = trackers.get(env);
  if (!t) return;
  if (!t.meta[kind].includes(name)) t.meta[kind].push(name);
  await writeMeta(t.stateDir, t.meta);
}

// ---------------------------------------------------------------------------------------------------------
// Networks and guests

export interface NatNetworkOptions {
  name?: string;
  bridge?: string;
  /** The bridge's (gateway's) address. */
  address?: string;
  prefix?: number;
  /** Whether libvirt runs dnsmasq for DNS on the network (default true, as on a real host). */
  dns?: boolean;
  /** DHCP on the network: libvirt's dnsmasq leases from `start` to `end`, and reserves `hosts`' addresses. */
  dhcp?: NetworkDhcp;
}

/** A network's `<dhcp>`: a range, and reservations (`<host mac ip/>`). */
export interface NetworkDhcp {
  start: string;
  end: string;
  hosts?: { mac: string; ip: string }[];
}

export interface NatNetwork {
  name: string;
  bridge: string;
  address: string;
  prefix: number;
  /** e.g. 192.168.150.0/24 */
  subnet: string;
}

function prefixToNetmask(prefix: number): string {
  const n = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  return [24, 16, 8, 0].map((s) => (n >>> s) & 255).join(".");
}

function subnetOf(address: string, prefix: number): string {
  const parts = address.split(".").map(Number);
  const ip =
    (((parts[0] ?? 0) << 24) | ((parts[1] ?? 0) << 16) | ((parts[2] ?? 0) << 8) | (parts[3] ?? 0)) >>> 0;
  const mask = prefix === 0 ? 0 : (0xffffffff << (32 - prefix)) >>> 0;
  const net = (ip & mask) >>> 0;
  return `${[24, 16, 8, 0].map((s) => (net >>> s) & 255).join(".")}/${prefix}`;
}

export function natNetworkXml(net: NatNetwork, dns = true, dhcp?: NetworkDhcp): string {
  const hosts = (dhcp?.hosts ?? []).map((h) => `\n      <host mac='${h.mac}' ip='${h.ip}'/>`).join("");
  const ip = dhcp
    ? `>\n    <dhcp>\n      <range start='${dhcp.start}' end='${dhcp.end}'/>${hosts}\n    </dhcp>\n  </ip>`
    : "/>";
  return `<network>
  <name>${net.name}</name>
  <forward mode='nat'/>
  <bridge name='${net.bridge}' stp='off' delay='0'/>
${dns ? "" : "  <dns enable='no'/>\n"}  <ip address='${net.address}' netmask='${
    prefixToNetmask(net.prefix)
  }'${ip}
</network>
`;
}

/** `virsh net-define` of a NAT network (DHCP only with `opts.dhcp`). Defaults: lvhnet, virbr9, 192.168.150.1/24. */
export async function defineNatNetwork(env: LibvirtEnv, opts: NatNetworkOptions = {}): Promise<NatNetwork> {
  const address = opts.address ?? "192.168.150.1";
  const prefix = opts.prefix ?? 24;
  const net: NatNetwork = {
    name: opts.name ?? "lvhnet",
    bridge: opts.bridge ?? "virbr9",
    address,
    prefix,
    subnet: subnetOf(address, prefix),
  };
  const file = `${env.stateDir}/net-${net.name}.xml`;
  await Deno.writeTextFile(file, natNetworkXml(net, opts.dns ?? true, opts.dhcp));
  await track(env, "networks", net.name);
  await env.time(`net-define ${net.name}`, () => env.virsh(["net-define", file]));
  return net;
}

export async function startNetwork(env: LibvirtEnv, name: string): Promise<void> {
  await env.time(`net-start ${name}`, () => env.virsh(["net-start", name]));
}

export async function destroyNetwork(env: LibvirtEnv, name: string): Promise<void> {
  await env.time(`net-destroy ${name}`, () => env.virsh(["net-destroy", name]));
}

/** defineNatNetwork + startNetwork. */
export async function startNatNetwork(env: LibvirtEnv, opts: NatNetworkOptions = {}): Promise<NatNetwork> {
  const net = await defineNatNetwork(env, opts);
  await startNetwork(env, net.name);
  return net;
}

export interface GuestOptions {
  name?: string;
  network?: string;
  mac?: string;
  memoryMiB?: number;
  /** What the domain's `<metadata>` holds (XML), if anything. */
  metadata?: string;
}

export interface Guest {
  name: string;
  network: string;
  mac: string;
}

/**
 * A guest without disk nor OS: SeaBIOS finds nothing to boot and idles (the NIC's option ROM is off, so it does
 * not PXE-boot and sends nothing on the network). Enough for libvirt to run every hook.
 */
export function guestXml(g: Guest, memoryMiB = 64, metadata?: string): string {
  return `<domain type='qemu'>
  <name>${g.name}</name>${metadata === undefined ? "" : `\n  <metadata>\n    ${metadata}\n  </metadata>`}
  <memory unit='MiB'>${memoryMiB}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <boot dev='hd'/>
    <bios rebootTimeout='-1'/>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <interface type='network'>
      <source network='${g.network}'/>
      <mac address='${g.mac}'/>
      <model type='virtio'/>
      <rom enabled='no'/>
    </interface>
  </devices>
</domain>
`;
}

/** `virsh define` of a tiny disk-less guest. Defaults: lvhguest on lvhnet, MAC 52:54:00:4c:56:10, 64 MiB. */
export async function defineGuest(env: LibvirtEnv, opts: GuestOptions = {}): Promise<Guest> {
  const g: Guest = {
    name: opts.name ?? "lvhguest",
    network: opts.network ?? "lvhnet",
    mac: opts.mac ?? "52:54:00:4c:56:10",
  };
  const file = `${env.stateDir}/dom-${g.name}.xml`;
  await Deno.writeTextFile(file, guestXml(g, opts.memoryMiB ?? 64, opts.metadata));
  await track(env, "domains", g.name);
  await env.time(`define ${g.name}`, () => env.virsh(["define", file]));
  return g;
}

/** `virsh start NAME` (check: false to look at a failing start). */
export function startGuest(env: LibvirtEnv, name: string, opts: RunOptions = {}): Promise<RunResult> {
  return env.time(`start ${name}`, () => env.virsh(["start", name], opts));
}

export function destroyGuest(env: LibvirtEnv, name: string, opts: RunOptions = {}): Promise<RunResult> {
  return env.time(`destroy ${name}`, () => env.virsh(["destroy", name], opts));
}

export async function domainState(env: LibvirtEnv, name: string): Promise<string> {
  return (await env.virsh(["domstate", name])).stdout.trim();
}

// ---------------------------------------------------------------------------------------------------------
// Service and client namespaces

export interface AttachedNamespace {
  /** The namespace's name (use with `ip netns exec`, startTcpServer, tcpRequest). */
  ns: string;
  /** Its address. */
  ip: string;
  /** The veth end in the libvirt namespace. */
  hostVeth: string;
}

export interface ServiceNamespace extends AttachedNamespace {
  bridge: string;
  /** Puts the veth back on the bridge (needed after `net-destroy` + `net-start`, which re-create the bridge). */
  reattach(): Promise<void>;
}

/** A veth pair: `hostVeth` in the libvirt namespace, its peer `eth0` in namespace `ns`. */
async function addVeth(env: LibvirtEnv, hostVeth: string, ns: string): Promise<void> {
  await run([
    "ip",
    "-n",
    env.ns,
    "link",
    "add",
    hostVeth,
    "type",
    "veth",
    "peer",
    "name",
    "eth0",
    "netns",
    ns,
  ]);
}

/**
 * A namespace whose eth0 is a port of the libvirt bridge, holding the guest's configured address (the guest has
 * no OS), so a process there can serve TCP on the bridge. Default route via the bridge address. `mac` gives eth0
 * the guest's MAC; `ip: null` leaves eth0 without an address and route (for a DHCP client there: `ip` is then "").
 */
export async function attachServiceNamespace(
  env: LibvirtEnv,
  net: NatNetwork,
  opts: { ip?: string | null; mac?: string; suffix?: string; hostVeth?: string } = {},
): Promise<ServiceNamespace> {
  const ip = opts.ip === null ? "" : opts.ip ?? "192.168.150.10";
  const hostVeth = opts.hostVeth ?? "lvhsvc0";
  const ns = await env.addNamespace(opts.suffix ?? "svc");
  await addVeth(env, hostVeth, ns);
  if (opts.mac) await run(["ip", "-n", ns, "link", "set", "eth0", "address", opts.mac]);
  if (ip) await run(["ip", "-n", ns, "addr", "add", `${ip}/${net.prefix}`, "dev", "eth0"]);
  await run(["ip", "-n", ns, "link", "set", "eth0", "up"]);
  if (ip) await run(["ip", "-n", ns, "route", "add", "default", "via", net.address]);
  const reattach = async () => {
    await run(["ip", "-n", env.ns, "link", "set", hostVeth, "master", net.bridge]);
    await run(["ip", "-n", env.ns, "link", "set", hostVeth, "up"]);
  };
  await reattach();
  return { ns, ip, hostVeth, bridge: net.bridge, reattach };
}

/**
 * A "client" namespace on a public subnet, connected to the libvirt namespace by a veth: the libvirt side gets
 * hostIp (the host's public address), the client clientIp with a default route via hostIp.
 */
export async function attachClientNamespace(
  env: LibvirtEnv,
  opts: { hostIp?: string; clientIp?: string; prefix?: number; suffix?: string; hostVeth?: string } = {},
): Promise<AttachedNamespace & { hostIp: string }> {
  const hostIp = opts.hostIp ?? "203.0.113.1";
  const ip = opts.clientIp ?? "203.0.113.50";
  const prefix = opts.prefix ?? 24;
  const hostVeth = opts.hostVeth ?? "lvhcli0";
  const ns = await env.addNamespace(opts.suffix ?? "cli");
  await addVeth(env, hostVeth, ns);
  await run(["ip", "-n", env.ns, "addr", "add", `${hostIp}/${prefix}`, "dev", hostVeth]);
  await run(["ip", "-n", env.ns, "link", "set", hostVeth, "up"]);
  await run(["ip", "-n", ns, "addr", "add", `${ip}/${prefix}`, "dev", "eth0"]);
  await run(["ip", "-n", ns, "link", "set", "eth0", "up"]);
  await run(["ip", "-n", ns, "route", "add", "default", "via", hostIp]);
  return { ns, ip, hostVeth, hostIp };
}

// ---------------------------------------------------------------------------------------------------------
// TCP server and client (Deno itself, run inside a namespace with `ip netns exec`)

const SERVER_JS = `
const [host, port, label] = Deno.args;
const l = Deno.listen({ hostname: host, port: Number(port) });
console.log("ready");
const enc = new TextEncoder();
for await (const c of l) {
  const r = c.remoteAddr, a = c.localAddr;
  c.write(enc.encode(label + " " + r.hostname + ":" + r.port + " -> " + a.hostname + ":" + a.port + "\\n"))
    .catch(() => {}).finally(() => { try { c.close(); } catch {} });
}
`;

const CLIENT_JS = `
const [host, port, ms] = Deno.args;
const timer = setTimeout(() => { console.log("ERROR timeout"); Deno.exit(2); }, Number(ms));
try {
  const c = await Deno.connect({ hostname: host, port: Number(port) });
  const text = await new Response(c.readable).text();
  clearTimeout(timer);
  console.log("OK " + text.trim());
} catch (e) {
  clearTimeout(timer);
  console.log("ERROR " + (e && e.name) + " " + (e && e.message));
  Deno.exit(1);
}
`;

export interface TcpServer {
  ns: string;
  host: string;
  port: number;
  pid: number;
  stop(): Promise<void>;
}

/**
 * Listens on host:port inside namespace ns; each connection gets one line
 * `LABEL REMOTE_IP:PORT -> LOCAL_IP:PORT` and is closed (so a test sees whether the source was NATed).
 * Stopped by stop() or by env.stop().
 */
export async function startTcpServer(
  env: LibvirtEnv,
  ns: string,
  opts: { host?: string; port: number; label?: string },
): Promise<TcpServer> {
  const host = opts.host ?? "0.0.0.0";
  const child = new Deno.Command("ip", {
    args: [
      "netns",
      "exec",
      ns,
      Deno.execPath(),
      "eval",
      SERVER_JS,
      host,
      String(opts.port),
      opts.label ?? "hello",
    ],
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let stopped = false;
  const stop = async () => {
    if (stopped) return;
    stopped = true;
    try {
      child.kill("SIGTERM");
    } catch {
      // already gone
    }
    await child.status;
    await reader.cancel().catch(() => undefined);
  };
  try {
    let seen = "";
    const deadline = setTimeout(() => stop(), 10_000);
    try {
      while (!seen.includes("ready\n")) {
        const { value, done } = await reader.read();
        if (done) throw new Error(`TCP server on ${ns} ${host}:${opts.port} exited before it was ready`);
        seen += value;
      }
    } finally {
      clearTimeout(deadline);
    }
  } catch (e) {
    await stop();
    throw e;
  }
  env.onStop(stop);
  return { ns, host, port: opts.port, pid: child.pid, stop };
}

export type TcpResult = { ok: true; text: string } | { ok: false; error: string };

/** Connects from namespace ns to host:port and reads until the server closes. */
export async function tcpRequest(
  ns: string,
  host: string,
  port: number,
  timeoutMs = 3_000,
): Promise<TcpResult> {
  const r = await run([
    "ip",
    "netns",
    "exec",
    ns,
    Deno.execPath(),
    "eval",
    CLIENT_JS,
    host,
    String(port),
    String(timeoutMs),
  ], {
    check: false,
    timeoutMs: timeoutMs + 10_000,
  });
  const out = r.stdout.trim();
  if (out.startsWith("OK ")) return { ok: true, text: out.slice(3) };
  return { ok: false, error: out.replace(/^ERROR /, "") || r.stderr.trim() || `exit ${r.code}` };
}

// ---------------------------------------------------------------------------------------------------------
// The recorder hook

export interface HookCall {
  /** Epoch seconds when the hook started. */
  t: number;
  /** "qemu" or "network". */
  hook: string;
  argv: string[];
  cwd: string;
  env: Record<string, string>;
  /** The environment libvirt passed (the shell's initial environment, without what sh adds, e.g. PWD). */
  initEnv: Record<string, string>;
  /** First line of stdin. */
  stdin1: string;
  /** Where the full stdin was saved. */
  stdinFile: string;
  /** `ip -br link` inside the hook's network namespace at call time. */
  links: string[];
  /** File with `iptables-save` output (or RecorderOptions.snapshot's) taken at call time. */
  iptablesFile: string;
  exit: number;
}

export interface RecorderOptions {
  /**
   * Shell command whose output is saved per call (HookCall.iptablesFile). Default `iptables-save`; e.g.
   * `nft list ruleset` under libvirt's nftables backend.
   */
  snapshot?: string;
}

/**
 * A shell hook for experiments and tests: appends the time (`date +%s.%N`), argv, cwd, env, first line of stdin,
 * `ip -br link` to LOG and saves stdin and `iptables-save` per call. It exits 1 (printing the marker's content
 * on stderr) when the marker file MARKERS/fail-HOOK-OP exists, and sleeps N s first when MARKERS/sleep-HOOK-OP
 * contains N.
 */
export function recorderScript(dir: string, opts: RecorderOptions = {}): string {
  return `#!/bin/sh
# Recorder hook (test/e2e/libvirt_env.ts): records how libvirt calls it. Installed as qemu and network.
dir='${dir}'
ts=$(date +%s.%N)
hook=$(basename "$0")
id="$ts-$$"
mkdir -p "$dir/calls"
cat > "$dir/calls/$id.stdin"
${opts.snapshot ?? "iptables-save"} > "$dir/calls/$id.iptables" 2>&1
op="$2"
rc=0
[ -f "$dir/markers/sleep-$hook-$op" ] && sleep "$(cat "$dir/markers/sleep-$hook-$op")"
[ -f "$dir/markers/fail-$hook-$op" ] && rc=1
{
  echo "=== BEGIN $ts $$"
  echo "hook=$hook"
  for a in "$@"; do echo "arg=$a"; done
  echo "cwd=$(pwd)"
  echo "stdin1=$(head -n1 "$dir/calls/$id.stdin")"
  echo "stdinfile=$dir/calls/$id.stdin"
  echo "iptablesfile=$dir/calls/$id.iptables"
  env | sort | sed 's/^/env=/'
  tr '\\0' '\\n' < /proc/$$/environ | sed 's/^/initenv=/'
  ip -br link | sed 's/^/link=/'
  echo "exit=$rc"
  echo "=== END"
} > "$dir/calls/$id.rec"
(
  flock 9
  cat "$dir/calls/$id.rec" >> "$dir/hooks.log"
) 9>>"$dir/hooks.lock"
if [ "$rc" != 0 ]; then
  cat "$dir/markers/fail-$hook-$op" >&2
fi
exit $rc
`;
}

export function parseHookLog(text: string): HookCall[] {
  const calls: HookCall[] = [];
  let cur: HookCall | undefined;
  for (const line of text.split("\n")) {
    if (line.startsWith("=== BEGIN ")) {
      cur = {
        t: Number(line.split(" ")[2]),
        hook: "",
        argv: [],
        cwd: "",
        env: {},
        initEnv: {},
        stdin1: "",
        stdinFile: "",
        links: [],
        iptablesFile: "",
        exit: 0,
      };
      continue;
    }
    if (!cur) continue;
    if (line === "=== END") {
      calls.push(cur);
      cur = undefined;
      continue;
    }
    const eq = line.indexOf("=");
    const key = line.slice(0, eq);
    const val = line.slice(eq + 1);
    switch (key) {
      case "hook":
        cur.hook = val;
        break;
      case "arg":
        cur.argv.push(val);
        break;
      case "cwd":
        cur.cwd = val;
        break;
      case "stdin1":
        cur.stdin1 = val;
        break;
      case "stdinfile":
        cur.stdinFile = val;
        break;
      case "iptablesfile":
        cur.iptablesFile = val;
        break;
      case "link":
        cur.links.push(val);
        break;
      case "exit":
        cur.exit = Number(val);
        break;
      case "env":
      case "initenv": {
        const e = val.indexOf("=");
        if (e > 0) (key === "env" ? cur.env : cur.initEnv)[val.slice(0, e)] = val.slice(e + 1);
        break;
      }
    }
  }
  return calls.sort((a, b) => a.t - b.t);
}

export class HookRecorder {
  /** Pass this as StartOptions.hooksDir. */
  readonly hooksDir: string;
  readonly logPath: string;

  private constructor(readonly dir: string) {
    this.hooksDir = `${dir}/hooks`;
    this.logPath = `${dir}/hooks.log`;
  }

  /** Writes the recorder as `qemu` and `network` into a new directory (default: a temp dir). */
  static async create(dir?: string, opts: RecorderOptions = {}): Promise<HookRecorder> {
    const d = dir ?? (await Deno.makeTempDir({ prefix: "lvh-e2e-recorder-" }));
    const r = new HookRecorder(d);
    await Deno.mkdir(r.hooksDir, { recursive: true });
    await Deno.mkdir(`${d}/markers`, { recursive: true });
    await Deno.mkdir(`${d}/calls`, { recursive: true });
    for (const name of ["qemu", "network"]) {
      await Deno.writeTextFile(`${r.hooksDir}/${name}`, recorderScript(d, opts), { mode: 0o755 });
      await Deno.chmod(`${r.hooksDir}/${name}`, 0o755);
    }
    return r;
  }

  async calls(): Promise<HookCall[]> {
    return parseHookLog(await readTextOr(this.logPath, ""));
  }

  /** Makes the hook exit 1 with `message` on stderr when called as `HOOK * OP ...`. */
  async setFail(
    hook: "qemu" | "network",
    op: string,
    message = `recorder: failing ${hook} ${op} on purpose`,
  ) {
    await Deno.writeTextFile(`${this.dir}/markers/fail-${hook}-${op}`, message + "\n");
  }

  async clearFail(hook: "qemu" | "network", op: string): Promise<void> {
    await removeIfExists(`${this.dir}/markers/fail-${hook}-${op}`);
  }

  async setSleep(hook: "qemu" | "network", op: string, seconds: number): Promise<void> {
    await Deno.writeTextFile(`${this.dir}/markers/sleep-${hook}-${op}`, `${seconds}\n`);
  }

  async clearSleep(hook: "qemu" | "network", op: string): Promise<void> {
    await removeIfExists(`${this.dir}/markers/sleep-${hook}-${op}`);
  }

  /** Waits until a recorded call satisfies pred; returns it. */
  waitForCall(pred: (c: HookCall) => boolean, timeoutMs = 10_000): Promise<HookCall> {
    return waitFor("a hook call", async () => (await this.calls()).find(pred), timeoutMs, 50);
  }

  async remove(): Promise<void> {
    await removeIfExists(this.dir, true);
  }
}

/** "lvhguest prepare begin -" → true when call.argv starts with these words. */
export function isCall(c: HookCall, hook: string, ...argv: string[]): boolean {
  return c.hook === hook && argv.every((a, i) => c.argv[i] === a);
}
