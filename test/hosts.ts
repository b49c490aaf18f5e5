/**
 * Other firewall software in a lab's host namespace: Docker's rules, the real ufw, the real firewalld. Nothing of
 * the machine's own configuration changes: each program runs in a private mount namespace inside the lab's network
 * namespace, on private copies of what it writes.
 */

import type { Lab } from "./lab.ts";

/**
 * The rules Docker creates when its daemon starts (default bridge, no containers), as iptables-save prints them.
 * Docker 28: what dockerd 28.5.2 (Debian's docker.io 28.5.2+dfsg4) created in a network namespace, measured; it is
 * moby's own golden file integration/network/bridge/iptablesdoc/generated/new-daemon.md at v28.5.2. Docker 27: no
 * Debian suite ships it; v27.5.1's rule code is v26.1.5's with `--ip6tables` on by default (moby's
 * setup_ip_tables_linux.go, setup_ip_forwarding.go, firewall_linux.go), so these are what dockerd 26.1.5
 * (Debian trixie) created with `--ip6tables`, measured the same way. Docker sets FORWARD's policy to DROP (it turns
 * ip_forward on itself on a fresh host) and inserts its FORWARD jumps at the top.
 */
export const DOCKER: Record<27 | 28, Record<4 | 6, string>> = {
  27: {
    4: `*filter
:FORWARD DROP [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o docker0 -j DOCKER
-A FORWARD -i docker0 ! -o docker0 -j ACCEPT
-A FORWARD -i docker0 -o docker0 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
*nat
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
COMMIT
`,
    6: `*filter
:FORWARD DROP [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
*nat
:DOCKER - [0:0]
COMMIT
`,
  },
  28: {
    4: `*filter
:FORWARD DROP [0:0]
:DOCKER - [0:0]
:DOCKER-BRIDGE - [0:0]
:DOCKER-CT - [0:0]
:DOCKER-FORWARD - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-FORWARD
-A DOCKER ! -i docker0 -o docker0 -j DROP
-A DOCKER-BRIDGE -o docker0 -j DOCKER
-A DOCKER-CT -o docker0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A DOCKER-FORWARD -j DOCKER-CT
-A DOCKER-FORWARD -j DOCKER-ISOLATION-STAGE-1
-A DOCKER-FORWARD -j DOCKER-BRIDGE
-A DOCKER-FORWARD -i docker0 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i docker0 ! -o docker0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-2 -o docker0 -j DROP
COMMIT
*nat
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 172.17.0.0/16 ! -o docker0 -j MASQUERADE
-A DOCKER -i docker0 -j RETURN
COMMIT
`,
    // IPv6 forwarding was on already in the namespace: Docker 28 then leaves ip6 FORWARD's policy alone.
    6: `*filter
:DOCKER - [0:0]
:DOCKER-BRIDGE - [0:0]
:DOCKER-CT - [0:0]
:DOCKER-FORWARD - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-FORWARD
-A DOCKER-FORWARD -j DOCKER-CT
-A DOCKER-FORWARD -j DOCKER-ISOLATION-STAGE-1
-A DOCKER-FORWARD -j DOCKER-BRIDGE
COMMIT
*nat
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d ::1/128 -m addrtype --dst-type LOCAL -j DOCKER
COMMIT
`,
  },
};

/**
 * Loads Docker's rules into the lab's host as the daemon does on a host that has rules already (libvirt's): its
 * chains added, its FORWARD jumps inserted at the top in their order, the rest appended.
 */
export async function loadDocker(lab: Lab, version: 27 | 28): Promise<void> {
  for (const family of [4, 6] as const) {
    const lines = DOCKER[version][family].split("\n");
    const jumps = lines.filter((l) => l.startsWith("-A FORWARD "));
    const text = lines.filter((l) => !l.startsWith("-A FORWARD ")).join("\n").replace(
      ":DOCKER-USER - [0:0]\n",
      `:DOCKER-USER - [0:0]\n${jumps.reverse().map((j) => `-I FORWARD 1 ${j.slice(11)}`).join("\n")}\n`,
    );
    const tool = family === 4 ? "iptables-restore" : "ip6tables-restore";
    const r = await lab.exec(lab.ns.host, [tool, "--noflush"], { stdin: text });
    if (r.code !== 0) throw new Error(`${tool} of Docker ${version}'s rules failed: ${r.stderr}`);
  }
}

