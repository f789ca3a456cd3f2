//! The command line: the raw flags are parsed here, once, into a checked
//! [`Request`]; nothing below this module sees clap. The result (or the
//! failure) goes to `output`, the one writer of stdout.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::activation;
use crate::commands::console::{self, ConsoleOptions};
use crate::commands::delete::{self, DeleteOptions, Doomed};
use crate::commands::deploy::{self, DeployOptions};
use crate::commands::fleet::{self, FleetDeployOptions, FleetStatusOptions, FleetTopOptions, HostOrTops};
use crate::commands::ioc::IocSelection;
use crate::commands::logs::{self, LogsOptions};
use crate::commands::remove::{self, RemoveOptions};
use crate::commands::rollback::{self, RollbackOptions};
use crate::commands::service::{self, Action, ServiceOptions};
use crate::commands::status::{self, StatusOptions};
use crate::commands::sudoers;
use crate::commands::{self, Changing, Run, list};
use crate::config;
use crate::exit::{self, BadInput, Exit};
use crate::layout::{self, Layout};
use crate::nix::Flake;
use crate::output::{self, Ended, ErrorReport, Render, Style};
use crate::progress::{Progress, Verbosity};
use crate::running::Detail;
use crate::suggest;
use crate::target::{HostSelection, Local, Selection};

/// Deploy Nix-built EPICS tops to Linux hosts, each IOC under procServ and systemd.
#[derive(Parser, Debug)]
#[command(name = "epnix-deploy", version, args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
#[command(after_help = exit::help_text(), override_usage = USAGE)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    deploy: DeployArgs,
    /// Show every command run, on this machine and on the host, with its
    /// arguments (on stderr). For `status`: more columns with `-v` and
    /// `-vv`, and the commands with `-vvv`.
    #[arg(short, long, global = true, conflicts_with = "quiet", action = clap::ArgAction::Count)]
    verbose: u8,
    /// Show errors only: no progress, no notes (stdout still has the result).
    #[arg(short, long, global = true)]
    quiet: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Deploy a top to a host (the default command), or tops to many hosts
    /// in parallel.
    #[command(override_usage = DEPLOY_USAGE)]
    Deploy(DeployArgs),
    /// List the generations of a top on a host.
    List(ListArgs),
    /// Show every IOC on a host (or of one top): state, uptime, restarts;
    /// `-v` adds PID, CPU, memory and console clients, `-vv` the console
    /// socket and the last log line. Exits 1 when an IOC does not run.
    Status(StatusArgs),
    /// Switch a top back to its newest healthy generation before the current
    /// one (or `--to N`), units and checks included, under an armed rollback.
    Rollback(RollbackArgs),
    /// Delete generations of a top on a host.
    DeleteGeneration(DeleteArgs),
    /// Take a top off a host: stop and remove its units (and with `--purge`
    /// its generations).
    Remove(RemoveArgs),
    /// Show an IOC's output (and procServ's), from the host's journal.
    Logs(LogsArgs),
    /// Attach to an IOC's procServ console; Ctrl-] detaches.
    Console(ConsoleArgs),
    /// Start IOCs, under their tops' deploy locks.
    Start(ServiceArgs),
    /// Stop IOCs, under their tops' deploy locks; the next deploy (or boot)
    /// starts them again.
    Stop(ServiceArgs),
    /// Restart IOCs (procServ and the IOC), under their tops' deploy locks.
    Restart(ServiceArgs),
    /// Print the operators' sudoers policy: the members of GROUP may start,
    /// stop and restart IOCs, read their logs and attach to their consoles,
    /// and nothing else, through sudo. For `/etc/sudoers.d/` on the hosts.
    Sudoers {
        /// The operators' group on the hosts.
        #[arg(long)]
        group: String,
    },
    /// Print the completion script for SHELL.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The host a command acts on, and how to reach it.
#[derive(Args, Debug)]
struct HostArgs {
    /// A host from `epnixDeploy.hosts`, or `user@hostname[:port]`; none
    /// with `--local` or `--user`.
    #[arg(
        required_unless_present_any = ["local", "user"],
        add = clap_complete::ArgValueCandidates::new(crate::complete::hosts)
    )]
    host: Option<String>,
    #[command(flatten)]
    conn: ConnArgs,
}

/// Where the flake is and how to reach the host: every command's.
#[derive(Args, Debug)]
struct Reach {
    /// The flake that defines `epnixDeploy` (for a host by name).
    #[arg(long, default_value = ".")]
    flake: String,
    /// Override an input of the flake for this run, as nix's own flag does,
    /// e.g. `--override-input epnix-deploy path:../epnix-deploy`.
    #[arg(long, num_args = 2, value_names = ["INPUT", "FLAKE_REF"], action = clap::ArgAction::Append)]
    override_input: Vec<String>,
    /// Extra ssh options for this run, e.g. `--ssh-opts "-i ~/.ssh/ioc -o ConnectTimeout=5"`;
    /// they come after the host's `sshOpts`.
    #[arg(long, value_name = "OPTS", allow_hyphen_values = true)]
    ssh_opts: Option<String>,
}

impl Reach {
    fn flake(&self) -> Flake {
        let pairs = self.override_input.chunks_exact(2).map(|p| (p[0].clone(), p[1].clone()));
        Flake { reference: self.flake.clone(), override_inputs: pairs.collect() }
    }

    fn ssh_opts(&self) -> Vec<String> {
        self.ssh_opts.as_deref().unwrap_or("").split_whitespace().map(str::to_owned).collect()
    }

    fn selection(&self, host: String, local: Option<Local>) -> HostSelection {
        HostSelection { flake: self.flake(), host, ssh_opts: self.ssh_opts(), local }
    }
}

