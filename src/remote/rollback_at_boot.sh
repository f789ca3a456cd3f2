# rollback_at_boot: the state directory. Run at boot by the boot unit that
# prepare.sh installs. Every armed restore point still on disk belongs to a
# switch that was never confirmed, whose timer the reboot ended: roll each
# back. A rollback that the reboot cut short (`restore.rolling`) resumes.
# A restore point that is not armed (magic rollback off) stays as it is.
state=$1
for records in "$state"/*/; do
  records=${records%/}
  for rp in "$records/restore.rolling" "$records/restore"; do
    [ -f "$rp/argv" ] || continue
    if [ "${rp##*/}" = restore ] && [ ! -f "$rp/armed" ]; then break; fi
    set --
    while IFS= read -r arg; do set -- "$@" "$arg"; done <"$rp/argv"
    /bin/sh "$rp/rollback.sh" "$@" reboot || true
    break
  done
done
