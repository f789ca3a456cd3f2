# import: a `nix-store --export` stream on stdin: the store paths a switch
# needs that the host lacks, sent in the switch's own call (`steps.sh` gives
# the first step the call's stdin). A stream cut short fails here, and no
# step after it runs.
use_nix
nix-store --import >/dev/null
