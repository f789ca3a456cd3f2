# identity: then the words of the command that runs a command as root (the
# host's `privilegeEscalationCommand`; none for a user's manager). Says who
# the login is, `user NAME UID`. When that is not root, and words were
# given, runs `id -u` through them: `root UID` (0 when they work) or
# `refused` and what they said. For a user's manager (`--user`), says
# `no-manager` when that manager does not answer.
uid=$(id -u)
echo "user $(id -un) $uid"
if [ "$manager" = user ]; then
  systemctl show-environment >/dev/null 2>&1 || echo no-manager
  exit 0
fi
if [ "$uid" = 0 ] || [ $# = 0 ]; then exit 0; fi
# stdin closed: a prompt for a password must fail, not wait. What the
# escalation says besides (a warning, a lecture) stays out of the uid; on a
# refusal, a second try says why.
if root=$("$@" id -u 2>/dev/null </dev/null); then
  echo "root $root"
else
  echo refused
  "$@" id -u 2>&1 </dev/null || true
fi
