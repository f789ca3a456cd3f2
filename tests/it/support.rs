//! Test support. Test flakes: a git repository holding the fixture top and a generated
//! `flake.nix` whose `epnixDeploy` points at test hosts. Tests rewrite (and
//! commit) the flake between deploys to move from one version of a top to
//! the next; each commit is the revision a generation records.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::testbed::TestHost;

pub struct TestFlake {
    dir: tempfile::TempDir,
}

/// One IOC of a test top: its name and its own Channel Access port, so that
/// IOCs of tests running side by side never answer each other.
pub struct TestIoc {
    pub name: &'static str,
    pub ca_port: u16,
}

impl TestIoc {
    pub fn new(name: &'static str) -> TestIoc {
        TestIoc { name, ca_port: crate::testbed::free_port() }
    }

    /// The IOC's entry in `iocs`, with extra Nix attributes. The settle time
    /// is one second unless `extra` sets it: the tests restart IOCs often.
    pub fn nix(&self, extra: &str) -> String {
        let settle = if extra.contains("settleTime") { "" } else { "healthCheck.settleTime = 1;" };
        format!(
            "{name} = {{ workingDirectory = \"iocBoot/{name}\"; environment.EPICS_CA_SERVER_PORT = \"{port}\"; {settle} {extra} }};",
            name = self.name,
            port = self.ca_port
        )
    }
}

impl TestFlake {
    pub fn new() -> TestFlake {
        let dir = tempfile::Builder::new().prefix("epnix-flake-").tempdir().expect("temp dir");
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/top.nix");
        std::fs::copy(fixture, dir.path().join("top.nix")).expect("copying the fixture top");
        let flake = TestFlake { dir };
        flake.git(&["init", "--quiet"]);
        flake
    }

    fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(["-c", "user.name=epnix-deploy tests", "-c", "user.email=tests@localhost"])
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .expect("running git");
        assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// The flake reference to pass with `--flake`.
    pub fn reference(&self) -> String {
        format!("git+file://{}", self.dir.path().display())
    }

    /// The commit the flake is at.
    pub fn revision(&self) -> String {
        self.git(&["rev-parse", "HEAD"])
    }

    /// Writes `flake.nix` with the test host, under its own name (the tool
    /// checks it against the host's), and the `tops` attribute set body given
    /// as Nix text, in which the host is called `"test"`. `top` is the
    /// fixture's builder function.
    pub fn write(&self, host: &TestHost, tops: &str) {
        self.write_as(host, &host.name, tops);
    }

    /// Like [`TestFlake::write`], with the host configured under `name`.
    pub fn write_as(&self, host: &TestHost, name: &str, tops: &str) {
        self.write_full(host, name, "", tops);
    }

    /// Like [`TestFlake::write`], the host deploying procServ 2.8.0 from Nix
    /// (`procServ.package`, built from the vendored source by
    /// `tests/fixtures/procserv.nix`).
    pub fn write_with_nix_procserv(&self, host: &TestHost, tops: &str) {
        let vendored = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/vendor/procServ-2.8.0.tar.gz");
        assert!(vendored.exists(), "{} is missing: the procServ tests need the vendored source", vendored.display());
        std::fs::copy(&vendored, self.dir.path().join("procServ-2.8.0.tar.gz")).expect("copying procServ's source");
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/procserv.nix");
        std::fs::copy(fixture, self.dir.path().join("procserv.nix")).expect("copying the procServ fixture");
        let procserv = "procServ.package = import ./procserv.nix { src = ./procServ-2.8.0.tar.gz; };";
        self.write_full(host, &host.name, procserv, tops);
    }

    /// Like [`TestFlake::write_as`], with `host_extra` (Nix attributes) in
    /// the host's entry.
    pub fn write_full(&self, host: &TestHost, name: &str, host_extra: &str, tops: &str) {
        self.write_login(host, name, "root", host_extra, tops);
    }

