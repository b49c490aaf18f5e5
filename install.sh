#!/usr/bin/env bash
# Installs libvirt-hook-qemu as /etc/libvirt/hooks/qemu: a compiled binary where `deno compile` can get its
# runtime, else the pinned Deno binary with the sources and a filled module cache (no network at hook time).
set -euo pipefail

DENO_VERSION=2.9.6
NAME=libvirt-hook-qemu
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# The folders of the program's sources (beside main.ts, config.ts and rules.ts); the source form copies them.
SOURCE_DIRS="config backends hook commands system"
DESTDIR=${DESTDIR:-}
HOOKS=$DESTDIR/etc/libvirt/hooks
LIB=$HOOKS/$NAME
MANIFEST=$LIB/MANIFEST

usage() {
  cat <<EOF
Usage: install.sh [options]
  (no option)    build and install the hook as /etc/libvirt/hooks/qemu (and the network hook)
  --source       skip deno compile: install the Deno binary, the sources and a module cache
  --compiled     fail unless the compiled binary can be built
  --qemu-d       install as /etc/libvirt/hooks/qemu.d/$NAME (libvirt >= 6.5) beside another qemu hook
  --force        install even when the existing config has errors
  --watcher      also install (and, under systemd, start) the watcher service libvirt-hook-qemu-watch
  --uninstall    remove what install put there; keep the config; say which forwards are still live
  --purge        with --uninstall: remove the live forwards too
  --deno-only    only make sure Deno $DENO_VERSION is on PATH (from npm when missing)
  --check-host   install nothing: say which libvirt daemons run here (what to restart) and what SELinux needs
It also installs the man pages libvirt-hook-qemu(8) and hooks.jsonc(5) under /usr/local/share/man and bash
completion under /usr/local/share/bash-completion/completions; says which libvirt daemons run here and which to
restart; and where SELinux is on, restores the labels of what it installed and reports virt_hooks_unconfined.
Environment: DESTDIR installs under another root; DENORT_BIN names a denort binary for deno compile.
EOF
}

mode=install kind=auto qemu_d=0 force=0 purge=0 watcher=0
for arg in "$@"; do
  case $arg in
    --source) kind=source ;;
    --compiled) kind=compiled ;;
    --qemu-d) qemu_d=1 ;;
    --force) force=1 ;;
    --watcher) watcher=1 ;;
    --uninstall) mode=uninstall ;;
    --purge) purge=1 ;;
    --deno-only) mode=deno ;;
    --check-host) mode=host ;;
    -h | --help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $arg" >&2; usage >&2; exit 2 ;;
  esac
done

say() { printf '%s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

MAN_DIR=$DESTDIR/usr/local/share/man
COMPLETION=$DESTDIR/usr/local/share/bash-completion/completions/qemu

# Which libvirt daemons this host has, from systemd: the monolithic libvirtd runs both hooks; with the modular
# daemons virtqemud runs the qemu hook and virtnetworkd the network hook. Each reads its hooks when it starts.
# Sets `daemon_units` (what is there, with its state) and `restart` (the services running now, which must be
# restarted once to know a new hook); `daemons_known` is 0 where systemd cannot tell.
detect_daemons() {
  daemon_units="" restart="" daemons_known=0 idle=""
  command -v systemctl >/dev/null 2>&1 || return 0
  local listed unit state d
  listed=$(timeout 10 systemctl list-unit-files --no-legend --no-pager 'libvirtd*' 'virtqemud*' 'virtnetworkd*' 2>/dev/null) || return 0
  for d in libvirtd virtqemud virtnetworkd; do
    for unit in "$d.service" "$d.socket"; do
      printf '%s\n' "$listed" | grep -q "^$unit[[:space:]]" || continue
      state=$(timeout 10 systemctl is-active "$unit" 2>/dev/null) || true
      # Where systemd does not run (a container, a chroot), is-active answers nothing we know: unknown.
      case $state in active | inactive | failed | activating | deactivating | reloading) daemons_known=1 ;; *) state=unknown ;; esac
      daemon_units="$daemon_units${daemon_units:+, }$unit ($state)"
      if [ "$unit" = "$d.service" ] && [ "$state" = active ]; then restart="$restart${restart:+ }$d"
      elif [ "$unit" = "$d.socket" ] && [ "$state" = active ]; then idle="$idle${idle:+ }$d"; fi
    done
  done
  # A daemon whose socket listens but whose service is not running starts on demand: it finds the hook then.
  local waiting="" i
  for i in $idle; do case " $restart " in *" $i "*) ;; *) waiting="$waiting${waiting:+ }$i" ;; esac; done
  idle=$waiting
}

