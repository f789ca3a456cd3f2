//! Operating IOCs from the laptop: `logs`, `console`, `start`, `stop` and
//! `restart`, over the tool's one SSH master connection, against real IOCs
//! under procServ. The console is driven through a pseudo-terminal, with
//! `script`, as a person would type into it.

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::{
    Deployer, TestFlake, TestIoc, assert_exit, demo_top, document, epnix_deploy, json, profile_link, run, stderr,
    wait_for_profile,
};
use crate::testbed::{TestHost, free_port, shell_quote};

/// The demo top with `iocDemo` (console on a UNIX socket) and `iocTcp`
/// (console on a TCP port), deployed.
fn deployed_with_two_consoles() -> (TestHost, TestFlake, u16) {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let (demo, tcp) = (TestIoc::new("iocDemo"), TestIoc::new("iocTcp"));
    let port = free_port();
    flake.write(
        &host,
        &format!(
            "demo = {{ package = top {{ version = \"v1\"; iocs = [ \"iocDemo\" \"iocTcp\" ]; }}; hosts = [ \"test\" ]; iocs = {{ {} {} }}; }};",
            demo.nix(""),
            tcp.nix(&format!("procServ.console = {port};"))
        ),
    );
    assert_exit(&epnix_deploy(&flake, &[host.name.as_str(), "demo"]), 0);
    (host, flake, port)
}

/// The tool, run in a pseudo-terminal by `script`, as on a person's
/// terminal; with its own temporary directory, where its SSH master's
/// socket lives, to find any ssh it leaves behind.
pub(crate) struct Terminal {
    child: Child,
    keys: ChildStdin,
    screen: Arc<Mutex<Vec<u8>>>,
    tmp: tempfile::TempDir,
}

impl Terminal {
    pub(crate) fn start(flake: &TestFlake, args: &[&str]) -> Terminal {
        let tmp = tempfile::Builder::new().prefix("epd-").tempdir().expect("temp dir");
        let mut line: Vec<String> = vec![shell_quote(env!("CARGO_BIN_EXE_epnix-deploy"))];
        line.extend(args.iter().map(|a| shell_quote(a)));
        line.extend(["--flake".to_owned(), shell_quote(&flake.reference())]);
        let mut child = Command::new("script")
            .args(["--quiet", "--return", "--command", &line.join(" "), "/dev/null"])
            .env("NIX_CONFIG", "substituters =")
            .env("TMPDIR", tmp.path())
            .env("TERM", "dumb")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("running script");
        let keys = child.stdin.take().unwrap();
        let mut out = child.stdout.take().unwrap();
        let screen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Terminal { child, keys, screen, tmp }
    }

    pub(crate) fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().unwrap()).into_owned()
    }

    pub(crate) fn wait_for(&self, text: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.screen().contains(text) {
            assert!(Instant::now() < deadline, "never saw {text:?} on the terminal:\n{}", self.screen());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn type_keys(&mut self, keys: &[u8]) {
        self.keys.write_all(keys).unwrap();
        self.keys.flush().unwrap();
    }

    /// Waits for the tool to end; its exit code.
    pub(crate) fn exit_code(mut self) -> (Option<i32>, String) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(Instant::now() < deadline, "the console never ended:\n{}", self.screen());
            std::thread::sleep(Duration::from_millis(50));
        };
        eprintln!("terminal, {status}:\n{:?}", self.screen());
        assert_no_local_ssh_in(self.tmp.path());
        (status.code(), self.screen())
    }
}

