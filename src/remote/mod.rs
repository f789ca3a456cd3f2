//! The host-side scripts, in one place.
//!
//! Each `.sh` file beside this one is a constant `sh` script that reads its
//! values from positional arguments only, so a value from the configuration
//! never becomes shell syntax. Every script gets `prelude.sh` in front of
//! it. Scripts about one top start with the same seven arguments, the
//! [`context`], built from `layout`: no script hard-codes a path or name.
//! `./scripts/test` runs `shellcheck` on them; `tests` below runs their
//! branches against a temporary root.

use crate::layout;
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
    DELETE = "delete";
    FETCH_GENERATION = "fetch_generation";
    GC = "gc";
    HEARTBEAT = "heartbeat";
    INSPECT = "inspect";
    INSPECT_BUILD = "inspect_build";
    LOCK = "lock";
    PREPARE = "prepare";
    PROBE = "probe";
    REMOVE = "remove";
    ROLLBACK = "rollback";
    ROLLBACK_AT_BOOT = "rollback_at_boot";
    RUNNING = "running";
    RUN_CHECK = "run_check";
    SET_PROFILE = "set_profile";
    SWITCH = "switch";
}

impl Script {
    /// The whole text the host runs: the prelude, then the script.
    pub fn text(&self) -> String {
        format!("{PRELUDE}\n# --- {}.sh\n{}", self.name, self.body)
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
        layout::UNIT_DIR.to_owned(),
        top.to_owned(),
        unit::owner_line(top),
        layout::profile(top).into_string(),
        layout::records(top).into_string(),
        layout::GENERATION_DIR.to_owned(),
        layout::units_lock().into_string(),
    ]
}

#[cfg(test)]
mod tests;
