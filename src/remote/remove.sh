# remove: context, then PURGE (`yes` or `no`). Takes the top off the host:
# stops and removes its units; with PURGE also its profile, its generations
# and its state (but the lock, which this run holds).
context "$@"
shift 7
purge=$1
# A switch whose deployer is gone may still run on the host: wait for it.
mkdir -p "$records"
exec 7>>"$records/rollback.lock"
flock 7
status=0
for f in $(our_units); do
  u=${f##*/}
  systemctl disable --now --quiet "$u" || status=1
  rm -f "$f"
  echo "removed $u"
done
systemctl daemon-reload || status=1
if [ "$purge" = yes ]; then
  generation_links | while read -r n link; do
    rm -f "$link"
    echo "deleted $n"
  done
  rm -f "$profile"
  for f in "$records"/* "$records"/.[!.]*; do
    case ${f##*/} in lock | lock.holder) continue ;; esac
    rm -rf "$f"
  done
fi
exit "$status"
