//! The one writer of stdout. Commands return data; this module prints it,
//! as text for people or as one JSON document for scripts, on success and
//! on failure alike. Progress, notes and error text go to stderr.
//!
//! The JSON document is an interface: its shape is [`Document`], described
//! by `src/output.schema.json` (generated from these types, pinned by a
//! test), and [`VERSION`] changes when a field changes meaning or goes away.

use schemars::JsonSchema;
use serde::Serialize;

use crate::exit::Exit;
use crate::progress::Progress;

/// The version of the JSON document. New fields may appear within a
/// version; a field that changes meaning or goes away makes a new version.
pub const VERSION: u32 = 1;

/// Data a command returns, as people read it.
pub trait Render {
    /// Tables and lines for stdout.
    fn text(&self, style: &Style) -> String;

    /// Remarks that are not data, for stderr (`note: …` lines).
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// How text output is laid out.
#[derive(Clone, Copy, Debug, Default)]
pub struct Style {
    /// Shorten store paths to a hash prefix and the name.
    pub short_paths: bool,
}

/// What a run printed as `--json`: the outcome, and the command's result
/// or its error.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Document<R: JsonSchema> {
    /// The version of this format.
    pub version: u32,
    /// How the run ended, the name of `exitCode`.
    pub outcome: Exit,
    /// The process's exit code (see the README's table).
    pub exit_code: u8,
    #[serde(flatten)]
    pub run: R,
}

/// A command's result, or why there is none.
#[derive(Debug, Serialize, JsonSchema)]
#[serde(untagged)]
#[schemars(rename = "{T}OrError")]
pub enum Ended<T> {
    Done { result: T },
    Failed { error: ErrorReport },
}

/// A failure, as `--json` reports it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ErrorReport {
    /// The host, as given on the command line, when there was one.
    pub host: Option<String>,
    pub top: Option<String>,
    /// The step that failed (`evaluate`, `build`, `connect`, `switch`, …),
    /// when one had started.
    pub step: Option<String>,
    /// What went wrong, without the hint.
    pub message: String,
    /// What to do about it.
    pub hint: Option<String>,
    /// The chain of causes under the message, outermost first.
    pub causes: Vec<String>,
}

impl ErrorReport {
    /// Splits an error into message, hint and causes. Hints are written as
    /// a `hint: …` line at the end of a message.
    pub fn new(err: &anyhow::Error) -> ErrorReport {
        let (message, hint) = split_hint(&err.to_string());
        let causes = err.chain().skip(1).map(|c| c.to_string()).collect();
        ErrorReport { message, hint, causes, ..ErrorReport::default() }
    }
}

fn split_hint(text: &str) -> (String, Option<String>) {
    match text.rsplit_once("\nhint: ") {
        Some((message, hint)) => (message.to_owned(), Some(hint.to_owned())),
        None => (text.to_owned(), None),
    }
}

/// Prints a result: text on stdout (notes on stderr), or the JSON document.
/// `exit` is how the run ends: success, or a result that reports a fault
/// (`status` with an IOC down).
pub fn print_result<R: Serialize + JsonSchema>(
    json: Option<R>,
    exit: Exit,
    text: &dyn Render,
    style: &Style,
    progress: &Progress,
) {
    match json {
        Some(run) => print_json(&Document { version: VERSION, outcome: exit, exit_code: exit.code(), run }),
        None => {
            print!("{}", text.text(style));
            for note in text.notes() {
                progress.note(&note);
            }
        }
    }
}

/// Prints a failure's document on stdout (the text of the error goes to
/// stderr, printed by the caller).
pub fn print_failure<R: Serialize + JsonSchema>(exit: Exit, run: R) {
    print_json(&Document { version: VERSION, outcome: exit, exit_code: exit.code(), run });
}

fn print_json(value: &impl Serialize) {
    println!("{}", serde_json::to_string_pretty(value).expect("documents serialize"));
}

/// Seconds since the epoch as RFC 3339 in UTC, `2026-11-22T02:24:33Z`.
pub fn rfc3339(secs: i64) -> String {
    let (date, rem) = civil(secs);
    format!("{date}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Seconds since the epoch as `YYYY-MM-DD HH:MM` in UTC, for tables.
pub fn utc_minutes(secs: i64) -> String {
    let (date, rem) = civil(secs);
    format!("{date} {:02}:{:02}", rem / 3600, rem % 3600 / 60)
}

/// The UTC date `YYYY-MM-DD` of `secs`, and the seconds into that day.
fn civil(secs: i64) -> (String, i64) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Days to a civil date, after Howard Hinnant's `civil_from_days`.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (format!("{year:04}-{month:02}-{day:02}"), rem)
}

/// `/nix/store/<hash>-name` as `<first 8 of hash>…-name`.
pub fn short_store_path(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    match base.split_once('-') {
        Some((hash, name)) if hash.len() > 8 => format!("{}…-{name}", &hash[..8]),
        _ => path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_in_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_314_273), "2026-11-22T02:24:33Z");
        assert_eq!(utc_minutes(1_795_314_273), "2026-11-22 02:24");
        assert_eq!(utc_minutes(951_782_400), "2000-02-29 00:00");
    }

    #[test]
    fn store_paths_shorten_to_hash_prefix_and_name() {
        assert_eq!(short_store_path("/nix/store/637jmx64rzqbcx8nmhggpywpyiyjqcyc-myTop"), "637jmx64…-myTop");
        assert_eq!(short_store_path("odd"), "odd");
    }

    #[test]
    fn hints_are_split_from_messages() {
        let err = anyhow::Error::new(crate::exit::BadInput::new("no top `x`").hint("configured tops: a"));
        let report = ErrorReport::new(&err.context("evaluating"));
        assert_eq!(report.message, "evaluating");
        assert_eq!(report.causes, ["no top `x`\nhint: configured tops: a"]);
        let report = ErrorReport::new(&anyhow::Error::new(crate::exit::BadInput::new("bad").hint("fix it")));
        assert_eq!((report.message.as_str(), report.hint.as_deref()), ("bad", Some("fix it")));
    }
}
