# EPICS base's libraries as PyPI ships them (epicscorelibs), for the IOC and
# the Channel Access client of the VM test: nixpkgs has no EPICS base. The
# prebuilt wheel, because building EPICS base takes longer than the test.
{
  stdenv,
  buildPythonPackage,
  fetchurl,
  autoPatchelfHook,
  setuptools,
  setuptools-dso,
  numpy,
}:
buildPythonPackage {
  pname = "epicscorelibs";
  version = "7.0.10.99.0.2";
  format = "wheel";

  src = fetchurl {
    url = "https://files.pythonhosted.org/packages/61/81/2e45eb89653a6bdf1056ee701fffda7f6b8ea5774da66f373f6c0b68580d/epicscorelibs-7.0.10.99.0.2-cp313-cp313-manylinux2014_x86_64.whl";
    hash = "sha256-gLkjFbX7yY2Na1x2BCBskD8bmtGgnIIWKyO4imVUy9I=";
  };

  # The wheel's libraries expect a manylinux system: point them at the
  # store's libstdc++ and glibc.
  nativeBuildInputs = [ autoPatchelfHook ];
  buildInputs = [ stdenv.cc.cc.lib ];

  dependencies = [
    setuptools
    setuptools-dso
    numpy
  ];

  pythonImportsCheck = [ "epicscorelibs.path" ];

  meta.platforms = [ "x86_64-linux" ];
}
