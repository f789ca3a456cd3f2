//! The command line: clap types are parsed here into checked options, and
//! nothing below this module sees clap.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::activation;
use crate::config;
use crate::deploy::{self, DeployOptions};
use crate::exit::{self, BadInput, Exit};
use crate::generations::{self, Changing, DeleteOptions, Doomed, RemoveOptions, RollbackOptions};
use crate::progress::Progress;
use crate::report;
use crate::target::Selection;

/// Deploy Nix-built EPICS tops to Linux hosts, each IOC under procServ and systemd.
#[derive(Parser, Debug)]
#[command(name = "epnix-deploy", version, args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
#[command(after_help = exit::help_text())]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    deploy: DeployArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Deploy a top to a host (the default command).
    Deploy(DeployArgs),
    /// List the generations of a top on a host.
    List(ListArgs),
    /// Show a top's generation, IOC units and last rollback on a host.
    Status(HostTop),
    /// Switch a top back to its newest healthy generation before the current
    /// one (or `--to N`), units and checks included, under an armed rollback.
    Rollback(RollbackArgs),
    /// Delete generations of a top on a host.
    DeleteGeneration(DeleteArgs),
    /// Take a top off a host: stop and remove its units (and with `--purge`
    /// its generations).
    Remove(RemoveArgs),
    /// Print the completion script for SHELL.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// The host and top every command acts on.
#[derive(Args, Debug)]
struct HostTop {
    /// A host from `epnixDeploy.hosts`, or `user@hostname[:port]`.
    #[arg(required = true)]
    host: Option<String>,
    /// A top from `epnixDeploy.tops`.
    #[arg(required = true)]
    top: Option<String>,
    /// The flake that defines `epnixDeploy`.
    #[arg(long, default_value = ".")]
    flake: String,
    /// Extra ssh options for this run, e.g. `--ssh-opts "-i ~/.ssh/ioc -o ConnectTimeout=5"`;
    /// they come after the host's `sshOpts`.
    #[arg(long, value_name = "OPTS", allow_hyphen_values = true)]
    ssh_opts: Option<String>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

impl HostTop {
    fn selection(&self) -> Selection {
        Selection {
            flake: self.flake.clone(),
            host: self.host.clone().expect("clap requires it"),
            top: self.top.clone().expect("clap requires it"),
            ssh_opts: self.ssh_opts.as_deref().unwrap_or("").split_whitespace().map(str::to_owned).collect(),
        }
    }
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
    /// Deploy even if the host's name is not the configured one.
    #[arg(long)]
    skip_hostname_check: bool,
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
    /// Change the host even if its name is not the configured one.
    #[arg(long)]
    skip_hostname_check: bool,
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
    /// Change the host even if its name is not the configured one.
    #[arg(long)]
    skip_hostname_check: bool,
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
    /// Change the host even if its name is not the configured one.
    #[arg(long)]
    skip_hostname_check: bool,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let progress = Progress::new();
    // Ctrl-C must not kill the tool between a switch and its outcome: the
    // steps stop at the next safe point and say what the host will do.
    // Failing to install the handler only leaves the default behaviour.
    let _ = ctrlc::set_handler(|| {
        activation::INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
        eprintln!("interrupted: stopping at the next safe point");
    });
    let result = match cli.command {
        Some(Command::Deploy(args)) => run_deploy(args, &progress),
        None => run_deploy(cli.deploy, &progress),
        Some(Command::List(args)) => run_list(args, &progress),
        Some(Command::Status(args)) => run_status(args, &progress),
        Some(Command::Rollback(args)) => run_rollback(args, &progress),
        Some(Command::DeleteGeneration(args)) => run_delete(args, &progress),
        Some(Command::Remove(args)) => run_remove(args, &progress),
        Some(Command::Completions { shell }) => {
            clap_complete::generate(shell, &mut Cli::command(), "epnix-deploy", &mut std::io::stdout());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::from(Exit::Success.code()),
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(exit::code_for(&err).code())
        }
    }
}

fn print_json(value: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(value).expect("reports serialize"));
}

fn run_deploy(args: DeployArgs, progress: &Progress) -> Result<()> {
    let opts = DeployOptions {
        selection: args.target.selection(),
        dry_run: args.dry_run,
        substitute_on_destination: args.substitute_on_destination,
        activation_timeout: args.activation_timeout.map(Duration::from_secs),
        no_magic_rollback: args.no_magic_rollback,
        break_lock: args.break_lock,
        skip_hostname_check: args.skip_hostname_check,
    };
    let report = deploy::run(&opts, progress)?;
    if args.target.json {
        print_json(&report);
    } else if !report.dry_run {
        // A dry run already printed its plan.
        report::print_summary(&report);
    }
    Ok(())
}

fn run_list(args: ListArgs, progress: &Progress) -> Result<()> {
    let rows = generations::list(&args.target.selection(), progress)?;
    if args.target.json {
        print_json(&rows);
    } else {
        generations::print_list(&rows, args.wide);
    }
    Ok(())
}

fn run_status(args: HostTop, progress: &Progress) -> Result<()> {
    let status = generations::status(&args.selection(), progress)?;
    if args.json {
        print_json(&status);
    } else {
        generations::print_status(&status);
    }
    Ok(())
}

fn run_rollback(args: RollbackArgs, progress: &Progress) -> Result<()> {
    let opts = RollbackOptions {
        selection: args.target.selection(),
        to: args.to,
        force: args.force,
        activation_timeout: args.activation_timeout.map(Duration::from_secs),
        no_magic_rollback: args.no_magic_rollback,
        changing: Changing { skip_hostname_check: args.skip_hostname_check },
    };
    let report = generations::rollback(&opts, progress)?;
    if args.target.json {
        print_json(&report);
    } else {
        report::print_summary(&report);
    }
    Ok(())
}

fn run_delete(args: DeleteArgs, progress: &Progress) -> Result<()> {
    let doomed = match (args.older_than, args.keep) {
        (Some(days), _) => Doomed::OlderThanDays(generations::parse_days(&days)?),
        (None, Some(0)) => {
            return Err(BadInput::new("`--keep 0` would delete the current generation").hint("keep at least 1").into());
        }
        (None, Some(n)) => Doomed::KeepNewest(n),
        (None, None) if args.generations.is_empty() => {
            return Err(BadInput::new("say which generations to delete")
                .hint("give their numbers, or `--older-than 30d`, or `--keep N`")
                .into());
        }
        (None, None) => Doomed::Numbers(args.generations),
    };
    let opts = DeleteOptions {
        selection: args.target.selection(),
        doomed,
        gc: args.gc,
        dry_run: args.dry_run,
        changing: Changing { skip_hostname_check: args.skip_hostname_check },
    };
    let report = generations::delete(&opts, progress)?;
    if args.target.json {
        print_json(&report);
    } else {
        generations::print_delete(&report);
    }
    Ok(())
}

fn run_remove(args: RemoveArgs, progress: &Progress) -> Result<()> {
    let opts = RemoveOptions {
        selection: args.target.selection(),
        purge: args.purge,
        gc: args.gc,
        changing: Changing { skip_hostname_check: args.skip_hostname_check },
    };
    let report = generations::remove(&opts, progress)?;
    if args.target.json {
        print_json(&report);
    } else {
        generations::print_remove(&report);
    }
    Ok(())
}
