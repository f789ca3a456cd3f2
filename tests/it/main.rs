//! Integration tests of epnix-deploy against real hosts (see testbed.rs).

mod activation;
mod completion;
mod conserver;
mod deploy;
mod faults;
mod first_hour;
mod fleet;
mod generations;
mod hardening;
mod json;
mod local;
mod module;
mod operate;
mod operators;
mod parity;
mod procserv;
mod ssh_failures;
mod status;
mod sudo;
mod support;
mod testbed;

use testbed::TestHost;

/// The testbed itself: a host boots, answers ssh with its key, and has its name.
#[test]
fn testbed_boots_a_host() {
    let host = TestHost::boot();
    host.ssh_ok("true");
    assert_eq!(host.ssh_ok("hostname").trim(), host.name);
}
