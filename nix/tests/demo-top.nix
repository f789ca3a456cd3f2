# The EPICS top of the VM test, laid out as an EPNix top: the IOC
# executable in bin/, records in db/, and iocBoot/iocDemo/st.cmd, which
# starts, as EPICS st.cmd files do, with a shebang relative to its own
# directory. It runs only from there: that is what procServ's `--chdir` is
# for, and what the unit must get right.
{
  runCommand,
  writeScript,
  writeText,
  # A Python with epicscorelibs.
  python,
}:
let
  softIoc = writeScript "softIoc" ("#!${python.interpreter}\n" + builtins.readFile ./softIoc.py);
  db = writeText "demo.db" ''
    record(ai, "$(P)answer") {
        field(DESC, "The answer")
        field(VAL, "42")
        field(PINI, "YES")
    }
  '';
  stCmd = writeText "st.cmd" ''
    #!../../bin/linux-x86_64/softIoc
    dbLoadRecords("../../db/demo.db", "P=demo:")
    iocInit
  '';
in
# `runCommand` has no fixup phase, so the relative shebang stays as written.
runCommand "epnix-deploy-demo-top" { } ''
  mkdir -p $out/bin/linux-x86_64 $out/db $out/iocBoot/iocDemo
  install -m 755 ${softIoc} $out/bin/linux-x86_64/softIoc
  install -m 644 ${db} $out/db/demo.db
  install -m 755 ${stCmd} $out/iocBoot/iocDemo/st.cmd
''
