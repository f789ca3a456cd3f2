//! Real test hosts for the integration tests, driven through `tests/testbed/testbed`.
//!
//! A [`TestHost`] is a Debian bookworm system booted with systemd-nspawn: real systemd,
//! sshd on its own 127.0.0.1 port, Nix, procServ and an EPICS IOC runtime in
//! `/opt/epics` (see the script for the details). Hosts share the machine's loopback
//! with the tests and with each other, so:
//! - every host gets its own sshd port ([`free_port`]);
//! - every IOC a test starts needs its own Channel Access port (`EPICS_CA_SERVER_PORT`,
//!   again from [`free_port`]), and clients address it as `127.0.0.1:<port>`
//!   ([`TestHost::caget`]); otherwise the IOCs of parallel tests answer each other.
//!
//! Needs root (mounts, systemd-nspawn). The host image is built once per machine
//! (cached, ~1 min cold) and checked once per test process; a host boots in about half a
//! second and is torn down when its `TestHost` is dropped, panics included.
//!
//! [`build_top`] builds the EPICS top fixture `tests/fixtures/top.nix`.

#![allow(dead_code)] // not every test binary uses every helper

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The testbed script.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/testbed/testbed")
}

/// The cached host image, built on first use. Once per test process: every later call
/// (from any test thread) gets the same answer, a failure included.
pub fn image() -> &'static Path {
    static IMAGE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let image = IMAGE.get_or_init(|| {
        // stderr is inherited: a cold build takes a minute and its progress should show.
        let out = Command::new(script())
            .arg("image")
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script().display()))?;
        if !out.status.success() {
            return Err(format!("`testbed image` failed ({})", out.status));
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    });
    match image {
        Ok(path) => path,
        Err(e) => panic!("{e}"),
    }
}

/// A free TCP+UDP port on 127.0.0.1, never the same twice in this process.
///
/// Used for sshd ports and for IOCs' Channel Access ports (CA serves both TCP and UDP on
/// `EPICS_CA_SERVER_PORT`, hence both are checked). Ports are drawn at random *below*
/// the kernel's ephemeral range rather than with bind(0): bind(0) hands out ephemeral
/// ports, the very ones the kernel also gives to outgoing connections (ssh, nix copy, CA
/// clients), one of which could take the port between this call and the server's bind.
/// Random draws also make collisions between test processes (nextest) unlikely.
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(|| Mutex::new(HashSet::new()));
    let (lo, hi) = port_range();
    let mut rng = Rng::seeded();
    for _ in 0..1000 {
        let port = lo + (rng.next() % u64::from(hi - lo)) as u16;
        let mut given = given.lock().unwrap_or_else(|e| e.into_inner());
        if given.contains(&port) || !port_is_free(port) {
            continue;
        }
        given.insert(port);
        return port;
    }
    // Everything we tried was taken: fall back to the kernel's choice.
    loop {
        let port =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).and_then(|l| l.local_addr()).expect("bind 127.0.0.1:0").port();
        let mut given = given.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) && port_is_free(port) {
            given.insert(port);
            return port;
        }
    }
}

/// Ports to draw from: 20000 up to the start of the ephemeral range (32768 by default).
fn port_range() -> (u16, u16) {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_start > 21000 { (20000, ephemeral_start) } else { (1025, ephemeral_start.max(1100)) }
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() && UdpSocket::bind((Ipv4Addr::LOCALHOST, port)).is_ok()
}

/// xorshift64*, seeded from the clock, the PID and a counter: enough to spread ports,
/// and no dependency.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        static COUNTER: Mutex<u64> = Mutex::new(0);
        let mut c = COUNTER.lock().unwrap_or_else(|e| e.into_inner());
        *c += 1;
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        let seed = nanos ^ (u64::from(std::process::id()) << 32) ^ c.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

/// Quote a string for a POSIX shell (commands given to [`TestHost::ssh`] run in the
/// host's login shell).
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A booted host. Dropping it stops the host and deletes its directory.
pub struct TestHost {
    /// Host name (also the nspawn machine name).
    pub name: String,
    /// sshd port on 127.0.0.1.
    pub port: u16,
    /// The host's directory: overlay (`upper/`, `work/`, `root/`), `id_ed25519` (client
    /// key), `known_hosts`, `console.log`, `pid`, `port`. `root/` is the host's "/", seen
    /// from outside.
    pub dir: PathBuf,
    /// Parent of `dir`, removed after `testbed down`; None once deliberately leaked.
    tmp: Option<tempfile::TempDir>,
}

