# NixOS module: `services.epnix.iocs.<name>` runs EPICS IOCs under procServ
# and systemd, with the unit epnix-deploy installs on other Linux hosts.
#
# The options are those of an IOC in `epnixDeploy`, plus `package` (on NixOS
# there is no top to deploy: each IOC names its top's build) and EPNix's
# `procServ.options`; `healthCheck` is left out, as it only tells the tool
# when a deploy succeeded. The unit comes from ./unit.nix, the twin of the
# tool's renderer, and the checks from ./config.nix, the twin of the tool's.
# Two differences, both on purpose: procServ's `--chdir` is the top's store
# path rather than a profile (a new build changes the unit, and NixOS
# restarts the IOC, as the tool would), and the unit carries no
# `X-EpnixDeploy-Top=` marker, so the tool refuses to overwrite or remove it
# if it is ever pointed at this host.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.epnix;
  schema = import ./config.nix;
  unit = import ./unit.nix;

  # An IOC's options as `epnixDeploy` spells them, for the shared checks.
  asDeployConfig =
    ioc:
    {
      inherit (ioc)
        workingDirectory
        startupScript
        environment
        enable
        ;
      procServ.console = ioc.procServ.console;
    }
    // lib.optionalAttrs (ioc.description != null) { inherit (ioc) description; };

  iocPath = name: "services.epnix.iocs.${lib.strings.escapeNixIdentifier name}";

  iocModule =
    { name, ... }:
    {
      options = {
        enable = lib.mkOption {
          type = lib.types.bool;
          default = true;
          description = "Whether to run this IOC. A disabled IOC gets no unit.";
        };

        package = lib.mkOption {
          type = lib.types.package;
          example = lib.literalExpression "pkgs.myTop";
          description = "The EPICS top that holds the IOC.";
        };

        workingDirectory = lib.mkOption {
          type = lib.types.str;
          example = "iocBoot/iocMyIoc";
          description = ''
            The IOC's directory, relative to the top; procServ starts the IOC
            there (`--chdir`). It may not lead outside the top.
          '';
        };

        startupScript = lib.mkOption {
          type = lib.types.str;
          default = "./st.cmd";
          description = ''
            The script procServ runs, relative to `workingDirectory`. It must
            be executable: an EPICS `st.cmd` starts with a shebang naming the
            IOC executable.
          '';
        };

        environment = lib.mkOption {
          type = lib.types.attrsOf lib.types.str;
          default = { };
          example = {
            EPICS_CA_ADDR_LIST = "10.0.0.255";
          };
          description = ''
            Environment variables for the IOC. `EPICS_IOCSH_HISTFILE` is set
            to `/var/lib/epics/<name>/iocsh_history`.
          '';
        };

        description = lib.mkOption {
          type = lib.types.nullOr lib.types.str;
          default = null;
          example = "Vacuum controller of the linac";
          description = "Shown by `systemctl status` after `EPICS IOC <name>:`.";
        };

        procServ = {
          console = lib.mkOption {
            type = lib.types.either (lib.types.enum [ "unix" ]) lib.types.port;
            default = "unix";
            example = 2001;
            description = ''
              Where procServ offers the IOC's console: `"unix"`, a UNIX socket
              at `/run/epics/${name}/console` that only root can reach
              (`socat - UNIX-CONNECT:/run/epics/${name}/console`), or a TCP
              port on localhost, which must be unique on the host.
            '';
          };

          options = lib.mkOption {
            type =
              with lib.types;
              attrsOf (oneOf [
                str
                int
                bool
                (listOf str)
              ]);
            default = { };
            example = {
              info-file = "/run/epics/myIoc/info";
            };
            description = ''
              More procServ command-line options, written as in EPNix's
              `services.iocs.<name>.procServ.options`: `{ info-file = "/f"; }`
              becomes `--info-file /f`, `true` a bare flag. They come after
              the unit's own options and before the console. The tool's
              `epnixDeploy` has no such option: IOCs that use it behave
              differently when moved to a host the tool deploys to.
            '';
          };
        };
      };
    };

  # The units, keyed by file name; disabled IOCs have none.
  units = unit.units { procServ = "${cfg.procServ.package}/bin/procServ"; oneshot = true; } (
    lib.mapAttrs (_: ioc: {
      ioc = schema.ioc (asDeployConfig ioc);
      topDir = "${ioc.package}";
      procServArgs = lib.cli.toGNUCommandLine { } ioc.procServ.options;
    }) cfg.iocs
  );

  tcpConsoles = lib.filter (ioc: ioc.port != "unix") (
    lib.mapAttrsToList (name: ioc: {
      inherit name;
      port = ioc.procServ.console;
    }) (lib.filterAttrs (_: ioc: ioc.enable) cfg.iocs)
  );
in
{
  options.services.epnix = {
    iocs = lib.mkOption {
      type = lib.types.attrsOf (lib.types.submodule iocModule);
      default = { };
      example = lib.literalExpression ''
        {
          myIoc = {
            package = pkgs.myTop;
            workingDirectory = "iocBoot/iocMyIoc";
            environment.EPICS_CA_ADDR_LIST = "10.0.0.255";
          };
        }
      '';
      description = ''
        EPICS IOCs, each run by procServ as `epnix-<name>.service`: the same
        unit epnix-deploy installs on other hosts. Names use letters, digits,
        `_` and `-`, do not start with `-`, and have at most 64 characters.
      '';
    };

    procServ.package = lib.mkOption {
      type = lib.types.package;
      default = pkgs.callPackage ./procserv.nix { };
      defaultText = lib.literalMD "procServ 2.8.0, from epnix-deploy's `nix/procserv.nix`";
      example = lib.literalExpression "pkgs.epnix.procServ";
      description = ''
        The procServ that runs the IOCs. It must be 2.8.0 or later: the units
        pass `--oneshot`, so that procServ exits with the IOC and systemd
        sees the crash and restarts it.
      '';
    };
  };

  config = lib.mkIf (cfg.iocs != { }) {
    assertions =
      lib.mapAttrsToList (name: _: {
        assertion = schema.isSafeName name;
        message = "${iocPath name}: `${name}` is not a valid IOC name: use letters, digits, `_` and `-`, not starting with `-`, at most 64 characters (it names the unit `epnix-<name>.service`).";
      }) cfg.iocs
      ++ lib.mapAttrsToList (
        name: ioc:
        let
          errors = schema.iocErrors (iocPath name) (asDeployConfig ioc);
        in
        {
          assertion = errors == [ ];
          message = lib.concatStringsSep "\n" errors;
        }
      ) cfg.iocs
      ++ map (
        clash:
        let
          names = map (c: c.name) clash;
        in
        {
          assertion = lib.length clash == 1;
          message = "services.epnix.iocs: ${lib.concatStringsSep ", " names} all use TCP console port ${toString (lib.head clash).port}; give each IOC its own port, or use `procServ.console = \"unix\"`.";
        }
      ) (lib.attrValues (lib.groupBy (c: toString c.port) tcpConsoles));

    systemd.units = lib.mapAttrs (_: text: {
      inherit text;
      # NixOS does not run `systemctl enable`: this is what starts the IOC
      # at boot, as the unit's own `[Install]` section does elsewhere.
      wantedBy = [ "multi-user.target" ];
    }) units;
  };
}
