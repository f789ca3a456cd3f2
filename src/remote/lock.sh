# lock: context, then WHO (`user@machine`) and the host name the
# configuration expects (empty: no check), and optionally the text of
# inspect.sh and its own arguments (NONCE first). Prints one line and, when
# the lock is taken, holds it while stdin (the deployer's connection) stays
# open:
#   notroot USER | wronghost NAME | busy HOLDER | locked [STALE HOLDER]
# With inspect.sh, after `locked`, what it prints and `NONCE end`: the
# host's state read under the lock, in the same round trip.
# The system's manager needs root; a user's (`--user`) needs that user.
context "$@"
shift 7
who=$1 want=$2
if [ "$manager" = system ] && [ "$(id -u)" != 0 ]; then
  echo "notroot $(id -un)"
  exit 0
fi
name=$(cat /proc/sys/kernel/hostname)
if [ -n "$want" ] && [ "$name" != "$want" ] && [ "${name%%.*}" != "$want" ]; then
  echo "wronghost $name"
  exit 0
fi
mkdir -p "$records"
# Root only: anyone who can open the lock file can hold the lock.
chmod 0700 "${records%/*}" "$records"
lock=$records/lock
exec 9>>"$lock"
chmod 0600 "$lock"
if ! flock -n 9; then
  printf 'busy %s\n' "$(cat "$lock.holder" 2>/dev/null || echo unknown)"
  exit 0
fi
# A holder file on a free lock was left by a deploy that died, or by a reboot.
stale=$(cat "$lock.holder" 2>/dev/null || true)
printf '%s, since %s, pid %s\n' "$who" "$(date -u '+%Y-%m-%d %H:%M:%S UTC')" "$$" >"$lock.holder"
printf 'locked %s\n' "$stale"
if [ $# -gt 2 ]; then
  inspect=$3
  shift 3
  sh -c "$inspect" inspect "$unit_dir" "$top" "$marker" "$profile" "$records" "$gendir" "$units_lock" "$@"
  printf '%s end\n' "$1"
fi
while read -r _; do :; done
rm -f "$lock.holder"
