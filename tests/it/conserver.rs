//! conserver in front of procServ (`hosts.<name>.conserver`), on a real
//! host with Debian's conserver-server and conserver-client: deploys,
//! rollbacks and removes rewrite the include file with the consoles of every
//! top on the host, conserver re-reads it, and its client reaches each IOC's
//! procServ through it.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{TestFlake, TestIoc, assert_exit, epnix_deploy, json, stderr};
use crate::testbed::{TestHost, free_port};

const INCLUDE: &str = "/etc/conserver/epnix-deploy.cf";
const CONFIG: &str = "/etc/conserver/conserver.cf";
const BANNER: &str = "@@@ Welcome to procServ";

/// Makes the host's conserver ready to start, but leaves out the `#include`
/// line. All test hosts share the machine's loopback: the master listens on
/// 127.0.0.1 at `port`, a free one; its children take ports the kernel picks
/// (no `-b`), which never clash. Clients on 127.0.0.1 are trusted, so that
/// `console` asks for no password.
fn prepare_conserver(host: &TestHost, port: u16) {
    host.ssh_ok(&format!(
        "echo \"OPTS='-p {port} -M 127.0.0.1'\" >/etc/conserver/server.conf && \
         sed -i 's/^\\tallowed 127.0.0.1;/\\ttrusted 127.0.0.1;/' {CONFIG} && grep -q 'trusted 127.0.0.1' {CONFIG}"
    ));
}

/// Restarts conserver as root, the only user who can open the UNIX consoles:
/// Debian's unit runs it as `conservr` whatever `ASROOT=` in server.conf
/// says, so that takes a drop-in.
fn run_conserver_as_root(host: &TestHost) {
    host.ssh_ok(
        "mkdir -p /etc/systemd/system/conserver-server.service.d && \
         printf '[Service]\\nUser=root\\n' >/etc/systemd/system/conserver-server.service.d/root.conf && \
         systemctl daemon-reload && systemctl restart conserver-server",
    );
    assert_eq!(host.ssh_ok("ps -o user= -p $(systemctl show -p MainPID --value conserver-server)").trim(), "root");
}

/// The consoles the include file lists.
fn listed(host: &TestHost) -> Vec<String> {
    let text = host.ssh_ok(&format!("cat {INCLUDE}"));
    text.lines().filter_map(|l| Some(l.strip_prefix("console ")?.split(' ').next()?.to_owned())).collect()
}

