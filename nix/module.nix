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
  # The tool's defaults, from ./schema.json.
  defaults = schema.levels.ioc.defaults;

  # An IOC's options as `epnixDeploy` spells them, for the shared checks:
  # those the schema knows at each level, less the ones left unset (`null`).
  asDeployConfig =
    ioc:
    let
      only =
        level: set:
        lib.filterAttrs (key: value: lib.elem key schema.levels.${level}.keys && value != null) set;
    in
    only "ioc" ioc // { procServ = only "iocProcServ" ioc.procServ; };

  iocPath = name: "services.epnix.iocs.${lib.strings.escapeNixIdentifier name}";

  # What the assertion of IOC `name` says is wrong with it.
  iocErrors = name: ioc: schema.iocErrors (iocPath name) (asDeployConfig ioc);

  # `procServ.options` as procServ arguments: `true` is a bare flag, `false`
  # and `null` nothing, a list one option per item, any other value
  # `--name=value` (`-nvalue` for a one-letter name). The value is always in
  # the option's own word: procServ declares some options with an optional
  # argument (`--logstamp`), and getopt takes such an argument only from the
  # same word; as the next word, it would be read as the console endpoint.
  procServArgs =
    options:
    lib.concatLists (
      lib.mapAttrsToList (
        key: value:
        let
          short = builtins.stringLength key == 1;
          flag = if short then "-${key}" else "--${key}";
          one =
            v:
            if v == true then
              [ flag ]
            else if v == false || v == null then
              [ ]
            else if short then
              [ "${flag}${toString v}" ]
            else
              [ "${flag}=${toString v}" ];
        in
        if builtins.isList value then lib.concatMap one value else one value
      ) options
    );

  iocModule =
    { name, ... }:
    {
      options = {
        enable = lib.mkOption {
          type = lib.types.bool;
          default = defaults.enable;
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
          default = defaults.startupScript;
          description = ''
            The script procServ runs, relative to `workingDirectory`. It must
            be executable: an EPICS `st.cmd` starts with a shebang naming the
            IOC executable.
          '';
        };

        environment = lib.mkOption {
          # As in `epnixDeploy` (and EPNix): a path or a package stands for
          # its store path.
          type = lib.types.attrsOf (
            lib.types.oneOf [
              lib.types.str
              lib.types.path
              lib.types.package
            ]
          );
          default = { };
          example = {
            EPICS_CA_ADDR_LIST = "10.0.0.255";
          };
          description = ''
            Environment variables for the IOC; a path or a package stands for
            its store path. `EPICS_IOCSH_HISTFILE` is set to
            `/var/lib/epics/<name>/iocsh_history`.
          '';
        };

        description = lib.mkOption {
          type = lib.types.nullOr lib.types.str;
          default = defaults.description;
          example = "Vacuum controller of the linac";
          description = "Shown by `systemctl status` after `EPICS IOC <name>:`.";
        };

        procServ = {
          console = lib.mkOption {
            type = lib.types.either (lib.types.enum [ "unix" ]) lib.types.port;
            default = schema.levels.iocProcServ.defaults.console;
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
              becomes `--info-file=/f` (one word, which options with an
              optional argument such as `logstamp` need), `true` a bare flag,
              a list one option per item. They come after
              the unit's own options and before the console. The tool's
              `epnixDeploy` has no such option: IOCs that use it behave
              differently when moved to a host the tool deploys to.
            '';
          };
        };
      };
    };

  # The units, keyed by file name; disabled IOCs have none. An IOC that its
  # assertion refuses has no unit to render: forcing its text stops with
  # the assertion's message.
  units = unit.units { procServ = "${cfg.procServ.package}/bin/procServ"; oneshot = true; } (
    lib.mapAttrs (
      name: ioc:
      let
        errors = iocErrors name ioc;
        checked = schema.ioc (asDeployConfig ioc);
      in
      {
        ioc =
          if errors == [ ] then
            checked
          else
            lib.mapAttrs (
              key: value: if key == "enable" then value else throw (lib.concatStringsSep "\n" errors)
            ) checked;
        topDir = "${ioc.package}";
        procServArgs = procServArgs ioc.procServ.options;
      }
    ) cfg.iocs
  );

  # config.nix's rule for IOCs that share a host: names are unique here
  # already, TCP console ports must be.
  clashes = schema.clashErrors "this host" false (
    map (name: {
      path = iocPath name;
      inherit name;
      port =
        let
          console = cfg.iocs.${name}.procServ.console;
        in
        if builtins.isInt console then console else null;
      top = null;
    }) (lib.attrNames (lib.filterAttrs (_: ioc: ioc.enable) cfg.iocs))
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
          errors = iocErrors name ioc;
        in
        {
          assertion = errors == [ ];
          message = lib.concatStringsSep "\n" errors;
        }
      ) cfg.iocs
      ++ [
        {
          assertion = clashes == [ ];
          message = lib.concatStringsSep "\n" clashes + "\nGive each IOC its own port, or use `procServ.console = \"unix\"`.";
        }
      ];

    systemd.units = lib.mapAttrs (_: text: {
      inherit text;
      # NixOS does not run `systemctl enable`: this is what starts the IOC
      # at boot, as the unit's own `[Install]` section does elsewhere.
      wantedBy = [ "multi-user.target" ];
    }) units;
  };
}