/// Where the configuration is, how to reach hosts, how to print.
#[derive(Args, Debug)]
struct ConnArgs {
    #[command(flatten)]
    reach: Reach,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// The host is this machine, reached with no SSH: the same switch,
    /// checks and rollback (`epnix-deploy --local <top>`).
    #[arg(long, conflicts_with = "ssh_opts")]
    local: bool,
    /// The host is this machine, and the IOCs are `systemctl --user` units
    /// of the current user, under its own directories (implies `--local`).
    #[arg(long, conflicts_with = "ssh_opts")]
    user: bool,
}

impl HostArgs {
    /// The host, and the top: `top`, or with `--local` and `--user`, which
    /// name no host, the one word given (clap took it for the host's).
    fn selection(&self, top: Option<&String>) -> Result<(HostSelection, Option<String>), BadInput> {
        let (host, top) = self.conn.here(self.host.as_ref(), top)?;
        Ok((self.conn.on(host.unwrap_or_else(|| "localhost".to_owned())), top))
    }
}

impl ConnArgs {
    fn flake(&self) -> Flake {
        self.reach.flake()
    }

    fn ssh_opts(&self) -> Vec<String> {
        self.reach.ssh_opts()
    }

    /// `--local` or `--user`.
    fn local(&self) -> Option<Local> {
        match (self.local, self.user) {
            (_, true) => Some(Local::User),
            (true, false) => Some(Local::System),
            (false, false) => None,
        }
    }

    /// The flag that names this machine, for messages.
    fn flag(&self) -> &'static str {
        if self.user { "--user" } else { "--local" }
    }

    /// The host and the top of two words: as given, or with `--local` and
    /// `--user`, which name no host, the one word given is the top
    /// (`None` for the host: this machine).
    fn here(&self, host: Option<&String>, top: Option<&String>) -> Result<(Option<String>, Option<String>), BadInput> {
        let flag = self.flag();
        match (self.local(), host, top) {
            (None, host, top) => Ok((host.cloned(), top.cloned())),
            (Some(_), Some(host), Some(top)) => {
                Err(BadInput::new(format!("`{flag}` deploys to this machine, and `{host}` would name another host"))
                    .hint(format!("name the top alone: `epnix-deploy … {flag} {top}`")))
            }
            (Some(_), host, top) => Ok((None, host.or(top).cloned())),
        }
    }

    fn on(&self, host: String) -> HostSelection {
        self.reach.selection(host, self.local())
    }
}

/// The host of the commands that act on IOCs, which find each IOC's top
/// on the host.
#[derive(Args, Debug)]
struct HostIocs {
    /// A host from `epnixDeploy.hosts`, or `user@hostname[:port]`.
    #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::hosts))]
    host: String,
    /// Only IOCs of this top; an IOC of another top is refused.
    #[arg(long, add = clap_complete::ArgValueCandidates::new(crate::complete::tops))]
    top: Option<String>,
    #[command(flatten)]
    reach: Reach,
}

impl HostIocs {
    fn selection(&self, iocs: &[String]) -> IocSelection {
        let mut unique: Vec<String> = Vec::new();
        for ioc in iocs {
            if !unique.contains(ioc) {
                unique.push(ioc.clone());
            }
        }
        IocSelection { on: self.reach.selection(self.host.clone(), None), top: self.top.clone(), iocs: unique }
    }
}

#[derive(Args, Debug)]
struct LogsArgs {
    #[command(flatten)]
    target: HostIocs,
    /// The IOC.
    ioc: String,
    /// Show the last N lines [default: 50, or all since `--since`].
    #[arg(short = 'n', long, value_name = "N")]
    lines: Option<u32>,
    /// Keep showing new lines, until Ctrl-C.
    #[arg(short, long)]
    follow: bool,
    /// Start at this time, as journalctl takes it: `2026-12-03 10:00`,
    /// `yesterday`, `-1h`, `2 hours ago`.
    #[arg(long, value_name = "TIME", allow_hyphen_values = true)]
    since: Option<String>,
}

#[derive(Args, Debug)]
struct ConsoleArgs {
    #[command(flatten)]
    target: HostIocs,
    /// The IOC.
    ioc: String,
    /// Only watch: what you type is not sent to the IOC.
    #[arg(long)]
    read_only: bool,
}

#[derive(Args, Debug)]
struct ServiceArgs {
    #[command(flatten)]
    target: HostIocs,
    /// The IOCs.
    #[arg(required = true, value_name = "IOC")]
    iocs: Vec<String>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    changing: ChangingArgs,
}

/// The hosts of a run over many, and how many at a time.
#[derive(Args, Debug)]
struct FleetArgs {
    /// The hosts: names, globs (`ioc-linac-*`), `@tag`s, or
    /// `user@hostname[:port]`, separated by commas; then the positional
    /// words are tops.
    #[arg(long, value_name = "SELECTOR", value_delimiter = ',', action = clap::ArgAction::Append)]
    on: Vec<String>,
    /// Hosts at a time in a run over many [default: 10].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1000))]
    parallel: Option<u64>,
}

impl FleetArgs {
    fn selectors(&self) -> Result<Vec<fleet::Selector>, BadInput> {
        self.on.iter().map(|word| fleet::Selector::parse(word)).collect()
    }

    fn parallel(&self) -> usize {
        self.parallel.map_or(fleet::DEFAULT_PARALLEL, |n| usize::try_from(n).expect("at most 1000"))
    }
}

