/**
 * install.sh on the hosts it meets: which libvirt daemons run (monolithic libvirtd, or virtqemud and virtnetworkd),
 * SELinux, and the man pages and completion it installs and removes.
 *
 * Debian's libvirt packages (9.0, and 11.3 from backports) ship only libvirtd, so the modular daemons are played
 * by a stand-in `systemctl` on PATH that answers from a folder of unit files named, and related, as libvirt's own
 * templates make them (src/virtd.socket.in and src/virtd.service.in for virtqemud and virtnetworkd: the socket's
 * Service=, the service's BindsTo= and Conflicts=libvirtd.service; src/remote/libvirtd*.in for libvirtd). Only the
 * names and those relations are written here, not libvirt's files. SELinux is played by stand-in `getenforce`,
 * `getsebool` and `restorecon` that record their calls: the labels themselves cannot be checked on Debian.
 */

import assert from "node:assert/strict";
import { installed } from "./hosts.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const opts = { sanitizeOps: false, sanitizeResources: false };

/** libvirt's units for each kind of host, as its packages install them. */
const UNITS = {
  libvirtd: [
    "libvirtd.service",
    "libvirtd.socket",
    "libvirtd-ro.socket",
    "libvirtd-admin.socket",
    "libvirtd-tcp.socket",
  ],
  virtqemud: ["virtqemud.service", "virtqemud.socket", "virtqemud-ro.socket", "virtqemud-admin.socket"],
  virtnetworkd: [
    "virtnetworkd.service",
    "virtnetworkd.socket",
    "virtnetworkd-ro.socket",
    "virtnetworkd-admin.socket",
  ],
};

/** A unit file with the lines that relate it to the others (as libvirt's templates have them). */
function unitText(unit: string): string {
  const [, daemon, suffix, type] = /^(\w+?)(-\w+)?\.(service|socket)$/.exec(unit)!;
  if (type === "socket") {
    const conflicts = daemon === "libvirtd" ? "" : "Conflicts=libvirtd.socket\n";
    return `[Unit]\n${conflicts}[Socket]\nService=${daemon}.service\n${
      suffix ? "" : `[Install]\nAlso=${daemon}-ro.socket\n`
    }`;
  }
  const binds = daemon === "libvirtd"
    ? `Requires=libvirtd.socket\n`
    : `BindsTo=${daemon}.socket\nConflicts=libvirtd.service\n`;
  return `[Unit]\n${binds}[Service]\nExecStart=/usr/sbin/${daemon} --timeout 120\n`;
}

/** Stand-ins on PATH: systemctl over `units` with `active` running, and SELinux's tools; `log` records calls. */
async function fakeHost(
  dir: string,
  { units, active, selinux, bool = "virt_hooks_unconfined --> off" }: {
    units: string[];
    active: string[] | "no systemd";
    selinux?: string;
    bool?: string;
  },
) {
  await Deno.mkdir(`${dir}/units`, { recursive: true });
  await Deno.mkdir(`${dir}/bin`, { recursive: true });
  for (const unit of units) await Deno.writeTextFile(`${dir}/units/${unit}`, unitText(unit));
  const log = `${dir}/calls.log`;
  const scripts: Record<string, string> = {
    // list-unit-files with glob patterns, and is-active, as systemd answers them (or fails without systemd).
    systemctl: `#!/bin/bash
echo "systemctl $*" >>${log}
case $1 in
  list-unit-files)
    shift; pats=(); for a in "$@"; do case $a in -*) ;; *) pats+=("$a") ;; esac; done
    for f in ${dir}/units/*; do u=\${f##*/}; for p in "\${pats[@]}"; do [[ $u == $p ]] && { echo "$u enabled enabled"; break; }; done; done ;;
  is-active)
    ${
      active === "no systemd"
        ? `echo "System has not been booted with systemd as init system (PID 1). Can't operate." >&2; exit 1`
        : `case " ${active.join(" ")} " in *" $2 "*) echo active ;; *) echo inactive; exit 3 ;; esac`
    } ;;
  *) exit 1 ;;
esac
`,
    ...(selinux === undefined ? {} : {
      getenforce: `#!/bin/sh\necho "getenforce" >>${log}\necho ${selinux}\n`,
      getsebool: `#!/bin/sh\necho "getsebool $*" >>${log}\necho "${bool}"\n`,
      restorecon: `#!/bin/sh\necho "restorecon $*" >>${log}\n`,
    }),
  };
  for (const [name, text] of Object.entries(scripts)) {
    await Deno.writeTextFile(`${dir}/bin/${name}`, text);
    await Deno.chmod(`${dir}/bin/${name}`, 0o755);
  }
  return {
    env: { ...Deno.env.toObject(), PATH: `${dir}/bin:${Deno.env.get("PATH")}` },
    calls: async () => (await Deno.readTextFile(log).catch(() => "")).trimEnd().split("\n"),
  };
}

