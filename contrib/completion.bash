# bash completion for libvirt-hook-qemu (/etc/libvirt/hooks/qemu): commands, options, and domain names from the
# config (the hook's hidden "__domains" command) and from "virsh list --all --name", each bounded in time.
# Installed by install.sh as /usr/local/share/bash-completion/completions/qemu (bash-completion loads it for a
# command named qemu) and sourced by nothing else.

_libvirt_hook_qemu_domains() {
  local hook=$1 config=$2
  [[ -x $hook ]] || hook=/etc/libvirt/hooks/qemu
  {
    if [[ -x $hook ]]; then
      if [[ -n $config ]]; then timeout 3 "$hook" __domains --config "$config"; else timeout 3 "$hook" __domains; fi
    fi
    command -v virsh >/dev/null 2>&1 && timeout 2 virsh list --all --name
  } 2>/dev/null | sed '/^$/d' | sort -u
}

_libvirt_hook_qemu() {
  local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
  local commands="check plan status metrics apply remove reload migrate-legacy doctor watch set help"
  local command="" config="" args=0 i word
  for ((i = 1; i < COMP_CWORD; i++)); do
    word=${COMP_WORDS[i]}
    case $word in
      -c | --config) config=${COMP_WORDS[i+1]}; ((i++)) ;;
      -d | --domain | --poll) ((i++)) ;;
      -*) ;;
      *) if [[ -z $command ]]; then command=$word; else ((args++)); fi ;;
    esac
  done
  case $prev in
    -c | --config) COMPREPLY=($(compgen -f -- "$cur")); return ;;
    --poll) COMPREPLY=(); return ;;
    -d | --domain)
      COMPREPLY=($(compgen -W "$(_libvirt_hook_qemu_domains "${COMP_WORDS[0]}" "$config")" -- "$cur")); return ;;
  esac
  local flags="--config --help"
  case $command in
    check) flags+=" --domain" ;;
    status | doctor) flags+=" --json" ;;
    remove) flags+=" --all" ;;
    migrate-legacy) flags+=" --dry-run" ;;
    watch) flags+=" --poll" ;;
    "") flags+=" --version" ;;
  esac
  if [[ $cur == -* ]]; then
    COMPREPLY=($(compgen -W "$flags" -- "$cur"))
  elif [[ -z $command ]]; then
    COMPREPLY=($(compgen -W "$commands" -- "$cur"))
  elif ((args > 0)); then
    COMPREPLY=()
  else
    case $command in
      plan | apply | remove | status | doctor)
        COMPREPLY=($(compgen -W "$(_libvirt_hook_qemu_domains "${COMP_WORDS[0]}" "$config")" -- "$cur")) ;;
      help) COMPREPLY=($(compgen -W "$commands" -- "$cur")) ;;
      set) COMPREPLY=($(compgen -W "add del list" -- "$cur")) ;;
      *) COMPREPLY=() ;;
    esac
  fi
}

complete -F _libvirt_hook_qemu qemu /etc/libvirt/hooks/qemu /etc/libvirt/hooks/qemu.d/libvirt-hook-qemu
