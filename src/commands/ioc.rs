//! The IOCs of a host, as `logs`, `console`, `start`, `stop` and `restart`
//! find them. Each IOC is the unit `epnix-<ioc>.service` in the unit
//! directory whose file carries its top's ownership marker; IOC names are
//! unique per host, so the name alone finds it, and the unit says its top.
//! One round trip (`locate.sh`) tells, for the IOCs asked for, their top,
//! unit, console and state, and names all the others for "did you mean".

use std::collections::BTreeMap;

use anyhow::Result;

use super::host_target;
use crate::config;
use crate::exit::BadInput;
use crate::layout;
use crate::progress::Progress;
use crate::remote;
use crate::ssh::Remote;
use crate::suggest;
use crate::target::{HostSelection, Target};
use crate::unit;

/// The IOCs a command acts on, and where.
#[derive(Clone, Debug)]
pub struct IocSelection {
    pub on: HostSelection,
    /// `--top`: only IOCs of this top.
    pub top: Option<String>,
    /// The IOCs, each once, in the order given.
    pub iocs: Vec<String>,
}

impl IocSelection {
    /// Refuses names that no IOC or top can have, before any connection.
    fn check(&self) -> Result<(), BadInput> {
        let names = "names are letters, digits, `_` and `-`, not starting with `-`";
        if let Some(ioc) = self.iocs.iter().find(|i| !config::is_safe_name(i)) {
            return Err(BadInput::new(format!("`{ioc}` is not a valid IOC name")).hint(names));
        }
        match &self.top {
            Some(top) if !config::is_safe_name(top) => {
                Err(BadInput::new(format!("`{top}` is not a valid top name")).hint(names))
            }
            _ => Ok(()),
        }
    }
}

/// Where procServ serves an IOC's console (`procServ.console`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Console {
    /// A UNIX socket, in a directory only root can enter.
    Unix(String),
    /// A TCP port on the host's loopback.
    Tcp(u16),
}

/// One IOC, found on the host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Located {
    pub ioc: String,
    pub top: String,
    pub unit: String,
    /// From the unit's `ExecStart`; `None` when it names no console.
    pub console: Option<Console>,
    /// systemd's `is-active`: `active`, `inactive`, `failed`, …
    pub active: String,
    /// Whether systemd starts it at boot (`is-enabled` says `enabled`).
    pub enabled: bool,
}

/// What a command needs to know about the host and the IOCs asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The IOCs asked for, in the order given.
    pub iocs: Vec<Located>,
    /// Whether the SSH user is root.
    pub root: bool,
    /// Whether the login is an operator's: only the operators' policy's
    /// commands run as root (`commands::sudoers`).
    pub operator: bool,
    /// Whether socat is on the host's `PATH`.
    pub socat: bool,
}

/// Resolves the host, connects (the `connect` step) and finds the IOCs, in
/// one round trip after the login. Unknown IOCs are bad input, with a "did
/// you mean" and the IOCs that are there.
pub fn connect(sel: &IocSelection, progress: &Progress) -> Result<(Target, Remote, Found)> {
    sel.check()?;
    let (target, _) = host_target(&sel.on, sel.top.as_deref())?;
    let step = progress.step(&target.label, "connect");
    // An operator's login reads the units as itself: they are world-readable.
    let remote = Remote::connect_operating(&target)?;
    let mut args = vec![layout::unit_dir().to_string(), marker_key()];
    args.extend(sel.iocs.iter().map(|ioc| layout::unit_name(ioc)));
    let report = parse(&remote.run(&remote::LOCATE.cmd(&args))?);
    let iocs = pick(&report, &target.label, sel)?;
    let detail = iocs.iter().map(|i| format!("{} (top `{}`, {})", i.ioc, i.top, i.active)).collect::<Vec<_>>();
    step.done(&detail.join(", "));
    let operator = remote.operator().is_some();
    Ok((target, remote, Found { iocs, root: report.uid == Some(0), operator, socat: report.socat }))
}

/// The ownership marker's key with its `=`: the owner line of no top.
fn marker_key() -> String {
    unit::owner_line("")
}