/// The host and top most commands act on.
#[derive(Args, Debug)]
struct HostTop {
    #[command(flatten)]
    on: HostArgs,
    /// A top from `epnixDeploy.tops`.
    #[arg(
        required_unless_present_any = ["local", "user"],
        add = clap_complete::ArgValueCandidates::new(crate::complete::tops)
    )]
    top: Option<String>,
}

impl HostTop {
    fn selection(&self) -> Result<Selection, BadInput> {
        let (on, top) = self.on.selection(self.top.as_ref())?;
        let top = top.ok_or_else(|| which_top(self.on.conn.flag()))?;
        Ok(on.with_top(top))
    }
}

/// `--local` or `--user` with no top after it.
fn which_top(flag: &str) -> BadInput {
    BadInput::new("which top? None was given").hint(format!("name it after the flag: `epnix-deploy … {flag} <top>`"))
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// A host from `epnixDeploy.hosts`, or `user@hostname[:port]`; with
    /// `--on`, `--local` or `--user`, the top.
    #[arg(
        required_unless_present_any = ["on", "local", "user"],
        add = clap_complete::ArgValueCandidates::new(crate::complete::hosts)
    )]
    host: Option<String>,
    /// Only this top (default: every top on the host).
    #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::tops))]
    top: Option<String>,
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    fleet: FleetArgs,
}

#[derive(Args, Debug)]
struct DeployArgs {
    /// A host from `epnixDeploy.hosts`, or `user@hostname[:port]`; with
    /// `--on`, or followed by more than one top, a top.
    #[arg(value_name = "HOST", add = clap_complete::ArgValueCandidates::new(crate::complete::hosts))]
    host: Option<String>,
    /// A top from `epnixDeploy.tops`.
    #[arg(value_name = "TOP", add = clap_complete::ArgValueCandidates::new(crate::complete::tops))]
    top: Option<String>,
    /// More tops, for a run over many hosts.
    #[arg(value_name = "TOPS", add = clap_complete::ArgValueCandidates::new(crate::complete::tops))]
    more: Vec<String>,
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    fleet: FleetArgs,
    /// Staged rollout: the first N hosts of the plan first; the others only
    /// once every one of those passed its checks and confirmed.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    canary: Option<u64>,
    /// Start no other host once one failed (those running go on to their end).
    #[arg(long)]
    fail_fast: bool,
    /// Evaluate here, copy the derivations, and let each host build (or
    /// fetch from its substituters) the top itself.
    #[arg(long)]
    build_on_target: bool,
    /// Print the plan and the exact commands; change nothing on the host.
    #[arg(long)]
    dry_run: bool,
    /// Let the host fetch what it can from its own substituters.
    #[arg(short = 's', long)]
    substitute_on_destination: bool,
    /// Seconds all IOCs together may take to pass their health checks
    /// (overrides the top's `activationTimeout`).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=config::MAX_SECONDS))]
    activation_timeout: Option<u64>,
    /// Do not arm the host-side rollback that fires when the deploy is not
    /// confirmed; a failed health check still rolls back.
    #[arg(long)]
    no_magic_rollback: bool,
    /// End the deploy lock of a deploy that is gone, and take it.
    #[arg(long)]
    break_lock: bool,
    #[command(flatten)]
    changing: ChangingArgs,
}

/// The forms of a deploy, for `--help` and usage errors.
const DEPLOY_USAGE: &str = "epnix-deploy [OPTIONS] <HOST> <TOP>
       epnix-deploy deploy [OPTIONS] [TOP]... --on <SELECTOR>,...
       epnix-deploy deploy [OPTIONS] <TOP>...";
const USAGE: &str = "epnix-deploy [OPTIONS] <HOST> <TOP>
       epnix-deploy deploy [OPTIONS] [TOP]... --on <SELECTOR>,...
       epnix-deploy <COMMAND>";

/// The flags of every command that changes a host.
#[derive(Args, Debug)]
struct ChangingArgs {
    /// Change the host even if it answers as another name than its
    /// `expectedHostname` (by default its name in `epnixDeploy.hosts`).
    #[arg(long)]
    skip_hostname_check: bool,
}

impl ChangingArgs {
    fn checked(&self) -> Changing {
        Changing { skip_hostname_check: self.skip_hostname_check }
    }
}

/// The host and top of a command, or with `--on` its top over many hosts.
#[derive(Args, Debug)]
struct HostTopOrOn {
    /// A host from `epnixDeploy.hosts`, or `user@hostname[:port]`; with
    /// `--on`, `--local` or `--user`, the top.
    #[arg(
        required_unless_present_any = ["on", "local", "user"],
        add = clap_complete::ArgValueCandidates::new(crate::complete::hosts)
    )]
    host: Option<String>,
    /// A top from `epnixDeploy.tops`.
    #[arg(
        required_unless_present_any = ["on", "local", "user"],
        add = clap_complete::ArgValueCandidates::new(crate::complete::tops)
    )]
    top: Option<String>,
    #[command(flatten)]
    conn: ConnArgs,
    #[command(flatten)]
    fleet: FleetArgs,
}

impl HostTopOrOn {
    /// One host and top, or (with `--on`) the top over many hosts.
    fn read(&self) -> Result<Result<Selection, FleetTopOptions>, BadInput> {
        let on = self.fleet.selectors()?;
        if on.is_empty() {
            let (host, top) = self.conn.here(self.host.as_ref(), self.top.as_ref())?;
            let on = self.conn.on(host.unwrap_or_else(|| "localhost".to_owned()));
            let top = top.ok_or_else(|| which_top(self.conn.flag()))?;
            return Ok(Ok(on.with_top(top)));
        }
        let top = match (&self.host, &self.top) {
            (Some(top), None) => top.clone(),
            _ => {
                return Err(BadInput::new("with `--on`, name the top alone")
                    .hint("`epnix-deploy <command> <top> --on <host>,<glob>,@<tag>`"));
            }
        };
        Ok(Err(FleetTopOptions {
            flake: self.conn.flake(),
            top,
            on,
            ssh_opts: self.conn.ssh_opts(),
            parallel: self.fleet.parallel(),
        }))
    }
}

