//! Test flakes: a directory holding the fixture top and a generated
//! `flake.nix` whose `epnixDeploy` points at test hosts. Tests rewrite the
//! flake between deploys to move from one version of a top to the next.

use std::path::Path;
use std::process::{Command, Output};

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
        TestIoc {
            name,
            ca_port: crate::testbed::free_port(),
        }
    }

    /// The IOC's entry in `iocs`, with extra Nix attributes.
    pub fn nix(&self, extra: &str) -> String {
        format!(
            "{name} = {{ workingDirectory = \"iocBoot/{name}\"; environment.EPICS_CA_SERVER_PORT = \"{port}\"; {extra} }};",
            name = self.name,
            port = self.ca_port
        )
    }
}

impl TestFlake {
    pub fn new() -> TestFlake {
        let dir = tempfile::Builder::new()
            .prefix("epnix-flake-")
            .tempdir()
            .expect("temp dir");
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/top.nix");
        std::fs::copy(fixture, dir.path().join("top.nix")).expect("copying the fixture top");
        TestFlake { dir }
    }

    /// The flake reference to pass with `--flake`.
    pub fn reference(&self) -> String {
        format!("path:{}", self.dir.path().display())
    }

    /// Writes `flake.nix` with host `test` (the given test host) and the
    /// `tops` attribute set body given as Nix text. `top` is the fixture's
    /// builder function.
    pub fn write(&self, host: &TestHost, tops: &str) {
        let text = format!(
            r#"{{
  outputs = {{ self }}:
    let top = import ./top.nix;
    in {{
      epnixDeploy = {{
        hosts.test = {{
          hostname = "127.0.0.1";
          sshUser = "root";
          sshPort = {port};
          sshOpts = [ "-i" "{key}" "-o" "UserKnownHostsFile={known_hosts}" ];
        }};
        tops = {{
{tops}
        }};
      }};
    }};
}}
"#,
            port = host.port,
            key = host.key_path().display(),
            known_hosts = host.known_hosts_path().display(),
        );
        std::fs::write(self.dir.path().join("flake.nix"), text).expect("writing flake.nix");
        // Nix records the inputs of a path flake; a stale lock is not wanted.
        let _ = std::fs::remove_file(self.dir.path().join("flake.lock"));
    }
}

/// Runs the tool with `args` and the test flake; nothing is mocked.
pub fn epnix_deploy(flake: &TestFlake, args: &[&str]) -> Output {
    let output = Command::new(env!("CARGO_BIN_EXE_epnix-deploy"))
        .args(args)
        .arg("--flake")
        .arg(flake.reference())
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
