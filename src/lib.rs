//! epnix-deploy: declarative deployment of Nix-built EPICS tops to Linux
//! hosts, each IOC under procServ and systemd.
//!
//! The binary is a thin shell around [`cli::main`]; the pure parts (config
//! checking, unit rendering, planning) are public so tests can reach them.

pub mod activation;
pub mod cli;
pub mod commands;
pub mod complete;
pub mod config;
pub mod conserver;
pub mod exit;
pub mod generation;
pub mod host;
pub mod layout;
pub mod local;
pub mod nix;
pub mod output;
pub mod plan;
pub mod process;
pub mod progress;
pub mod remote;
pub mod running;
pub mod ssh;
pub mod suggest;
pub mod table;
pub mod target;
pub mod unit;
