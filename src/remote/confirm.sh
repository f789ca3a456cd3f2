# confirm: context, then the timer's UNIT, the GENERATION and its store
# PATH, and optionally `wait`: started ahead, it confirms only once the
# deployer says `go` on stdin, and never if the deployer goes first (exit
# 4). Disarms the timer and takes the restore point away (which fails if
# the rollback got there first), then notes the generation as healthy. A
# GENERATION of `-` only discards the restore point of a switch that
# changed nothing.
context "$@"
shift 7
unit=$1 gen=$2 path=$3
if [ "${4:-}" = wait ]; then
  read -r word || exit 4
  [ "$word" = go ] || exit 4
fi
systemctl stop "$unit.timer" 2>/dev/null || true
if ! mv "$records/restore" "$records/restore.confirmed" 2>/dev/null; then
  echo "the host has already rolled back" >&2
  exit 3
fi
rm -rf "$records/restore.confirmed"
if [ "$gen" != - ]; then echo "$(date +%s) $gen healthy $path" >>"$records/outcomes"; fi
