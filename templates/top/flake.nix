{
  description = "An EPICS top, deployed with epnix-deploy";

  inputs = {
    # EPNix builds the top; pick its release branch as in EPNix's guide.
    epnix.url = "github:epics-extensions/EPNix/nixos-25.11";
        # The flake this template came from (`nix flake init -t <it>#top`):
    # put the address you got epnix-deploy from here (OWNER is not filled in,
    # as the project has no published address yet).
    epnix-deploy.url = "github:OWNER/epnix-deploy";
    # One nixpkgs for the top and the tool.
    epnix-deploy.inputs.nixpkgs.follows = "epnix/nixpkgs";
  };

  outputs =
    {
      self,
      epnix,
      epnix-deploy,
    }:
    let
      system = "x86_64-linux";
      pkgs = import epnix.inputs.nixpkgs {
        inherit system;
        overlays = [
          epnix.overlays.default
          self.overlays.default
        ];
      };
    in
    {
      overlays.default = final: _prev: { myTop = final.callPackage ./top.nix { }; };

      packages.${system}.default = pkgs.myTop;

      # `nix run .#deploy -- ioc-server-1 myTop`, from this directory.
      apps.${system}.deploy = epnix-deploy.apps.${system}.deploy;

      # Where the IOCs of this top run. `checkConfig` stops the evaluation
      # with every mistake and its attribute path; the README of
      # epnix-deploy lists every option.
      epnixDeploy = epnix-deploy.lib.checkConfig {
        hosts.ioc-server-1 = {
          hostname = "ioc-server-1.example.org";
          sshUser = "root";
        };

        tops.myTop = {
          package = self.packages.${system}.default;
          hosts = [ "ioc-server-1" ];
          iocs.myIoc = {
            workingDirectory = "iocBoot/iocMyIoc";
            description = "My IOC";
            environment.EPICS_CA_ADDR_LIST = "10.0.0.255";
          };
        };
      };

      # `nix flake check` evaluates, and so checks, `epnixDeploy`; this
      # check needs the top's store path, not the top built.
      checks.${system}.epnixDeploy = pkgs.writeText "epnixDeploy.json" (
        builtins.unsafeDiscardStringContext (builtins.toJSON self.epnixDeploy)
      );

      # The same IOCs on a NixOS host, in the same units: add this module
      # to the host's NixOS configuration instead of deploying with the tool.
      nixosModules.default = {
        imports = [ epnix-deploy.nixosModules.default ];
        services.epnix.iocs = epnix-deploy.lib.nixosIocs self.epnixDeploy.tops.myTop;
      };
    };
}