#[derive(Args, Debug)]
struct ListArgs {
    #[command(flatten)]
    target: HostTopOrOn,
    /// Show whole store paths, also on a terminal.
    #[arg(long)]
    wide: bool,
}

#[derive(Args, Debug)]
struct RollbackArgs {
    #[command(flatten)]
    target: HostTopOrOn,
    /// The generation to switch to (default: the newest healthy one before the current).
    #[arg(long, value_name = "N")]
    to: Option<u32>,
    /// Go to `--to N` even if its checks failed or it was not confirmed.
    #[arg(long, requires = "to")]
    force: bool,
    /// Seconds all IOCs together may take to pass their health checks
    /// (default: the top's `activationTimeout`, or 60 without a flake).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..=config::MAX_SECONDS))]
    activation_timeout: Option<u64>,
    /// Do not arm the host-side rollback that fires when the switch is not
    /// confirmed; a failed health check still rolls back.
    #[arg(long)]
    no_magic_rollback: bool,
    #[command(flatten)]
    changing: ChangingArgs,
}

#[derive(Args, Debug)]
struct RemoveArgs {
    #[command(flatten)]
    target: HostTop,
    /// Also delete the top's profile, its generations and its state.
    #[arg(long)]
    purge: bool,
    /// Run the host's garbage collector afterwards and report what it freed.
    #[arg(long)]
    gc: bool,
    #[command(flatten)]
    changing: ChangingArgs,
}

#[derive(Args, Debug)]
struct DeleteArgs {
    #[command(flatten)]
    target: HostTop,
    /// Generation numbers to delete.
    #[arg(value_name = "N")]
    generations: Vec<u32>,
    /// Delete generations older than this many days, e.g. `30d`.
    #[arg(long, value_name = "DAYS", conflicts_with_all = ["generations", "keep"])]
    older_than: Option<String>,
    /// Keep the newest N healthy generations (and the current one), delete the others.
    #[arg(long, value_name = "N", conflicts_with = "generations")]
    keep: Option<u32>,
    /// Run the host's garbage collector afterwards and report what it freed.
    #[arg(long)]
    gc: bool,
    /// List what would be deleted; change nothing.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    changing: ChangingArgs,
}

/// What the user asked for, checked: one command and how to print.
struct Request {
    command: Checked,
    json: bool,
    style: Style,
}

/// A command with its options, resolved from the flags.
enum Checked {
    /// `<a> <b>`: a host and a top, or two tops ([`fleet::host_or_tops`]);
    /// with `None`, surely a host (this machine) and a top.
    Deploy(DeployOptions, Option<FleetDeployOptions>),
    /// Tops over a selection of hosts.
    FleetDeploy(FleetDeployOptions),
    FleetStatus(FleetStatusOptions),
    FleetList(FleetTopOptions),
    /// With the options of each host's rollback (its selection is the plan's).
    FleetRollback(FleetTopOptions, RollbackOptions),
    List(Selection),
    Status(StatusOptions),
    Rollback(RollbackOptions),
    Delete(DeleteOptions),
    Remove(RemoveOptions),
    Logs(LogsOptions),
    Console(ConsoleOptions),
    Service(ServiceOptions),
    Sudoers(String),
}

impl Checked {
    /// The command's name, as `--json` reports it.
    fn name(&self) -> &'static str {
        match self {
            Checked::Deploy(..) => "deploy",
            Checked::FleetDeploy(_) => "fleet-deploy",
            Checked::FleetStatus(_) => "fleet-status",
            Checked::FleetList(_) => "fleet-list",
            Checked::FleetRollback(..) => "fleet-rollback",
            Checked::List(_) => "list",
            Checked::Status(_) => "status",
            Checked::Rollback(_) => "rollback",
            Checked::Delete(_) => "delete-generation",
            Checked::Remove(_) => "remove",
            Checked::Logs(_) => "logs",
            Checked::Console(_) => "console",
            Checked::Service(o) => o.action.as_str(),
            Checked::Sudoers(_) => "sudoers",
        }
    }

    /// `--local` or `--user`.
    fn local(&self) -> Option<Local> {
        match self {
            Checked::Deploy(o, _) => o.selection.local,
            Checked::FleetDeploy(_) | Checked::FleetStatus(_) | Checked::FleetList(_) | Checked::FleetRollback(..) => {
                None
            }
            Checked::List(s) => s.local,
            Checked::Status(o) => o.on.local,
            Checked::Rollback(o) => o.selection.local,
            Checked::Delete(o) => o.selection.local,
            Checked::Remove(o) => o.selection.local,
            Checked::Logs(LogsOptions { selection, .. })
            | Checked::Console(ConsoleOptions { selection, .. })
            | Checked::Service(ServiceOptions { selection, .. }) => selection.on.local,
            Checked::Sudoers(_) => None,
        }
    }

    /// The host and top it acts on, for its error report; none for a run
    /// over many hosts, whose entries name theirs.
    fn subject(&self) -> Option<(String, Option<String>)> {
        let sel = match self {
            Checked::Deploy(o, _) => &o.selection,
            Checked::FleetDeploy(_) | Checked::FleetStatus(_) | Checked::FleetList(_) | Checked::FleetRollback(..) => {
                return None;
            }
            Checked::List(s) => s,
            Checked::Status(o) => return Some((o.on.host.clone(), o.top.clone())),
            Checked::Rollback(o) => &o.selection,
            Checked::Delete(o) => &o.selection,
            Checked::Remove(o) => &o.selection,
            Checked::Logs(LogsOptions { selection, .. })
            | Checked::Console(ConsoleOptions { selection, .. })
            | Checked::Service(ServiceOptions { selection, .. }) => {
                return Some((selection.on.host.clone(), selection.top.clone()));
            }
            Checked::Sudoers(_) => return None,
        };
        Some((sel.host.clone(), Some(sel.top.clone())))
    }
}

