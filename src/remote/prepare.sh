# prepare: context, then the units this switch touches (restarts, starts or
# removes); the rollback script on stdin. Saves the restore point: the top's
# current units and generation, what the rollback needs, and its own
# arguments for a rollback at boot.
context "$@"
shift 7
rp=$records/restore
rm -rf "$rp" "$rp.rolling"
mkdir -p "$rp/units"
cat >"$rp/rollback.sh"
if [ -L "$profile" ]; then gen_of "$(readlink "$profile")" >"$rp/generation"; else echo none >"$rp/generation"; fi
for f in $(our_units); do cp -p "$f" "$rp/units/"; done
printf '%s\n' "$@" >"$rp/touched"
printf '%s\n' "$unit_dir" "$top" "$marker" "$profile" "$records" "$gendir" "$units_lock" >"$rp/argv"
