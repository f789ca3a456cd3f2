# The flake's `lib`: helpers for a top's flake that defines `epnixDeploy`.
# Builtins only, so that using them costs a top's flake no nixpkgs.
let
  config = import ./config.nix;
in
{
  # `epnixDeploy` itself if it is valid, or an evaluation error that lists
  # every problem with its attribute path, as the tool would report them:
  #   epnixDeploy = epnix-deploy.lib.checkConfig { hosts = …; tops = …; };
  checkConfig = config.check;

  # The `services.epnix.iocs` that run the IOCs of `top` (one of
  # `epnixDeploy.tops`) on NixOS with the module, in the same units:
  #   services.epnix.iocs = epnix-deploy.lib.nixosIocs self.epnixDeploy.tops.myTop;
  # `healthCheck` is left out: it tells the tool when a deploy succeeded, and
  # `nixos-rebuild` has no such step.
  nixosIocs =
    top:
    builtins.mapAttrs (
      _: ioc: builtins.removeAttrs ioc [ "healthCheck" ] // { inherit (top) package; }
    ) top.iocs;
}
