# conserver: UNIT_DIR OWNER_KEY UNITS_LOCK INCLUDE CONFIG SERVICE PLACEHOLDER.
# Rewrites conserver's INCLUDE file with one console per IOC unit of
# epnix-deploy on the host, of every top: the unit files in UNIT_DIR with a
# line that starts with OWNER_KEY. It writes through a temporary file, and
# only when the text changes; then, if CONFIG (or a file it includes)
# includes INCLUDE and SERVICE runs, it makes conserver re-read its
# configuration with SIGHUP to its main process (Debian's unit has no
# ExecReload). Prints what it found, one fact a line:
#   console NAME uds PATH | console NAME host PORT | unreadable UNIT
#   changed yes|no
#   included yes|no|absent
#   conserver UID USER | conserver none
#   reloaded yes|no|failed
unit_dir=$1 owner_key=$2 units_lock=$3 include=$4 config=$5 service=$6 placeholder=$7
dir=${include%/*}
if [ ! -d "${dir:-/}" ]; then
  echo "$dir does not exist: is conserver installed?" >&2
  exit 1
fi
# Switches hold this lock while they change unit files: the file is written
# from units that no switch is changing, and two runs write one after the
# other, each from what it read.
mkdir -p "${units_lock%/*}"
exec 8>>"$units_lock"
if ! flock -w 60 8; then
  echo "timed out waiting for $units_lock" >&2
  exit 1
fi

# consoles: the file's text on stdout, the facts about each unit on fd 3.
consoles() {
  echo "# Written by epnix-deploy: one console per IOC it runs on this host, of every top."
  echo "# Do not edit: each deploy, rollback and remove of epnix-deploy rewrites it."
  n=0
  for f in "$unit_dir"/epnix-*.service; do
    [ -f "$f" ] || continue
    grep -q "^$owner_key" "$f" || continue
    u=${f##*/}
    ioc=${u#epnix-}
    ioc=${ioc%.service}
    console=$(console_of "$f")
    case $ioc in '' | *[!A-Za-z0-9_-]*) console='' ;; esac
    case $console in
      unix:/*[!A-Za-z0-9_./-]*)
        echo "unreadable $u" >&3
        continue
        ;;
      unix:/*)
        echo "console $ioc { master localhost; type uds; uds ${console#unix:}; }"
        echo "console $ioc uds ${console#unix:}" >&3
        ;;
      [0-9]*)
        # procServ listens on 127.0.0.1 only; `localhost` may be ::1 first.
        echo "console $ioc { master localhost; type host; host 127.0.0.1; port $console; }"
        echo "console $ioc host $console" >&3
        ;;
      *)
        echo "unreadable $u" >&3
        continue
        ;;
    esac
    n=$((n + 1))
  done
  if [ "$n" = 0 ]; then
    # conserver stops when its configuration has no console at all: this
    # one keeps it up where it offers nothing but IOCs, and none is left.
    echo "console $placeholder { master localhost; type noop; motd \"no IOC of epnix-deploy runs on this host\"; }"
  fi
}

tmp=$include.epnix-tmp
if ! consoles 3>&1 >"$tmp"; then
  rm -f "$tmp"
  echo "could not write $tmp" >&2
  exit 1
fi
if cmp -s "$tmp" "$include"; then
  rm -f "$tmp"
  changed=no
elif chmod 0644 "$tmp" && mv -f "$tmp" "$include"; then
  changed=yes
else
  rm -f "$tmp"
  echo "could not replace $include" >&2
  exit 1
fi
echo "changed $changed"

# includes FILE DEPTH: whether FILE, or a file it includes, has the line
# `#include INCLUDE` (conserver follows ten levels of them).
includes() (
  [ "$2" -le 10 ] && [ -r "$1" ] || exit 1
  sed -n 's/^#include[[:space:]]*//p' "$1" | sed 's/[[:space:]]*$//' | {
    while IFS= read -r f; do
      if [ "$f" = "$include" ] || includes "$f" $(($2 + 1)); then exit 0; fi
    done
    exit 1
  }
)
if [ ! -e "$config" ]; then
  included=absent
elif includes "$config" 1; then
  included=yes
else
  included=no
fi
echo "included $included"

pid=$(systemctl show --property=MainPID --value "$service" 2>/dev/null)
reloaded=no
if [ "${pid:-0}" != 0 ] && [ -d "/proc/$pid" ]; then
  echo "conserver $(stat -c '%u %U' "/proc/$pid")"
  if [ "$changed" = yes ] && [ "$included" = yes ]; then
    if kill -HUP "$pid"; then reloaded=yes; else reloaded=failed; fi
  fi
else
  echo "conserver none"
fi
echo "reloaded $reloaded"
