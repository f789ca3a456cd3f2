# arm: context, then the timer's UNIT name, SECONDS, the boot unit's name
# and the state directory; the boot script on stdin. Arms the host to run
# the restore point's rollback by itself unless confirmed in time, and makes
# sure a reboot cannot lose that promise: the timer lives in /run, so a unit
# on disk rolls back at boot whatever restore point is left.
context "$@"
shift 7
unit=$1 secs=$2 boot=$3 state=$4
cat >"$state/rollback-at-boot.sh.epnix-tmp"
mv -f "$state/rollback-at-boot.sh.epnix-tmp" "$state/rollback-at-boot.sh"
printf '%s\n' \
  '# Written by epnix-deploy: rolls back switches that a reboot left unconfirmed.' \
  '[Unit]' \
  'Description=epnix-deploy: roll back unconfirmed switches after a reboot' \
  'After=local-fs.target' \
  '' \
  '[Service]' \
  'Type=oneshot' \
  "ExecStart=/bin/sh $state/rollback-at-boot.sh $state" \
  '' \
  '[Install]' \
  'WantedBy=multi-user.target' >"$unit_dir/$boot.epnix-tmp"
if cmp -s "$unit_dir/$boot.epnix-tmp" "$unit_dir/$boot"; then
  rm -f "$unit_dir/$boot.epnix-tmp"
else
  chmod 0644 "$unit_dir/$boot.epnix-tmp"
  mv -f "$unit_dir/$boot.epnix-tmp" "$unit_dir/$boot"
  systemctl daemon-reload
fi
systemctl is-enabled --quiet "$boot" 2>/dev/null || systemctl enable --quiet "$boot"
systemctl stop "$unit.timer" 2>/dev/null || true
systemctl reset-failed "$unit.service" "$unit.timer" 2>/dev/null || true
# Timers default to a minute of accuracy. The heartbeats restart the timer,
# which the default start rate limit (5 in 10 s) would soon refuse.
systemd-run --quiet --unit="$unit" --on-active="$secs" --timer-property=AccuracySec=100ms \
  --timer-property=StartLimitIntervalSec=0 \
  --description="epnix-deploy: roll back an unconfirmed switch of $top" \
  /bin/sh "$records/restore/rollback.sh" "$unit_dir" "$top" "$marker" "$profile" "$records" "$gendir" "$units_lock" unconfirmed