# What the administrator must do so that libvirt calls the hook: restart exactly the daemons that run now.
say_daemons() {
  detect_daemons
  if [ "$daemons_known" = 0 ]; then
    say "Next: restart libvirtd once (systemctl restart libvirtd; where libvirt runs its modular daemons: systemctl restart virtqemud virtnetworkd), since libvirt looks for hooks when it starts (systemd could not tell which daemons run here${daemon_units:+; its units: $daemon_units})."
    return
  fi
  say "libvirt daemons here: $daemon_units"
  if [ -n "$restart" ]; then
    local units="" d
    for d in $restart; do units="$units $d.service"; done
    say "Next: restart $(echo "$restart" | sed 's/ / and /g') once (systemctl restart$units), since libvirt looks for hooks when its daemon starts$(
      case " $restart " in *" virtqemud "*) echo "; virtqemud runs the qemu hook, virtnetworkd the network hook" ;; esac)."
  fi
  local d
  for d in $idle; do say "$d is not running (socket-activated): it finds the hook when it next starts; no restart needed."; done
  [ -n "$restart$idle" ] || say "No libvirt daemon is running or listening here: the hook is found when one starts."
}

# SELinux (Fedora, RHEL and kin): files under /etc/libvirt/hooks need the policy's labels, and hooks run confined
# unless virt_hooks_unconfined is on. Restores the labels of the installed paths given (none: only reports); says
# what the admin must decide.
selinux_labels() {
  command -v getenforce >/dev/null 2>&1 || return 0
  local mode
  mode=$(timeout 10 getenforce 2>/dev/null) || return 0
  case $mode in Enforcing | Permissive) ;; *) return 0 ;; esac
  [ "$#" -gt 0 ] || { say "SELinux is $mode."; selinux_boolean "$mode"; return 0; }
  local f
  if command -v restorecon >/dev/null 2>&1; then
    for f in "$@"; do timeout 60 restorecon -R "$DESTDIR$f" || say "restorecon could not relabel $f"; done
    say "SELinux is $mode: restored the labels of what was installed (restorecon -R)."
  else
    say "SELinux is $mode but restorecon is missing (policycoreutils): label the hook's files with restorecon -R ${HOOKS#"$DESTDIR"}"
  fi
  selinux_boolean "$mode"
}

selinux_boolean() {
  local mode=$1 bool
  bool=$(timeout 10 getsebool virt_hooks_unconfined 2>/dev/null) || bool=""
  case $bool in
    *"--> on"*) say "SELinux boolean virt_hooks_unconfined is on: libvirt runs its hooks unconfined, so this one may change the firewall." ;;
    *"--> off"*)
      say "SELinux boolean virt_hooks_unconfined is off (the default): libvirt runs its hooks confined, where they may not run nft or iptables-restore as they must, and starts would fail (ausearch -m avc shows the denials)."
      say "Decide: setsebool -P virt_hooks_unconfined on (every libvirt hook then runs unconfined, as root), or keep it off and allow what the hook runs with a local policy module made from those denials. install.sh does not change it for you." ;;
    *) say "SELinux is $mode, but this policy has no boolean virt_hooks_unconfined (an older one): hooks run as libvirt's own domain; if starts fail, ausearch -m avc shows what was denied." ;;
  esac
}

ensure_deno() {
  if command -v deno >/dev/null 2>&1 && deno --version 2>/dev/null | grep -q "^deno $DENO_VERSION "; then
    return
  fi
  if ! command -v npm >/dev/null 2>&1; then
    die "Deno $DENO_VERSION is needed. Install Node.js and npm (apt-get install npm), then: npm install -g deno@$DENO_VERSION"
  fi
  say "Installing Deno $DENO_VERSION from npm"
  npm install -g --no-fund --no-audit --allow-scripts=deno "deno@$DENO_VERSION" >/dev/null 2>&1 ||
    npm install -g --no-fund --no-audit "deno@$DENO_VERSION" >/dev/null
  hash -r
  deno --version | grep -q "^deno $DENO_VERSION " || die "npm installed Deno, but 'deno --version' does not say $DENO_VERSION"
}

if [ "$mode" = deno ]; then
  ensure_deno
  exit 0
fi
if [ "$mode" = host ]; then
  say_daemons
  selinux_labels
  exit 0