pub fn main() -> ExitCode {
    crate::complete::on_request(Cli::command);
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => return usage_error(err),
    };
    // `status` reads `-v` and `-vv` as more columns, as procServ tools'
    // `list -v` do; its commands show from `-vvv`.
    let traced = match cli.command {
        Some(Command::Status(_)) => cli.verbose >= 3,
        _ => cli.verbose >= 1,
    };
    let verbosity = if traced {
        Verbosity::Verbose
    } else if cli.quiet {
        Verbosity::Quiet
    } else {
        Verbosity::Normal
    };
    let progress = Progress::with_verbosity(verbosity);
    let request = match cli.command {
        Some(Command::Completions { shell }) => {
            return match crate::complete::print_registration(shell) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    eprintln!("error: {err:#}");
                    ExitCode::from(Exit::Failed.code())
                }
            };
        }
        command => check(command.unwrap_or(Command::Deploy(cli.deploy)), cli.verbose),
    };
    // Ctrl-C must not kill the tool between a switch and its outcome: the
    // steps stop at the next safe point and say what the host will do.
    // Failing to install the handler only leaves the default behaviour.
    // `logs --follow` ends with Ctrl-C, and the console's ssh ends by
    // itself: for them it is no interruption to announce.
    let announce = !matches!(&request, Ok(Request { command: Checked::Logs(_) | Checked::Console(_), .. }));
    let _ = ctrlc::set_handler(move || {
        activation::INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
        if announce {
            eprintln!("interrupted: stopping at the next safe point");
        }
    });
    let request = match request {
        Ok(request) => request,
        Err((err, name, json)) => return failed(&err, name, json, None, None),
    };
    let name = request.command.name();
    let subject = request.command.subject();
    let result = run(&request, &progress);
    match result {
        Ok(exit) => ExitCode::from(exit.code()),
        Err(err) => failed(&err, name, request.json, subject, progress.failed_step().map(|(_, step)| step)),
    }
}

/// Resolves the parsed flags into a request; a refusal carries the
/// command's name and `--json`, so that it is reported as asked.
fn check(command: Command, verbose: u8) -> Result<Request, (anyhow::Error, &'static str, bool)> {
    let style = |wide: bool| Style { short_paths: !wide && std::io::stdout().is_terminal() };
    let refused = |name: &'static str, json: bool| move |err: BadInput| (anyhow::Error::from(err), name, json);
    let (command, json, style) = match command {
        Command::Deploy(args) => {
            let json = args.conn.json;
            (deploy_request(args).map_err(|err| (err.into(), "deploy", json))?, json, style(false))
        }
        Command::List(args) => {
            let json = args.target.conn.json;
            let checked = match args.target.read().map_err(|err| (err.into(), "list", json))? {
                Ok(selection) => Checked::List(selection),
                Err(fleet) => Checked::FleetList(fleet),
            };
            (checked, json, style(args.wide))
        }
        Command::Status(args) => {
            let detail = match verbose {
                0 => Detail::Base,
                1 => Detail::Usage,
                _ => Detail::Socket,
            };
            let json = args.conn.json;
            (status_request(args, detail).map_err(|err| (err.into(), "status", json))?, json, style(false))
        }
        Command::Rollback(args) => {
            let json = args.target.conn.json;
            let read = args.target.read().map_err(|err| (err.into(), "rollback", json))?;
            let options = |selection| RollbackOptions {
                selection,
                to: args.to,
                force: args.force,
                activation_timeout: args.activation_timeout.map(Duration::from_secs),
                no_magic_rollback: args.no_magic_rollback,
                changing: args.changing.checked(),
            };
            let checked = match read {
                Ok(selection) => Checked::Rollback(options(selection)),
                Err(fleet) => {
                    let template = options(fleet.selection_template());
                    Checked::FleetRollback(fleet, template)
                }
            };
            (checked, json, style(false))
        }
        Command::DeleteGeneration(args) => {
            let json = args.target.on.conn.json;
            let doomed = doomed(&args).map_err(|err| (err.into(), "delete-generation", json))?;
            let options = DeleteOptions {
                selection: args.target.selection().map_err(refused("delete-generation", json))?,
                doomed,
                gc: args.gc,
                dry_run: args.dry_run,
                changing: args.changing.checked(),
            };
            (Checked::Delete(options), json, style(false))
        }
        Command::Remove(args) => {
            let json = args.target.on.conn.json;
            let options = RemoveOptions {
                selection: args.target.selection().map_err(refused("remove", json))?,
                purge: args.purge,
                gc: args.gc,
                changing: args.changing.checked(),
            };
            (Checked::Remove(options), json, style(false))
        }
        Command::Logs(args) => {
            let options = LogsOptions {
                selection: args.target.selection(std::slice::from_ref(&args.ioc)),
                lines: args.lines,
                follow: args.follow,
                since: args.since,
            };
            (Checked::Logs(options), false, style(false))
        }
        Command::Console(args) => {
            let options = ConsoleOptions {
                selection: args.target.selection(std::slice::from_ref(&args.ioc)),
                read_only: args.read_only,
            };
            (Checked::Console(options), false, style(false))
        }
        Command::Start(args) => service_options(Action::Start, args, style(false)),
        Command::Stop(args) => service_options(Action::Stop, args, style(false)),
        Command::Restart(args) => service_options(Action::Restart, args, style(false)),
        Command::Sudoers { group } => (Checked::Sudoers(group), false, style(false)),
        Command::Completions { .. } => unreachable!("handled before"),
    };
    // Before anything reads a path.
    if command.local() == Some(Local::User) {
        layout::choose(Layout::user_here().map_err(refused(command.name(), json))?);
    }
    Ok(Request { command, json, style })
}

