# rollback_at_boot: the state directory. Run at boot by the boot unit that
# arm.sh installs. Every restore point still on disk belongs to a switch
# that was never confirmed, whose timer the reboot ended: roll each back. A
# rollback that the reboot cut short runs again from where it claimed the
# restore point.
state=$1
for records in "$state"/*/; do
  records=${records%/}
  if [ ! -d "$records/restore" ] && [ -d "$records/restore.rolling" ]; then
    mv "$records/restore.rolling" "$records/restore"
  fi
  [ -f "$records/restore/argv" ] || continue
  set --
  while IFS= read -r arg; do set -- "$@" "$arg"; done <"$records/restore/argv"
  /bin/sh "$records/restore/rollback.sh" "$@" reboot || true
done
