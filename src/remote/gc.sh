# gc: runs the host's garbage collector; prints its closing line, e.g.
# `3 store paths deleted, 1.20 MiB freed`.
use_nix
nix-store --gc 2>&1 | tail -n 1
