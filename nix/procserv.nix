# procServ 2.8.0, the first release with `--oneshot`, which every unit of
# epnix-deploy passes (see ./unit.nix). nixpkgs has no procServ; EPNix has
# one (`pkgs.epnix.procServ`), built the same way, but a host should not need
# EPNix's overlay to run the module.
{
  lib,
  stdenv,
  fetchFromGitHub,
  autoreconfHook,
}:
stdenv.mkDerivation (finalAttrs: {
  pname = "procServ";
  version = "2.8.0";

  src = fetchFromGitHub {
    owner = "ralphlange";
    repo = "procServ";
    tag = "v${finalAttrs.version}";
    hash = "sha256-MVifC4mq8tM71YpXFu0u0fGwq6vtbK/jofCJShjfq3Q=";
  };

  # The repository has no generated `configure`.
  nativeBuildInputs = [ autoreconfHook ];

  # The manual needs asciidoc and dblatex; the program does not.
  configureFlags = [ "--disable-doc" ];

  enableParallelBuilding = true;

  meta = {
    description = "Runs a program in the background with its console on a UNIX socket or TCP port";
    homepage = "https://github.com/ralphlange/procServ";
    license = lib.licenses.gpl3Plus;
    mainProgram = "procServ";
    platforms = lib.platforms.linux;
  };
})