/** Whether a program is installed (in /usr/sbin or /usr/bin). */
export function installed(program: string): boolean {
  for (const dir of ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]) {
    try {
      if (Deno.statSync(`${dir}/${program}`).isFile) return true;
    } catch {
      // Not here.
    }
  }
  return false;
}

/**
 * Runs Debian's ufw in the lab's host on private copies of everything it writes (/etc/ufw, /lib/ufw,
 * /etc/default/ufw, /run), as its boot script does: `ufw --force enable` (INPUT and FORWARD policy DROP, its
 * chains appended), then `ufw reload` as asked.
 */
export async function ufw(lab: Lab, scratch: string) {
  const state = await Deno.makeTempDir({ dir: scratch });
  for (
    const [from, to] of [["/etc/ufw", "etc-ufw"], ["/lib/ufw", "lib-ufw"], [
      "/etc/default/ufw",
      "default-ufw",
    ]]
  ) {
    const r = await new Deno.Command("cp", { args: ["-a", from!, `${state}/${to}`] }).output();
    if (!r.success) throw new Error(`Cannot copy ${from}: ${new TextDecoder().decode(r.stderr)}`);
  }
  await Deno.mkdir(`${state}/run`);
  const run = async (...args: string[]) => {
    const r = await lab.exec(lab.ns.host, [
      "unshare",
      "-m",
      "--propagation",
      "private",
      "sh",
      "-c",
      `mount --bind "$1/etc-ufw" /etc/ufw && mount --bind "$1/lib-ufw" /lib/ufw &&
       mount --bind "$1/default-ufw" /etc/default/ufw && mount --bind "$1/run" /run && shift && exec "$@"`,
      "sh",
      state,
      "ufw",
      ...args,
    ], { timeoutMs: 30_000 });
    if (r.code !== 0) throw new Error(`ufw ${args.join(" ")} failed: ${r.stderr}`);
  };
  await run("--force", "enable");
  // Its first reload adds what enable left out (measured: a few ufw6 rules); from then on a reload is the same.
  await run("reload");
  return { reload: () => run("reload") };
}

/**
 * Runs Debian's firewalld (nftables backend) in the lab's host with a private system D-Bus, a private copy of
 * /etc/firewalld, a private /run, its log in the scratch directory, and no D-Bus activation (else every polkit
 * check tries to launch polkitd: 10 s instead of 0.7). `cmd` runs firewall-cmd against it; `stop` ends both.
 */
