# epnix-deploy, built from this repository with nixpkgs' Rust tooling.
{
  lib,
  stdenv,
  rustPlatform,
  installShellFiles,
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
      # Built into the tool: each generation's derivation.
      ../nix/generation.nix
      # A unit test pins its exit code table to the code.
      ../README.md
    ];
  };
  cargoLock.lockFile = ../Cargo.lock;

  # The unit tests, snapshots included. The integration tests (tests/it)
  # boot test hosts with systemd-nspawn and run `nix`, which a build
  # sandbox cannot do; CI runs them with ./scripts/test.
  cargoTestFlags = [ "--lib" ];

    # The tool prints its own completion scripts; a cross build cannot run it.
  nativeBuildInputs = [ installShellFiles ];
  postInstall = lib.optionalString (stdenv.buildPlatform.canExecute stdenv.hostPlatform) ''
    installShellCompletion --cmd epnix-deploy \
      --bash <($out/bin/epnix-deploy completions bash) \
      --fish <($out/bin/epnix-deploy completions fish) \
      --zsh <($out/bin/epnix-deploy completions zsh)
  '';


  meta = {
    inherit (manifest) description;
    license = lib.licenses.mit;
    mainProgram = "epnix-deploy";
    platforms = lib.platforms.linux;
  };
}
