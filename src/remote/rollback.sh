# rollback: context, then REASON (a word: it reaches systemd's command line,
# which expands `$` and `%`): `failed-checks`, `unconfirmed` or `reboot`.
# The one way back after a switch, run by the deployer on a failed check, by
# the armed timer, or at boot. Whoever moves the restore point away first
# owns the outcome, so a late confirmation and a rollback never both happen.
context "$@"
shift 7
reason=$1
use_nix
rp=$records/restore.rolling
if [ ! -d "$records/restore" ] && [ ! -d "$rp" ]; then
  echo "nothing to roll back"
  exit 0
fi
# One rollback at a time. A restore point claimed by a rollback that is no
# longer running (the lock is free) was left half done: this one resumes it.
exec 7>>"$records/rollback.lock"
flock 7
if ! mv "$records/restore" "$rp" 2>/dev/null && [ ! -d "$rp" ]; then
  echo "nothing to roll back"
  exit 0
fi
if [ ! -f "$rp/switched" ]; then
  # The switch never started (its deployer went before it): there is
  # nothing to undo, and no IOC is restarted.
  rm -rf "$rp"
  echo "nothing to roll back: the switch never started"
  exit 0
fi
prev=$(cat "$rp/generation")
# The generation the switch went to, as the switch noted it: empty when it
# kept the generation (or never got to move the profile).
from=none from_path=-
read -r from from_path <"$rp/switched" || true
from=${from:-none} from_path=${from_path:--}
status=0
# Unit names are claimed under the host-wide lock, as the switch does: a
# name another top took meanwhile stays that top's.
exec 8>>"$units_lock"
flock -w 60 8 || status=1
for f in $(our_units); do
  u=${f##*/}
  if [ ! -f "$rp/units/$u" ]; then
    systemctl disable --now --quiet "$u" || status=1
    rm -f "$f"
  fi
done
for f in "$rp"/units/*.service; do
  [ -f "$f" ] || continue
  u=${f##*/}
  cmp -s "$f" "$unit_dir/$u" && continue
  if [ -e "$unit_dir/$u" ] && ! grep -qxF "$marker" "$unit_dir/$u"; then
    echo "not restored $u: another top claimed it meanwhile" >&2
    status=1
    continue
  fi
  install_file "$f" "$unit_dir/$u" || status=1
  echo "$u" >>"$rp/touched"
done
if [ "$prev" = none ]; then
  # A first deploy: there is no generation to go back to, so the profile goes.
  rm -f "$profile"
  generation_links | while read -r _ link; do rm -f "$link"; done
else
  nix-env --profile "$profile" --switch-generation "$prev" || status=1
fi
systemctl daemon-reload || status=1
flock -u 8
for f in "$rp"/units/*.service; do
  [ -f "$f" ] || continue
  u=${f##*/}
  grep -qxF "$marker" "$unit_dir/$u" 2>/dev/null || continue
  systemctl enable --quiet "$u" || status=1
  # Only what the switch touched runs another build or unit now.
  if grep -qxF "$u" "$rp/touched"; then
    systemctl restart "$u" || status=1
    echo "restored $u"
  else
    systemctl start "$u" || status=1
  fi
done
now=$(date +%s)
outcome=unconfirmed
if [ "$reason" = failed-checks ]; then outcome=failed; fi
if [ "$from" != none ]; then echo "$now $from $outcome $from_path" >>"$records/outcomes"; fi
echo "$now $from $prev $reason $status" >>"$records/events"
rm -rf "$rp"
if [ "$status" = 0 ]; then
  echo "rolled back from $from to $prev"
else
  echo "rolled back from $from to $prev, with errors (see above)"
fi
exit "$status"
