# service: ACTION (`start`, `stop` or `restart`), UNIT_DIR, then for each
# IOC its UNIT, the ownership MARKER of its top and that top's RECORDS
# directory. Runs while the deployer holds those tops' deploy locks, so no
# deploy can arm a rollback meanwhile. First the checks that refuse the
# whole command, for every IOC, before anything changes:
#   exit 20, `moved UNIT`: the unit is gone or is no longer that top's
#   exit 21, `pending UNIT`: a rollback of its top is pending (armed,
#            running, or due at the next boot), which would undo the action
# Then the action, one line per IOC, `did UNIT started|stopped|restarted|
# unchanged|failed`, a blank line, and systemd's view of the units after.
# Exit 1 when an action failed (systemctl's complaint is on stderr).
action=$1 unit_dir=$2
shift 2
case $action in
  start) did=started ;;
  stop) did=stopped ;;
  restart) did=restarted ;;
  *) echo "service.sh: unknown action $action" >&2; exit 2 ;;
esac
check() {
  while [ $# -ge 3 ]; do
    if ! grep -qxF "$2" "$unit_dir/$1" 2>/dev/null; then
      echo "moved $1"
      exit 20
    fi
    if [ -f "$3/restore/armed" ] || [ -d "$3/restore.rolling" ]; then
      echo "pending $1"
      exit 21
    fi
    shift 3
  done
}
check "$@"
status=0 units=
while [ $# -ge 3 ]; do
  u=$1
  shift 3
  units="$units $u"
  was=$(systemctl is-active "$u")
  case $action:$was in
    start:active | stop:inactive | stop:failed)
      echo "did $u unchanged"
      continue
      ;;
  esac
  if systemctl "$action" "$u"; then
    echo "did $u $did"
  else
    echo "did $u failed"
    status=1
  fi
done
echo
props=Id,ActiveState,SubState,ActiveEnterTimestamp
# Unit names are plain words; `--timestamp=unix` is systemd 251 and later.
# shellcheck disable=SC2086
systemctl show --timestamp=unix --property="$props" $units 2>/dev/null ||
  systemctl show --property="$props" $units
exit "$status"