/// The consoles conserver offers, by name, once they are `want`.
fn wait_for_consoles(host: &TestHost, port: u16, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    while Instant::now() < deadline {
        let out = host.ssh(&format!("console -M 127.0.0.1 -p {port} -u"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        got = text.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect();
        got.sort();
        if got == want {
            return;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    panic!("conserver offers {got:?}, not {want:?}\n{}", host.ssh_ok("tail -n 20 /var/log/conserver/server.log"));
}

/// What `console` shows of `ioc` in spy mode (`-S`: read only, with the
/// last lines replayed), once procServ's banner is among it.
fn spy(host: &TestHost, port: u16, ioc: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = String::new();
    while Instant::now() < deadline {
        // `console` keeps spying until it is stopped.
        let out = host.ssh(&format!("timeout 2 console -M 127.0.0.1 -p {port} -S {ioc} </dev/null"));
        seen = String::from_utf8_lossy(&out.stdout).into_owned();
        if seen.contains(BANNER) {
            return seen;
        }
    }
    panic!("`console -S {ioc}` never showed procServ's banner:\n{seen}");
}

fn problem_kinds(report: &Value) -> Vec<String> {
    let problems = report["conserver"]["problems"].as_array().unwrap_or_else(|| panic!("no problems in {report:#}"));
    problems.iter().map(|p| p["kind"].as_str().unwrap().to_owned()).collect()
}

#[test]
fn conserver_offers_the_console_of_every_ioc_on_the_host() {
    let host = TestHost::boot();
    let port = free_port();
    prepare_conserver(&host, port);
    let flake = TestFlake::new();
    let (unix, tcp, other) = (TestIoc::new("conUnix"), TestIoc::new("conTcp"), TestIoc::new("conOther"));
    let tcp_port = free_port();
    let write = |tcp_enabled: bool, with_other: bool| {
        let mut tops = format!(
            "demo = {{ package = top {{ iocs = [ \"conUnix\" \"conTcp\" ]; }}; hosts = [ \"test\" ]; iocs = {{ {} {} }}; }};",
            unix.nix(""),
            tcp.nix(&format!("procServ.console = {tcp_port}; enable = {tcp_enabled};"))
        );
        if with_other {
            tops += &format!(
                "other = {{ package = top {{ iocs = [ \"conOther\" ]; }}; hosts = [ \"test\" ]; iocs = {{ {} }}; }};",
                other.nix("")
            );
        }
        flake.write_full(&host, &host.name, "conserver.enable = true;", &tops);
    };

    // conserver neither includes the file nor runs: the deploy succeeds, and
    // says what to do.
    write(true, false);
    let out = epnix_deploy(&flake, &[host.name.as_str(), "demo", "--json"]);
    assert_exit(&out, 0);
    let report = json(&out);
    assert_eq!(problem_kinds(&report), ["not-included", "not-running"]);
    assert_eq!(report["conserver"]["consoles"], serde_json::json!(["conTcp", "conUnix"]));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("warning: conserver on `{}`: `{CONFIG}` does not include `{INCLUDE}`", host.name)),
        "{err}"
    );
    assert!(err.contains(&format!("hint: add the line `#include {INCLUDE}` to `{CONFIG}`")), "{err}");
    assert!(err.contains("systemctl enable --now conserver-server.service"), "{err}");
    assert_eq!(listed(&host), ["conTcp", "conUnix"]);
    assert!(
        host.ssh_ok(&format!("grep conTcp {INCLUDE}"))
            .contains(&format!("type host; host 127.0.0.1; port {tcp_port};")),
        "{}",
        host.ssh_ok(&format!("cat {INCLUDE}"))
    );

    // A dry run lists the step, last.
    let out = epnix_deploy(&flake, &[host.name.as_str(), "demo", "--dry-run", "--json"]);
    assert_exit(&out, 0);
    let plan = json(&out)["plan"].clone();
    let last = plan.as_array().and_then(|steps| steps.last()).unwrap_or_else(|| panic!("no plan: {plan:#}"));
    assert!(last["action"].as_str().unwrap().starts_with(&format!("rewrite `{INCLUDE}` with one console per IOC")));

    // Once the line is there, conserver reads the file; as Debian starts it,
    // it cannot reach the UNIX consoles, and the next deploy says so.
    host.ssh_ok(&format!("echo '#include {INCLUDE}' >>{CONFIG} && systemctl start conserver-server"));
    write(true, true);
    let out = epnix_deploy(&flake, &[host.name.as_str(), "other", "--json"]);
    assert_exit(&out, 0);
    let report = json(&out);
    assert_eq!(problem_kinds(&report), ["not-root"]);
    assert_eq!(report["conserver"]["consoles"], serde_json::json!(["conOther", "conTcp", "conUnix"]));
    let err = stderr(&out);
    assert!(
        err.contains("conserver runs as `conservr`, who cannot open the UNIX consoles of `conOther`, `conUnix`"),
        "{err}"
    );
    assert!(err.contains("add `[Service]` and `User=root`"), "{err}");

    // As root, it reaches every procServ, through the UNIX sockets and
    // through the TCP port.
    run_conserver_as_root(&host);
    wait_for_consoles(&host, port, &["conOther", "conTcp", "conUnix"]);
    assert!(spy(&host, port, "conUnix").contains("@@@ Child \"conUnix\" started"));
    assert!(spy(&host, port, "conTcp").contains("@@@ Child \"conTcp\" started"));
    assert!(spy(&host, port, "conOther").contains(BANNER));

    // A deploy without the TCP IOC takes its console away.
    write(false, true);
    let out = epnix_deploy(&flake, &[host.name.as_str(), "demo"]);
    assert_exit(&out, 0);
    assert!(!stderr(&out).contains("warning:"), "{}", stderr(&out));
    assert_eq!(listed(&host), ["conOther", "conUnix"]);
    wait_for_consoles(&host, port, &["conOther", "conUnix"]);

    // A rollback brings it back.
    let out = epnix_deploy(&flake, &["rollback", host.name.as_str(), "demo", "--json"]);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["conserver"]["consoles"], serde_json::json!(["conOther", "conTcp", "conUnix"]));
    wait_for_consoles(&host, port, &["conOther", "conTcp", "conUnix"]);

    // Removing the top takes its consoles away, and leaves the other top's.
    let out = epnix_deploy(&flake, &["remove", host.name.as_str(), "demo", "--json"]);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["conserver"]["consoles"], serde_json::json!(["conOther"]));
    assert_eq!(listed(&host), ["conOther"]);
    wait_for_consoles(&host, port, &["conOther"]);

    // With no IOC left, conserver, which stops on a configuration without
    // any console, still runs.
    let out = epnix_deploy(&flake, &["remove", host.name.as_str(), "other"]);
    assert_exit(&out, 0);
    assert_eq!(listed(&host), ["epnix.none"]);
    wait_for_consoles(&host, port, &["epnix.none"]);
    host.ssh_ok("systemctl is-active --quiet conserver-server");
}
