# wait_healthy: TIMEOUT (seconds), INTERVAL (seconds, e.g. 0.2), then a
# triple per IOC: UNIT, READY (its ready line, empty for none), SETTLE
# (seconds). Watches every unit at once on the host and streams what it
# sees, one event a line, until all are settled, one fails, or TIMEOUT:
#   tick                     every INTERVAL, so the reader knows it lives
#   starting UNIT | settling UNIT    when a unit enters that stage
#   settled UNIT             ready, then up SETTLE seconds with no restart
#   failed UNIT REASON...    the unit failed, restarted, or its IOC died
#   timeout UNIT STAGE       TIMEOUT passed; the first unit not settled
#   done                     every unit settled
# A unit is ready when its ready line appears in this run's output (its
# InvocationID), timed by the line's own journal timestamp; without a ready
# line, when it became active. One journal follower for all units, and one
# `systemctl show` a round, however many units there are. Reads only; ends
# when its reader goes away.
timeout=$1 interval=$2
shift 2
# Ahead of the IOCs it watches: dozens of them starting at once on a small
# host must not starve the rounds (root only; as a user, as it is). Each
# service is a session of its own, and the kernel shares the CPU between
# sessions (autogroups) before it looks at a process's nice value: the
# session's own niceness is what counts against the IOCs.
renice -n -10 $$ >/dev/null 2>&1 || true
{ echo -10 >"/proc/$$/autogroup"; } 2>/dev/null || true
tmp=$(mktemp -d) || exit 1
follower=''
# shellcheck disable=SC2317 # called by the trap
finish() {
  if [ -f "$tmp/journal.pid" ]; then kill "$(cat "$tmp/journal.pid")" 2>/dev/null; fi
  if [ -n "$follower" ]; then kill "$follower" 2>/dev/null; fi
  rm -rf "$tmp"
}
trap finish EXIT
# A write that fails means the deployer is gone: stop watching.
emit() { printf '%s\n' "$*" || exit 0; }

