# logs: UNIT, FOLLOW (`yes` or `no`), then journalctl's options. Prints the
# unit's journal: procServ's lines and the IOC's output, and systemd's
# about the unit, in UTC. Exit 64 when journalctl cannot read `--since`.
#
# Following, it runs until the deployer's connection closes: stdin is that
# connection, so when the deployer ends (Ctrl-C), journalctl ends here too,
# even if the IOC prints nothing more (a write to the closed connection
# would end it only then).
unit=$1 follow=$2
shift 2
# Unlike a change, a reader ends with its connection.
trap - HUP PIPE
for arg; do
  case $arg in --since=*)
    if ! journalctl --quiet --lines=0 "$arg" >/dev/null 2>&1; then exit 64; fi
    ;;
  esac
done
if [ "$follow" != yes ]; then
  exec journalctl --unit="$unit" --no-pager --output=short-iso --utc "$@"
fi
journalctl --unit="$unit" --no-pager --output=short-iso --utc --follow "$@" </dev/null &
pid=$!
# A background job's stdin is /dev/null: the watcher reads the connection
# through another descriptor.
exec 3<&0
(
  while read -r _ <&3; do :; done
  kill "$pid" 2>/dev/null
) &
watcher=$!
wait "$pid"
status=$?
kill "$watcher" 2>/dev/null
exit "$status"
