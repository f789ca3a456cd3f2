# inspect: context, then a NONCE, HISTORY (`yes` or `no`), the profile of
# the host's procServ from Nix and, optionally, store paths (one a line)
# to look for in the host's store. Prints the
# host's state for one top, one record per fact, each opened by the nonce
# (which no file can contain by accident), so unit texts need no escaping.
# With HISTORY, also who made each generation and which IOCs it runs: one
# more read per generation, which only `list` needs.
context "$@"
shift 7
nonce=$1 history=$2 procserv_profile=$3 asked=${4:-}
# Before use_nix: `nix copy` finds nix-store only on the plain SSH PATH.
if command -v nix-store >/dev/null 2>&1; then say nix-store-on-path yes; else say nix-store-on-path no; fi
use_nix
# Which of the asked store paths the host lacks: a deploy sends only those,
# in its switch's call. Tried again: two deploys to a host whose store was
# never used race to create its database, and Nix gives up on a busy one
# without waiting. Store paths are single words.
if [ -n "$asked" ] && command -v nix-store >/dev/null 2>&1; then
  tries=0
  while [ "$tries" -lt 3 ]; do
    if missing=$(printf '%s\n' "$asked" | xargs nix-store --check-validity --print-invalid 2>/dev/null); then
      say store-checked yes
      for p in $missing; do say missing "$p"; done
      break
    fi
    tries=$((tries + 1))
    sleep 0.2
  done
fi
say hostname "$(cat /proc/sys/kernel/hostname)"
# The host's clock: generation ages are its, not the deployer's.
say now "$(date +%s)"
say uid "$(id -u)"
say procserv "$(command -v procServ || true)"
if procServ --help 2>&1 | grep -q -e --oneshot; then say oneshot yes; else say oneshot no; fi
if [ -L "$procserv_profile" ]; then say procserv-profile "$(readlink -f "$procserv_profile")"; fi
say nix-env "$(command -v nix-env || true)"
say systemctl "$(command -v systemctl || true)"
if [ -L "$profile" ]; then say profile-link "$(readlink "$profile")"; fi

# Generations: number, creation time (the link's own mtime, as nix-env reads
# it) and store path; the top's build of each made by epnix-deploy; with
# HISTORY, who made each and which IOCs it runs. A few processes whatever
# the number of generations (one `find` reads them all), so a deploy costs
# the same after hundreds of them.
paths=''
while read -r name mtime path; do
  n=${name#"${profile##*/}"-}
  n=${n%-link}
  # The pattern also matches profiles whose names start with ours.
  case $n in '' | *[!0-9]*) continue ;; esac
  say generation "$n ${mtime%.*} $path"
  # Generations may share a store path (`nix-env --set` of the same one).
  case "$paths " in *" $path/$gendir "*) ;; *) paths="$paths $path/$gendir" ;; esac
done <<EOF
$(find "${profile%/*}" -maxdepth 1 -type l -name "${profile##*/}-*-link" -printf '%f %T@ %l\n' 2>/dev/null)
EOF
if [ -n "$paths" ]; then
  printf '%s builds\n' "$nonce"
  # Store paths are single words. A generation made by hand has no $gendir.
  # shellcheck disable=SC2086
  find $paths -maxdepth 1 -name top -type l -printf '%h %l\n' 2>/dev/null
  if [ "$history" = yes ]; then
    printf '%s history\n' "$nonce"
    # shellcheck disable=SC2086
    find $paths -maxdepth 2 \( -path '*/units/*.service' -printf 'unit %h %f\n' \) -o \
      \( -name meta -exec awk '{ print "meta", FILENAME, $0 }' {} + \) 2>/dev/null
  fi
fi

# What the current generation holds, for a plan to compare with.
current=$(readlink -f "$profile" 2>/dev/null || true)
if [ -n "$current" ] && [ -d "$current/$gendir/units" ]; then
  printf '%s current-units\n' "$nonce"
  for u in "$current/$gendir"/units/*.service; do
    if [ -f "$u" ]; then
      printf '%s current-unit %s\n' "$nonce" "${u##*/}"
      cat "$u"
    fi
  done
  printf '%s current-checks\n' "$nonce"
  cat "$current/$gendir/checks.json"
fi

# Every unit file that looks like ours, with its text.
for f in "$unit_dir"/epnix-*.service; do
  [ -f "$f" ] || continue
  printf '%s unit %s\n' "$nonce" "${f##*/}"
  cat "$f"
done

# What runs: systemd's view of this top's units, their files and processes.
units=''
for f in $(our_units); do units="$units ${f##*/}"; done
# Unit names are plain words.
# shellcheck disable=SC2086
if [ -n "$units" ]; then what_runs $units; fi

# An armed restore point means a switch that is not confirmed (yet): its
# rollback is armed, running, or due at the next boot.
if [ -f "$records/restore/armed" ] || [ -d "$records/restore.rolling" ]; then say rollback-pending yes; fi
if [ -f "$records/events" ]; then
  tail -n 20 "$records/events" | while read -r line; do say event "$line"; done
fi
if [ -f "$records/outcomes" ]; then
  while read -r line; do say outcome "$line"; done <"$records/outcomes"
fi
