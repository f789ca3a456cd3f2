# probe: a NONCE, then pairs of an invocation id and a ready line (empty for
# none). Prints, per invocation, whether the line and a crash appeared in
# the output of that run of the unit. The crash is procServ's
# `@@@ Received a sigChild`: without `--oneshot` procServ restarts a dead IOC
# itself and systemd never sees the crash.
nonce=$1
shift
while [ $# -ge 2 ]; do
  id=$1 line=$2
  shift 2
  out=$(journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID="$id" 2>/dev/null || true)
  ready=no crashed=no
  if [ -n "$line" ] && printf '%s\n' "$out" | grep -qF -- "$line"; then ready=yes; fi
  if printf '%s\n' "$out" | grep -qF -- '@@@ Received a sigChild'; then crashed=yes; fi
  printf '%s %s %s %s\n' "$nonce" "$id" "$ready" "$crashed"
done
