# The NixOS module (../module.nix) through the real module system: nixpkgs'
# `lib.evalModules` and option types, with small stand-ins for the NixOS
# options the module sets. tests/it/module.rs evaluates it with each vendored
# nixpkgs `lib` (and NIX_ABORT_ON_WARN=1, so that a deprecation warning is
# an error) and checks what it returns; no nixpkgs and no NixOS needed.
{
  # The real nixpkgs `lib`: `import <nixpkgs>/lib`.
  lib,
}:
let
  inherit (lib) mkOption types;

  # The NixOS options the module sets, declared with the types NixOS gives
  # them (the parts of them the module uses).
  nixosStandIns = {
    options = {
      assertions = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
      warnings = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      systemd.units = mkOption {
        type = types.attrsOf (
          types.submodule {
            options = {
              text = mkOption {
                type = types.nullOr types.str;
                default = null;
              };
              wantedBy = mkOption {
                type = types.listOf types.str;
                default = [ ];
              };
            };
          }
        );
        default = { };
      };
    };
  };

  # A derivation as far as option types and string interpolation see one;
  # nothing builds it.
  fakePackage = name: {
    type = "derivation";
    inherit name;
    outPath = "/nix/store/00000000000000000000000000000000-${name}";
  };

  eval =
    config:
    lib.evalModules {
      modules = [
        nixosStandIns
        ../module.nix
        {
          # The module's only use of `pkgs` is procServ's default, which
          # every evaluation here replaces.
          _module.args.pkgs = throw "the module check has no nixpkgs";
          services.epnix.procServ.package = fakePackage "procServ-2.8.0";
        }
        config
      ];
    };
in
{
  inherit fakePackage;

  # Every option of the module (with those of `services.epnix.iocs.<name>`)
  # as the NixOS manual lists it: name, type, default, example and
  # description, all forced.
  options =
    let
      docs = lib.optionAttrSetToDocList (eval { }).options.services;
    in
    builtins.deepSeq docs (
      map (option: {
        inherit (option) name type;
      }) docs
    );

  # What the module makes of `config`: the messages of the assertions that
  # fail, the warnings, and (unless an assertion fails) the units' texts.
  result =
    config:
    let
      evaluated = (eval config).config;
      failed = map (a: a.message) (lib.filter (a: !a.assertion) evaluated.assertions);
    in
    {
      inherit failed;
      inherit (evaluated) warnings;
      units = if failed == [ ] then lib.mapAttrs (_: unit: unit.text) evaluated.systemd.units else null;
      wantedBy = if failed == [ ] then lib.mapAttrs (_: unit: unit.wantedBy) evaluated.systemd.units else null;
    };

  # The units' texts, forced whatever the assertions say.
  units = config: lib.mapAttrs (_: unit: unit.text) (eval config).config.systemd.units;
}
