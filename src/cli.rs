//! The command line: clap types are parsed here into checked options, and
//! nothing below this module sees clap.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::deploy::{self, DeployOptions};
use crate::exit;
use crate::progress::Progress;

/// Deploy Nix-built EPICS tops to Linux hosts, each IOC under procServ and systemd.
#[derive(Parser, Debug)]
#[command(name = "epnix-deploy", version, args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
#[command(
    after_help = "Exit codes: 0 success; 1 failed after changing the host (the message says its state); 2 bad input, nothing changed."
)]
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
}

#[derive(Args, Debug)]
struct DeployArgs {
    /// A host from `epnixDeploy.hosts`, or `user@hostname[:port]`.
    #[arg(required = true)]
    host: Option<String>,
    /// A top from `epnixDeploy.tops`.
    #[arg(required = true)]
    top: Option<String>,
    /// The flake that defines `epnixDeploy`.
    #[arg(long, default_value = ".")]
    flake: String,
    /// Print the plan and the exact commands; change nothing on the host.
    #[arg(long)]
    dry_run: bool,
    /// Let the host fetch what it can from its own substituters.
    #[arg(short = 's', long)]
    substitute_on_destination: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Seconds the IOC units may take to become active.
    #[arg(long, default_value_t = 60, value_name = "SECONDS")]
    activation_timeout: u64,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Deploy(args)) => args,
        None => cli.deploy,
    };
    let (Some(host), Some(top)) = (args.host, args.top) else {
        unreachable!("clap requires both positionals");
    };
    let opts = DeployOptions {
        flake: args.flake,
        host,
        top,
        dry_run: args.dry_run,
        substitute_on_destination: args.substitute_on_destination,
        activation_timeout: Duration::from_secs(args.activation_timeout),
    };
    let progress = Progress::new();
    match deploy::run(&opts, &progress) {
        Ok(report) => {
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report).expect("a report serializes"));
            } else if !report.dry_run {
                // A dry run already printed its plan.
                deploy::print_summary(&report);
            }
            ExitCode::from(exit::SUCCESS)
        }
        Err(err) => {
            eprintln!("error: {err}");
            for cause in err.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::from(exit::code_for(&err))
        }
    }
}
