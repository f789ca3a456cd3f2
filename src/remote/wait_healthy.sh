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
# `systemctl show` for all units at a time, however many there are. Reads
# only; ends when its reader goes away.
#
# Four processes that run on their own feed one awk, which decides: the
# journal follower, the poller (`systemctl show`, each snapshot stamped
# with the time it was asked for), and the ticker. While dozens of IOCs
# start, PID 1 is starved of CPU like everything else and one `systemctl
# show` of 30 units can take most of a second: the ticks and the reading of
# the journal must not wait for it. A unit settles only on a snapshot asked
# for SETTLE seconds after its ready line or later, so a late snapshot
# delays a verdict but never makes one early.
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
# shellcheck disable=SC2317 # called by the trap
finish() {
  for f in "$tmp"/*.pid; do
    if [ -f "$f" ]; then kill "$(cat "$f")" 2>/dev/null; fi
  done
  rm -rf "$tmp"
}
trap finish EXIT

units='' n=0
while [ $# -ge 3 ]; do
  n=$((n + 1))
  units="$units $1"
  export "EPNIX_UNIT_$n=$1" "EPNIX_READY_$n=$2" "EPNIX_SETTLE_$n=$3"
  shift 3
done

# show [PREFIX]: `PREFIX UNIT ACTIVE SUB RESTARTS INVOCATION SINCE_US` per
# unit, one write a line (other writers share the pipe).
show() {
  # shellcheck disable=SC2086 # unit names are plain words
  systemctl show --timestamp=unix -p Id,ActiveState,SubState,NRestarts,InvocationID,ActiveEnterTimestamp $units |
    awk -F= -v p="${1:-}" '
      function out() { if (id != "") { printf "%s%s %s %s %d %s %.0f\n", p, id, a, s, r, i, t; fflush() } id = "" }
      $1 == "Id" { id = $2 } $1 == "ActiveState" { a = $2 } $1 == "SubState" { s = $2 }
      $1 == "NRestarts" { r = $2 } $1 == "InvocationID" { i = ($2 == "" ? "-" : $2) }
      $1 == "ActiveEnterTimestamp" { t = $2; sub(/^@/, "", t); t = (t == "" ? 0 : t * 1000000) }
      /^$/ { out() }
      END { out() }'
}
# now_us: the time, in microseconds.
now_us() {
  now=$(date +%s%N)
  echo "${now%???}"
}

# The journal since the oldest of the units' runs began: every line of a
# current run, tagged with its invocation. The follower keeps only the
# ready lines and procServ's `Received a sigChild` (the IOC died and
# procServ restarted it, unseen by systemd).
since=$(show | awk -v now="$(date +%s)" '
  BEGIN { m = now } $6 > 0 && $6 / 1000000 < m { m = int($6 / 1000000) } END { print m - 1 }')
# mawk (Debian's awk) reads a pipe in blocks: it would sit on the few lines
# of a quiet journal. `-W interactive` makes it read line by line.
interactive=''
if awk -W version 2>/dev/null | grep -q mawk; then interactive='-W interactive'; fi
interval_us=$(awk -v i="$interval" 'BEGIN { printf "%.0f", i * 1000000 }')
start=$(now_us)
echo "0 0" >"$tmp/wake"

# The feeders write whole lines into one pipe, each line in one write, and
# end when it breaks (the decider is gone); the trap ends them anyway.
# Unit names are plain words; $interactive is empty or two words.
mkfifo "$tmp/feed" || exit 1
# shellcheck disable=SC2086,SC2046
{
  {
    journalctl --no-pager -f --since "@$since" -o export \
      --output-fields=_SYSTEMD_UNIT,_SYSTEMD_USER_UNIT,_SYSTEMD_INVOCATION_ID,MESSAGE $(for u in $units; do printf -- '-u %s ' "$u"; done) &
    echo $! >"$tmp/journal.pid"
    wait
  } 2>/dev/null |
    awk $interactive -v n="$n" '
      BEGIN { for (i = 1; i <= n; i++) { unit[ENVIRON["EPNIX_UNIT_" i]] = ENVIRON["EPNIX_READY_" i] } }
      # One write a line: `-W interactive` writes each piece of a `print`
      # on its own, and the other feeders write into the same pipe between
      # them.
      function event(kind) { printf "%s", kind " " u " " inv " " ts "\n"; fflush() }
      /^__REALTIME_TIMESTAMP=/ { ts = substr($0, 22) }
      /^_SYSTEMD_UNIT=/ { u = substr($0, 15) }
      # A unit of a user manager runs inside the system unit user@UID.service.
      /^_SYSTEMD_USER_UNIT=/ { uu = substr($0, 20) }
      /^_SYSTEMD_INVOCATION_ID=/ { inv = substr($0, 24) }
      /^MESSAGE=/ { msg = substr($0, 9) }
      /^$/ {
        if (uu != "") u = uu
        if (u in unit) {
          if (index(msg, "@@@ Received a sigChild")) event("crash")
          else if (unit[u] != "" && index(msg, unit[u])) event("ready")
        }
        u = ""; uu = ""; inv = ""; msg = ""
      }' &
  echo $! >"$tmp/follower.pid"
  # The poller: a snapshot every INTERVAL, or sooner when a unit is due
  # to settle: the decider answers each snapshot in `wake` with when to
  # ask again (`ASKED WHEN`, 0 for a round). The answer to this snapshot,
  # not the last one's: a settle ends on time.
  (
    while :; do
      asked=$(now_us)
      show 'state ' || exit 0
      echo "snapshot $asked" || exit 0
      tries=0 seen='' wake=0
      while [ "$tries" -lt 20 ]; do
        read -r seen wake <"$tmp/wake" || seen=''
        if [ "$seen" = "$asked" ]; then break; fi
        sleep 0.01
        tries=$((tries + 1))
      done
      if [ "$seen" != "$asked" ] || [ -z "$wake" ]; then wake=0; fi
      left=$((wake - $(now_us)))
      pause=$interval
      # Never longer than a round; at once when due.
      if [ "$wake" -gt 0 ] && [ "$left" -le 0 ]; then
        pause=0
      elif [ "$wake" -gt 0 ] && [ "$left" -lt "$interval_us" ]; then
        pause=$((left / 1000000)).$(printf '%06d' $((left % 1000000)))
      fi
      if [ "$pause" != 0 ]; then sleep "$pause"; fi
    done
  ) 2>/dev/null &
  echo $! >"$tmp/poller.pid"
  (
    while :; do
      echo "tick $(now_us)" || exit 0
      sleep "$interval"
    done
  ) 2>/dev/null &
  echo $! >"$tmp/ticker.pid"
  wait
} >"$tmp/feed" &
echo $! >"$tmp/feed.pid"
# The decider: its verdicts are the script's output, and a write that fails
# (the reader is gone) ends it, and so the script.
# shellcheck disable=SC2086
awk $interactive -v n="$n" -v timeout="$timeout" -v start="$start" -v wake="$tmp/wake" '
  function emit(s) { print s; fflush() }
  BEGIN {
    for (i = 1; i <= n; i++) {
      u = ENVIRON["EPNIX_UNIT_" i]
      order[i] = u; line[u] = ENVIRON["EPNIX_READY_" i]; settle[u] = ENVIRON["EPNIX_SETTLE_" i]
    }
  }
  # Journal events, kept by run until a snapshot shows that run.
  $1 == "ready" { if (!(($2, $3) in readyat)) readyat[$2, $3] = $4; next }
  $1 == "crash" { crashed[$2, $3] = 1; next }
  $1 == "state" { active[$2] = $3; sub_[$2] = $4; restarts[$2] = $5; inv[$2] = $6; since_us[$2] = $7; next }
  # A whole snapshot, asked for at $2: the stage of every unit.
  $1 == "snapshot" {
    now = $2; all = 1; soonest = ""
    for (i = 1; i <= n; i++) {
      u = order[i]
      if (!(u in active)) { all = 0; continue }
      # The first run seen is the one being checked: any other is a restart.
      if (!(u in base_inv) && inv[u] != "-") { base_restarts[u] = restarts[u]; base_inv[u] = inv[u] }
      br = (u in base_inv) ? base_restarts[u] : restarts[u]
      bi = (u in base_inv) ? base_inv[u] : inv[u]
      if (active[u] == "failed") { emit("failed " u " the unit failed (" sub_[u] ")"); exit }
      if (restarts[u] + 0 > br + 0 || (inv[u] != "-" && inv[u] != bi)) {
        emit("failed " u " it crashed and systemd restarted it"); exit
      }
      if ((u, inv[u]) in crashed) { emit("failed " u " the IOC exited and procServ restarted it"); exit }
      if (!(u in ready) && (u, inv[u]) in readyat) ready[u] = readyat[u, inv[u]]
      if (active[u] == "active" && line[u] == "" && !(u in ready)) ready[u] = since_us[u]
      if (u in settled) continue
      if (active[u] == "active" && (u in ready)) {
        left = ready[u] + settle[u] * 1000000 - now
        if (left <= 0) { settled[u] = 1; emit("settled " u); continue }
        all = 0
        if (soonest == "" || left < soonest) soonest = left
        if (!(u in settling)) { settling[u] = 1; emit("settling " u) }
      } else {
        all = 0
        if (!(u in starting)) { starting[u] = 1; emit("starting " u) }
      }
    }
    if (all) { emit("done"); exit }
    # The poller asks again when the soonest settling unit is due.
    printf "%s %.0f\n", $2, (soonest == "" ? 0 : now + soonest) > wake; close(wake)
    next
  }
  $1 == "tick" {
    if ($2 - start >= timeout * 1000000) {
      for (i = 1; i <= n; i++) {
        u = order[i]
        if (u in settled) continue
        emit("timeout " u " " ((u in settling) ? "settling" : "starting")); exit
      }
    }
    emit("tick")
  }' <"$tmp/feed"
