# switch: context, then MODE (`set`, `switch` or `stay`), TARGET (a store
# path, a generation number, or `-`), the directory of the units to install,
# GUARDED (`yes` when a restore point protects the switch), then actions
# `remove:U`, `write:U`, `enable:U`, `restart:U`, `start:U`. The whole
# switch, in one round trip.
#
# Exit 20 (`claimed UNIT TOP`): a unit to write belongs to another top or to
# nobody. That is checked under a host-wide lock before anything changes,
# so two tops can never both claim one unit name.
#
# Exit 21 (`rolled-back`): a guarded switch whose restore point is gone:
# the host's rollback has run already, and the switch must not. Otherwise
# the switch marks the restore point `switched` and holds the rollback lock
# until it is done, so a rollback never runs into a switch halfway, and one
# whose switch never started only discards the restore point.
context "$@"
shift 7
mode=$1 target=$2 src=$3 guarded=$4
shift 4
use_nix
if [ "$guarded" = yes ]; then
  mkdir -p "$records"
  exec 7>>"$records/rollback.lock"
  flock 7
  if [ ! -d "$records/restore" ]; then
    echo rolled-back
    exit 21
  fi
fi
mkdir -p "${units_lock%/*}"
exec 8>>"$units_lock"
if ! flock -w 60 8; then
  echo "timed out waiting for $units_lock" >&2
  exit 1
fi
for action; do
  case $action in write:*)
    u=${action#write:}
    if [ -e "$unit_dir/$u" ] && ! grep -qxF "$marker" "$unit_dir/$u"; then
      owner=$(sed -n "s/^${marker%%=*}=//p" "$unit_dir/$u" | head -n 1)
      echo "claimed $u ${owner:--}"
      exit 20
    fi
    ;;
  esac
done
if [ "$guarded" = yes ]; then : >"$records/restore/switched"; fi
set -e
case $mode in
  set)
    mkdir -p "${profile%/*}"
    nix-env --profile "$profile" --set "$target"
    ;;
  switch)
    nix-env --profile "$profile" --switch-generation "$target"
    ;;
esac
if [ "$mode" != stay ]; then
  link=$(readlink "$profile")
  # What the rollback notes as failed, if it comes to that: the generation
  # switched to, not whatever the profile says when the rollback runs.
  if [ "$guarded" = yes ]; then
    printf '%s %s\n' "$(gen_of "$link")" "$(readlink -f "$profile")" >"$records/restore/switched"
  fi
  # A closed connection must not end the switch here (set -e).
  echo "generation $link" || true
fi
reload=no enable='' restart='' start=''
# A user's (`--user`) may not exist yet.
mkdir -p "$unit_dir"
for action; do
  u=${action#*:}
  case $action in
    remove:*)
      systemctl disable --now --quiet "$u" || true
      rm -f "$unit_dir/$u"
      reload=yes
      ;;
    write:*)
      install_file "$src/$u" "$unit_dir/$u"
      reload=yes
      ;;
    enable:*) enable="$enable $u" ;;
    restart:*) restart="$restart $u" ;;
    start:*) start="$start $u" ;;
  esac
done
# A restart for drift may be one because systemd has not loaded the unit as
# it is: reload before restarting too.
if [ $reload = yes ] || [ -n "$restart" ]; then systemctl daemon-reload; fi
# Unit names are plain words.
# shellcheck disable=SC2086
if [ -n "$enable" ]; then systemctl enable --quiet $enable; fi
# shellcheck disable=SC2086
if [ -n "$restart" ]; then systemctl restart $restart; fi
# shellcheck disable=SC2086
if [ -n "$start" ]; then systemctl start $start; fi
