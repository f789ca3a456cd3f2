# inspect_build: a BUILD (a store path the host built) and PATHs relative to
# it. Prints the build's real path, then one line per PATH: its kind (dir,
# file, other or missing), its mode in octal and its real path, symlinks
# followed; `-` for what a missing path lacks. The deployer checks a build
# made on the host with these, as it checks its own builds.
build=$1
shift
readlink -f -- "$build"
for rel in "$@"; do
  path=$build/$rel
  if [ -d "$path" ]; then
    kind="dir"
  elif [ -f "$path" ]; then
    kind="file"
  elif [ -e "$path" ]; then
    kind="other"
  else
    echo "missing - -"
    continue
  fi
  printf '%s %s %s\n' "$kind" "$(stat -L -c %a -- "$path")" "$(readlink -f -- "$path")"
done
