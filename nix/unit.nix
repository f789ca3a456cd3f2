# The systemd units that run IOCs under procServ: the Nix twin of
# `src/unit.rs` (`render`) and of `plan::render_units` (`units`).
#
# The tool renders units in Rust and installs them on any Linux host; the
# NixOS module (./module.nix) renders them here. Both must produce the same
# unit, so that moving a host between the two changes nothing the IOC can
# see. tests/it/parity.rs evaluates this file with plain `nix eval` and
# compares its output byte for byte with `epnix_deploy::unit::render`.
#
# Builtins only, no nixpkgs `lib`: the parity test runs where nixpkgs cannot
# be fetched.
let
  inherit (builtins)
    attrNames
    concatStringsSep
    filter
    fromJSON
    listToAttrs
    map
    match
    readFile
    replaceStrings
    ;

  # Quotes one `ExecStart=` word. systemd splits on white space, expands `$`
  # and `%`, and unquotes C-style; plain words pass through.
  execArg =
    arg:
    if match "[A-Za-z0-9_./:=@+,-]+" arg != null then
      arg
    else
      "\"" + replaceStrings [ "\\" "\"" "%" "$" ] [ "\\\\" "\\\"" "%%" "$$" ] arg + "\"";

  # One `Environment=` line. The value is quoted whole; systemd expands `%`
  # specifiers there but not `$`.
  envAssignment =
    key: value:
    "Environment=\"${key}=${replaceStrings [ "\\" "\"" "%" ] [ "\\\\" "\\\"" "%%" ] value}\"";

  escapeSpecifiers = replaceStrings [ "%" ] [ "%%" ];

  # The hardening lines of `unit::HARDENING`, from ./schema.json, which the
  # tool writes: an IOC needs the network and its own state directory, and
  # nothing of the kernel's or other users'.
  inherit ((fromJSON (readFile ./schema.json)).unit) hardening;

  # The unit file text of one IOC.
  render =
    {
      # The IOC's name; the unit is `epnix-<name>.service`.
      name,
      # A checked IOC, as `(import ./config.nix).ioc` returns it.
      ioc,
      # Where the top is on the host. The tool passes the top's profile,
      # `/nix/var/nix/profiles/epnix/<top>`, so that a new build changes the
      # profile and not the unit; the NixOS module passes the top's store
      # path, so that a new build changes the unit and NixOS restarts the IOC.
      topDir,
      # The procServ binary, an absolute path.
      procServ,
      # Whether that procServ has `--oneshot` (2.8.0 and later). Without it
      # procServ restarts a dead IOC itself and systemd never sees the crash.
      oneshot,
      # The top's name when the tool installs the unit: it goes into the
      # `X-EpnixDeploy-Top=` marker by which the tool recognizes its own
      # units. `null` for the NixOS module, whose units the tool must never
      # overwrite or remove.
      top ? null,
      # More procServ arguments, placed before the console endpoint (the
      # NixOS module's `procServ.options`).
      procServArgs ? [ ],
    }:
    let
      chdir = if ioc.workingDirectory == "." then topDir else "${topDir}/${ioc.workingDirectory}";
      console = if ioc.console == "unix" then "unix:/run/epics/${name}/console" else toString ioc.console;
      argv =
        [ procServ "--foreground" ]
        ++ (if oneshot then [ "--oneshot" ] else [ ])
        ++ [
          "--logfile=-"
          "--holdoff=0"
          "--name=${name}"
          "--chdir=${chdir}"
        ]
        ++ procServArgs
        ++ [
          console
          ioc.startupScript
        ];
      description =
        if ioc.description == null then "EPICS IOC ${name}" else "EPICS IOC ${name}: ${ioc.description}";
      lines =
        [
          (
            if top == null then
              "# Written by the NixOS module services.epnix.iocs. Do not edit: change the NixOS configuration."
            else
              "# Written by epnix-deploy for top `${top}`. Do not edit: the next deploy replaces it."
          )
          "[Unit]"
          "Description=${escapeSpecifiers description}"
          "Wants=network-online.target"
          "After=network-online.target"
          # procServ exits 0 when the IOC dies from a signal, so
          # `Restart=always` must never be stopped by the start rate limit.
          "StartLimitIntervalSec=0"
        ]
        ++ (if top == null then [ ] else [ "X-EpnixDeploy-Top=${top}" ])
        ++ [
          ""
          "[Service]"
          "Type=exec"
          "ExecStart=${concatStringsSep " " (map execArg argv)}"
          "Restart=always"
          "RestartSec=1s"
          "DynamicUser=true"
          "StateDirectory=epics/${name}"
          # The console socket lives here; procServ makes it mode 0666, so
          # the directory's mode is what keeps other users out.
          "RuntimeDirectory=epics/${name}"
          "RuntimeDirectoryMode=0700"
          (envAssignment "EPICS_IOCSH_HISTFILE" "/var/lib/epics/${name}/iocsh_history")
        ]
        ++ map (key: envAssignment key ioc.environment.${key}) (attrNames ioc.environment)
        ++ hardening
        ++ [
          ""
          "[Install]"
          "WantedBy=multi-user.target"
        ];
    in
    concatStringsSep "\n" lines + "\n";
in
{
  inherit render;

  # The units of the enabled IOCs among `iocs`, keyed by unit file name.
  # `common` holds the arguments of `render` that all IOCs share; `iocs.<name>`
  # the others (at least `ioc`). A disabled IOC gets no unit: the tool
  # removes it from the host, NixOS never installs it.
  units =
    common: iocs:
    listToAttrs (
      map (name: {
        name = "epnix-${name}.service";
        value = render (common // iocs.${name} // { inherit name; });
      }) (filter (name: iocs.${name}.ioc.enable) (attrNames iocs))
    );
}
