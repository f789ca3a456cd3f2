# prepare: context, then MAGIC (`yes` or `no`), the timer's UNIT name,
# SECONDS, the boot unit's name, the state directory, the rollback script's
# text, the boot script's text, then the units this switch touches
# (restarts, starts or removes).
#
# Saves the restore point: the top's current units and generation, the
# rollback script, and its own arguments for a rollback at boot. With MAGIC
# it also arms the host to roll back by itself unless confirmed in time, and
# makes sure a reboot cannot lose that promise: the timer lives in /run, so a
# unit on disk rolls back at boot whatever armed restore point is left. The
# restore point counts as armed (`armed`) only once all of that is in place.
#
# The texts come as arguments, not on stdin: a deployer that dies while
# sending cannot leave half a rollback script behind.
context "$@"
shift 7
magic=$1 unit=$2 secs=$3 boot=$4 state=$5 rollback_text=$6 boot_text=$7
shift 7
rp=$records/restore
# A switch whose deployer is gone may still run on the host: wait for it.
mkdir -p "$records"
exec 7>>"$records/rollback.lock"
flock 7
# A stray timer of an earlier switch must not fire into this one.
systemctl stop "$unit.timer" 2>/dev/null || true
if [ -d "$rp.rolling" ]; then
  echo "a rollback of $top is running" >&2
  exit 1
fi
rm -rf "$rp"
mkdir -p "$rp/units"
printf '%s\n' "$rollback_text" >"$rp/rollback.sh"
if [ -L "$profile" ]; then gen_of "$(readlink "$profile")" >"$rp/generation"; else echo none >"$rp/generation"; fi
for f in $(our_units); do cp -p "$f" "$rp/units/"; done
printf '%s\n' "$@" >"$rp/touched"
printf '%s\n' "$unit_dir" "$top" "$marker" "$profile" "$records" "$gendir" "$units_lock" >"$rp/argv"

# The boot unit also resumes a rollback that a reboot cut short, magic
# rollback or not.
set -e
# Deploys of other tops may write these two files at the same time: each
# writes its own temporary file, and the renames are atomic.
printf '%s\n' "$boot_text" >"$state/rollback-at-boot.sh.$$"
mv -f "$state/rollback-at-boot.sh.$$" "$state/rollback-at-boot.sh"
mkdir -p "$unit_dir"
printf '%s\n' \
  '# Written by epnix-deploy: rolls back switches that a reboot left unconfirmed.' \
  '[Unit]' \
  'Description=epnix-deploy: roll back unconfirmed switches after a reboot' \
  "After=$boot_after" \
  '' \
  '[Service]' \
  'Type=oneshot' \
  "ExecStart=/bin/sh $state/rollback-at-boot.sh $state" \
  '' \
  '[Install]' \
  "WantedBy=$boot_target" >"$unit_dir/$boot.$$"
if cmp -s "$unit_dir/$boot.$$" "$unit_dir/$boot"; then
  rm -f "$unit_dir/$boot.$$"
else
  chmod 0644 "$unit_dir/$boot.$$"
  mv -f "$unit_dir/$boot.$$" "$unit_dir/$boot"
  systemctl daemon-reload
fi
systemctl is-enabled --quiet "$boot" 2>/dev/null || systemctl enable --quiet "$boot"
[ "$magic" = yes ] || exit 0
systemctl reset-failed "$unit.service" "$unit.timer" 2>/dev/null || true
# Timers default to a minute of accuracy. The heartbeats restart the timer,
# which the default start rate limit (5 in 10 s) would soon refuse.
systemd-run ${manager_flag:+"$manager_flag"} --quiet --unit="$unit" --on-active="$secs" --timer-property=AccuracySec=100ms \
  --timer-property=StartLimitIntervalSec=0 \
  --description="epnix-deploy: roll back an unconfirmed switch of $top" \
  /bin/sh "$rp/rollback.sh" "$unit_dir" "$top" "$marker" "$profile" "$records" "$gendir" "$units_lock" unconfirmed
: >"$rp/armed"
