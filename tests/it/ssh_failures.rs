//! Logins that fail before anything changed end with exit 6, what ssh said
//! and a hint for the case. `status` of a `user@host:port` target needs no
//! flake, so these tests reach the login and nothing else.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::{assert_exit, assert_untouched, run, stderr};
use crate::testbed::{TestHost, free_port};

/// `status` of top `demo` on `root@127.0.0.1:port`, with `--ssh-opts`.
fn status(port: u16, ssh_opts: &str) -> Output {
    run(&["status".into(), format!("root@127.0.0.1:{port}"), "demo".into(), "--ssh-opts".into(), ssh_opts.into()])
}

/// A new ed25519 key pair in `dir`, unknown to every test host; its private key.
fn new_key(dir: &Path) -> PathBuf {
    let key = dir.join("id_other");
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "epnix-deploy test", "-f"])
        .arg(&key)
        .output()
        .expect("running ssh-keygen");
    assert!(out.status.success(), "ssh-keygen: {}", String::from_utf8_lossy(&out.stderr));
    key
}

/// The `hint:` line of an error on stderr.
fn hint(out: &Output) -> String {
    let err = stderr(out);
    let line = err.lines().find(|l| l.starts_with("hint: ")).unwrap_or_else(|| panic!("no hint in:\n{err}"));
    line.to_owned()
}

fn assert_unchanged(host: &TestHost) {
    assert_untouched(host);
    assert_eq!(host.ssh_ok("ls -d /var/lib/epnix-deploy 2>/dev/null || echo none").trim(), "none");
}

#[test]
fn a_key_the_host_refuses_exits_6_and_hints_at_ssh_copy_id() {
    let host = TestHost::boot();
    let tmp = tempfile::tempdir().expect("temp dir");
    let key = new_key(tmp.path());
    let out =
        status(host.port, &format!("-i {} -o UserKnownHostsFile={}", key.display(), host.known_hosts_path().display()));
    assert_exit(&out, 6);
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "could not log in to `root@127.0.0.1:{}` over SSH (root@127.0.0.1, port {}): the host refused the key(s) offered; nothing was changed",
            host.port, host.port
        )),
        "{err}"
    );
    assert!(err.contains(&format!("-i {} ", key.display())), "the ssh command line: {err}");
    assert!(err.contains("Permission denied (publickey"), "what ssh said: {err}");
    let hint = hint(&out);
    assert!(hint.contains(&format!("`ssh-copy-id -i {} -p {} root@127.0.0.1`", key.display(), host.port)), "{hint}");
    assert!(hint.contains("--ssh-opts"), "{hint}");
    assert_unchanged(&host);
}

#[test]
fn an_unknown_host_key_exits_6_and_hints_at_known_hosts() {
    let host = TestHost::boot();
    let tmp = tempfile::tempdir().expect("temp dir");
    let known_hosts = tmp.path().join("known_hosts");
    std::fs::write(&known_hosts, "").expect("writing an empty known_hosts");
    let out = status(
        host.port,
        &format!(
            "-i {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes",
            host.key_path().display(),
            known_hosts.display()
        ),
    );
    assert_exit(&out, 6);
    let err = stderr(&out);
    assert!(err.contains("ssh does not know the host's key"), "{err}");
    assert!(err.contains("Host key verification failed."), "what ssh said: {err}");
    let hint = hint(&out);
    assert!(hint.contains(&format!("ssh-keyscan -p {} 127.0.0.1 >> {}", host.port, known_hosts.display())), "{hint}");
    assert_eq!(std::fs::read_to_string(&known_hosts).unwrap(), "", "no key was accepted on the user's behalf");
    assert_unchanged(&host);
}

#[test]
fn a_changed_host_key_exits_6_and_hints_at_ssh_keygen_r() {
    let host = TestHost::boot();
    let tmp = tempfile::tempdir().expect("temp dir");
    // Another key recorded for the host's address: as after a reinstall.
    let other = new_key(tmp.path());
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).expect("reading the public key");
    let known_hosts = tmp.path().join("known_hosts");
    std::fs::write(&known_hosts, format!("[127.0.0.1]:{} {other_pub}", host.port)).expect("writing known_hosts");
    let out =
        status(host.port, &format!("-i {} -o UserKnownHostsFile={}", host.key_path().display(), known_hosts.display()));
    assert_exit(&out, 6);
    let err = stderr(&out);
    assert!(err.contains("the host's key has CHANGED"), "{err}");
    assert!(err.contains("REMOTE HOST IDENTIFICATION HAS CHANGED"), "what ssh said: {err}");
    let hint = hint(&out);
    assert!(
        hint.contains(&format!("`ssh-keygen -R '[127.0.0.1]:{}' -f {}`", host.port, known_hosts.display())),
        "{hint}"
    );
    assert_unchanged(&host);
}

/// Nothing listens on the port (loopback only, no host booted).
#[test]
fn no_ssh_server_exits_6_and_hints_at_the_address() {
    let port = free_port();
    let out = status(port, "-o UserKnownHostsFile=/dev/null");
    assert_exit(&out, 6);
    let err = stderr(&out);
    assert!(err.contains("no SSH server answered"), "{err}");
    assert!(err.contains("Connection refused"), "what ssh said: {err}");
    assert!(hint(&out).contains(&format!("the address and port in `root@127.0.0.1:{port}`")), "{err}");
}