    /// Like [`TestFlake::write`], logging in as `user` (`sshUser`), with
    /// `host_extra` in the host's entry.
    pub fn write_as_user(&self, host: &TestHost, user: &str, host_extra: &str, tops: &str) {
        self.write_login(host, &host.name, user, host_extra, tops);
    }

    fn write_login(&self, host: &TestHost, name: &str, user: &str, host_extra: &str, tops: &str) {
        let text = format!(
            r#"{{
  outputs = {{ self }}:
    let top = import ./top.nix;
    in {{
      epnixDeploy = {{
                hosts.{name} = {{
          hostname = "127.0.0.1";
          sshUser = "{user}";
          sshPort = {port};
          sshOpts = [ "-i" "{key}" "-o" "UserKnownHostsFile={known_hosts}" ];
          {host_extra}
        }};
        tops = {{
{tops}
        }};
      }};
    }};
}}
"#,
            tops = tops.replace("\"test\"", &format!("\"{name}\"")),
            port = host.port,
            key = host.key_path().display(),
            known_hosts = host.known_hosts_path().display(),
        );
        std::fs::write(self.dir.path().join("flake.nix"), text).expect("writing flake.nix");
        // A flake without inputs needs no lock; one Nix wrote would be stale.
        let _ = std::fs::remove_file(self.dir.path().join("flake.lock"));
        self.git(&["add", "--all"]);
        self.git(&["commit", "--quiet", "--allow-empty", "--message", "deploy"]);
    }
}

impl TestFlake {
    /// Writes `flake.nix` with several test hosts, each under its own name
    /// with its extra Nix attributes (e.g. `tags = [ "linac" ];`), and the
    /// `tops` attribute set body, which names the hosts by their names.
    pub fn write_hosts(&self, hosts: &[(&TestHost, &str)], tops: &str) {
        let entries: Vec<String> = hosts
            .iter()
            .map(|(host, extra)| {
                format!(
                    r#"hosts.{name} = {{ hostname = "127.0.0.1"; sshUser = "root"; sshPort = {port};
          sshOpts = [ "-i" "{key}" "-o" "UserKnownHostsFile={known_hosts}" ]; {extra} }};"#,
                    name = host.name,
                    port = host.port,
                    key = host.key_path().display(),
                    known_hosts = host.known_hosts_path().display(),
                )
            })
            .collect();
        let text = format!(
            "{{\n  outputs = {{ self }}:\n    let top = import ./top.nix;\n    in {{\n      epnixDeploy = {{\n        {}\n        tops = {{\n{tops}\n        }};\n      }};\n    }};\n}}\n",
            entries.join("\n        ")
        );
        std::fs::write(self.dir.path().join("flake.nix"), text).expect("writing flake.nix");
        let _ = std::fs::remove_file(self.dir.path().join("flake.lock"));
        self.git(&["add", "--all"]);
        self.git(&["commit", "--quiet", "--allow-empty", "--message", "deploy"]);
    }
}

/// Boots `n` test hosts side by side (a boot is mostly waiting).
pub fn boot_hosts(n: usize) -> Vec<TestHost> {
    std::thread::scope(|scope| {
        let booting: Vec<_> = (0..n).map(|_| scope.spawn(TestHost::boot)).collect();
        booting.into_iter().map(|b| b.join().expect("a host failed to boot")).collect()
    })
}

/// Runs the tool with `args` and the test flake; nothing is mocked.
pub fn epnix_deploy(flake: &TestFlake, args: &[&str]) -> Output {
    let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    all.extend(["--flake".to_owned(), flake.reference()]);
    run(&all)
}

