# The `epnixDeploy` schema at evaluation time: the Nix twin of the checks in
# `src/config.rs`, which stays the source of truth.
#
# The tool checks the configuration before it touches a host; these checks
# let a top's flake fail earlier, in `nix flake check` or in an editor, and
# give the NixOS module the same rules for the IOC options the two share.
# Errors name the attribute path, as the tool's do. tests/it/parity.rs
# checks that both sides refuse the same configurations at the same path.
#
# What the two sides share as data (the keys of each level, which are
# required, the defaults, the limits) comes from ./schema.json, which the
# tool's `config::schema` writes. Each level's checks below must name every
# key the schema gives it, or evaluation stops and says which is missing.
#
# Builtins only, no nixpkgs `lib`: it is evaluated where nixpkgs is absent,
# and a top's flake need not pull nixpkgs for it.
let
  inherit (builtins)
    attrNames
    concatLists
    concatMap
    concatStringsSep
    elem
    elemAt
    filter
    foldl'
    genList
    head
    isAttrs
    isBool
    isInt
    isList
    isPath
    isString
    length
    lessThan
    map
    match
    sort
    split
    stringLength
    substring
    toJSON
    typeOf
    ;

  root = "epnixDeploy";

  schema = builtins.fromJSON (builtins.readFile ./schema.json);
  inherit (schema) levels;

  # The limits of `src/config.rs`, whose comments say why each is what it is.
  # The deployer sends a heartbeat every `heartbeatInterval` seconds, and a
  # `confirmTimeout` must outlast two of them (HEARTBEAT_INTERVAL_SECS,
  # MIN_CONFIRM_TIMEOUT_SECS). No setting in seconds may exceed a day
  # (MAX_SECONDS). An environment value, in bytes, must fit in a unit line
  # and in what the kernel passes to a process (MAX_ENV_VALUE_BYTES). Below
  # `firstUnprivilegedPort`, a TCP port needs `CAP_NET_BIND_SERVICE`, which
  # the IOC's dynamic user does not have. No top may take the name of the
  # host's procServ profile (`reservedTopName`).
  inherit (schema.limits)
    heartbeatInterval
    minConfirmTimeout
    maxSeconds
    maxEnvValueBytes
    firstUnprivilegedPort
    reservedTopName
    ;

  # Host, top and IOC names become unit names, paths and profile names.
  isSafeName = name: match "[A-Za-z0-9_][A-Za-z0-9_-]{0,63}" name != null;

  # An attribute name as Nix needs it in a path.
  attr = name: if match "[A-Za-z_][A-Za-z0-9_'-]*" name != null then name else toJSON name;

  # What a value is, in the words of the tool's messages.
  kind =
    value:
    {
      null = "null";
      bool = "a boolean";
      int = "a number";
      float = "a number";
      string = "a string";
      path = "a path";
      list = "a list";
      set = "an attribute set";
      lambda = "a function";
    }
    .${typeOf value};

  # Values that `nix eval --json` turns into strings: the tool sees a store
  # path for a path or a derivation.
  stringLike = value: isString value || isPath value || (isAttrs value && value ? outPath);

  isPort = value: isInt value && value >= 1 && value <= 65535;

  # A package option: a derivation, or its store path as `nix eval --json`
  # prints it. `example` is what a message suggests.
  storePath =
    example: path: value:
    if !stringLike value then
      err path "must be a derivation or a store path, e.g. `${example}`"
    else if isString value && substring 0 1 value != "/" then
      err path "`${value}` is not a store path"
    else
      [ ];

  # The errors of optional settings, each checked when present.
  optional =
    path: set: checks:
    concatMap (key: if set ? ${key} then checks.${key} "${path}.${key}" set.${key} else [ ]) (
      attrNames checks
    );

  boolean =
    path: value: if isBool value then [ ] else err path "must be true or false, not ${kind value}";

  # A whole number of seconds, from `min` to `maxSeconds`. A float is refused
  # even when whole. The tool reads `nix eval --json`, where `30.0` is `30`
  # and passes, but `1.0e14` is `1e+14`, a float it refuses.
  seconds =
    min: path: value:
    if !(isInt value && value >= 0) then
      err path "must be a whole number of seconds, not ${toJSON value}"
    else if value < min then
      err path "must be at least ${toString min} second${if min == 1 then "" else "s"}, not ${toString value}"
    else if value > maxSeconds then
      err path "must be at most ${toString maxSeconds} seconds (a day), not ${toString value}"
    else
      [ ];

  validSeconds = min: value: seconds min "" value == [ ];

  confirmTimeout =
    path: value:
    let
      errors = seconds 0 path value;
    in
    if errors != [ ] then
      errors
    else if value < minConfirmTimeout then
      err path "must be at least ${toString minConfirmTimeout} seconds (more than twice the heartbeat interval of ${toString heartbeatInterval}s), not ${toString value}; a shorter timeout can roll a healthy deploy back between two heartbeats"
    else
      [ ];

  string = path: value: if isString value then [ ] else err path "must be a string, not ${kind value}";

  singleLine =
    path: value:
    if !isString value then
      err path "must be a string, not ${kind value}"
    else if !oneLine value then
      err path "must be a single line"
    else
      [ ];

  # `Description=` does not unescape, so a backslash at its end is always a
  # line continuation to systemd, which would swallow the unit's next line.
  description =
    path: value:
    let
      errors = singleLine path value;
    in
    if errors != [ ] then
      errors
    else if match ".*\\\\" value != null then
      err path "ends in a backslash, which systemd reads as joining the next line of the unit; remove it, or end the description with another character"
    else
      [ ];

  # `null` switches a setting off.
  orNull = check: path: value: if value == null then [ ] else check path value;

  # Resolves `.` and `..` lexically; `null` if the path climbs above its start.
  normalize =
    path:
    let
      step =
        acc: part:
        if acc == null then
          null
        else if part == "" || part == "." then
          acc
        else if part == ".." then
          (if acc == [ ] then null else genList (elemAt acc) (length acc - 1))
        else
          acc ++ [ part ];
      parts = foldl' step [ ] (filter isString (split "/" path));
    in
    if parts == null then
      null
    else if parts == [ ] then
      "."
    else
      concatStringsSep "/" parts;

  # `path` relative to `base` (both inside the top), normalized, or `null`.
  inside = base: path: normalize (if base == "." then path else "${base}/${path}");

  oneLine = value: match "[^\n\r]*" value != null;

  err = path: message: [ "${path}: ${message}" ];

  # The errors of `value`, an attribute set with only `known` keys, or else
  # `rest`: the errors of its values.
  object =
    path: known: value: rest:
    if !isAttrs value then
      err path "must be an attribute set, not ${kind value}"
    else
      let
        unknown = filter (key: !elem key known) (attrNames value);
      in
      if unknown != [ ] then
        err "${path}.${attr (head unknown)}" "is not a known option (known options here: ${concatStringsSep ", " known})"
      else
        rest;

  # The errors of `value`, at `path`, an attribute set of schema level
  # `name`: unknown keys, missing required ones, then `checks.<key> path
  # value` of each key it sets, then `extra` (errors that involve several
  # keys). `checks` must have exactly the level's keys.
  level =
    name: checks: extra: path: value:
    let
      known = levels.${name}.keys;
      missing = filter (key: !(value ? ${key})) levels.${name}.required;
    in
    if attrNames checks != sort lessThan known then
      throw "nix/config.nix: the checks of level `${name}` are for ${concatStringsSep ", " (attrNames checks)}, but nix/schema.json gives it ${concatStringsSep ", " known}: add the check of each new key (see `config::schema` in src/config.rs)"
    else
      object path known value (
        concatMap (key: err "${path}.${key}" "is required but not set") missing
        ++ optional path value checks
        ++ extra
      );

  strings =
    path: value:
    if !isList value then
      err path "must be a list of strings, not ${kind value}"
    else
      concatLists (
        genList (
          i: if isString (elemAt value i) then [ ] else err path "item ${toString i} must be a string"
        ) (length value)
      );

  named =
    path: what: set: check:
    if !isAttrs set then
      err path "must be an attribute set, not ${kind set}"
    else
      concatMap (
        name:
        let
          p = "${path}.${attr name}";
        in
        if what == "top" && name == reservedTopName then
          err p "`${name}` is the name of the profile of the host's procServ, not a top's; rename the top"
        else if isSafeName name then
          check p set.${name}
        else
          err p "`${name}` is not a valid ${what} name (letters, digits, `_` and `-`, not starting with `-`, at most 64 characters)"
      ) (attrNames set);

  # `local = true` deploys to the machine the tool runs on: its hostname
  # must say so.
  localErrors =
    path: value:
    if
      isAttrs value
      && (value.local or false) == true
      && isString (value.hostname or null)
      && value.hostname != "localhost"
    then
      err "${path}.hostname" "is `${value.hostname}`, but `local = true` deploys to the machine the tool runs on; set `hostname = \"localhost\"`, or drop `local` to reach the host over SSH"
    else
      [ ];

  hostErrors = path: value: level "host" {
    hostname =
      path: value:
      if !isString value then
        err path "must be a string, not ${kind value}"
      else if match "[^-[:space:]][^[:space:]]*" value == null then
        err path "is not a valid host name or address"
      else
        [ ];
    # The name the machine answers as; by default the host's attribute name.
    expectedHostname =
      path: value:
      if !isString value then
        err path "must be a string, not ${kind value}"
      else if match "[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}" value == null then
        err path "`${value}` is not a host name (letters, digits, `_`, `-` and `.`, not starting with `-` or `.`, at most 64 characters); set it to what `hostname` prints on the machine"
      else
        [ ];
    sshUser = string;
    sshPort =
      path: value:
      if isPort value then [ ] else err path "must be a port number from 1 to 65535, not ${toJSON value}";
    sshOpts = strings;
    tags = strings;
    magicRollback = boolean;
    buildOnTarget = boolean;
    local = boolean;
    # The words that run a command as root when the login user is not root.
    privilegeEscalationCommand =
      path: value:
      let
        errors = strings path value;
      in
      if errors != [ ] then
        errors
      else if value == [ ] || elem "" value then
        err path "must name a command, with no empty word, e.g. `[ \"sudo\" \"-n\" \"--\" ]` (the default)"
      else
        [ ];
    procServ = level "hostProcServ" {
      package = storePath "epnix.packages.x86_64-linux.procServ";
    } [ ];
    # The console server in front of the host's IOCs: the tool rewrites
    # `includeFile` after each deploy, rollback and remove.
    conserver =
      path: value:
      let
        defaults = levels.hostConserver.defaults;
        include = value.includeFile or defaults.includeFile;
        # The include file is rewritten whole: it must never be conserver's
        # own configuration.
        clobbers =
          if isAttrs value && hostFile "" include == [ ] && include == (value.configFile or defaults.configFile) then
            err "${path}.includeFile" "`${include}` is also `configFile`: epnix-deploy would overwrite conserver's configuration; give the include file a name of its own"
          else
            [ ];
      in
      level "hostConserver" {
        enable = boolean;
        includeFile = hostFile;
        configFile = hostFile;
        service =
          p: name:
          if !isString name then
            err p "must be a string, not ${kind name}"
          else if match "[A-Za-z0-9_:@][A-Za-z0-9_.:@-]{0,254}" name == null then
            err p "`${name}` is not a systemd unit name; name the unit that runs conserver, e.g. `conserver-server.service` (Debian) or `conserver.service`"
          else
            [ ];
      } clobbers path value;
  } (localErrors path value) path value;

  # A file on the host: an absolute path, without white space (conserver's
  # `#include` line would lose it at the ends) or control characters.
  hostFile =
    path: value:
    if !isString value then
      err path "must be a string, not ${kind value}"
    else if match "/[^[:space:][:cntrl:]]*" value == null || match ".*/" value != null then
      err path "`${value}` is not an absolute path to a file, without white space"
    else
      [ ];

  # Errors of a path option that must stay inside the top.
  pathErrors =
    path: base: value:
    if !isString value then
      err path "must be a string, not ${kind value}"
    else if substring 0 1 value == "/" then
      err path "`${value}` is absolute; give a path relative to the top, e.g. `iocBoot/iocMyIoc`"
    else if match ".*[[:cntrl:]].*" value != null then
      err path "contains a control character"
    else if inside base value == null then
      err path "`${value}` leads outside the top"
    else
      [ ];

  environmentErrors =
    path: environment:
    if !isAttrs environment then
      err path "must be an attribute set, not ${kind environment}"
    else
      concatMap (
        key:
        let
          p = "${path}.${attr key}";
          value = environment.${key};
        in
        if match "[A-Za-z_][A-Za-z0-9_]*" key == null then
          err p "is not a valid environment variable name"
        else if !stringLike value then
          err p "must be a string, not ${kind value}"
        # The length first: `match` overflows Nix's stack on a string of a
        # few hundred KiB.
        else if isString value && stringLength value > maxEnvValueBytes then
          err p "is ${toString (stringLength value)} bytes long, more than the ${toString maxEnvValueBytes} bytes (${toString (maxEnvValueBytes / 1024)} KiB) an environment value may have; put large data in a file of the top, and pass its path"
        else if isString value && !oneLine value then
          err p "contains a line break, which a unit's `Environment=` cannot carry"
        else
          [ ]
      ) (attrNames environment);

  consoleErrors =
    path: console:
    if console == "unix" then
      [ ]
    else if isInt console then
      (
        if !isPort console then
          err path "must be a port number from 1 to 65535, not ${toJSON console}"
        else if console < firstUnprivilegedPort then
          err path "TCP port ${toString console} is below ${toString firstUnprivilegedPort}: the IOC runs as a dynamic user without `CAP_NET_BIND_SERVICE`, and cannot bind it; pick a port from ${toString firstUnprivilegedPort} up, e.g. 2001, or use `\"unix\"`"
        else
          [ ]
      )
    else
      err path "must be \"unix\" or a TCP port number, not ${kind console}";

  iocErrors =
    path: ioc:
    let
      # `startupScript` is relative to `workingDirectory`: it is checked
      # only once that is valid.
      wd = if pathErrors "" "" (ioc.workingDirectory or null) == [ ] then normalize ioc.workingDirectory else null;
    in
    level "ioc" {
      workingDirectory = p: value: pathErrors p "" value;
      startupScript =
        p: script:
        let
          scriptErrors = pathErrors p wd script;
        in
        if wd == null then
          [ ]
        else if scriptErrors != [ ] then
          scriptErrors
        else if inside wd script == wd then
          err p "must name a file (the EPNix default is `./st.cmd`)"
        else
          [ ];
      environment = environmentErrors;
      procServ = level "iocProcServ" { console = consoleErrors; } [ ];
      inherit description;
      enable = boolean;
      # What the tool waits for after a deploy, before it calls the IOC up.
      healthCheck = level "healthCheck" {
        settleTime = seconds 0;
        readyLine = orNull singleLine;
        command = orNull string;
        commandTimeout = seconds 1;
      } [ ];
    } [ ] path ioc;

  # A checked IOC with its defaults filled in and its paths normalized, as
  # `src/config.rs` makes it: what ./unit.nix renders.
  ioc =
    raw:
    let
      defaults = levels.ioc.defaults;
    in
    {
      workingDirectory = normalize raw.workingDirectory;
      startupScript =
        let
          script = raw.startupScript or defaults.startupScript;
        in
        if match "\\.\\.?/.*" script != null then script else "./${script}";
      # As `nix eval --json` does: a path is copied to the store, a
      # derivation becomes its output path.
      environment = builtins.mapAttrs (_: value: "${value}") (raw.environment or defaults.environment);
      console = raw.procServ.console or levels.iocProcServ.defaults.console;
      description = raw.description or defaults.description;
      enable = raw.enable or defaults.enable;
    };

  # Enabled IOCs that run on one host must differ in name (it names the
  # unit) and in TCP console port. `entries` lists them in order, each
  # `{ path; name; port; top; }`; `where` names the host in messages. A
  # host's check compares IOCs of different tops only: each top's own check
  # has reported the clashes within it. The NixOS module checks its IOCs
  # with it too.
  clashErrors =
    where: acrossTopsOnly: entries:
    concatLists (
      genList (
        i:
        let
          e = elemAt entries i;
          earlier = filter (o: !acrossTopsOnly || o.top != e.top) (genList (elemAt entries) i);
          sameName = filter (o: o.name == e.name) earlier;
          samePort = filter (o: e.port != null && o.port == e.port) earlier;
        in
        (
          if sameName != [ ] then
            err e.path "IOC name `${e.name}` is also used by ${(head sameName).path}, and both run on ${where}; IOC names must be unique per host: they name the unit `epnix-<ioc>.service`"
          else
            [ ]
        )
        ++ (
          if samePort != [ ] then
            err "${e.path}.procServ.console" "TCP port ${toString e.port} is also used by ${(head samePort).path}.procServ.console, and both run on ${where}"
          else
            [ ]
        )
      ) (length entries)
    );

  # The enabled IOCs of top `name`, for `clashErrors`.
  entriesOf =
    name: top:
    map (
      iocName:
      let
        c = top.iocs.${iocName};
      in
      {
        path = "${root}.tops.${attr name}.iocs.${attr iocName}";
        name = iocName;
        port = if isInt (c.procServ.console or null) then c.procServ.console else null;
        top = name;
      }
    ) (filter (iocName: top.iocs.${iocName}.enable or levels.ioc.defaults.enable == true) (attrNames top.iocs));

  # An IOC's health check must fit in its top's activationTimeout: once its
  # ready line appeared, the IOC settles for settleTime, then its command
  # may run for up to commandTimeout. Only for settings that are themselves
  # valid: the others have their own errors.
  fitErrors =
    path: top:
    let
      activationTimeout = top.activationTimeout or levels.top.defaults.activationTimeout;
      fits =
        name: ioc:
        let
          p = "${path}.iocs.${attr name}.healthCheck";
          check = ioc.healthCheck or { };
          settle = check.settleTime or levels.healthCheck.defaults.settleTime;
          commandTimeout = check.commandTimeout or levels.healthCheck.defaults.commandTimeout;
          command = (check.command or null) != null;
          needed = settle + (if command then commandTimeout else 0);
          parts =
            "settleTime ${toString settle}"
            + (if command then " + commandTimeout ${toString commandTimeout}" else "");
          shorten = if command then "`settleTime` or `commandTimeout`" else "`settleTime`";
        in
        if !(isAttrs ioc && isAttrs check && validSeconds 0 settle && validSeconds 1 commandTimeout) then
          [ ]
        else if needed > activationTimeout then
          err p "may need ${toString needed} seconds after the ready line (${parts}), more than the top's activationTimeout of ${toString activationTimeout}: the deploy would give up before the check could finish; raise `${path}.activationTimeout` to at least ${toString needed}, or shorten ${shorten}"
        else
          [ ];
    in
    if !(validSeconds 1 activationTimeout && isAttrs (top.iocs or null)) then
      [ ]
    else
      concatMap (name: fits name top.iocs.${name}) (attrNames top.iocs);

  topErrors =
    hosts: path: top:
    level "top" {
      package = storePath "self.packages.x86_64-linux.myTop";
      hosts =
        p: names:
        let
          listErrors = strings p names;
        in
        if listErrors != [ ] then
          listErrors
        else
          concatMap (
            host:
            if isAttrs hosts && hosts ? ${host} then
              [ ]
            else
              err p "names host `${host}`, which is not in `${root}.hosts`"
          ) names;
      iocs =
        p: iocs:
        if isAttrs iocs && iocs == { } then
          err p "defines no IOC; add one, e.g. `iocs.myIoc.workingDirectory = \"iocBoot/iocMyIoc\";`"
        else
          named p "IOC" iocs iocErrors;
      # How the tool activates a deploy of this top.
      activationTimeout = seconds 1;
      magicRollback = boolean;
      inherit confirmTimeout;
    } (fitErrors path top) path top;

  # Every error in `config`, an `epnixDeploy` attribute set; `[ ]` if it is
  # valid.
  errors =
    config:
    let
      hosts = config.hosts or { };
      tops = config.tops or { };
      shapeErrors = level "root" {
        hosts = p: value: named p "host" value hostErrors;
        tops = p: value: named p "top" value (topErrors hosts);
      } [ ] root config;
      topNames = attrNames tops;
    in
    # Clashes are only looked for in a configuration of the right shape.
    if shapeErrors != [ ] then
      shapeErrors
    else
      concatMap (name: clashErrors "one host" false (entriesOf name tops.${name})) topNames
      ++ concatMap (
        host:
        clashErrors "host `${host}`" true (
          concatMap (name: entriesOf name tops.${name}) (
            filter (name: elem host (tops.${name}.hosts or [ ])) topNames
          )
        )
      ) (attrNames hosts);
in
{
  inherit
    clashErrors
    errors
    ioc
    iocErrors
    isSafeName
    levels
    ;

  # `config` itself if it is a valid `epnixDeploy`, or an evaluation error
  # that lists every problem, each with its attribute path.
  check =
    config:
    let
      found = errors config;
    in
    if found == [ ] then
      config
    else
      throw ("${root} is not valid:\n" + concatStringsSep "\n" (map (e: "- ${e}") found));
}
