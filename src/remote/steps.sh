# steps: HELD, then HELD times NAME COUNT TEXT followed by COUNT
# arguments; then, optionally, NAME TEXT and the rest of the arguments: the
# last step. Runs host-side scripts one after another in one call, where
# each would cost a round trip of its own (`remote::steps`).
#
# The first held step reads the call's stdin (the store paths sent with a
# switch, for import.sh); the others read nothing. A held step runs to its end with its output held back in files, so a
# deployer that goes away cannot cut it short; then its stdout is relayed
# line by line, on a failure the tail of its stderr as `epnix-stderr LINE`,
# and `epnix-step NAME CODE`. A step that fails ends the chain. So does a
# write that fails (the deployer is gone): no further step starts without
# its deployer. The last step streams: it replaces this script.
held=$1
shift
tmp=$(mktemp -d) || exit 1
trap 'rm -rf "$tmp"' EXIT
# The prelude ignores SIGPIPE: a write to a gone deployer fails instead.
relay() { printf '%s\n' "$1" 2>/dev/null || exit 0; }

# run NAME COUNT TEXT ARGS...: the step with the first COUNT of ARGS.
first=yes
run() (
  n=$2 text=$3
  shift 3
  total=$# i=0
  while [ "$i" -lt "$total" ]; do
    a=$1
    shift
    if [ "$i" -lt "$n" ]; then set -- "$@" "$a"; fi
    i=$((i + 1))
  done
  if [ "$first" = no ]; then exec </dev/null; fi
  exec sh -c "$text" epnix-deploy "$@" >"$tmp/out" 2>"$tmp/err"
)

while [ "$held" -gt 0 ]; do
  name=$1 n=$2
  code=0
  run "$@" || code=$?
  first=no
  shift $((3 + n))
  while IFS= read -r line || [ -n "$line" ]; do relay "$line"; done <"$tmp/out"
  if [ "$code" -ne 0 ]; then
    tail -n 20 "$tmp/err" >"$tmp/tail"
    while IFS= read -r line || [ -n "$line" ]; do relay "epnix-stderr $line"; done <"$tmp/tail"
  fi
  relay "epnix-step $name $code"
  if [ "$code" -ne 0 ]; then exit 0; fi
  held=$((held - 1))
done
if [ $# -ge 2 ]; then
  text=$2
  shift 2
  rm -rf "$tmp"
  exec sh -c "$text" epnix-deploy "$@"
fi
