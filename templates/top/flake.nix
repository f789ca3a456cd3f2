{
  description = "An EPICS top, deployed with epnix-deploy";

  inputs = {
    # EPNix builds the top; pick its release branch as in EPNix's guide.
    epnix.url = "github:epics-extensions/EPNix/nixos-25.11";
    # The deployment tool. Got it from elsewhere (a fork, a local clone)?
    # Put that address here, or keep this one and give nix (and the tool)
    # `--override-input epnix-deploy <flake reference>`.
    epnix-deploy.url = "github:epics-extensions/epnix-deploy";
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

      # `nix run . -- ioc-server-1 myTop` (or `.#deploy`), from this
      # directory: epnix-deploy, from the input above.
      apps.${system} = {
        deploy = epnix-deploy.apps.${system}.deploy;
        default = self.apps.${system}.deploy;
      };

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