export async function firewalld(lab: Lab, scratch: string) {
  const state = await Deno.makeTempDir({ dir: scratch });
  const copy = await new Deno.Command("cp", { args: ["-a", "/etc/firewalld", `${state}/etc-firewalld`] })
    .output();
  if (!copy.success) throw new Error("Cannot copy /etc/firewalld");
  const bus = `unix:path=${state}/bus`;
  const daemon = new Deno.Command("ip", {
    args: [
      "netns",
      "exec",
      lab.ns.host,
      "unshare",
      "-m",
      "--propagation",
      "private",
      "sh",
      "-c",
      `mount -t tmpfs tmpfs /run && mount --bind "$1/etc-firewalld" /etc/firewalld &&
       mount -t tmpfs tmpfs /usr/share/dbus-1/system-services &&
       { dbus-daemon --system --nofork --nopidfile --address="$2" & bus=$!; } &&
       i=0; while [ ! -S "$1/bus" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done;
       DBUS_SYSTEM_BUS_ADDRESS="$2" firewalld --nofork --nopid --log-target file --log-file "$1/firewalld.log";
       kill "$bus"; wait`,
      "sh",
      state,
      bus,
    ],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  const cmd = (...args: string[]) =>
    lab.exec(lab.ns.host, ["firewall-cmd", ...args], {
      env: { DBUS_SYSTEM_BUS_ADDRESS: bus },
      timeoutMs: 30_000,
    });
  const deadline = Date.now() + 20_000;
  while ((await cmd("--state")).stdout.trim() !== "running") {
    if (Date.now() > deadline) {
      daemon.kill("SIGKILL");
      throw new Error(
        `firewalld did not come up: ${await Deno.readTextFile(`${state}/firewalld.log`).catch(() => "")}`,
      );
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    cmd,
    async stop() {
      // firewalld cleans up on SIGTERM (CleanupOnExit), then the shell ends its D-Bus.
      const pids = await lab.exec(lab.ns.host, [
        "pgrep",
        "-f",
        `firewalld --nofork --nopid --log-target file --log-file ${state}`,
      ]);
      for (const pid of pids.stdout.trim().split("\n").filter(Boolean)) {
        await lab.exec(lab.ns.host, ["kill", "-TERM", pid]);
      }
      await daemon.status;
    },
  };
}

/**
 * Runs the real dockerd (Debian's docker.io) in the lab's host, in a private mount namespace: tmpfs over /run and
 * /etc/docker, the cgroup hierarchies mounted again (`ip netns exec` gives a fresh /sys, and dockerd refuses to
 * start without its devices cgroup), its data and exec roots and socket in the scratch directory, no containers.
 * IPv4 forwarding is off when it starts, as on a fresh host: dockerd turns it on and sets FORWARD's policy to DROP.
 * Ready once its API answers (its own containerd started, its rules written); `stop` kills both.
 */
export async function dockerd(lab: Lab, scratch: string) {
  const work = await Deno.makeTempDir({ dir: scratch });
  await lab.exec(lab.ns.host, ["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
  const daemon = new Deno.Command("ip", {
    args: [
      "netns",
      "exec",
      lab.ns.host,
      "unshare",
      "-m",
      "--propagation",
      "private",
      "sh",
      "-c",
      `set -e
       mount -t tmpfs tmpfs /run
       mount -t tmpfs tmpfs /etc/docker
       mount -t tmpfs -o mode=755 cgroup /sys/fs/cgroup
       for c in cpu cpuacct cpuset memory devices freezer blkio pids; do
         mkdir /sys/fs/cgroup/$c; mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c
       done
       mkdir /sys/fs/cgroup/systemd; mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
       exec dockerd --storage-driver=vfs --data-root "$1/data" --exec-root "$1/exec" --pidfile "$1/dockerd.pid" \\
         -H "unix://$1/docker.sock"`,
      "sh",
      work,
    ],
    stdin: "null",
    stdout: "null",
    stderr: "null",
  }).spawn();
  const deadline = Date.now() + 30_000;
  // Its API answers once the daemon is up, its network and rules set up before.
  const ready = async () => {
    try {
      const conn = await Deno.connect({ transport: "unix", path: `${work}/docker.sock` });
      try {
        await conn.write(new TextEncoder().encode("GET /_ping HTTP/1.0\r\n\r\n"));
        const buf = new Uint8Array(512);
        const n = await conn.read(buf);
        return n !== null && /\r\n\r\nOK$/.test(new TextDecoder().decode(buf.subarray(0, n)));
      } finally {
        conn.close();
      }
    } catch {
      return false;
    }
  };
  while (!(await ready())) {
    if (Date.now() > deadline) {
      daemon.kill("SIGKILL");
      throw new Error("dockerd did not come up within 30 s");
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  return {
    async stop() {
      // dockerd's containerd dies with it (parent-death signal); its rules stay, as on a real host.
      try {
        daemon.kill("SIGKILL");
      } catch {
        // Gone already.
      }
      await daemon.status;
    },
  };
}
