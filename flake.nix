{
  description = "Declarative, Nix-native deployment of EPICS IOCs to Linux hosts";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.11";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      # Built with builtins rather than nixpkgs' `lib`, so that the outputs
      # that need no nixpkgs (`lib`, `nixosModules`, `templates`) evaluate
      # without fetching it.
      forAllSystems =
        f:
        builtins.listToAttrs (
          map (system: {
            name = system;
            value = f system nixpkgs.legacyPackages.${system};
          }) systems
        );
    in
    {
      packages = forAllSystems (
        system: pkgs: {
          epnix-deploy = pkgs.callPackage ./nix/package.nix { };
          default = self.packages.${system}.epnix-deploy;
          # nixpkgs has no procServ; the NixOS module runs this one.
          procServ = pkgs.callPackage ./nix/procserv.nix { };
        }
      );

      apps = forAllSystems (
        system: _: {
          # `nix run <this flake>#deploy -- <host> <top>`; a top's flake can
          # re-export it for `nix run .#deploy -- <host> <top>`.
          deploy = {
            type = "app";
            program = "${self.packages.${system}.epnix-deploy}/bin/epnix-deploy";
            meta.description = "Deploy an EPICS top from epnixDeploy to a host";
          };
          default = self.apps.${system}.deploy;
        }
      );

      # `services.epnix.iocs.<name>`: the tool's units, on NixOS.
      nixosModules.default = ./nix/module.nix;

      lib = import ./nix/lib.nix;

      templates = {
        top = {
          path = ./templates/top;
          description = "An EPICS top (EPNix) with epnixDeploy filled in";
        };
        default = self.templates.top;
      };

      checks = forAllSystems (
        system: pkgs:
        {
          # Its build runs the unit tests.
          epnix-deploy = self.packages.${system}.epnix-deploy;
        }
        # The VM test's EPICS base is a prebuilt x86_64 wheel.
        // (
          if system == "x86_64-linux" then
            {
              nixos-ioc = import ./nix/tests/nixos-ioc.nix {
                inherit pkgs;
                module = self.nixosModules.default;
              };
            }
          else
            { }
        )
      );

      devShells = forAllSystems (
        system: pkgs: {
          default = pkgs.mkShell {
            inputsFrom = [ self.packages.${system}.epnix-deploy ];
            packages = [
              pkgs.cargo-insta
              pkgs.clippy
              pkgs.rustfmt
            ];
          };
        }
      );
    };
}