async function run(args: string[], env: Record<string, string>) {
  const out = await new Deno.Command("bash", {
    args: [`${ROOT}install.sh`, ...args],
    env,
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  const d = new TextDecoder();
  return { code: out.code, stdout: d.decode(out.stdout), stderr: d.decode(out.stderr) };
}

Deno.test("install.sh --check-host names exactly the libvirt daemons to restart", opts, async (t) => {
  const cases: { name: string; units: string[]; active: string[] | "no systemd"; says: string[] }[] = [
    {
      name: "Debian: libvirtd alone, running",
      units: UNITS.libvirtd,
      active: ["libvirtd.service", "libvirtd.socket"],
      says: [
        "libvirt daemons here: libvirtd.service (active), libvirtd.socket (active)",
        "Next: restart libvirtd once (systemctl restart libvirtd.service), since libvirt looks for hooks when its daemon starts.",
      ],
    },
    {
      name: "Fedora: modular daemons running, libvirtd installed but off",
      units: [...UNITS.libvirtd, ...UNITS.virtqemud, ...UNITS.virtnetworkd],
      active: ["virtqemud.service", "virtqemud.socket", "virtnetworkd.service", "virtnetworkd.socket"],
      says: [
        "libvirt daemons here: libvirtd.service (inactive), libvirtd.socket (inactive), virtqemud.service (active), " +
        "virtqemud.socket (active), virtnetworkd.service (active), virtnetworkd.socket (active)",
        "Next: restart virtqemud and virtnetworkd once (systemctl restart virtqemud.service virtnetworkd.service), " +
        "since libvirt looks for hooks when its daemon starts; virtqemud runs the qemu hook, virtnetworkd the network hook.",
      ],
    },
    {
      name: "modular: virtnetworkd only socket-activated, not running now",
      units: [...UNITS.virtqemud, ...UNITS.virtnetworkd],
      active: ["virtqemud.service", "virtqemud.socket", "virtnetworkd.socket"],
      says: [
        "libvirt daemons here: virtqemud.service (active), virtqemud.socket (active), virtnetworkd.service (inactive), " +
        "virtnetworkd.socket (active)",
        "Next: restart virtqemud once (systemctl restart virtqemud.service), since libvirt looks for hooks when its " +
        "daemon starts; virtqemud runs the qemu hook, virtnetworkd the network hook.",
        "virtnetworkd is not running (socket-activated): it finds the hook when it next starts; no restart needed.",
      ],
    },
    {
      name: "modular, nothing running: nothing to restart",
      units: [...UNITS.virtqemud, ...UNITS.virtnetworkd],
      active: [],
      says: [
        "libvirt daemons here: virtqemud.service (inactive), virtqemud.socket (inactive), virtnetworkd.service (inactive), " +
        "virtnetworkd.socket (inactive)",
        "No libvirt daemon is running or listening here: the hook is found when one starts.",
      ],
    },
    {
      name: "systemd not running (a container): both ways said",
      units: UNITS.libvirtd,
      active: "no systemd",
      says: [
        "Next: restart libvirtd once (systemctl restart libvirtd; where libvirt runs its modular daemons: systemctl " +
        "restart virtqemud virtnetworkd), since libvirt looks for hooks when it starts (systemd could not tell which " +
        "daemons run here; its units: libvirtd.service (unknown), libvirtd.socket (unknown)).",
      ],
    },
  ];
  for (const c of cases) {
    await t.step(c.name, async () => {
      const dir = await Deno.makeTempDir();
      try {
        const host = await fakeHost(dir, { units: c.units, active: c.active });
        const r = await run(["--check-host"], host.env);
        assert.deepEqual([r.code, r.stderr], [0, ""]);
        assert.deepEqual(r.stdout.trimEnd().split("\n"), c.says);
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    });
  }
});

Deno.test(
  "install.sh --check-host says what SELinux needs: the boolean, and what to decide",
  opts,
  async (t) => {
    const cases: { name: string; selinux: string; bool: string; says: RegExp[]; calls: string[] }[] = [
      {
        name: "enforcing, virt_hooks_unconfined off: the decision and why",
        selinux: "Enforcing",
        bool: "virt_hooks_unconfined --> off",
        says: [
          /^SELinux is Enforcing\.$/m,
          /^SELinux boolean virt_hooks_unconfined is off \(the default\): libvirt runs its hooks confined, .*nft or iptables-restore/m,
          /^Decide: setsebool -P virt_hooks_unconfined on \(every libvirt hook then runs unconfined, as root\), or .*local policy module.* install\.sh does not change it for you\.$/m,
        ],
        calls: ["getenforce", "getsebool virt_hooks_unconfined"],
      },
      {
        name: "enforcing, the boolean on",
        selinux: "Enforcing",
        bool: "virt_hooks_unconfined --> on",
        says: [/^SELinux boolean virt_hooks_unconfined is on: libvirt runs its hooks unconfined/m],
        calls: ["getenforce", "getsebool virt_hooks_unconfined"],
      },
      {
        name: "disabled: nothing said, no boolean asked",
        selinux: "Disabled",
        bool: "",
        says: [/^(?![\s\S]*SELinux)/],
        calls: ["getenforce"],
      },
    ];
    for (const c of cases) {
      await t.step(c.name, async () => {
        const dir = await Deno.makeTempDir();
        try {
          const host = await fakeHost(dir, {
            units: [],
            active: "no systemd",
            selinux: c.selinux,
            bool: c.bool,
          });
          const r = await run(["--check-host"], host.env);
          assert.deepEqual([r.code, r.stderr], [0, ""]);
          for (const say of c.says) assert.match(r.stdout, say);
          assert.deepEqual((await host.calls()).filter((l) => !l.startsWith("systemctl")), c.calls);
        } finally {
          await Deno.remove(dir, { recursive: true });
        }
      });
    }
  },
);

Deno.test({
  name:
    "install.sh installs the man pages and completion (man shows them), relabels for SELinux, uninstalls them",
  ignore: Deno.uid() !== 0,
  ...opts,
  async fn(t) {
    const dir = await Deno.makeTempDir();
    const dest = `${dir}/root`;
    try {
      const host = await fakeHost(dir, {
        units: [...UNITS.virtqemud, ...UNITS.virtnetworkd],
        active: ["virtqemud.service", "virtqemud.socket", "virtnetworkd.service", "virtnetworkd.socket"],
        selinux: "Enforcing",
      });
      const env = { ...host.env, DESTDIR: dest };
      const man8 = `${dest}/usr/local/share/man/man8/libvirt-hook-qemu.8`;
      const man5 = `${dest}/usr/local/share/man/man5/hooks.jsonc.5`;
      const completion = `${dest}/usr/local/share/bash-completion/completions/qemu`;
      await t.step(
        "install: the files, the daemons to restart, restorecon on every installed path",
        async () => {
          const r = await run([], env);
          assert.equal(r.code, 0, r.stderr);
          assert.equal(
            await Deno.readTextFile(man8),
            await Deno.readTextFile(`${ROOT}docs/man/libvirt-hook-qemu.8`),
          );
          assert.equal(
            await Deno.readTextFile(man5),
            await Deno.readTextFile(`${ROOT}docs/man/hooks.jsonc.5`),
          );
          assert.equal(
            await Deno.readTextFile(completion),
            await Deno.readTextFile(`${ROOT}contrib/completion.bash`),
          );
          assert.match(
            r.stdout,
            /^Next: restart virtqemud and virtnetworkd once \(systemctl restart virtqemud\.service virtnetworkd\.service\)/m,
          );
          assert.match(
            r.stdout,
            /^SELinux is Enforcing: restored the labels of what was installed \(restorecon -R\)\.$/m,
          );
          assert.match(r.stdout, /^Decide: setsebool -P virt_hooks_unconfined on/m);
          const manifest = (await Deno.readTextFile(`${dest}/etc/libvirt/hooks/libvirt-hook-qemu/MANIFEST`))
            .trimEnd()
            .split("\n");
          const relabelled = (await host.calls()).filter((l) => l.startsWith("restorecon ")).map((l) =>
            l.replace(`restorecon -R ${dest}`, "")
          );
          assert.deepEqual(relabelled, manifest);
          assert.ok(manifest.includes("/usr/local/share/man/man8/libvirt-hook-qemu.8"));
          assert.ok(manifest.includes("/etc/libvirt/hooks/qemu"));
          // doctor compares the daemons' start with this marker of since when the hook is there.
          assert.ok(manifest.includes("/etc/libvirt/hooks/libvirt-hook-qemu/INSTALLED"));
        },
      );
      const manHere = installed("man") && installed("manpath");
      if (!manHere) {
        console.log("install_host_test.ts: man is not installed here (CI installs man-db): not shown");
      }
      await t.step({
        name: "man 8 libvirt-hook-qemu and man 5 hooks.jsonc show the installed pages",
        ignore: !manHere,
        fn: async () => {
          // /usr/local/share/man is where man-db looks on Debian (manpath.config's MANDATORY_MANPATH) ...
          const path = await new Deno.Command("manpath", { args: ["-g"], stdout: "piped" }).output();
          assert.match(new TextDecoder().decode(path.stdout), /(^|:)\/usr\/local\/share\/man(:|$)/m);
          // ... and there, under DESTDIR, man finds the pages by name and section.
          for (
            const [section, page, heading] of [["8", "libvirt-hook-qemu", "COMMANDS"], [
              "5",
              "hooks.jsonc",
              "ENTRY FIELDS",
            ]]
          ) {
            const shown = await new Deno.Command("man", {
              args: [section!, page!],
              env: { MANPATH: `${dest}/usr/local/share/man`, MANPAGER: "cat", PAGER: "cat", MANWIDTH: "100" },
              stdout: "piped",
              stderr: "piped",
            }).output();
            const text = new TextDecoder().decode(shown.stdout);
            assert.equal(shown.code, 0, new TextDecoder().decode(shown.stderr));
            assert.match(text, new RegExp(`^${heading}$`, "m"));
          }
        },
      });
      const loader = "/usr/share/bash-completion/bash_completion";
      const loaderHere = await Deno.stat(loader).then(() => true, () => false);
      if (!loaderHere) {
        console.log(
          "install_host_test.ts: bash-completion is not installed here (CI installs it): not loaded",
        );
      }
      await t.step({
        name: "bash-completion loads the installed completion for the hook, by its name",
        ignore: !loaderHere,
        fn: async () => {
          const out = await new Deno.Command("bash", {
            args: [
              "--norc",
              "--noprofile",
              "-c",
              `source ${loader}; __load_completion /etc/libvirt/hooks/qemu && complete -p /etc/libvirt/hooks/qemu`,
            ],
            env: { PATH: "/usr/bin:/bin", XDG_DATA_DIRS: `${dest}/usr/local/share:/usr/share` },
            stdout: "piped",
            stderr: "piped",
          }).output();
          assert.equal(
            new TextDecoder().decode(out.stdout),
            "complete -F _libvirt_hook_qemu /etc/libvirt/hooks/qemu\n",
          );
        },
      });
      await t.step("uninstall removes them and names the daemons to restart", async () => {
        const r = await run(["--uninstall"], env);
        assert.equal(r.code, 0, r.stderr);
        for (const f of [man8, man5, completion]) {
          assert.equal(await Deno.stat(f).then(() => true, () => false), false, `${f} is left`);
        }
        assert.match(
          r.stdout,
          /^Restart virtqemud\.service virtnetworkd\.service \(systemctl restart virtqemud\.service virtnetworkd\.service\) so that libvirt stops calling the removed hook\.$/m,
        );
      });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
