# console: MODE (`interactive` or `read-only`), the IOC's console as
# socat names it (`UNIX-CONNECT:PATH` or `TCP4:127.0.0.1:PORT`), then the
# command that runs socat (default `socat`; an operator's login gives the
# escalation and socat's path, as the operators' policy names it). Runs on a
# terminal of its own (`ssh -tt`), which the host hangs up when the
# connection ends, and socat with it. Ctrl-] (0x1d) detaches.
mode=$1 peer=$2
shift 2
if [ $# = 0 ]; then set -- socat; fi
# Unlike a change, a console ends with its connection.
trap - HUP PIPE
if ! command -v socat >/dev/null 2>&1; then
  echo "socat is not installed" >&2
  exit 127
fi
if [ "$mode" = interactive ]; then
  # Raw and without echo: every key goes to procServ as typed, and only
  # the IOC's terminal echoes it.
  exec "$@" STDIO,raw,echo=0,escape=0x1d "$peer"
fi
# Read-only: socat never reads this terminal, so nothing typed reaches the
# IOC. The terminal neither echoes nor rewrites line ends, and Ctrl-]
# interrupts socat: leaving is not an error.
stty -echo -opost intr '^]'
trap 'exit 0' INT
# Through sudo with `use_pty` (Debian's default), socat has a terminal of
# its own, which copies this one's settings: Ctrl-] interrupts socat
# there, and sudo says so with socat's status, 130.
"$@" -u "$peer" STDOUT || {
  status=$?
  if [ "$status" = 130 ]; then exit 0; fi
  exit "$status"
}