/// `start`, `stop` or `restart`, checked.
fn service_options(action: Action, args: ServiceArgs, style: Style) -> (Checked, bool, Style) {
    let options =
        ServiceOptions { action, selection: args.target.selection(&args.iocs), changing: args.changing.checked() };
    (Checked::Service(options), args.json, style)
}

/// A deploy's words, read: `<host> <top>` (or two tops, which the
/// configuration tells apart), or tops over a selection of hosts (`--on`,
/// one top or more than two, or a flag of runs over many hosts).
/// The options of one host's deploy of `top`.
fn deploy_options(args: &DeployArgs, on: HostSelection, top: String) -> DeployOptions {
    DeployOptions {
        selection: on.with_top(top),
        dry_run: args.dry_run,
        substitute_on_destination: args.substitute_on_destination,
        activation_timeout: args.activation_timeout.map(Duration::from_secs),
        no_magic_rollback: args.no_magic_rollback,
        break_lock: args.break_lock,
        skip_hostname_check: args.changing.skip_hostname_check,
        build_on_target: args.build_on_target,
    }
}

fn deploy_request(args: DeployArgs) -> Result<Checked, BadInput> {
    let on = args.fleet.selectors()?;
    let names: Vec<String> = args.host.iter().chain(&args.top).chain(&args.more).cloned().collect();
    let local = args.conn.local();
    if local.is_some() {
        // This machine is the host: one top, no selection of hosts.
        let (host, top) = args.conn.here(args.host.as_ref(), args.top.as_ref())?;
        if !on.is_empty() || !args.more.is_empty() || host.is_some() {
            let flag = args.conn.flag();
            return Err(BadInput::new(format!("`{flag}` deploys one top to this machine"))
                .hint(format!("`epnix-deploy … {flag} <top>`")));
        }
        let top = top.ok_or_else(|| which_top(args.conn.flag()))?;
        return Ok(Checked::Deploy(deploy_options(&args, args.conn.on("localhost".to_owned()), top), None));
    }
    let on_host = args.conn.on(args.host.clone().unwrap_or_default());
    let one = deploy_options(&args, on_host, args.top.clone().unwrap_or_default());
    let many_flags = args.canary.is_some() || args.fail_fast || args.fleet.parallel.is_some();
    let fleet = FleetDeployOptions {
        tops: names.clone(),
        on,
        schedule: fleet::Schedule {
            parallel: args.fleet.parallel(),
            fail_fast: args.fail_fast,
            canary: args.canary.map(|n| usize::try_from(n).expect("at most 100000")),
        },
        deploy: one.clone(),
    };
    match names.len() {
        0 if fleet.on.is_empty() => Err(BadInput::new("say what to deploy, and where").hint(
            "`epnix-deploy <host> <top>`; `epnix-deploy deploy <top>…` for every host of each top; \
             `epnix-deploy deploy [<top>…] --on <host>,<glob>,@<tag>` for those hosts",
        )),
        2 if fleet.on.is_empty() && !many_flags => Ok(Checked::Deploy(one, Some(fleet))),
        _ => Ok(Checked::FleetDeploy(fleet)),
    }
}

/// `status <host> [<top>]`, or `status [<top>] --on <selector>,...`.
fn status_request(args: StatusArgs, detail: Detail) -> Result<Checked, BadInput> {
    let on = args.fleet.selectors()?;
    if on.is_empty() {
        let (host, top) = args.conn.here(args.host.as_ref(), args.top.as_ref())?;
        let on = args.conn.on(host.unwrap_or_else(|| "localhost".to_owned()));
        return Ok(Checked::Status(StatusOptions { on, top, detail }));
    }
    if args.top.is_some() {
        return Err(BadInput::new("with `--on`, `status` takes at most a top")
            .hint("`epnix-deploy status [<top>] --on <host>,<glob>,@<tag>`"));
    }
    let status = StatusOptions { on: args.conn.on(String::new()), top: args.host, detail };
    Ok(Checked::FleetStatus(FleetStatusOptions {
        flake: args.conn.flake(),
        on,
        ssh_opts: args.conn.ssh_opts(),
        parallel: args.fleet.parallel(),
        status,
    }))
}

/// Which generations `delete-generation` should delete.
fn doomed(args: &DeleteArgs) -> Result<Doomed, BadInput> {
    match (&args.older_than, args.keep) {
        (Some(days), _) => Ok(Doomed::OlderThanDays(delete::parse_days(days)?)),
        (None, Some(0)) => Err(BadInput::new("`--keep 0` would delete the current generation").hint("keep at least 1")),
        (None, Some(n)) => Ok(Doomed::KeepNewest(n)),
        (None, None) if args.generations.is_empty() => Err(BadInput::new("say which generations to delete")
            .hint("give their numbers, or `--older-than 30d`, or `--keep N`")),
        (None, None) => Ok(Doomed::Numbers(args.generations.clone())),
    }
}

