//! The host-side scripts, in one place.
//!
//! Each `.sh` file beside this one is a constant `sh` script that reads its
//! values from positional arguments only, so a value from the configuration
//! never becomes shell syntax. Every script gets `prelude.sh` in front of
//! it, and in front of that one of two constant lines, `manager=system` or
//! `manager=user`, the layout's systemd manager ([`layout::Manager`]): the
//! prelude makes `systemctl`, `journalctl` and `systemd_run` talk to that
//! one. A line of the text rather than an argument, because the texts that
//! the host keeps to run later (the rollback's) must keep it too. Scripts about one top start with the same seven arguments, the
//! [`context`], built from `layout`: no script hard-codes a path or name.
//! `./scripts/test` runs `shellcheck` on them; `tests` below runs their
//! branches against a temporary root.

use crate::layout::{self, Manager};
use crate::ssh::RemoteCmd;
use crate::unit;

const PRELUDE: &str = include_str!("prelude.sh");

/// One host-side script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Script {
    pub name: &'static str,
    body: &'static str,
}

macro_rules! scripts {
    ($($id:ident = $file:literal;)*) => {
        $(pub const $id: Script = Script { name: $file, body: include_str!(concat!($file, ".sh")) };)*
        /// Every script, for the lint and the tests.
        pub const ALL: &[Script] = &[$($id),*];
    };
}

scripts! {
    BREAK_LOCK = "break_lock";
    CONFIRM = "confirm";
    CONSERVER = "conserver";
    CONSOLE = "console";
    DELETE = "delete";
    FETCH_GENERATION = "fetch_generation";
    GC = "gc";
    IMPORT = "import";
    HEARTBEAT = "heartbeat";
    IDENTITY = "identity";
    INSPECT = "inspect";
    INSPECT_BUILD = "inspect_build";
    LOCATE = "locate";
    LOCK = "lock";
    LOGS = "logs";
    PREPARE = "prepare";
    REMOVE = "remove";
    ROLLBACK = "rollback";
    ROLLBACK_AT_BOOT = "rollback_at_boot";
    RUNNING = "running";
    RUN_CHECK = "run_check";
    SERVICE = "service";
    SET_PROFILE = "set_profile";
    STEPS = "steps";
    SWITCH = "switch";
    WAIT_HEALTHY = "wait_healthy";
}

impl Script {
    /// The whole text the host runs, for this run's systemd manager.
    pub fn text(&self) -> String {
        self.text_for(layout::current().manager)
    }

    /// The whole text the host runs: the manager, the prelude, then the script.
    pub fn text_for(&self, manager: Manager) -> String {
        let manager = match manager {
            Manager::System => "system",
            Manager::User => "user",
        };
        format!("manager={manager}\n{PRELUDE}\n# --- {}.sh\n{}", self.name, self.body)
    }

    /// Runs the script with `args`, which arrive as `$1`, `$2`, ...
    pub fn cmd<S: AsRef<str>>(&self, args: &[S]) -> RemoteCmd {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        RemoteCmd::script(self.name, &self.text(), &args)
    }

    /// Runs the script about `top`: the [`context`], then `extra`.
    pub fn for_top<S: AsRef<str>>(&self, top: &str, extra: &[S]) -> RemoteCmd {
        let mut args = context(top);
        args.extend(extra.iter().map(|s| s.as_ref().to_owned()));
        self.cmd(&args)
    }
}

/// The arguments every script about `top` starts with (`context` in
/// `prelude.sh`): unit directory, top, ownership marker line, profile, state
/// directory, the generation's own directory name, and the lock under which
/// unit names are claimed.
pub fn context(top: &str) -> Vec<String> {
    vec![
        layout::unit_dir().to_string(),
        top.to_owned(),
        unit::owner_line(top),
        layout::profile(top).into_string(),
        layout::records(top).into_string(),
        layout::GENERATION_DIR.to_owned(),
        layout::units_lock().into_string(),
    ]
}

/// Host-side scripts run one after another in one call (`steps.sh`), for
/// one round trip where each would cost one: `held` each to its end, with
/// its output held back until then and relayed as lines followed by
/// `epnix-step NAME CODE` (after `epnix-stderr` lines on a failure), then
/// `last`, which streams. A failed step ends the chain, and so does a
/// deployer that is gone. Each part is a script command of its own
/// ([`Script::cmd`]); `--verbose` shows them one by one.
pub fn steps(held: &[RemoteCmd], last: Option<&RemoteCmd>) -> RemoteCmd {
    // A script command is `sh -c TEXT epnix-deploy ARGS...`.
    let split = |part: &RemoteCmd| -> (&'static str, String, Vec<String>) {
        let name = part.script.expect("each step is a host-side script");
        (name, part.argv[2].clone(), part.argv[4..].to_vec())
    };
    let mut args = vec![held.len().to_string()];
    for part in held {
        let (name, text, rest) = split(part);
        args.extend([name.to_owned(), rest.len().to_string(), text]);
        args.extend(rest);
    }
    if let Some(part) = last {
        let (name, text, rest) = split(part);
        args.extend([name.to_owned(), text]);
        args.extend(rest);
    }
    let mut cmd = STEPS.cmd(&args);
    cmd.parts = held.iter().chain(last).cloned().collect();
    cmd
}

#[cfg(test)]
mod tests;
