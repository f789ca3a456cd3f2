# delete: context, then generation NUMBERS. Deletes those generations.
context "$@"
shift 7
use_nix
nix-env --profile "$profile" --delete-generations "$@"
