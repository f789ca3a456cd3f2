# confirm: context, then the timer's UNIT, the GENERATION and its store
# PATH. Disarms the timer and takes the restore point away (which fails if
# the rollback got there first), then notes the generation as healthy. A
# GENERATION of `-` only discards the restore point of a switch that
# changed nothing.
context "$@"
shift 7
unit=$1 gen=$2 path=$3
systemctl stop "$unit.timer" 2>/dev/null || true
if ! mv "$records/restore" "$records/restore.confirmed" 2>/dev/null; then
  echo "the host has already rolled back" >&2
  exit 3
fi
rm -rf "$records/restore.confirmed"
if [ "$gen" != - ]; then echo "$(date +%s) $gen healthy $path" >>"$records/outcomes"; fi
