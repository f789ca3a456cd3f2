# set_profile: a PROFILE and a store PATH. Points the profile at the path
# (a new generation of it, unless it is its newest already), e.g. the host's
# procServ from Nix, as the EPNix guide links it.
use_nix
mkdir -p "${1%/*}"
nix-env --profile "$1" --set "$2"
readlink "$1"