/// Runs the command and prints its result; how the run ended.
fn run(request: &Request, progress: &Progress) -> Result<Exit> {
    fn print<T: Render + Clone>(request: &Request, progress: &Progress, value: T, wrap: fn(Ended<T>) -> Run) -> Exit {
        print_as(request, progress, value, wrap, Exit::Success)
    }
    fn print_as<T: Render + Clone>(
        request: &Request,
        progress: &Progress,
        value: T,
        wrap: fn(Ended<T>) -> Run,
        exit: Exit,
    ) -> Exit {
        let json = request.json.then(|| wrap(Ended::Done { result: value.clone() }));
        output::print_result(json, exit, &value, &request.style, progress);
        exit
    }
    Ok(match &request.command {
        Checked::Deploy(one, None) => print(request, progress, deploy::run(one, progress)?, Run::Deploy),
        Checked::Deploy(one, Some(many)) => match fleet::host_or_tops(one, many, progress)? {
            HostOrTops::One(report) => print(request, progress, report, Run::Deploy),
            HostOrTops::Fleet(report, exit) => print_as(request, progress, report, Run::FleetDeploy, exit),
        },
        Checked::FleetDeploy(o) => {
            let (report, exit) = fleet::deploy(o, None, progress)?;
            print_as(request, progress, report, Run::FleetDeploy, exit)
        }
        Checked::FleetStatus(o) => {
            let (report, exit) = fleet::status(o, progress)?;
            print_as(request, progress, report, Run::FleetStatus, exit)
        }
        Checked::FleetList(o) => {
            let (report, exit) = fleet::list(o, progress)?;
            print_as(request, progress, report, Run::FleetList, exit)
        }
        Checked::FleetRollback(o, template) => {
            let (report, exit) = fleet::rollback(o, template, progress)?;
            print_as(request, progress, report, Run::FleetRollback, exit)
        }
        Checked::List(s) => print(request, progress, list::run(s, progress)?, Run::List),
        Checked::Status(o) => {
            let report = status::run(o, progress)?;
            let exit = report.exit();
            print_as(request, progress, report, Run::Status, exit)
        }
        Checked::Rollback(o) => print(request, progress, rollback::run(o, progress)?, Run::Rollback),
        Checked::Delete(o) => print(request, progress, delete::run(o, progress)?, Run::DeleteGeneration),
        Checked::Remove(o) => print(request, progress, remove::run(o, progress)?, Run::Remove),
        Checked::Logs(o) => {
            logs::run(o, progress)?;
            Exit::Success
        }
        Checked::Console(o) => {
            console::run(o, progress)?;
            Exit::Success
        }
        Checked::Service(o) => {
            let wrap = match o.action {
                Action::Start => Run::Start,
                Action::Stop => Run::Stop,
                Action::Restart => Run::Restart,
            };
            print(request, progress, service::run(o, progress)?, wrap)
        }
        Checked::Sudoers(group) => {
            output::print_result(None::<Run>, Exit::Success, &sudoers::run(group)?, &request.style, progress);
            Exit::Success
        }
    })
}

/// Reports a failure: the error on stderr, and with `--json` the document
/// on stdout. Returns the exit code.
fn failed(
    err: &anyhow::Error,
    name: &str,
    json: bool,
    subject: Option<(String, Option<String>)>,
    step: Option<String>,
) -> ExitCode {
    let exit = exit::code_for(err);
    eprintln!("error: {err}");
    for cause in err.chain().skip(1) {
        eprintln!("  caused by: {cause}");
    }
    if json {
        let mut error = ErrorReport::new(err);
        if let Some((host, top)) = subject {
            error.host = Some(host);
            error.top = top;
        }
        error.step = step;
        output::print_failure(exit, failure_run(name, error));
    }
    ExitCode::from(exit.code())
}

/// The failure's document body for the command `name`.
fn failure_run(name: &str, error: ErrorReport) -> Run {
    match name {
        "list" => Run::List(Ended::Failed { error }),
        "status" => Run::Status(Ended::Failed { error }),
        "rollback" => Run::Rollback(Ended::Failed { error }),
        "delete-generation" => Run::DeleteGeneration(Ended::Failed { error }),
        "remove" => Run::Remove(Ended::Failed { error }),
        "fleet-deploy" => Run::FleetDeploy(Ended::Failed { error }),
        "fleet-status" => Run::FleetStatus(Ended::Failed { error }),
        "fleet-list" => Run::FleetList(Ended::Failed { error }),
        "fleet-rollback" => Run::FleetRollback(Ended::Failed { error }),
        "start" => Run::Start(Ended::Failed { error }),
        "stop" => Run::Stop(Ended::Failed { error }),
        "restart" => Run::Restart(Ended::Failed { error }),
        _ => Run::Deploy(Ended::Failed { error }),
    }
}

/// Flags that change what a deploy may do to a host: never offered as a
/// "did you mean" for a mistyped flag.
const DANGEROUS_FLAGS: [&str; 5] =
    ["--skip-hostname-check", "--no-magic-rollback", "--break-lock", "--force", "--purge"];

/// A command line clap refused: its message (with a suggestion only when
/// it is close and safe), exit 2, and with `--json` the document.
fn usage_error(err: clap::Error) -> ExitCode {
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        err.exit();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let subcommand = args.iter().find_map(|a| commands::NAMES.iter().find(|n| **n == a)).copied();
    let err = safe_suggestion(err, subcommand);
    let _ = err.print();
    // Only a command that has `--json` answers in JSON (`logs` and
    // `console` have none).
    let has_json = |name: &str| {
        Cli::command().find_subcommand(name).is_none_or(|c| c.get_arguments().any(|a| a.get_id() == "json"))
    };
    if args.iter().any(|a| a == "--json") && subcommand.is_none_or(has_json) {
        let name = subcommand.unwrap_or("deploy");
        let text = err.render().to_string();
        let message = text.lines().next().unwrap_or_default().trim_start_matches("error: ").to_owned();
        let hint = text.lines().find_map(|l| l.trim().strip_prefix("tip: ")).map(str::to_owned);
        let error = ErrorReport { step: Some("parse".into()), message, hint, ..ErrorReport::default() };
        output::print_failure(Exit::BadInput, failure_run(name, error));
    }
    ExitCode::from(Exit::BadInput.code())
}

