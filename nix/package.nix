# epnix-deploy, built from this repository with nixpkgs' Rust tooling.
{
  lib,
  rustPlatform,
}:
let
  manifest = (lib.importTOML ../Cargo.toml).package;
in
rustPlatform.buildRustPackage {
  pname = manifest.name;
  inherit (manifest) version;

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../Cargo.toml
      ../Cargo.lock
      ../src
    ];
  };
  cargoLock.lockFile = ../Cargo.lock;

  # The unit tests, snapshots included. The integration tests (tests/it)
  # boot test hosts with systemd-nspawn and run `nix`, which a build
  # sandbox cannot do; CI runs them with ./scripts/test.
  cargoTestFlags = [ "--lib" ];

  # No shell completions yet: the command line cannot print them (that
  # needs clap_complete and a `completions` subcommand in src/cli.rs).

  meta = {
    inherit (manifest) description;
    license = lib.licenses.mit;
    mainProgram = "epnix-deploy";
    platforms = lib.platforms.linux;
  };
}
