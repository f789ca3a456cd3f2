//! epnix-deploy: declarative deployment of Nix-built EPICS tops to Linux
//! hosts, each IOC under procServ and systemd.
//!
//! The binary is a thin shell around [`cli::main`]; the pure parts (config
//! checking, unit rendering, planning) are public so tests can reach them.

pub mod activation;
pub mod cli;
pub mod config;
pub mod deploy;
pub mod exit;
pub mod generation;
pub mod generations;
pub mod host;
pub mod layout;
pub mod nix;
pub mod plan;
pub mod process;
pub mod progress;
pub mod remote;
pub mod report;
pub mod ssh;
pub mod table;
pub mod target;
pub mod unit;
