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
#[command(after_help = exit::help_text())]
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
    /// Deploy a top to a host (the default command).
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
    fn selection(&self, host: String, local: Option<Local>) -> HostSelection {
        let pairs = self.override_input.chunks_exact(2).map(|p| (p[0].clone(), p[1].clone()));
        HostSelection {
            flake: Flake { reference: self.flake.clone(), override_inputs: pairs.collect() },
            host,
            ssh_opts: self.ssh_opts.as_deref().unwrap_or("").split_whitespace().map(str::to_owned).collect(),
            local,
        }
    }
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
    /// The flag that names this machine, for messages.
    fn flag(&self) -> &'static str {
        if self.user { "--user" } else { "--local" }
    }

    /// The host, and the top: `top`, or with `--local` and `--user`, which
    /// name no host, the one word given (clap took it for the host's).
    fn selection(&self, top: Option<&String>) -> Result<(HostSelection, Option<String>), BadInput> {
        let local = match (self.local, self.user) {
            (_, true) => Some(Local::User),
            (true, false) => Some(Local::System),
            (false, false) => None,
        };
        let flag = self.flag();
        let (host, top) = match (local, &self.host, top) {
            (None, host, top) => (host.clone().expect("clap requires it"), top.cloned()),
            (Some(_), Some(host), Some(top)) => {
                return Err(BadInput::new(format!(
                    "`{flag}` deploys to this machine, and `{host}` would name another host"
                ))
                .hint(format!("name the top alone: `epnix-deploy … {flag} {top}`")));
            }
            (Some(_), host, top) => ("localhost".to_owned(), host.clone().or(top.cloned())),
        };
        Ok((self.reach.selection(host, local), top))
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
        let top = top.ok_or_else(|| {
            BadInput::new("which top? None was given")
                .hint(format!("name it after the flag: `epnix-deploy … {} <top>`", self.on.flag()))
        })?;
        Ok(Selection { flake: on.flake, host: on.host, top, ssh_opts: on.ssh_opts, local: on.local })
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
struct StatusArgs {
    #[command(flatten)]
    on: HostArgs,
    /// Only this top (default: every top on the host).
    #[arg(add = clap_complete::ArgValueCandidates::new(crate::complete::tops))]
    top: Option<String>,
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

#[derive(Args, Debug)]
struct DeployArgs {
    #[command(flatten)]
    target: HostTop,
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

#[derive(Args, Debug)]
struct ListArgs {
    #[command(flatten)]
    target: HostTop,
    /// Show whole store paths, also on a terminal.
    #[arg(long)]
    wide: bool,
}

#[derive(Args, Debug)]
struct RollbackArgs {
    #[command(flatten)]
    target: HostTop,
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
    Deploy(DeployOptions),
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
            Checked::Deploy(_) => "deploy",
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
            Checked::Deploy(o) => o.selection.local,
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

    /// The host and top it acts on, for its error report.
    fn subject(&self) -> (String, Option<String>) {
        let sel = match self {
            Checked::Deploy(o) => &o.selection,
            Checked::List(s) => s,
            Checked::Status(o) => return (o.on.host.clone(), o.top.clone()),
            Checked::Rollback(o) => &o.selection,
            Checked::Delete(o) => &o.selection,
            Checked::Remove(o) => &o.selection,
            Checked::Logs(LogsOptions { selection, .. })
            | Checked::Console(ConsoleOptions { selection, .. })
            | Checked::Service(ServiceOptions { selection, .. }) => {
                return (selection.on.host.clone(), selection.top.clone());
            }
            Checked::Sudoers(_) => return (String::new(), None),
        };
        (sel.host.clone(), Some(sel.top.clone()))
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
        Err(err) => failed(&err, name, request.json, Some(subject), progress.failed_step().map(|(_, step)| step)),
    }
}

/// Resolves the parsed flags into a request; a refusal carries the
/// command's name and `--json`, so that it is reported as asked.
fn check(command: Command, verbose: u8) -> Result<Request, (anyhow::Error, &'static str, bool)> {
    let style = |wide: bool| Style { short_paths: !wide && std::io::stdout().is_terminal() };
    let refused = |name: &'static str, json: bool| move |err: BadInput| (anyhow::Error::from(err), name, json);
    let (command, json, style) = match command {
        Command::Deploy(args) => {
            let json = args.target.on.json;
            let options = DeployOptions {
                selection: args.target.selection().map_err(refused("deploy", json))?,
                dry_run: args.dry_run,
                substitute_on_destination: args.substitute_on_destination,
                activation_timeout: args.activation_timeout.map(Duration::from_secs),
                no_magic_rollback: args.no_magic_rollback,
                break_lock: args.break_lock,
                skip_hostname_check: args.changing.skip_hostname_check,
            };
            (Checked::Deploy(options), json, style(false))
        }
        Command::List(args) => {
            let json = args.target.on.json;
            (Checked::List(args.target.selection().map_err(refused("list", json))?), json, style(args.wide))
        }
        Command::Status(args) => {
            let detail = match verbose {
                0 => Detail::Base,
                1 => Detail::Usage,
                _ => Detail::Socket,
            };
            let (on, top) = args.on.selection(args.top.as_ref()).map_err(refused("status", args.on.json))?;
            (Checked::Status(StatusOptions { on, top, detail }), args.on.json, style(false))
        }
        Command::Rollback(args) => {
            let options = RollbackOptions {
                selection: args.target.selection().map_err(refused("rollback", args.target.on.json))?,
                to: args.to,
                force: args.force,
                activation_timeout: args.activation_timeout.map(Duration::from_secs),
                no_magic_rollback: args.no_magic_rollback,
                changing: args.changing.checked(),
            };
            (Checked::Rollback(options), args.target.on.json, style(false))
        }
        Command::DeleteGeneration(args) => {
            let json = args.target.on.json;
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
            let options = RemoveOptions {
                selection: args.target.selection().map_err(refused("remove", args.target.on.json))?,
                purge: args.purge,
                gc: args.gc,
                changing: args.changing.checked(),
            };
            (Checked::Remove(options), args.target.on.json, style(false))
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
        Checked::Deploy(o) => print(request, progress, deploy::run(o, progress)?, Run::Deploy),
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
        let deploy = |args: &[&str]| {
            let cli = Cli::try_parse_from(["epnix-deploy"].iter().chain(args)).unwrap();
            match cli.command {
                None => cli.deploy.target.selection(),
                Some(Command::List(list)) => list.target.selection(),
                other => panic!("{other:?}"),
            }
        };
        let sel = deploy(&["--local", "demo"]).unwrap();
        assert_eq!((sel.host.as_str(), sel.top.as_str(), sel.local), ("localhost", "demo", Some(Local::System)));
        let sel = deploy(&["list", "--user", "demo"]).unwrap();
        assert_eq!((sel.top.as_str(), sel.local), ("demo", Some(Local::User)));
        assert_eq!(deploy(&["ioc1", "demo"]).unwrap().local, None);
        let err = deploy(&["--local", "ioc1", "demo"]).unwrap_err().to_string();
        assert!(err.contains("`--local` deploys to this machine, and `ioc1` would name another host"), "{err}");
        let err = deploy(&["--user"]).unwrap_err().to_string();
        assert!(err.contains("which top?") && err.contains("`epnix-deploy … --user <top>`"), "{err}");
        assert!(Cli::try_parse_from(["epnix-deploy", "--local", "demo", "--ssh-opts", "-p 22"]).is_err());

        let status = |args: &[&str]| match Cli::try_parse_from(["epnix-deploy", "status"].iter().chain(args)) {
            Ok(Cli { command: Some(Command::Status(s)), .. }) => s.on.selection(s.top.as_ref()).unwrap(),
            other => panic!("{other:?}"),
        };
        let (on, top) = status(&["--local"]);
        assert_eq!((on.local, top), (Some(Local::System), None));
        assert_eq!(status(&["--user", "demo"]).1.as_deref(), Some("demo"));
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
        assert_eq!(suggestion(&["h", "t", "--on", "x"]), None);
        assert_eq!(suggestion(&["h", "t", "--no-magic"]), None);
        assert_eq!(suggestion(&["list", "h", "t", "--wdie"]).as_deref(), Some("--wide"));
        assert_eq!(suggestion(&["h", "t", "--dryrun"]).as_deref(), Some("--dry-run"));
        assert_eq!(suggestion(&["logs", "h", "ioc", "--json"]), None);
    }
}