/// What `locate.sh` printed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Report {
    uid: Option<u32>,
    socat: bool,
    /// Every IOC unit, by IOC name.
    units: BTreeMap<String, UnitFile>,
    /// `is-active` and `is-enabled` of the units asked for, by unit name.
    states: BTreeMap<String, (String, String)>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct UnitFile {
    unit: String,
    /// The top its marker names; `None` without a marker.
    top: Option<String>,
    exec_start: String,
}

fn parse(output: &str) -> Report {
    let mut report = Report::default();
    for line in output.lines() {
        let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
        match kind {
            "uid" => report.uid = rest.trim().parse().ok(),
            "socat" => report.socat = rest.trim() == "yes",
            "unit" => {
                let mut words = rest.splitn(3, ' ');
                let (Some(unit), Some(top)) = (words.next(), words.next()) else { continue };
                let Some(ioc) = layout::ioc_of_unit(unit).filter(|i| config::is_safe_name(i)) else { continue };
                let file = UnitFile {
                    unit: unit.to_owned(),
                    top: Some(top.to_owned()).filter(|t| t != "-"),
                    exec_start: words.next().unwrap_or("").to_owned(),
                };
                report.units.insert(ioc.to_owned(), file);
            }
            "state" => {
                let mut words = rest.split_whitespace();
                if let (Some(unit), Some(active)) = (words.next(), words.next()) {
                    let enabled = words.next().unwrap_or("");
                    report.states.insert(unit.to_owned(), (active.to_owned(), enabled.to_owned()));
                }
            }
            _ => {}
        }
    }
    report
}

/// The IOCs asked for, or why one cannot be had.
fn pick(report: &Report, host: &str, sel: &IocSelection) -> Result<Vec<Located>, BadInput> {
    // IOC -> top, for the IOCs that are ours.
    let owned: BTreeMap<&str, &str> =
        report.units.iter().filter_map(|(ioc, file)| Some((ioc.as_str(), file.top.as_deref()?))).collect();
    if let Some(want) = sel.top.as_deref()
        && !owned.values().any(|top| *top == want)
    {
        return Err(top_not_here(&owned, host, want));
    }
    let mut found = Vec::new();
    let mut unknown = Vec::new();
    for ioc in &sel.iocs {
        let Some(file) = report.units.get(ioc) else {
            unknown.push(ioc.as_str());
            continue;
        };
        let Some(top) = file.top.as_deref() else {
            return Err(BadInput::new(format!(
                "`{}` on `{host}` is not an IOC deployed by epnix-deploy: its unit file has no `{}` line",
                file.unit,
                marker_key()
            ))
            .hint(
                "it is managed some other way (by hand, or by NixOS): use `systemctl` and `journalctl` on the host",
            ));
        };
        if let Some(want) = sel.top.as_deref()
            && top != want
        {
            return Err(BadInput::new(format!("IOC `{ioc}` on `{host}` belongs to top `{top}`, not `{want}`"))
                .hint(format!("give `--top {top}`, or leave `--top` out")));
        }
        let (active, enabled) = report.states.get(&file.unit).cloned().unwrap_or_default();
        found.push(Located {
            ioc: ioc.clone(),
            top: top.to_owned(),
            unit: file.unit.clone(),
            console: console_of(&file.exec_start),
            active,
            enabled: enabled == "enabled",
        });
    }
    if unknown.is_empty() { Ok(found) } else { Err(unknown_iocs(&owned, host, sel.top.as_deref(), &unknown)) }
}

/// No IOC of that name: a "did you mean", and the IOCs there are.
fn unknown_iocs(owned: &BTreeMap<&str, &str>, host: &str, top: Option<&str>, unknown: &[&str]) -> BadInput {
    let names = unknown.iter().map(|i| format!("`{i}`")).collect::<Vec<_>>().join(", ");
    let err = BadInput::new(format!("there is no IOC {names} on `{host}`"));
    let candidates: Vec<&str> =
        owned.iter().filter(|(_, t)| top.is_none_or(|want| **t == want)).map(|(i, _)| *i).collect();
    if candidates.is_empty() {
        return err.hint(format!(
            "no top deployed by epnix-deploy has IOCs there; deploy one with `epnix-deploy {host} <top>`"
        ));
    }
    let near: Vec<String> = unknown
        .iter()
        .filter_map(|ioc| {
            let near = suggest::closest(ioc, &candidates)?;
            Some(if unknown.len() == 1 { format!("`{near}`") } else { format!("`{near}` for `{ioc}`") })
        })
        .collect();
    let listed: Vec<String> = candidates.iter().map(|ioc| format!("{ioc} (top `{}`)", owned[ioc])).collect();
    let place = match top {
        Some(top) => format!("IOCs of top `{top}` on `{host}`"),
        None => format!("IOCs on `{host}`"),
    };
    let list = format!("{place}: {}", listed.join(", "));
    if near.is_empty() { err.hint(list) } else { err.hint(format!("did you mean {}? {list}", near.join(", "))) }
}

