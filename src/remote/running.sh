# running: a NONCE, the UNIT_DIR, the OWNER_KEY of unit files, the
# PROFILE_DIR and STATE_DIR of every top, the name of the host's procServ
# profile (not a top), the GENDIR inside a generation, DETAIL (0, 1 or 2),
# WINDOW (seconds) and optionally one TOP. Prints what runs on the host, IOC by IOC, for every top (or only
# TOP), one record per fact, each opened by the nonce: the IOCs' units and
# consoles, systemd's view of them, procServ's child (the IOC itself), its
# restarts, and with DETAIL its CPU, memory, console clients, socket and
# last log line. Reads only.
nonce=$1 unit_dir=$2 owner_key=$3 profile_dir=$4 state_dir=$5 procserv_name=$6 gendir=$7 detail=$8 window=$9 only=${10:-}
now=$(date +%s)
say now "$now"

# The IOCs' units: those whose file carries an owner line.
units='' tops=''
for f in "$unit_dir"/epnix-*.service; do
  [ -f "$f" ] || continue
  top=$(sed -n "s/^$owner_key=//p" "$f" | head -n 1)
  [ -n "$top" ] || continue
  if [ -n "$only" ] && [ "$top" != "$only" ]; then continue; fi
  u=${f##*/}
  console=$(console_of "$f")
  case $console in
    unix:*) ;;
    [0-9]*) console=tcp:$console ;;
    *) console=- ;;
  esac
  say unit "$u $top $console"
  units="$units $u"
  case " $tops " in *" $top "*) ;; *) tops="$tops $top" ;; esac
done

# Every top with a profile, also one with no units left.
for p in "$profile_dir"/*; do
  [ -L "$p" ] || continue
  name=${p##*/}
  case $name in *-link | "$procserv_name") continue ;; esac
  if [ -n "$only" ] && [ "$name" != "$only" ]; then continue; fi
  case " $tops " in *" $name "*) ;; *) tops="$tops $name" ;; esac
done
if [ -n "$only" ]; then
  case " $tops " in *" $only "*) ;; *) tops="$tops $only" ;; esac
fi

for top in $tops; do
  link=- path=- build=- pending=no
  if [ -L "$profile_dir/$top" ]; then
    link=$(readlink "$profile_dir/$top")
    path=$(readlink -f "$profile_dir/$top")
    if [ -L "$path/$gendir/top" ]; then build=$(readlink "$path/$gendir/top"); fi
  fi
  if [ -f "$state_dir/$top/restore/armed" ] || [ -d "$state_dir/$top/restore.rolling" ]; then
    pending=yes
  elif [ -d "$state_dir" ] && ! [ -x "$state_dir" ]; then
    # The state directory is root's: an operator cannot tell.
    pending=unknown
  fi
  say top "$top $link $path $build $pending"
  if [ -f "$state_dir/$top/outcomes" ]; then
    tail -n 50 "$state_dir/$top/outcomes" | while read -r line; do say outcome "$top $line"; done
  fi
  if [ -f "$state_dir/$top/events" ]; then
    tail -n 1 "$state_dir/$top/events" | while read -r line; do say event "$top $line"; done
  fi
done

[ -n "$units" ] || exit 0
# Unit names are plain words.
# shellcheck disable=SC2086
what_runs $units

since=$((now - window))
for u in $units; do
  # Both in one call: `KEY=VALUE` lines, in whatever order systemd gives.
  pid=0 inv=''
  while IFS='=' read -r key value; do
    case $key in
      MainPID) pid=$value ;;
      InvocationID) inv=$value ;;
    esac
  done <<EOF
$(systemctl show --property=MainPID,InvocationID "$u")
EOF
  child=- age=-
  if [ "${pid:-0}" != 0 ]; then
    # The file is one line of PIDs: procServ has one child, the IOC.
    # shellcheck disable=SC2013
    for c in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
      child=$c
      age=$(ps -o etimes= -p "$c" 2>/dev/null | tr -d ' ')
      break
    done
  fi
  # The IOC's own restarts: procServ says `Received a sigChild` for each
  # death of its child, which systemd never sees unless procServ exits too
  # (`--oneshot`). Only this run's lines: a run that ended also logs one
  # when the unit was stopped, which is no crash. Then systemd's automatic
  # restarts (not those a deploy or an operator asked for), in the window.
  this_run=0 recent=0
  if [ -n "$inv" ]; then
    read -r this_run recent <<EOF
$(journalctl --no-pager -o short-unix _SYSTEMD_INVOCATION_ID="$inv" 2>/dev/null |
      awk -v w="$since" '/@@@ Received a sigChild/ { n++; if ($1 >= w) r++ } END { print n + 0, r + 0 }')
EOF
  fi
  scheduled=$(journalctl --no-pager -o cat -u "$u" --since "@$since" 2>/dev/null |
    grep -cF 'Scheduled restart job' || true)
  say ioc "$u $child ${age:--} ${this_run:-0} ${recent:-0} ${scheduled:-0}"
  [ "$detail" -ge 1 ] || continue
  cpu=- rss=- clients=-
  if [ "$child" != - ]; then
    read -r cpu rss <<EOF
$(ps -o pcpu=,rss= -p "$child" 2>/dev/null || echo '- -')
EOF
  fi
  console=$(console_of "$unit_dir/$u")
  case $console in [0-9]*) console=tcp:$console ;; esac
  case $console in
    unix:*)
      sock=${console#unix:}
      # Accepted connections carry the listening socket's path, in state 03.
      clients=$(awk -v p="$sock" '$8 == p && $6 == "03" { n++ } END { print n + 0 }' /proc/net/unix)
      ;;
    tcp:*)
      hex=$(printf '%04X' "${console#tcp:}")
      clients=$(awk -v p=":$hex" 'substr($2, length($2) - 4) == p && $4 == "01" { n++ } END { print n + 0 }' \
        /proc/net/tcp /proc/net/tcp6 2>/dev/null)
      ;;
  esac
  say usage "$u ${cpu:--} ${rss:--} $clients"
  [ "$detail" -ge 2 ] || continue
  mode=- recvq=- sendq=-
  case $console in
    unix:*)
      mode=$(stat -c %a "${console#unix:}" 2>/dev/null || echo -)
      if command -v ss >/dev/null 2>&1; then
        read -r recvq sendq <<EOF
$(ss -Hxl src "${console#unix:}" 2>/dev/null | awk '{ print $3, $4; exit }')
EOF
      fi
      ;;
    tcp:*)
      if command -v ss >/dev/null 2>&1; then
        read -r recvq sendq <<EOF
$(ss -Htl "sport = :${console#tcp:}" 2>/dev/null | awk '{ print $2, $3; exit }')
EOF
      fi
      ;;
  esac
  say socket "$u ${mode:--} ${recvq:--} ${sendq:--}"
  printf '%s last %s\n' "$nonce" "$u"
  journalctl --no-pager -o cat -n 1 -u "$u" 2>/dev/null || true
done
