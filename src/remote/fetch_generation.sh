# fetch_generation: context, then a NONCE and a generation NUMBER. Prints
# the units and health checks stored in that generation, or `none` for a
# generation that epnix-deploy did not make.
context "$@"
shift 7
nonce=$1 n=$2
dir=$profile-$n-link/$gendir
if [ ! -d "$dir/units" ]; then
  printf '%s none\n' "$nonce"
  exit 0
fi
for u in "$dir"/units/*.service; do
  [ -f "$u" ] || continue
  printf '%s unit %s\n' "$nonce" "${u##*/}"
  cat "$u"
done
printf '%s checks\n' "$nonce"
cat "$dir/checks.json"
