# run_check: SECONDS, the COMMAND, and a SCOPE name. Runs an IOC's check
# command in a transient scope of its own, so that its whole process tree
# ends with it: a background child that keeps the output open would
# otherwise hold the deployer far past the timeout. The output goes to a
# file for the same reason. Exit 124: timed out.
secs=$1 cmd=$2 scope=$3
out=$(mktemp)
timeout --kill-after=2 "$secs" systemd-run ${manager_flag:+"$manager_flag"} --quiet --scope --collect --unit="$scope" sh -c "$cmd" >"$out" 2>&1 </dev/null
rc=$?
systemctl stop "$scope.scope" 2>/dev/null || true
cat "$out"
rm -f "$out"
# The check's own status goes on the last line, never as this script's:
# a check that exits 255 must not read as a lost connection.
printf '\nepnix-check-status %s\n' "$rc"
