# inspect: context, then a NONCE, HISTORY (`yes` or `no`) and the profile of
# the host's procServ from Nix. Prints the
# host's state for one top, one record per fact, each opened by the nonce
# (which no file can contain by accident), so unit texts need no escaping.
# With HISTORY, also who made each generation and which IOCs it runs: one
# more read per generation, which only `list` needs.
context "$@"
shift 7
nonce=$1 history=$2 procserv_profile=$3
# Before use_nix: `nix copy` finds nix-store only on the plain SSH PATH.
if command -v nix-store >/dev/null 2>&1; then say nix-store-on-path yes; else say nix-store-on-path no; fi
use_nix
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
# it), store path, and the top's build when the generation was made by
# epnix-deploy; then who made it and which IOCs it runs.
generation_links | while read -r n link; do
  path=$(readlink "$link")
  build=-
  if [ -L "$path/$gendir/top" ]; then build=$(readlink "$path/$gendir/top"); fi
  say generation "$n $(stat -c %Y "$link") $path $build"
  if [ "$history" = yes ] && [ -d "$path/$gendir/units" ]; then
    printf '%s meta %s\n' "$nonce" "$n"
    cat "$path/$gendir/meta" 2>/dev/null
    for u in "$path/$gendir"/units/*.service; do
      if [ -f "$u" ]; then echo "unit=${u##*/}"; fi
    done
  fi
done

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