/// Runs the tool with exactly `args`, e.g. with no flake at all.
pub fn run(args: &[String]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_epnix-deploy"))
        .args(args)
        // No binary cache is reachable from the test machines; asking one
        // only costs retries.
        .env("NIX_CONFIG", "substituters =")
        .output()
        .expect("running epnix-deploy");
    eprintln!(
        "epnix-deploy {args:?} exited {}\n--- stdout\n{}--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// The top `demo` at `version`, with the given IOCs.
pub fn demo_top(version: &str, iocs: &[&TestIoc]) -> String {
    let names: Vec<String> = iocs.iter().map(|i| format!("\"{}\"", i.name)).collect();
    let entries: Vec<String> = iocs.iter().map(|i| i.nix("")).collect();
    format!(
        "demo = {{ package = top {{ version = \"{version}\"; iocs = [ {} ]; }}; hosts = [ \"test\" ]; iocs = {{ {} }}; }};",
        names.join(" "),
        entries.join(" ")
    )
}

/// Reads a PV, waiting for the IOC to come up and serve it.
pub fn caget_eventually(host: &TestHost, pv: &str, ioc: &TestIoc, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = None;
    while Instant::now() < deadline {
        last = host.caget(pv, ioc.ca_port);
        if last.as_deref() == Some(want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!("{pv} never read {want:?}; last read {last:?}");
}

pub fn profile_link(host: &TestHost) -> String {
    host.ssh_ok("readlink /nix/var/nix/profiles/epnix/demo").trim().to_owned()
}

/// The properties that change when a unit (re)starts.
pub fn start_marks(host: &TestHost, unit: &str) -> String {
    host.ssh_ok(&format!("systemctl show --property=MainPID,ActiveEnterTimestamp,NRestarts {unit}"))
}

pub fn assert_exit(output: &std::process::Output, code: i32) {
    assert_eq!(output.status.code(), Some(code), "stderr:\n{}", String::from_utf8_lossy(&output.stderr));
}

pub fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Nothing of ours on the host: no profile, no unit.
pub fn assert_untouched(host: &TestHost) {
    let found = host.ssh_ok("ls -d /nix/var/nix/profiles/epnix /etc/systemd/system/epnix-* 2>/dev/null || true");
    assert_eq!(found.trim(), "", "the host was changed");
}

/// The deployer, started in the background with its own temporary
/// directory, so the SSH master it leaves behind when killed can be ended.
pub struct Deployer {
    child: Option<Child>,
    tmp: tempfile::TempDir,
}

impl Deployer {
    pub fn start(flake: &TestFlake, args: &[&str]) -> Deployer {
        let tmp = tempfile::Builder::new().prefix("epd-").tempdir().expect("temp dir");
        let child = Command::new(env!("CARGO_BIN_EXE_epnix-deploy"))
            .args(args)
            .arg("--flake")
            .arg(flake.reference())
            .env("NIX_CONFIG", "substituters =")
            .env("TMPDIR", tmp.path())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(tmp.path().join("stderr")).expect("stderr file"))
            // A group of its own, as a shell gives a foreground job: Ctrl-C
            // reaches the tool and the `nix` it runs, as on a terminal.
            .process_group(0)
            .spawn()
            .expect("starting epnix-deploy");
        Deployer { child: Some(child), tmp }
    }

    /// Kills the deployer (a process this test started) and reaps it.
    pub fn kill(&mut self) {
        let child = self.child.as_mut().expect("running");
        child.kill().expect("killing the deployer");
        let _ = child.wait();
    }

    /// Whether the deployer has ended by itself.
    pub fn finished(&mut self) -> bool {
        self.child.as_mut().expect("running").try_wait().expect("polling the deployer").is_some()
    }

    /// Ctrl-C, as a terminal sends it: SIGINT to the deployer's process group.
    pub fn interrupt(&self) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill").args(["-INT", "--", &format!("-{pid}")]).status().expect("running kill");
        assert!(status.success(), "kill -INT -{pid} failed");
    }

    /// Waits until the deployer's stderr contains `text`.
    pub fn wait_for_stderr(&self, text: &str, within: Duration) {
        let deadline = Instant::now() + within;
        while !self.stderr().contains(text) {
            assert!(Instant::now() < deadline, "the deployer never said {text:?}:\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait(mut self) -> std::process::Output {
        let child = self.child.take().expect("running");
        let mut output = child.wait_with_output().expect("waiting for epnix-deploy");
        output.stderr = self.stderr().into_bytes();
        eprintln!("background deploy: {}\n{}", output.status, self.stderr());
        output
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("stderr")).unwrap_or_default()
    }
}

impl Drop for Deployer {
    fn drop(&mut self) {
        self.end_masters();
    }
}

impl Deployer {
    /// Ends the SSH masters of a killed deployer through their control
    /// sockets, the way their owner would have; with them goes the lock it
    /// held on the host.
    pub fn end_masters(&self) {
        let Ok(dirs) = std::fs::read_dir(self.tmp.path()) else { return };
        for dir in dirs.flatten() {
            for conn in std::fs::read_dir(dir.path()).into_iter().flatten().flatten() {
                let socket = conn.path().join("master");
                if socket.exists() {
                    let _ = Command::new("ssh").arg("-S").arg(&socket).args(["-O", "exit", "none"]).output();
                }
            }
        }
    }
}

/// Waits until the host's profile link reads `want`, looking at the host's
/// file system from outside, which needs no SSH login. `deployer`'s output
/// goes into the failure message.
pub fn wait_for_profile(host: &TestHost, want: &str, within: Duration, deployer: Option<&Deployer>) {
    let link: PathBuf = host.root().join("nix/var/nix/profiles/epnix/demo");
    let deadline = Instant::now() + within;
    let mut last = None;
    while Instant::now() < deadline {
        last = std::fs::read_link(&link).ok();
        if last.as_deref().is_some_and(|l| l.as_os_str() == want) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = deployer.map(Deployer::stderr).unwrap_or_default();
    panic!("the profile never pointed at {want}; last {last:?}\n{log}");
}

/// The whole `--json` document of a run, checked against the documented
/// schema (`src/output.schema.json`) and against the process's exit code.
pub fn document(output: &Output) -> Value {
    let doc: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!("--json must print one JSON document ({err}):\n{}", String::from_utf8_lossy(&output.stdout))
    });
    let schema: Value =
        serde_json::from_str(include_str!("../../src/output.schema.json")).expect("the schema file is JSON");
    let validator = jsonschema::validator_for(&schema).expect("the schema file is a JSON Schema");
    let errors: Vec<String> = validator.iter_errors(&doc).map(|e| format!("{e} at {}", e.instance_path())).collect();
    assert!(errors.is_empty(), "the document does not follow the schema: {errors:#?}\n{doc:#}");
    assert_eq!(doc["exitCode"].as_i64(), output.status.code().map(i64::from), "{doc:#}");
    doc
}

/// The `result` of a successful run's `--json` document.
pub fn json(output: &Output) -> Value {
    let doc = document(output);
    assert!(doc.get("error").is_none(), "the run failed: {doc:#}");
    doc["result"].clone()
}

/// What a switch's `--json` result says happened to `ioc`.
pub fn change(report: &Value, ioc: &str) -> String {
    let iocs = report["iocs"].as_array().unwrap_or_else(|| panic!("no `iocs` in {report:#}"));
    let entry = iocs.iter().find(|i| i["ioc"] == ioc).unwrap_or_else(|| panic!("no IOC `{ioc}` in {report:#}"));
    entry["change"].as_str().unwrap().to_owned()
}

/// `list --json` of the demo top.
pub fn list(host: &TestHost, flake: &TestFlake) -> Value {
    let out = epnix_deploy(flake, &["list", host.name.as_str(), "demo", "--json"]);
    assert_exit(&out, 0);
    json(&out)["generations"].clone()
}

pub fn numbers(list: &Value) -> Vec<u64> {
    list.as_array().unwrap().iter().map(|g| g["generation"].as_u64().unwrap()).collect()
}

/// Each generation's number and outcome, from `list --json`.
pub fn outcomes(list: &Value) -> Vec<(u64, String)> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|g| (g["generation"].as_u64().unwrap(), g["outcome"].as_str().unwrap().to_owned()))
        .collect()
}

