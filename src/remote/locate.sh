# locate: UNIT_DIR, the ownership marker's key with its `=`
# (`X-EpnixDeploy-Top=`), then the units of the IOCs asked for. What
# `logs`, `console`, `start`, `stop` and `restart` need to know about the
# host's IOCs, in one round trip:
#   uid UID
#   socat yes|no                 whether the consoles can be reached
#   unit UNIT TOP EXECSTART      every `epnix-*.service`; TOP is `-` without a marker
#   state UNIT ACTIVE ENABLED    each unit asked for that exists, as systemd sees it
unit_dir=$1 key=$2
shift 2
echo "uid $(id -u)"
if command -v socat >/dev/null 2>&1; then echo "socat yes"; else echo "socat no"; fi
for f in "$unit_dir"/epnix-*.service; do
  [ -f "$f" ] || continue
  top=- exec=
  while IFS= read -r line; do
    case $line in
      "$key"*) if [ "$top" = - ]; then top=${line#"$key"}; fi ;;
      ExecStart=*) if [ -z "$exec" ]; then exec=${line#ExecStart=}; fi ;;
    esac
  done <"$f"
  echo "unit ${f##*/} ${top:--} $exec"
done
for u; do
  [ -f "$unit_dir/$u" ] || continue
  echo "state $u $(systemctl is-active "$u") $(systemctl is-enabled "$u" 2>/dev/null)"
done
