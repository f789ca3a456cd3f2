# One generation of a top on a host: the top's build, plus the units, health
# checks and origin it was deployed with, in one store path. The deployer
# builds it (src/generation.rs) and sets the profile to it, so that every
# change, of the build or of a unit alone, is a new store path and so a new
# generation, on every Nix version.
#
# Layout, NixOS-system-profile style:
#   <entry> -> <top>/<entry>     every entry of the top, so that
#                                /nix/var/nix/profiles/epnix/<top>/<workingDirectory>
#                                works as in the EPNix guide
#   .epnix-deploy/top -> <top>   the build itself (also what keeps it alive for the GC)
#   .epnix-deploy/units/         the unit files installed with this generation
#   .epnix-deploy/checks.json    each IOC's health checks, for `rollback`
#   .epnix-deploy/meta           who deployed it, from which revision
#
# builtins only: it must build wherever Nix runs, with or without nixpkgs.
# `input` is a JSON file: { name, top, units = { <file> = <text>; }, checks, meta },
# and `topDrv` when the host builds the top: `top` is then the output of that
# derivation, which need not be on the machine that evaluates this.
{ input }:
let
  spec = builtins.fromJSON (builtins.readFile input);
  files = builtins.attrNames spec.units;
  indexed = builtins.genList (i: {
    inherit i;
    file = builtins.elemAt files i;
  }) (builtins.length files);
in
builtins.derivation (
  {
    name = "epnix-${spec.name}-generation";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [
      "-euc"
      ''
        # The builder starts with PATH=/path-not-set.
        export PATH=/bin:/usr/bin
        gen=$out/.epnix-deploy
        mkdir -p "$out" "$gen/units"
        for entry in "$top"/* "$top"/.[!.]*; do
          [ -e "$entry" ] || [ -L "$entry" ] || continue
          ln -s "$entry" "$out/"
        done
        ln -s "$top" "$gen/top"
        printf '%s' "$checks" > "$gen/checks.json"
        printf '%s' "$meta" > "$gen/meta"
        ${builtins.concatStringsSep "\n" (
          map (x: ''printf '%s' "$unit_${toString x.i}" > "$gen/units/${x.file}"'') indexed
        )}
      ''
    ];
    top =
      if spec ? topDrv then
        builtins.appendContext spec.top { ${spec.topDrv}.outputs = [ "out" ]; }
      else
        builtins.storePath spec.top;
    inherit (spec) checks meta;
  }
  // builtins.listToAttrs (
    map (x: {
      name = "unit_${toString x.i}";
      value = spec.units.${x.file};
    }) indexed
  )
)