/// A shell snippet that sets `$ioc` to the PID of the IOC process of `unit`
/// (procServ's child).
fn ioc_pid(unit: &str) -> String {
    format!(
        "pid=$(systemctl show --property=MainPID --value {unit}); ioc=$(cat /proc/$pid/task/*/children | cut -d' ' -f1)"
    )
}

/// The value of `var` in the environment of the running IOC of `unit`.
pub fn ioc_env(host: &TestHost, unit: &str, var: &str) -> String {
    host.ssh_ok(&format!("{}; tr '\\0' '\\n' < /proc/$ioc/environ | sed -n 's/^{var}=//p'", ioc_pid(unit)))
        .trim()
        .to_owned()
}

/// The directory the running IOC of `unit` works in.
pub fn ioc_cwd(host: &TestHost, unit: &str) -> String {
    host.ssh_ok(&format!("{}; readlink /proc/$ioc/cwd", ioc_pid(unit))).trim().to_owned()
}

/// The unit file of the demo top's IOC `iocDemo`.
pub const DEMO_UNIT: &str = "/etc/systemd/system/epnix-iocDemo.service";

/// The demo top: `top_args` for the fixture's builder, `ioc_extra` for the
/// IOC's entry, `top_extra` for the top's own attributes.
pub fn demo(ioc: &TestIoc, top_args: &str, ioc_extra: &str, top_extra: &str) -> String {
    format!(
        "demo = {{ package = top {{ {top_args} }}; hosts = [ \"test\" ]; iocs = {{ {} }}; {top_extra} }};",
        ioc.nix(ioc_extra)
    )
}