units='' n=0
while [ $# -ge 3 ]; do
  n=$((n + 1))
  units="$units $1"
  printf '%s\n' "$2" >"$tmp/ready-line.$1"
  echo "$3" >"$tmp/settle.$1"
  shift 3
done

# show: `UNIT ACTIVE SUB RESTARTS INVOCATION SINCE_US` per unit.
show() {
  # shellcheck disable=SC2086 # unit names are plain words
  systemctl show --timestamp=unix -p Id,ActiveState,SubState,NRestarts,InvocationID,ActiveEnterTimestamp $units |
    awk -F= '
      function out() { if (id != "") printf "%s %s %s %d %s %.0f\n", id, a, s, r, i, t; id = "" }
      $1 == "Id" { id = $2 } $1 == "ActiveState" { a = $2 } $1 == "SubState" { s = $2 }
      $1 == "NRestarts" { r = $2 } $1 == "InvocationID" { i = ($2 == "" ? "-" : $2) }
      $1 == "ActiveEnterTimestamp" { t = $2; sub(/^@/, "", t); t = (t == "" ? 0 : t * 1000000) }
      /^$/ { out() }
      END { out() }'
}

# The journal since the oldest of the units' runs began: every line of a
# current run, tagged with its invocation. The follower keeps only the
# ready lines and procServ's `Received a sigChild` (the IOC died and
# procServ restarted it, unseen by systemd).
since=$(show | awk -v now="$(date +%s)" '
  BEGIN { m = now } $6 > 0 && $6 / 1000000 < m { m = int($6 / 1000000) } END { print m - 1 }')
i=0
for u in $units; do
  i=$((i + 1))
  export "EPNIX_UNIT_$i=$u"
  read -r line <"$tmp/ready-line.$u" || line=''
  export "EPNIX_READY_$i=$line"
done
# mawk (Debian's awk) reads a pipe in blocks: it would sit on the few lines
# of a quiet journal. `-W interactive` makes it read line by line.
interactive=''
if awk -W version 2>/dev/null | grep -q mawk; then interactive='-W interactive'; fi
# The follower is journalctl and awk: both are ended with the script. Unit
# names are plain words; $interactive is empty or two words.
# shellcheck disable=SC2086,SC2046
{
  journalctl --no-pager -f --since "@$since" -o export \
    --output-fields=_SYSTEMD_UNIT,_SYSTEMD_USER_UNIT,_SYSTEMD_INVOCATION_ID,MESSAGE $(for u in $units; do printf -- '-u %s ' "$u"; done) &
  echo $! >"$tmp/journal.pid"
  wait
} 2>/dev/null |
  awk $interactive -v n="$n" '
    BEGIN { for (i = 1; i <= n; i++) { unit[ENVIRON["EPNIX_UNIT_" i]] = ENVIRON["EPNIX_READY_" i] } }
    /^__REALTIME_TIMESTAMP=/ { ts = substr($0, 22) }
    /^_SYSTEMD_UNIT=/ { u = substr($0, 15) }
    # A unit of a user manager runs inside the system unit user@UID.service.
    /^_SYSTEMD_USER_UNIT=/ { uu = substr($0, 20) }
    /^_SYSTEMD_INVOCATION_ID=/ { inv = substr($0, 24) }
    /^MESSAGE=/ { msg = substr($0, 9) }
    /^$/ {
      if (uu != "") u = uu
      if (u in unit) {
        if (index(msg, "@@@ Received a sigChild")) { print "crash", u, inv, ts; fflush() }
        else if (unit[u] != "" && index(msg, unit[u])) { print "ready", u, inv, ts; fflush() }
      }
      u = ""; uu = ""; inv = ""; msg = ""
    }' >"$tmp/events" &
follower=$!

start=$(date +%s)
seen=0
while :; do
  now=$(date +%s%N)
  now=${now%???}
  show >"$tmp/states"
  # New lines from the follower since the last round.
  total=$(wc -l <"$tmp/events")
  if [ "$total" -gt "$seen" ]; then
    sed -n "$((seen + 1)),${total}p" "$tmp/events" >"$tmp/new"
    seen=$total
  else
    : >"$tmp/new"
  fi
  all=yes
  # The soonest a settling unit settles, in microseconds from now: the
  # round waits no longer than that, so a settle ends on time.
  soonest=''
  while read -r u active sub restarts inv since_us; do
    # The first run seen is the one being checked: any other is a restart.
    if [ ! -f "$tmp/base.$u" ] && [ "$inv" != - ]; then echo "$restarts $inv" >"$tmp/base.$u"; fi
    base_restarts=$restarts base_inv=$inv
    if [ -f "$tmp/base.$u" ]; then read -r base_restarts base_inv <"$tmp/base.$u"; fi
    if [ "$active" = failed ]; then
      emit "failed $u the unit failed ($sub)"
      exit 0
    fi
    if [ "$restarts" -gt "$base_restarts" ] || { [ "$inv" != - ] && [ "$inv" != "$base_inv" ]; }; then
      emit "failed $u it crashed and systemd restarted it"
      exit 0
    fi
    while read -r kind eu einv ets; do
      if [ "$eu" != "$u" ] || [ "$einv" != "$inv" ]; then continue; fi
      case $kind in
        crash)
          emit "failed $u the IOC exited and procServ restarted it"
          exit 0
          ;;
        ready) if [ ! -f "$tmp/ready.$u" ]; then echo "$ets" >"$tmp/ready.$u"; fi ;;
      esac
    done <"$tmp/new"
    read -r line <"$tmp/ready-line.$u" || line=''
    if [ "$active" = active ] && [ -z "$line" ] && [ ! -f "$tmp/ready.$u" ]; then
      echo "$since_us" >"$tmp/ready.$u"
    fi
    if [ -f "$tmp/settled.$u" ]; then continue; fi
    if [ "$active" = active ] && [ -f "$tmp/ready.$u" ]; then
      read -r ready <"$tmp/ready.$u"
      read -r settle <"$tmp/settle.$u"
      left=$((ready + settle * 1000000 - now))
      if [ "$left" -le 0 ]; then
        : >"$tmp/settled.$u"
        emit "settled $u"
        continue
      fi
      all=no
      if [ -z "$soonest" ] || [ "$left" -lt "$soonest" ]; then soonest=$left; fi
      if [ ! -f "$tmp/settling.$u" ]; then
        : >"$tmp/settling.$u"
        emit "settling $u"
      fi
    else
      all=no
      if [ ! -f "$tmp/starting.$u" ]; then
        : >"$tmp/starting.$u"
        emit "starting $u"
      fi
    fi
  done <"$tmp/states"
  if [ $all = yes ]; then
    emit "done"
    exit 0
  fi
  if [ $(($(date +%s) - start)) -ge "$timeout" ]; then
    for u in $units; do
      [ -f "$tmp/settled.$u" ] && continue
      if [ -f "$tmp/settling.$u" ]; then emit "timeout $u settling"; else emit "timeout $u starting"; fi
      exit 0
    done
  fi
  emit tick
  pause=$interval
  if [ -n "$soonest" ] && [ "$soonest" -lt 1000000 ]; then
    pause=$(printf '0.%06d' "$soonest")
    # Never longer than a round.
    pause=$(awk -v a="$pause" -v b="$interval" 'BEGIN { print (a < b ? a : b) }')
  fi
  sleep "$pause"
done