/// `--top` names a top with no IOC on the host.
fn top_not_here(owned: &BTreeMap<&str, &str>, host: &str, want: &str) -> BadInput {
    let err = BadInput::new(format!("top `{want}` has no IOC on `{host}`"));
    let mut tops: Vec<&str> = owned.values().copied().collect();
    tops.sort_unstable();
    tops.dedup();
    match suggest::closest(want, &tops) {
        _ if tops.is_empty() => err.hint("no top deployed by epnix-deploy has IOCs there"),
        Some(near) => err.hint(format!("did you mean `--top {near}`? Tops with IOCs there: {}", tops.join(", "))),
        None => err.hint(format!("tops with IOCs there: {}", tops.join(", "))),
    }
}

/// The console a unit's `ExecStart=` gives procServ: its first word that is
/// not an option, `unix:PATH` or a port.
fn console_of(exec_start: &str) -> Option<Console> {
    let words = exec_words(exec_start);
    let endpoint = words.iter().skip(1).find(|w| !w.starts_with('-'))?;
    match endpoint.strip_prefix("unix:") {
        Some(path) => Some(Console::Unix(path.to_owned())),
        None => endpoint.parse().ok().filter(|port| *port > 0).map(Console::Tcp),
    }
}

/// Splits `ExecStart=` into words the way systemd reads what `unit`
/// writes: at white space outside double quotes, with backslash escapes
/// inside them.
fn exec_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let (mut in_word, mut quoted) = (false, false);
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => (quoted, in_word) = (!quoted, true),
            '\\' if quoted => word.extend(chars.next()),
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nix::Flake;

    fn selection(iocs: &[&str], top: Option<&str>) -> IocSelection {
        IocSelection {
            on: HostSelection { flake: Flake::new("."), host: "ioc1".into(), ssh_opts: Vec::new(), local: None },
            top: top.map(str::to_owned),
            iocs: iocs.iter().map(|i| (*i).to_owned()).collect(),
        }
    }

    /// `locate.sh` on a host with two tops, a TCP console and a unit that
    /// is not ours.
    const REPORT: &str = "uid 0\nsocat yes\n\
        unit epnix-iocA.service linac /usr/bin/procServ --foreground --logfile=- --holdoff=0 --name=iocA \"--chdir=/nix/var/nix/profiles/epnix/linac/iocBoot/a b\" unix:/run/epics/iocA/console ./st.cmd\n\
        unit epnix-iocB.service linac /usr/bin/procServ --foreground --oneshot --name=iocB --chdir=/x 2001 ./st.cmd\n\
        unit epnix-ring.service booster /usr/bin/procServ --name=ring --chdir=/y unix:/run/epics/ring/console ./st.cmd\n\
        unit epnix-byHand.service - /usr/bin/procServ 2000 ./st.cmd\n\
        state epnix-iocA.service active enabled\n\
        state epnix-iocB.service inactive\n";

    #[test]
    fn locate_finds_the_iocs_asked_for_with_their_tops_and_consoles() {
        let report = parse(REPORT);
        assert_eq!((report.uid, report.socat), (Some(0), true));
        let found = pick(&report, "ioc1", &selection(&["iocB", "iocA"], None)).unwrap();
        assert_eq!(
            found,
            [
                Located {
                    ioc: "iocB".into(),
                    top: "linac".into(),
                    unit: "epnix-iocB.service".into(),
                    console: Some(Console::Tcp(2001)),
                    active: "inactive".into(),
                    enabled: false,
                },
                Located {
                    ioc: "iocA".into(),
                    top: "linac".into(),
                    unit: "epnix-iocA.service".into(),
                    console: Some(Console::Unix("/run/epics/iocA/console".into())),
                    active: "active".into(),
                    enabled: true,
                },
            ]
        );
        assert!(pick(&report, "ioc1", &selection(&["iocA"], Some("linac"))).is_ok());
    }

    #[test]
    fn an_unknown_ioc_gets_a_did_you_mean_and_the_list() {
        let report = parse(REPORT);
        let err = pick(&report, "ioc1", &selection(&["ioca"], None)).unwrap_err().to_string();
        assert_eq!(
            err,
            "there is no IOC `ioca` on `ioc1`\n\
             hint: did you mean `iocA`? IOCs on `ioc1`: iocA (top `linac`), iocB (top `linac`), ring (top `booster`)"
        );
        let err = pick(&report, "ioc1", &selection(&["iocA", "rign", "zzz"], None)).unwrap_err().to_string();
        assert!(
            err.starts_with("there is no IOC `rign`, `zzz` on `ioc1`\nhint: did you mean `ring` for `rign`? "),
            "{err}"
        );
        let err = pick(&report, "ioc1", &selection(&["rign"], Some("linac"))).unwrap_err().to_string();
        assert!(err.ends_with("hint: IOCs of top `linac` on `ioc1`: iocA (top `linac`), iocB (top `linac`)"), "{err}");
        let err = pick(&parse("uid 0\n"), "ioc1", &selection(&["iocA"], None)).unwrap_err().to_string();
        assert!(err.contains("deploy one with `epnix-deploy ioc1 <top>`"), "{err}");
    }

    #[test]
    fn top_restricts_and_names_the_top_an_ioc_belongs_to() {
        let report = parse(REPORT);
        let err = pick(&report, "ioc1", &selection(&["ring"], Some("linac"))).unwrap_err().to_string();
        assert_eq!(
            err,
            "IOC `ring` on `ioc1` belongs to top `booster`, not `linac`\nhint: give `--top booster`, or leave `--top` out"
        );
        let err = pick(&report, "ioc1", &selection(&["iocA"], Some("linak"))).unwrap_err().to_string();
        assert_eq!(
            err,
            "top `linak` has no IOC on `ioc1`\nhint: did you mean `--top linac`? Tops with IOCs there: booster, linac"
        );
    }

    #[test]
    fn a_unit_without_the_marker_is_not_an_ioc() {
        let err = pick(&parse(REPORT), "ioc1", &selection(&["byHand"], None)).unwrap_err().to_string();
        assert!(err.starts_with("`epnix-byHand.service` on `ioc1` is not an IOC deployed by epnix-deploy"), "{err}");
        assert!(err.contains("no `X-EpnixDeploy-Top=` line"), "{err}");
    }

    #[test]
    fn names_are_checked_before_connecting() {
        assert!(selection(&["a/../b"], None).check().is_err());
        assert!(selection(&["-x"], None).check().is_err());
        assert!(selection(&["ok"], Some("a b")).check().is_err());
        assert!(selection(&["ok"], Some("top")).check().is_ok());
    }

    #[test]
    fn the_console_is_read_from_what_unit_writes() {
        let ioc: crate::config::Ioc = crate::config::Config::parse(&serde_json::json!({
            "hosts": { "h": { "hostname": "h" } },
            "tops": { "t": { "package": "/nix/store/x", "hosts": ["h"], "iocs": {
                "a": { "workingDirectory": "iocBoot/a \"b\"" },
                "b": { "workingDirectory": "iocBoot/b", "procServ": { "console": 2001 } },
            } } },
        }))
        .unwrap()
        .tops["t"]
            .iocs["a"]
            .clone();
        let facts = unit::HostFacts { procserv: "/usr/bin/procServ".into(), procserv_oneshot: true };
        let text = unit::render("t", "a", &ioc, &facts);
        let exec = text.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap();
        assert_eq!(console_of(exec), Some(Console::Unix(unit::console_socket("a"))));
        assert_eq!(console_of("/bin/procServ --name=x 2001 ./st.cmd"), Some(Console::Tcp(2001)));
        assert_eq!(console_of("/bin/procServ --name=x"), None);
        assert_eq!(exec_words(r#"a "b \"c\" d" e"#), ["a", "b \"c\" d", "e"]);
    }
}