impl TestHost {
    /// Boot a fresh host named `tb<port>`. Panics with the script's stderr on failure.
    pub fn boot() -> TestHost {
        Self::boot_inner(None)
    }

    /// Boot a fresh host with the given name (a valid host name: letters, digits, `-`).
    pub fn boot_named(name: &str) -> TestHost {
        Self::boot_inner(Some(name))
    }

    fn boot_inner(name: Option<&str>) -> TestHost {
        image();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_boot(name) {
                Ok(host) => return host,
                // The port was free when drawn, yet someone took it before sshd did:
                // draw another (a few times; a real failure shows every time).
                Err(stderr) if attempt < 3 && stderr.contains("testbed: port taken:") => continue,
                Err(stderr) => panic!("{stderr}"),
            }
        }
    }

    fn try_boot(name: Option<&str>) -> Result<TestHost, String> {
        let port = free_port();
        let name = name.map_or_else(|| format!("tb{port}"), str::to_owned);
        // Under /tmp whatever TMPDIR says, and short (/tmp/tbXXXXXX/h): the tool puts ssh
        // ControlPath sockets near the host's files and a UNIX socket path must fit in
        // 108 bytes.
        let tmp = tempfile::Builder::new().prefix("tb").tempdir_in("/tmp").expect("create host directory in /tmp");
        let dir = tmp.path().join("h");
        let out = Command::new(script())
            .arg("up")
            .arg(&dir)
            .arg(port.to_string())
            .arg(&name)
            .stdin(Stdio::null())
            .output()
            .expect("run testbed up");
        // From here on, Drop cleans up (`down` is safe after a failed `up`).
        let host = TestHost { name, port, dir, tmp: Some(tmp) };
        if out.status.success() {
            Ok(host)
        } else {
            Err(format!(
                "testbed up {} {port} failed ({}):\n{}",
                host.dir.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// A power cut, then a boot (`testbed reboot`): every process of the host is killed
    /// at once, its disk keeps every write, and it comes back with the same name, port,
    /// keys and machine id, with an empty `/run`. Returns once it is ready, as
    /// [`Self::boot`] does. Panics with the script's stderr on failure.
    pub fn reboot(&self) {
        let out = Command::new(script())
            .arg("reboot")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .output()
            .expect("run testbed reboot");
        assert!(
            out.status.success(),
            "testbed reboot {} failed ({}):\n{}",
            self.dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The client private key that logs in as root.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }

    /// A known_hosts file holding this host's key as `[127.0.0.1]:PORT`.
    pub fn known_hosts_path(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    /// The host's root filesystem as seen from the outside (writes go to the overlay).
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// The host's console output so far (systemd's boot messages), for diagnostics.
    pub fn console_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }

    /// ssh options to reach this host: key, pinned host key, port, no user config.
    /// Follow them with `root@127.0.0.1` (see [`Self::ssh_target`]).
    pub fn ssh_args(&self) -> Vec<String> {
        let mut args: Vec<String> = vec!["-F".into(), "/dev/null".into()];
        for o in [
            format!("IdentityFile={}", self.key_path().display()),
            "IdentitiesOnly=yes".into(),
            format!("UserKnownHostsFile={}", self.known_hosts_path().display()),
            "StrictHostKeyChecking=yes".into(),
            "BatchMode=yes".into(),
            "LogLevel=ERROR".into(),
            "ConnectTimeout=10".into(),
        ] {
            args.push("-o".into());
            args.push(o);
        }
        args.push("-p".into());
        args.push(self.port.to_string());
        args
    }

    /// `root@127.0.0.1`.
    pub fn ssh_target(&self) -> &'static str {
        "root@127.0.0.1"
    }

    /// The value for `NIX_SSHOPTS` (Nix 2.8 wants the port there, not in the URL).
    pub fn nix_sshopts(&self) -> String {
        self.ssh_args().join(" ")
    }

    /// An ssh command running `cmd` on the host (stdin null; change it if needed).
    pub fn ssh_command(&self, cmd: &str) -> Command {
        let mut c = Command::new("ssh");
        c.args(self.ssh_args()).arg(self.ssh_target()).arg(cmd).stdin(Stdio::null());
        c
    }

    /// Run `cmd` (a shell command line) on the host as root.
    pub fn ssh(&self, cmd: &str) -> Output {
        self.ssh_command(cmd).output().expect("run ssh")
    }

    /// Run `cmd` on the host; its stdout. Panics with status and stderr on failure.
    pub fn ssh_ok(&self, cmd: &str) -> String {
        let out = self.ssh(cmd);
        if !out.status.success() {
            panic!(
                "on {}: `{cmd}` failed ({}):\nstdout:\n{}\nstderr:\n{}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Read a PV from the IOC serving Channel Access on `ca_port` (on this host's side of
    /// the loopback, which all hosts share). None if it does not connect within ~5 s.
    pub fn caget(&self, pv: &str, ca_port: u16) -> Option<String> {
        let out = self.ssh(&format!("EPICS_CA_ADDR_LIST=127.0.0.1:{ca_port} caget {}", shell_quote(pv)));
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Poll [`Self::caget`] until the PV reads `want` or `timeout` passes; the last value.
    pub fn wait_for_pv(&self, pv: &str, ca_port: u16, want: &str, timeout: Duration) -> Result<(), Option<String>> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.caget(pv, ca_port);
            if got.as_deref() == Some(want) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(got);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Copy a store path's closure to the host (`nix copy` over ssh).
    pub fn nix_copy(&self, store_path: &Path) {
        let out = Command::new("nix")
            .args(["--extra-experimental-features", "nix-command flakes"])
            .args(["copy", "--option", "substituters", ""])
            .arg("--to")
            .arg(format!("ssh://{}", self.ssh_target()))
            .arg(store_path)
            .env("NIX_SSHOPTS", self.nix_sshopts())
            .stdin(Stdio::null())
            .output()
            .expect("run nix copy");
        assert!(
            out.status.success(),
            "nix copy {} to {} failed ({}):\n{}",
            store_path.display(),
            self.name,
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        // Runs during unwinding too: never panic here (that would abort the test binary).
        let ok = match Command::new(script()).arg("down").arg(&self.dir).stdin(Stdio::null()).output() {
            Ok(out) if out.status.success() => true,
            Ok(out) => {
                eprintln!(
                    "testbed down {} failed ({}):\n{}",
                    self.dir.display(),
                    out.status,
                    String::from_utf8_lossy(&out.stderr)
                );
                false
            }
            Err(e) => {
                eprintln!("cannot run testbed down {}: {e}", self.dir.display());
                false
            }
        };
        if !ok {
            // Something may still be mounted in there: do not let TempDir delete through
            // it. Leave it for a manual `testbed down`.
            if let Some(tmp) = self.tmp.take() {
                eprintln!("leaving {} behind", tmp.keep().display());
            }
        }
    }
}

/// Build the EPICS top fixture with the given arguments (a Nix attribute set body, e.g.
/// `version = "v2"; iocs = [ "iocA" "iocB" ];`) and return its store path.
///
/// Nix 2.8 (Debian's) has no `--print-out-paths`: the path comes from `--json`.
pub fn build_top(args: &str) -> PathBuf {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/top.nix");
    let expr = format!("(import {} {{ {args} }})", fixture.display());
    let out = Command::new("nix")
        .args(["--extra-experimental-features", "nix-command flakes"])
        .args(["build", "--option", "substituters", "", "--impure", "--no-link", "--json", "--expr"])
        .arg(&expr)
        .stdin(Stdio::null())
        .output()
        .expect("run nix build");
    assert!(
        out.status.success(),
        "nix build {expr} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("nix build --json output");
    let path = json[0]["outputs"]["out"].as_str().unwrap_or_else(|| panic!("no out path in {json}"));
    PathBuf::from(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_never_repeats() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let unique: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len());
    }

    /// A panicking test still stops its host and removes its directory.
    #[test]
    fn host_is_torn_down_when_a_test_panics() {
        let (tx, rx) = std::sync::mpsc::channel();
        let joined = std::thread::spawn(move || {
            let host = TestHost::boot();
            tx.send((host.dir.clone(), std::fs::read_to_string(host.dir.join("pid")).unwrap())).unwrap();
            panic!("deliberate panic with a host up");
        })
        .join();
        assert!(joined.is_err());
        let (dir, pid) = rx.recv().unwrap();
        assert!(!dir.exists(), "{} still exists", dir.display());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(dir.to_str().unwrap()), "still mounted: {}", dir.display());
        assert_dead(&pid);
    }

    /// `reboot` is a power cut: what is on disk stays, what lives in `/run` (a transient
    /// timer, like the armed rollback's) goes, and the host is the same host. `down`
    /// after it still leaves nothing behind.
    #[test]
    fn reboot_keeps_the_disk_and_empties_run() {
        let host = TestHost::boot();
        host.ssh_ok(
            "echo kept >/var/lib/epnix-reboot-test && echo gone >/run/epnix-reboot-test && \
             systemd-run --quiet --on-active=300 --unit=x true && systemctl is-active --quiet x.timer",
        );
        let machine_id = host.ssh_ok("cat /etc/machine-id");
        let pid = std::fs::read_to_string(host.dir.join("pid")).unwrap();

        host.reboot();

        assert_ne!(std::fs::read_to_string(host.dir.join("pid")).unwrap(), pid, "systemd-nspawn was not restarted");
        assert_dead(&pid);
        // ssh_ok: the same client key and the same known_hosts (StrictHostKeyChecking=yes).
        assert_eq!(host.ssh_ok("cat /var/lib/epnix-reboot-test"), "kept\n", "a file on disk was lost");
        assert_eq!(
            host.ssh_ok("test -e /run/epnix-reboot-test && echo present || echo absent"),
            "absent\n",
            "/run survived the reboot"
        );
        let timer = host.ssh("systemctl is-active x.timer");
        assert!(!timer.status.success(), "the transient timer survived the reboot");
        assert_eq!(host.ssh_ok("hostname").trim(), host.name);
        assert_eq!(host.ssh_ok("cat /etc/machine-id"), machine_id);
        assert!(
            host.ssh_ok("systemctl is-system-running || true").trim() == "running",
            "after the reboot: {}",
            host.ssh_ok("systemctl --failed --no-legend || true")
        );

        let dir = host.dir.clone();
        let nspawn = std::fs::read_to_string(dir.join("pid")).unwrap();
        let cgroups = std::fs::read_to_string(dir.join("cgroups")).unwrap();
        drop(host);
        assert!(!dir.parent().unwrap().exists(), "{} still exists", dir.display());
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(dir.to_str().unwrap()), "still mounted: {}", dir.display());
        assert_dead(&nspawn);
        for cgroup in cgroups.lines() {
            assert!(!Path::new(cgroup).exists(), "cgroup {cgroup} is left behind");
        }
    }

    /// The process `pid` is gone (or a zombie its new parent has yet to reap).
    fn assert_dead(pid: &str) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", pid.trim())).unwrap_or_default();
        assert!(status.is_empty() || status.contains("State:\tZ"), "systemd-nspawn {} still runs", pid.trim());
    }

    /// The whole chain the tool relies on, by hand: the fixture builds, its closure copies
    /// to a host, procServ runs its IOC under a hardened DynamicUser unit and the IOC
    /// answers Channel Access on its own port.
    #[test]
    fn fixture_ioc_runs_under_procserv() {
        let top = build_top(r#"version = "vtest"; iocs = [ "iocDemo" ];"#);
        let host = TestHost::boot();
        host.nix_copy(&top);
        let ca_port = free_port();
        host.ssh_ok(&format!(
            "systemd-run --unit=ioc-demo -p DynamicUser=true -p StateDirectory=epics/demo \
             -p RuntimeDirectory=epics/demo -p RuntimeDirectoryMode=0700 \
             -p ProtectSystem=strict -p MemoryDenyWriteExecute=true \
             -p SystemCallFilter=@system-service -p Environment=EPICS_CA_SERVER_PORT={ca_port} \
             /usr/bin/procServ --foreground --logfile=- --holdoff=0 --name=demo \
             --chdir={}/iocBoot/iocDemo unix:/run/epics/demo/control ./st.cmd",
            top.display()
        ));
        let got = host.wait_for_pv("iocDemo:version", ca_port, "vtest", Duration::from_secs(20));
        assert!(
            got.is_ok(),
            "iocDemo:version = {got:?}; journal:\n{}",
            String::from_utf8_lossy(&host.ssh("journalctl -u ioc-demo --no-pager").stdout)
        );
        // The console is a real iocsh behind procServ's UNIX socket.
        let dbl = host.ssh_ok("(echo dbl; sleep 1) | socat - UNIX-CONNECT:/run/epics/demo/control");
        assert!(dbl.contains("iocDemo:heartbeat"), "dbl printed:\n{dbl}");
    }
}