/// No process of this machine names `dir` (where the tool kept its SSH
/// master's socket): neither the master nor an ssh riding it is left.
fn assert_no_local_ssh_in(dir: &Path) {
    let dir = dir.to_str().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|p| std::fs::read(p.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(dir))
            .collect();
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "left running here: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Nothing named `program` runs on the host (within a few seconds: the
/// host hangs up a session's terminal as the connection closes).
fn assert_none_left(host: &TestHost, program: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = host.ssh(&format!("pgrep -a -x {program}"));
        if !out.status.success() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{program} left running on the host: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn journal(host: &TestHost, unit: &str) -> String {
    host.ssh_ok(&format!("journalctl --unit={unit} --no-pager --output=cat"))
}

#[test]
fn logs_and_consoles_of_an_ioc_and_the_unknown_ones() {
    let (host, flake, _) = deployed_with_two_consoles();
    let h = host.name.as_str();

    // The journal, with procServ's lines and the IOC's, in UTC.
    let out = epnix_deploy(&flake, &["logs", h, "iocDemo", "-n", "50"]);
    assert_exit(&out, 0);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("iocRun: All initialization complete"), "{text}");
    assert!(text.contains("@@@ "), "no procServ line: {text}");
    // systemd 252 writes the offset as `+0000`, later ones as `+00:00`.
    let utc = |l: &str| l.contains("+0000 ") || l.contains("+00:00 ");
    assert!(text.lines().any(|l| utc(l) && l.contains(" procServ[")), "{text}");
    assert!(!text.contains("iocTcp"), "another IOC's lines: {text}");
    // From a time on, in journalctl's words; words it cannot read are bad input.
    let out = epnix_deploy(&flake, &["logs", h, "iocDemo", "--since", "-1h"]);
    assert_exit(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Started epnix-iocDemo.service"), "{out:?}");
    let out = epnix_deploy(&flake, &["logs", h, "iocDemo", "--since", "soonish"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("cannot read `--since soonish`"), "{}", stderr(&out));
    // A host outside the configuration needs no flake.
    let ssh_opts =
        format!("-i {} -o UserKnownHostsFile={}", host.key_path().display(), host.known_hosts_path().display());
    let bare = format!("root@127.0.0.1:{}", host.port);
    let out = run(&["logs", &bare, "iocTcp", "-n", "5", "--ssh-opts", &ssh_opts].map(str::to_owned));
    assert_exit(&out, 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 5);

    // Following, until Ctrl-C: that ends the host's journalctl too.
    let mut follow = Command::new(env!("CARGO_BIN_EXE_epnix-deploy"))
        .args(["logs", h, "iocDemo", "--follow", "--flake", &flake.reference()])
        .env("NIX_CONFIG", "substituters =")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap();
    let mut first = [0u8; 64];
    follow.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    let ctrl_c = Command::new("kill").args(["-INT", "--", &format!("-{}", follow.id())]).status().unwrap();
    assert!(ctrl_c.success());
    let out = follow.wait_with_output().unwrap();
    assert_exit(&out, 0);
    assert!(!stderr(&out).contains("interrupted"), "{}", stderr(&out));
    assert_none_left(&host, "journalctl");

    // Read-only: procServ's banner and the IOC's output; what is typed is
    // never sent.
    let mut term = Terminal::start(&flake, &["console", h, "iocDemo", "--read-only"]);
    term.wait_for("@@@ Welcome to procServ");
    term.type_keys(b"dbpf iocDemo:setpoint 42\r");
    std::thread::sleep(Duration::from_secs(1));
    term.type_keys(b"\x1d");
    let (code, screen) = term.exit_code();
    assert_eq!(code, Some(0), "{screen}");
    assert!(screen.contains("read-only: what you type is not sent"), "{screen}");
    assert!(screen.contains("Ctrl-] detaches"), "{screen}");
    assert!(!screen.contains('\u{fffd}'), "telnet's negotiation reached the terminal: {screen:?}");
    assert!(!journal(&host, "epnix-iocDemo.service").contains("dbpf"), "the read-only console sent input");
    assert_none_left(&host, "socat");

    // Interactive: a command and its answer, echoed once, then Ctrl-].
    let mut term = Terminal::start(&flake, &["console", h, "iocDemo"]);
    term.wait_for("@@@ Welcome to procServ");
    assert!(term.screen().contains("Ctrl-X kills the IOC"), "{}", term.screen());
    term.type_keys(b"dbl\r");
    term.wait_for("iocDemo:version");
    term.type_keys(b"\x1d");
    let (code, screen) = term.exit_code();
    assert_eq!(code, Some(0), "{screen}");
    let after_banner = screen.split("Welcome to procServ").nth(1).unwrap();
    assert_eq!(after_banner.matches("dbl").count(), 1, "not one echo: {after_banner:?}");
    assert!(journal(&host, "epnix-iocDemo.service").contains("dbl"), "the console sent nothing");
    assert_none_left(&host, "socat");

    // A console on a TCP port.
    let mut term = Terminal::start(&flake, &["console", h, "iocTcp"]);
    term.wait_for("@@@ Welcome to procServ");
    term.type_keys(b"dbl\r");
    term.wait_for("iocTcp:version");
    term.type_keys(b"\x1d");
    let (code, screen) = term.exit_code();
    assert_eq!(code, Some(0), "{screen}");
    assert_none_left(&host, "socat");

    // An IOC that is not there: did you mean, and the IOCs that are.
    let out = epnix_deploy(&flake, &["logs", h, "iocDemoo"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("there is no IOC `iocDemoo` on"), "{}", stderr(&out));
    assert!(stderr(&out).contains("did you mean `iocDemo`? IOCs on"), "{}", stderr(&out));
    assert!(stderr(&out).contains("iocTcp (top `demo`)"), "{}", stderr(&out));
    let out = epnix_deploy(&flake, &["restart", h, "iocDemoo", "--json"]);
    assert_exit(&out, 2);
    let doc = document(&out);
    assert_eq!((doc["command"].as_str(), doc["outcome"].as_str()), (Some("restart"), Some("bad-input")));
    assert!(doc["error"]["hint"].as_str().unwrap().contains("did you mean `iocDemo`?"), "{doc:#}");
    let out = epnix_deploy(&flake, &["console", h, "iocDemo", "--top", "other"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("top `other` has no IOC on"), "{}", stderr(&out));

    // Without socat on the host, the console says what to install.
    host.ssh_ok("mv /usr/bin/socat /usr/bin/socat.away");
    let out = epnix_deploy(&flake, &["console", h, "iocDemo"]);
    host.ssh_ok("mv /usr/bin/socat.away /usr/bin/socat");
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("apt install socat"), "{}", stderr(&out));
}

/// The PIDs of the unit's procServ and of its IOC (procServ's child).
fn pids(host: &TestHost, unit: &str) -> (String, String) {
    let main = host.ssh_ok(&format!("systemctl show --property=MainPID --value {unit}")).trim().to_owned();
    let ioc = host.ssh_ok(&format!("cut -d' ' -f1 /proc/{main}/task/*/children")).trim().to_owned();
    (main, ioc)
}

fn is_active(host: &TestHost, unit: &str) -> String {
    String::from_utf8_lossy(&host.ssh(&format!("systemctl is-active {unit}")).stdout).trim().to_owned()
}

#[test]
fn restart_stop_and_start_act_on_one_ioc_under_the_lock() {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let (a, b) = (TestIoc::new("iocA"), TestIoc::new("iocB"));
    flake.write(&host, &demo_top("v1", &[&a, &b]));
    assert_exit(&epnix_deploy(&flake, &[host.name.as_str(), "demo"]), 0);
    let h = host.name.as_str();
    let (unit_a, unit_b) = ("epnix-iocA.service", "epnix-iocB.service");
    // The IOC runs under procServ before anything is compared.
    let deadline = Instant::now() + Duration::from_secs(30);
    while pids(&host, unit_a).1.is_empty() || pids(&host, unit_b).1.is_empty() {
        assert!(Instant::now() < deadline, "the IOCs never ran");
        std::thread::sleep(Duration::from_millis(200));
    }

    // restart: a new IOC process for iocA, and nothing else changes.
    let (before_a, before_b, link) = (pids(&host, unit_a), pids(&host, unit_b), profile_link(&host));
    let out = epnix_deploy(&flake, &["restart", h, "iocA", "--json"]);
    assert_exit(&out, 0);
    let result = json(&out);
    assert_eq!(result["action"], "restart");
    assert_eq!(result["iocs"][0]["done"], "restarted");
    assert_eq!(result["iocs"][0]["top"], "demo");
    assert_eq!(result["iocs"][0]["activeState"], "active");
    let deadline = Instant::now() + Duration::from_secs(30);
    while pids(&host, unit_a).1.is_empty() {
        assert!(Instant::now() < deadline, "iocA never came back");
        std::thread::sleep(Duration::from_millis(200));
    }
    let after_a = pids(&host, unit_a);
    assert_ne!(after_a.1, before_a.1, "the IOC's PID did not change");
    assert_eq!(pids(&host, unit_b), before_b, "another IOC was touched");
    assert_eq!(profile_link(&host), link, "the generation changed");

    // stop, with a note on what starts it again; then start.
    let out = epnix_deploy(&flake, &["stop", h, "iocA"]);
    assert_exit(&out, 0);
    assert_eq!(is_active(&host, unit_a), "inactive");
    assert!(String::from_utf8_lossy(&out.stdout).contains("stopped"), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr(&out).contains("note: the next deploy of top `demo` starts iocA again"), "{}", stderr(&out));
    assert!(stderr(&out).contains("`enable = false`"), "{}", stderr(&out));
    assert_eq!(pids(&host, unit_b), before_b, "another IOC was touched");
    let out = epnix_deploy(&flake, &["stop", h, "iocA", "--json"]);
    assert_exit(&out, 0);
    assert_eq!(json(&out)["iocs"][0]["done"], "unchanged");
    let out = epnix_deploy(&flake, &["start", h, "iocA", "iocB", "--top", "demo", "--json"]);
    assert_exit(&out, 0);
    let result = json(&out);
    assert_eq!(
        (result["iocs"][0]["done"].as_str(), result["iocs"][1]["done"].as_str()),
        (Some("started"), Some("unchanged"))
    );
    assert_eq!(is_active(&host, unit_a), "active");
    assert_eq!(pids(&host, unit_b), before_b, "another IOC was touched");

    // A pending rollback refuses them: it would undo them.
    host.ssh_ok("mkdir -p /var/lib/epnix-deploy/demo/restore && touch /var/lib/epnix-deploy/demo/restore/armed");
    let out = epnix_deploy(&flake, &["stop", h, "iocA"]);
    host.ssh_ok("rm -r /var/lib/epnix-deploy/demo/restore");
    assert_exit(&out, 5);
    assert!(stderr(&out).contains("rollback of an unconfirmed switch of `demo` is pending"), "{}", stderr(&out));
    assert_eq!(is_active(&host, unit_a), "active");

    // A deploy holds the lock (its checks run): stop waits for nobody, it
    // is refused.
    flake.write(
        &host,
        &format!(
            "demo = {{ package = top {{ version = \"v2\"; iocs = [ \"iocA\" \"iocB\" ]; }}; hosts = [ \"test\" ]; iocs = {{ {} {} }}; }};",
            a.nix("healthCheck.settleTime = 15;"),
            b.nix("")
        ),
    );
    let deployer = Deployer::start(&flake, &[h, "demo"]);
    wait_for_profile(&host, "demo-2-link", Duration::from_secs(60), Some(&deployer));
    let out = epnix_deploy(&flake, &["stop", h, "iocA", "--json"]);
    assert_exit(&out, 5);
    assert_eq!(document(&out)["outcome"], "busy");
    assert!(stderr(&out).contains("another deploy of top `demo`"), "{}", stderr(&out));
    assert_exit(&deployer.wait(), 0);
    assert_eq!(is_active(&host, unit_a), "active");
}
