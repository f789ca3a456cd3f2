# rollback_at_boot: the state directory. Run at boot by the boot unit that
# arm.sh installs. Every restore point still on disk belongs to a switch
# that was never confirmed, whose timer the reboot ended: roll each back. A
# rollback that the reboot cut short (`restore.rolling`) resumes.
state=$1
for records in "$state"/*/; do
  records=${records%/}
  for rp in "$records/restore" "$records/restore.rolling"; do
    [ -f "$rp/argv" ] || continue
    set --
    while IFS= read -r arg; do set -- "$@" "$arg"; done <"$rp/argv"
    /bin/sh "$rp/rollback.sh" "$@" reboot || true
    break
  done
done