fi

hook_path() { if [ "$qemu_d" = 1 ]; then echo "$HOOKS/qemu.d/$NAME"; else echo "$HOOKS/qemu"; fi; }
# The same program serves as the network hook (it tells the two apart by the XML on stdin).
network_path() { if [ "$qemu_d" = 1 ]; then echo "$HOOKS/network.d/$NAME"; else echo "$HOOKS/network"; fi; }
UNIT=$DESTDIR/etc/systemd/system/$NAME-watch.service

# Ours: listed in our manifest. Anything else at that path belongs to someone else.
is_ours() { [ -f "$MANIFEST" ] && grep -qxF "${1#"$DESTDIR"}" "$MANIFEST"; }

installed_cmd() {
  # The installed program, runnable from here (also under DESTDIR).
  local hook
  for hook in "$HOOKS/qemu" "$HOOKS/qemu.d/$NAME"; do
    if is_ours "$hook" && [ -x "$hook" ]; then echo "$hook"; return; fi
  done
}

uninstall() {
  [ -f "$MANIFEST" ] || { say "Nothing to uninstall: $MANIFEST does not exist"; exit 0; }
  local cmd
  cmd=$(installed_cmd)
  if [ -n "$cmd" ]; then
    if [ "$purge" = 1 ]; then
      "$cmd" remove --all || say "Some forwards could not be removed; see above"
    else
      local live
      live=$("$cmd" status 2>/dev/null || true)
      if printf '%s' "$live" | grep -q -- '->'; then
        say "These forwards are still live:"
        printf '%s\n' "$live"
        say "Remove them with: $cmd remove --all   (before uninstalling), or run install.sh --uninstall --purge"
      fi
    fi
  fi
  if [ -f "$UNIT" ] && [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
    systemctl disable --now "$NAME-watch.service" || true
  fi
  local f
  while IFS= read -r f; do
    [ -n "$f" ] && [ "$f" != "${MANIFEST#"$DESTDIR"}" ] && rm -rf "$DESTDIR$f" && say "removed $f"
  done <"$MANIFEST"
  rm -f "$MANIFEST"
  rmdir "$LIB" 2>/dev/null || true
  say "Kept your config in ${HOOKS#"$DESTDIR"}/."
  detect_daemons
  if [ -n "$restart" ]; then
    local units="" d
    for d in $restart; do units="$units $d.service"; done
    say "Restart$units (systemctl restart$units) so that libvirt stops calling the removed hook."
  else
    say "Restart libvirt's daemon (libvirtd, or virtqemud and virtnetworkd) so that it stops calling the removed hook."
  fi
}

if [ "$mode" = uninstall ]; then
  uninstall
  exit 0
fi

ensure_deno
target=$(hook_path)
if [ -e "$target" ] && ! is_ours "$target"; then
  die "$target exists and is not ours; it was left untouched. Move it away, or install beside it with --qemu-d (libvirt >= 6.5 runs every script in qemu.d/)."
fi

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

# 1. Build: the compiled binary when possible, else the source form.
# A young generation of 8 MB: a hook call is short-lived, and with V8's default one, building 1000 forwards'
# rules spends 4 ms in garbage collections that free nothing (peak memory stays the same).
V8_FLAGS="--v8-flags=--min-semi-space-size=8"
built=""
if [ "$kind" != source ]; then
  if (cd "$SRC" && DENO_NO_UPDATE_CHECK=1 deno compile --quiet -P=hook "$V8_FLAGS" \
    --config deno.json --output "$stage/qemu" main.ts) >"$stage/compile.log" 2>&1 &&
    "$stage/qemu" --version 2>/dev/null | grep -q "^$NAME "; then
    built=compiled
  elif [ "$kind" = compiled ]; then
    cat "$stage/compile.log" >&2
    die "deno compile could not build the binary (it downloads its runtime, denort, unless DENORT_BIN names one)"
  else
    if [ -n "${DENORT_BIN:-}" ]; then why="it failed with DENORT_BIN=$DENORT_BIN; see $(tail -n 1 "$stage/compile.log")"
    else why="it could not download its runtime, denort, and DENORT_BIN is not set"; fi
    say "deno compile is not possible here ($why); installing the source form"
  fi
fi
if [ -z "$built" ]; then
  mkdir -p "$stage/$NAME/src" "$stage/$NAME/cache"
  cp "$SRC"/deno.json "$SRC"/deno.lock "$SRC"/main.ts "$SRC"/config.ts "$SRC"/rules.ts "$stage/$NAME/src/"
  for dir in $SOURCE_DIRS; do
    mkdir -p "$stage/$NAME/src/$dir"
    find "$SRC/$dir" -maxdepth 1 -name '*.ts' ! -name '*_test.ts' -exec cp {} "$stage/$NAME/src/$dir/" \;
  done
  cp "$(readlink -f "$(command -v deno)")" "$stage/$NAME/deno"
  # Every module, the lazily loaded ones too: deno cache does not insist on what is only imported dynamically.
  (cd "$stage/$NAME/src" && DENO_DIR="$stage/$NAME/cache" DENO_NO_UPDATE_CHECK=1 \
    deno cache --quiet main.ts commands/cli.ts config/jsonc.ts system/saxes.ts) ||
    die "Cannot fill the module cache (it needs the npm registry once, at install time)"
  # What runs is a bundle of those sources (deno bundle, offline from that cache): one module for what every hook
  # call needs, instead of a graph of a dozen resolved through deno.json and the lock file (~2 ms per call); the
  # operator commands and the JSONC parser (jsonc-parser inlined as a plain module) are split off, loaded only
  # when needed. The sources stay beside it, for reading.
  (cd "$stage/$NAME/src" && DENO_DIR="$stage/$NAME/cache" DENO_NO_UPDATE_CHECK=1 \
    deno bundle --quiet --platform deno --code-splitting --outdir "$stage/$NAME/bundle" main.ts) ||
    die "deno bundle failed"
  cat >"$stage/qemu" <<EOF
#!/bin/sh
# libvirt-hook-qemu, source form: the pinned Deno binary runs the bundled sources offline.
# Its files are beside this script (hooks/) or one level up (hooks/qemu.d/). libvirt runs hooks by their path, so
# the shell finds them without starting a process; through symbolic links (readlink) only where that fails.
case \$0 in */*) here=\${0%/*} ;; *) here=. ;; esac
d=\$here/libvirt-hook-qemu
[ -d "\$d" ] || d=\$here/../libvirt-hook-qemu
if [ ! -d "\$d" ]; then
  here=\$(dirname "\$(readlink -f "\$0")")
  d=\$here/libvirt-hook-qemu
  [ -d "\$d" ] || d=\$here/../libvirt-hook-qemu
fi
export DENO_DIR="\$d/cache" DENO_NO_UPDATE_CHECK=1 DENO_NO_PROMPT=1
# -A: the bundle needs no deno.json (its permission set "hook" allows all, as -A does).
exec "\$d/deno" run --quiet --no-config --no-lock --cached-only --no-prompt --no-check $V8_FLAGS -A "\$d/bundle/main.js" "\$@"
EOF
  chmod 755 "$stage/qemu"
  built=source
fi

# 2. Prove the new hook runs offline, parser included (a fresh state directory, so no cached config helps it).
selftest=$(mktemp -d)
LIBVIRT_HOOK_QEMU_STATE_DIR=$selftest "$stage/qemu" check --config "$SRC/hooks.jsonc" >/dev/null 2>"$stage/selftest.log" ||
  { cat "$stage/selftest.log" >&2; rm -rf "$selftest"; die "the new hook does not run (above); nothing was installed"; }
rm -rf "$selftest"

# 3. Check the config that is there (or the example we are about to install) before activating anything.
mkdir -p "$HOOKS"
config=""
for c in "$HOOKS/hooks.jsonc" "$HOOKS/hooks.json"; do [ -f "$c" ] && { config=$c; break; }; done
if [ -n "$config" ]; then
  say "Checking your config ${config#"$DESTDIR"}:"
  rc=0
  "$stage/qemu" check --config "$config" || rc=$?
  [ "$rc" -le 1 ] || die "the new hook could not run its own check (exit $rc); nothing was installed"
  if [ "$rc" = 1 ]; then
    if [ "$force" = 1 ]; then
      say "The config has errors (above): the guests they name will not start until they are fixed (--force given)"
    else
      die "the config has errors (above); guests they name would not start. Fix it, or install anyway with --force. Nothing was installed."
    fi
  fi
fi

# 4. Install.
first_time=1
[ -f "$MANIFEST" ] && first_time=0
files=()
place() { # place SRC DEST MODE
  mkdir -p "$(dirname "$2")"
  rm -rf "$2.new" && cp -a "$1" "$2.new" && chmod "$3" "$2.new" && rm -rf "$2" && mv "$2.new" "$2"
  files+=("${2#"$DESTDIR"}")
}
mkdir -p "$LIB"
# Since when the hook is there (kept across updates): doctor compares it with the start of libvirt's daemons,
# which look for hooks only when they start. An install from before the marker: the hook's own time.
if [ ! -f "$LIB/INSTALLED" ]; then
  if [ -e "$target" ]; then touch -r "$target" "$LIB/INSTALLED"; else : >"$LIB/INSTALLED"; fi
fi
files+=("${LIB#"$DESTDIR"}/INSTALLED")
if [ "$built" = source ]; then
  for part in deno src bundle cache; do
    rm -rf "$LIB/$part.new" && cp -a "$stage/$NAME/$part" "$LIB/$part.new" && rm -rf "$LIB/$part" && mv "$LIB/$part.new" "$LIB/$part"
    files+=("${LIB#"$DESTDIR"}/$part")
  done
  # Deno caches compiled code by path: warm that cache where the bundle now is, so that libvirt's first call
  # does not compile (nor write into /etc); what was cached under the staging path goes.
  rm -rf "$LIB/cache/gen" "$LIB/cache/v8_code_cache"*
  DENO_DIR="$LIB/cache" DENO_NO_UPDATE_CHECK=1 "$LIB/deno" run --quiet --no-config --no-lock --cached-only --no-prompt \
    --no-check -A "$LIB/bundle/main.js" --version >/dev/null 2>&1 || say "Could not warm the code cache; the first call will do it"
else
  rm -rf "$LIB/deno" "$LIB/src" "$LIB/bundle" "$LIB/cache"
fi
place "$stage/qemu" "$target" 755
net_target=$(network_path)
if [ -e "$net_target" ] && ! is_ours "$net_target"; then
  say "Left ${net_target#"$DESTDIR"} alone (not ours); without our network hook, forwards on hosts where libvirt uses nftables come back only with the watcher (--watcher) or 'qemu reload' after a network restart. --qemu-d installs it in network.d/ instead."
else
  place "$stage/qemu" "$net_target" 755
fi
if [ "$watcher" = 1 ]; then
  mkdir -p "$(dirname "$UNIT")"
  sed "s#@HOOK@#${target#"$DESTDIR"}#" "$SRC/contrib/$NAME-watch.service" >"$UNIT.new" && mv "$UNIT.new" "$UNIT"
  files+=("${UNIT#"$DESTDIR"}")
  if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload && systemctl enable --now "$NAME-watch.service" && say "Started $NAME-watch.service"
  else
    say "Installed ${UNIT#"$DESTDIR"}; enable it with: systemctl enable --now $NAME-watch.service"
  fi
fi
place "$SRC/hooks.schema.json" "$HOOKS/hooks.schema.json" 644
place "$SRC/docs/man/libvirt-hook-qemu.8" "$MAN_DIR/man8/libvirt-hook-qemu.8" 644
place "$SRC/docs/man/hooks.jsonc.5" "$MAN_DIR/man5/hooks.jsonc.5" 644
place "$SRC/contrib/completion.bash" "$COMPLETION" 644
if [ -z "$config" ]; then
  cp "$SRC/hooks.jsonc" "$HOOKS/hooks.jsonc" && chmod 644 "$HOOKS/hooks.jsonc"
  say "Installed the example config ${HOOKS#"$DESTDIR"}/hooks.jsonc (it names a guest \"web1\"; edit it for yours)"
fi
printf '%s\n' "${files[@]}" "${MANIFEST#"$DESTDIR"}" >"$MANIFEST"
selinux_labels "${files[@]}" "${MANIFEST#"$DESTDIR"}"

say "Installed ${target#"$DESTDIR"} ($built form: $(if [ "$built" = compiled ]; then echo 'one self-contained binary'; else echo "Deno $DENO_VERSION + sources + module cache in ${LIB#"$DESTDIR"}, run offline"; fi))"
if [ "$first_time" = 1 ]; then
  say_daemons
else
  say "Updated in place; libvirt's daemon already knows the hook, no restart needed."
fi
say "Check your config any time with: ${target#"$DESTDIR"} check"
# Recommended, not needed: without it, connections through a forward that goes or changes target keep the old one.
if ! PATH=/usr/sbin:/usr/bin:/sbin:/bin command -v conntrack >/dev/null 2>&1; then
  say "Recommended: apt-get install conntrack (the hook then ends the connections of a forward that goes or changes target; see README)"
fi