/// A fresh host with generation 1 (v1) of the demo top deployed and
/// healthy; its flake, its IOC `iocDemo` and that IOC's unit text.
pub fn deployed_v1() -> (TestHost, TestFlake, TestIoc, String) {
    let host = TestHost::boot();
    let flake = TestFlake::new();
    let ioc = TestIoc::new("iocDemo");
    flake.write(&host, &demo(&ioc, "version = \"v1\";", "", ""));
    assert_exit(&epnix_deploy(&flake, &[host.name.as_str(), "demo"]), 0);
    caget_eventually(&host, "iocDemo:version", &ioc, "v1");
    let unit = host.ssh_ok(&format!("cat {DEMO_UNIT}"));
    (host, flake, ioc, unit)
}

/// Generation `n` of the demo top runs, with the unit text `unit`, and
/// `version` answers.
pub fn assert_on(host: &TestHost, n: u32, unit: &str, ioc: &TestIoc, version: &str) {
    assert_eq!(profile_link(host), format!("demo-{n}-link"));
    assert_eq!(host.ssh_ok(&format!("cat {DEMO_UNIT}")), unit);
    caget_eventually(host, "iocDemo:version", ioc, version);
}

/// Adds the user `name` to the host, who logs in over SSH with the test key
/// (root's).
pub fn add_user(host: &TestHost, name: &str) {
    host.ssh_ok(&format!(
        "useradd --create-home --shell /bin/sh {name} && install -d -o {name} -m 700 /home/{name}/.ssh && \
         install -o {name} -m 600 /root/.ssh/authorized_keys /home/{name}/.ssh/authorized_keys"
    ));
}

/// Runs the shell command line `cmd` on the host as `user`, logged in over
/// SSH with the test key.
pub fn ssh_as(host: &TestHost, user: &str, cmd: &str) -> Output {
    let output = Command::new("ssh")
        .args(host.ssh_args())
        .arg(format!("{user}@127.0.0.1"))
        .arg(cmd)
        .stdin(Stdio::null())
        .output()
        .expect("running ssh");
    eprintln!(
        "{user}@{}: `{cmd}` exited {}\n--- stdout\n{}--- stderr\n{}",
        host.name,
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
