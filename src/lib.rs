//! epnix-deploy: declarative deployment of Nix-built EPICS tops to Linux
//! hosts, each IOC under procServ and systemd.
//!
//! The binary is a thin shell around [`cli::main`]; the pure parts (config
//! checking, unit rendering, planning) are public so tests can reach them.

pub mod config;
pub mod exit;
pub mod layout;
pub mod process;
pub mod unit;
