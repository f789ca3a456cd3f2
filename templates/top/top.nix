# The EPICS top itself, built by EPNix: run `nix develop` here, create the
# application with EPICS's `makeBaseApp.pl` (see the README), and adjust
# what follows.
{ mkEpicsPackage }:
mkEpicsPackage {
  pname = "myTop";
  version = "0.0.1";
  varname = "MY_TOP";

  src = ./.;

  # EPICS support modules, e.g. `epnix.support.StreamDevice`; take
  # `epnix` as an argument above to name them.
  propagatedBuildInputs = [ ];

  meta.description = "My EPICS top";
}
