# The shared prelude of every host-side script of epnix-deploy: it is put in
# front of each one (src/remote/mod.rs). Values arrive only as positional
# arguments; names and paths come from the deployer's `layout`, never from
# here.
set -u
# A change to the host must never stop halfway because the connection that
# started it closed: its output then goes nowhere, and it goes on.
trap '' HUP PIPE

# `manager` (set on the line before this prelude): the systemd manager that
# runs the IOCs, `system`, or `user` for the user's own (`--user`). With
# `user`, every `systemctl` and `journalctl` of the scripts is the user's;
# `systemd-run` gets `$manager_flag` (a program, not a function, may run
# it); the tool's boot unit is wanted by the target that manager reaches at
# its start.
# shellcheck disable=SC2034,SC2154,SC2317
case $manager in
  user)
    systemctl() { command systemctl --user "$@"; }
    journalctl() { command journalctl --user "$@"; }
    manager_flag=--user boot_target=default.target boot_after=basic.target
    ;;
  *)
    manager_flag='' boot_target=multi-user.target boot_after=local-fs.target
    ;;
esac

# The functions below are a library: each script calls only those it needs,
# and reads only some of the context. shellcheck (run by scripts/test on the
# prelude and a script together) would call the rest unreachable (SC2317) and
# the variables unused (SC2034): hence the directives.

# context UNIT_DIR TOP MARKER PROFILE RECORDS GENDIR UNITS_LOCK: the seven
# arguments every script about one top starts with (`remote::context`); the
# script then does `shift 7` and reads its own.
# shellcheck disable=SC2034,SC2317
context() {
  unit_dir=$1 top=$2 marker=$3 profile=$4 records=$5 gendir=$6 units_lock=$7
}

# Multi-user Nix and NixOS put their tools outside a non-interactive PATH.
# shellcheck disable=SC2317
use_nix() {
  PATH="$PATH:/nix/var/nix/profiles/default/bin:/run/current-system/sw/bin"
}

# gen_of LINK: the generation number in a profile link, e.g. `top-12-link`.
# shellcheck disable=SC2317
gen_of() {
  n=${1%-link}
  echo "${n##*-}"
}

# our_units: the unit files that carry this top's ownership marker.
# shellcheck disable=SC2317
our_units() {
  for f in "$unit_dir"/epnix-*.service; do
    [ -f "$f" ] || continue
    if grep -qxF "$marker" "$f"; then echo "$f"; fi
  done
}

# generation_links: every generation link of the profile, as `N LINK` lines.
# The glob also matches profiles whose names start with ours ("a-b-1-link"
# for "a"): those fail the number check.
# shellcheck disable=SC2317
generation_links() {
  for link in "$profile"-*-link; do
    [ -L "$link" ] || continue
    n=${link##*/}
    n=${n#"${profile##*/}"-}
    n=${n%-link}
    case $n in '' | *[!0-9]*) continue ;; esac
    echo "$n $link"
  done
}

# install_file SOURCE DEST: copies a unit file into place through a
# temporary file, so systemd never reads half of one.
# shellcheck disable=SC2317
install_file() {
  cp "$1" "$2.epnix-tmp" && chmod 0644 "$2.epnix-tmp" && mv -f "$2.epnix-tmp" "$2"
}

# say KEY VALUE: one record of a report, opened by the script's `$nonce`
# (which no file can contain by accident), so texts after it need no
# escaping.
# shellcheck disable=SC2317,SC2154
say() {
  printf '%s %s %s\n' "$nonce" "$1" "$2"
}

# what_runs UNIT...: systemd's view of the units (a `show` record), and for
# each running one the procServ that runs and the one its file names now,
# the time its file changed, and the directory its IOC process (procServ's
# child) runs in: what drift is judged from (`host::Process`).
# shellcheck disable=SC2317,SC2154
what_runs() {
  props=Id,ActiveState,SubState,MainPID,NRestarts,InvocationID,ActiveEnterTimestamp,ExecMainStartTimestamp,NeedDaemonReload,UnitFileState
  printf '%s show\n' "$nonce"
  # `--timestamp=unix` is systemd 251 and later.
  systemctl show --timestamp=unix --property="$props" "$@" 2>/dev/null ||
    systemctl show --property="$props" "$@"
  for u in "$@"; do
    pid=$(systemctl show --property=MainPID --value "$u")
    cwd=-
    if [ "${pid:-0}" != 0 ]; then
      # Only root (or the unit's user) reads which binary runs: an
      # operator's status does without (no drift is claimed from it).
      if exe=$(readlink "/proc/$pid/exe" 2>/dev/null); then
        want=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$unit_dir/$u" | head -n 1)
        say procserv-of "$u $exe $(readlink -f "$want" 2>/dev/null || echo -)"
      fi
      # The file is one line of PIDs: its words are what we want.
      # shellcheck disable=SC2013
      for child in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
        cwd=$(readlink "/proc/$child/cwd" 2>/dev/null || echo -)
        break
      done
    fi
    say process "$u $(stat -c %Y "$unit_dir/$u") $cwd"
  done
}

# console_of UNIT_FILE: procServ's console in the unit, `unix:PATH` or a TCP
# port, or nothing. It is the word before the startup script, the last word
# of ExecStart= (quoted when it holds spaces). Neither form is ever quoted,
# and no other word before the script can end like that.
# shellcheck disable=SC2317
console_of() {
  sed -nE 's/^ExecStart=.* (unix:[^ "]+|[0-9]+) ("([^"\\]|\\.)*"|[^ "]+)$/\1/p' "$1" | head -n 1
}