/// Drops clap's suggestion for an unknown flag when it is one of the
/// dangerous flags or not close, and offers a close, safe one instead.
fn safe_suggestion(err: clap::Error, subcommand: Option<&str>) -> clap::Error {
    if err.kind() != ErrorKind::UnknownArgument {
        return err;
    }
    let Some(ContextValue::String(typed)) = err.get(ContextKind::InvalidArg).cloned() else { return err };
    let flag = typed.split('=').next().unwrap_or(&typed).to_owned();
    let mut command = Cli::command();
    command.build();
    let mut flags: Vec<String> = Vec::new();
    let mut collect = |cmd: &clap::Command| {
        flags.extend(cmd.get_arguments().filter_map(|a| a.get_long()).map(|l| format!("--{l}")));
    };
    collect(&command);
    command.get_subcommands().for_each(&mut collect);
    // The flag typed may be another subcommand's (`logs --json`): not a
    // suggestion for itself.
    flags.retain(|f| !DANGEROUS_FLAGS.contains(&f.as_str()) && *f != flag);
    flags.sort();
    flags.dedup();
    let mut safe = clap::Error::new(ErrorKind::UnknownArgument).with_cmd(&command);
    safe.insert(ContextKind::InvalidArg, ContextValue::String(typed.clone()));
    // Compared without the dashes, which every flag shares.
    let names: Vec<&str> = flags.iter().map(|f| f.trim_start_matches('-')).collect();
    if let Some(near) = suggest::closest(flag.trim_start_matches('-'), &names) {
        safe.insert(ContextKind::SuggestedArg, ContextValue::String(format!("--{near}")));
    }
    // clap's own usage line shows the flag it suggested.
    let usage = match subcommand {
        Some(name) => command.find_subcommand_mut(name).map(clap::Command::render_usage),
        None => Some(command.render_usage()),
    };
    if let Some(usage) = usage {
        safe.insert(ContextKind::Usage, ContextValue::StyledStr(usage));
    }
    safe
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_commands_know_the_subcommands_names() {
        let names: Vec<String> =
            Cli::command().get_subcommands().map(|c| c.get_name().to_owned()).filter(|n| n != "help").collect();
        assert_eq!(names, commands::NAMES);
    }

    #[test]
    fn local_and_user_take_the_top_alone() {
        let checked = |args: &[&str]| {
            let cli = Cli::try_parse_from(["epnix-deploy"].iter().chain(args)).unwrap();
            check(cli.command.unwrap_or(Command::Deploy(cli.deploy)), cli.verbose).map_err(|(err, _, _)| err)
        };
        let selection = |args: &[&str]| match checked(args).map(|r| r.command) {
            Ok(Checked::Deploy(o, _)) => Ok(o.selection),
            Ok(Checked::List(s)) => Ok(s),
            Ok(Checked::Status(o)) => Ok(o.on.with_top(o.top.unwrap_or_default())),
            Ok(_) => panic!("another command"),
            Err(err) => Err(err.to_string()),
        };
        let sel = selection(&["--local", "demo"]).unwrap();
        assert_eq!((sel.host.as_str(), sel.top.as_str(), sel.local), ("localhost", "demo", Some(Local::System)));
        let sel = selection(&["list", "--local", "demo"]).unwrap();
        assert_eq!((sel.top.as_str(), sel.local), ("demo", Some(Local::System)));
        assert_eq!(selection(&["ioc1", "demo"]).unwrap().local, None);
        let err = selection(&["--local", "ioc1", "demo"]).unwrap_err();
        assert!(err.contains("`--local` deploys to this machine, and `ioc1` would name another host"), "{err}");
        let err = selection(&["list", "--local"]).unwrap_err();
        assert!(err.contains("which top?") && err.contains("`epnix-deploy … --local <top>`"), "{err}");
        assert!(Cli::try_parse_from(["epnix-deploy", "--local", "demo", "--ssh-opts", "-p 22"]).is_err());
        let sel = selection(&["status", "--local"]).unwrap();
        assert_eq!((sel.local, sel.top.as_str()), (Some(Local::System), ""));
        assert_eq!(selection(&["status", "--local", "demo"]).unwrap().top, "demo");
    }

    #[test]
    fn a_mistyped_flag_never_gets_a_dangerous_suggestion() {
        let suggestion = |args: &[&str]| {
            let err = Cli::try_parse_from(["epnix-deploy"].iter().chain(args)).unwrap_err();
            let subcommand = args.iter().find_map(|a| commands::NAMES.iter().find(|n| *n == a)).copied();
            match safe_suggestion(err, subcommand).get(ContextKind::SuggestedArg) {
                Some(ContextValue::String(s)) => Some(s.clone()),
                _ => None,
            }
        };
        assert_eq!(suggestion(&["h", "t", "--skip-checks"]), None);
        assert_eq!(suggestion(&["h", "t", "--zzz", "x"]), None);
        assert_eq!(suggestion(&["h", "t", "--no-magic"]), None);
        assert_eq!(suggestion(&["list", "h", "t", "--wdie"]).as_deref(), Some("--wide"));
        assert_eq!(suggestion(&["h", "t", "--dryrun"]).as_deref(), Some("--dry-run"));
    }
}
