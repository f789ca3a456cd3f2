# `checks.x86_64-linux.nixos-ioc`: a NixOS machine runs an IOC of a small
# EPICS top with the module. The unit becomes active, a PV answers over
# Channel Access and through the IOC console, the description's `%`
# survives systemd's specifier expansion, and a disabled IOC gets no unit.
{
  pkgs,
  # This flake's NixOS module.
  module,
}:
let
  python = pkgs.python313.withPackages (ps: [ (ps.callPackage ./epicscorelibs.nix { }) ]);
  top = pkgs.callPackage ./demo-top.nix { inherit python; };
  caget = pkgs.writeScriptBin "caget" ("#!${python.interpreter}\n" + builtins.readFile ./caget.py);
in
pkgs.testers.runNixOSTest {
  name = "epnix-deploy-nixos-ioc";

  nodes.machine = {
    imports = [ module ];
    services.epnix.iocs = {
      iocDemo = {
        package = top;
        workingDirectory = "iocBoot/iocDemo";
        description = "Demo, 100% NixOS";
        # The machine has no one else to talk to: serve on loopback only.
        environment.EPICS_CAS_INTF_ADDR_LIST = "127.0.0.1";
      };
      iocOff = {
        package = top;
        workingDirectory = "iocBoot/iocDemo";
        enable = false;
      };
    };
    environment.systemPackages = [
      caget
      pkgs.socat
    ];
  };

  testScript = ''
    machine.wait_for_unit("epnix-iocDemo.service")
    machine.wait_until_succeeds(
        "EPICS_CA_AUTO_ADDR_LIST=NO EPICS_CA_ADDR_LIST=127.0.0.1 caget demo:answer | grep -x 42",
        timeout=60,
    )
    machine.wait_until_succeeds(
        "(echo dbl; sleep 1) | socat - UNIX-CONNECT:/run/epics/iocDemo/console | grep demo:answer",
        timeout=30,
    )
    # Only root may reach the console: procServ makes the socket 0666.
    machine.succeed("stat -c %a /run/epics/iocDemo | grep -x 700")
    machine.succeed(
        "systemctl show -p Description epnix-iocDemo.service"
        " | grep -x 'Description=EPICS IOC iocDemo: Demo, 100% NixOS'"
    )
    machine.fail("systemctl cat epnix-iocOff.service")
  '';
}
