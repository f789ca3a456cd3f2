# break_lock: context. Ends the deploy that holds this top's lock, but only
# when the PID its holder line names really holds the lock file (on fd 9, as
# lock.sh takes it): a stale or forged holder line never gets a process
# killed. Prints `ended PID`, `free`, or `foreign PID...` (held by processes
# that are not a deploy: they are left alone).
context "$@"
lock=$records/lock
pid=$(sed -n 's/.*, pid \([0-9]*\)$/\1/p' "$lock.holder" 2>/dev/null || true)
if [ -n "$pid" ] && [ "$(readlink "/proc/$pid/fd/9" 2>/dev/null)" = "$lock" ]; then
  kill "$pid"
  # Its children may keep the lock's file open a moment longer.
  flock -w 5 "$lock" true || true
  rm -f "$lock.holder"
  echo "ended $pid"
elif [ ! -e "$lock" ] || flock -n "$lock" true; then
  rm -f "$lock.holder"
  echo free
else
  holders=
  for fd in /proc/[0-9]*/fd/*; do
    if [ "$(readlink "$fd" 2>/dev/null)" = "$lock" ]; then
      p=${fd#/proc/}
      holders="$holders ${p%%/*}"
    fi
  done
  echo "foreign$holders"
fi
