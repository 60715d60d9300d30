//! `scripts/test`, the README's test command: where it cannot install what
//! the tests need it stops before compiling and names the exact packages.
//! Missing components and the lack of privilege are simulated through the
//! variables the script documents, so no fresh machine is needed.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::root;

/// Runs `scripts/test ARGS` with `vars` set and a `cargo` first on PATH that
/// only leaves a mark, so a run that went on to compile is seen.
fn script(args: &[&str], vars: &[(&str, &str)]) -> (Output, bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mark = dir.path().join("cargo-ran");
    let fake = dir.path().join("cargo");
    std::fs::write(&fake, format!("#!/bin/sh\ntouch '{}'\n", mark.display())).expect("fake");
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(root().join("scripts/test"))
        .args(args)
        .envs(vars.iter().copied())
        .env("PATH", path)
        .current_dir(Path::new("/"))
        .output()
        .expect("scripts/test runs");
    (out, mark.exists())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const NO_SSHD_NO_POSTGRES: [(&str, &str); 2] = [
    ("CRABBOX_TEST_SSHD", "/nonexistent/sshd"),
    ("CRABBOX_TEST_PG_ROOT", "/nonexistent/postgresql"),
];

#[test]
fn without_root_or_sudo_it_names_the_packages_and_does_not_compile() {
    let mut vars = NO_SSHD_NO_POSTGRES.to_vec();
    vars.push(("CRABBOX_TEST_NO_PRIVILEGE", "1"));
    let (out, compiled) = script(&[], &vars);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!compiled, "stopped before cargo: {err}");
    assert!(err.contains("is not root and cannot use sudo"), "{err}");
    assert!(
        err.lines().any(
            |l| l == "  system packages: as root, apt-get install -y openssh-server postgresql"
        ),
        "exactly the missing packages: {err}"
    );
}

#[test]
fn on_another_system_it_names_the_packages_and_does_not_compile() {
    let other = tempfile::NamedTempFile::new().expect("os-release");
    std::fs::write(other.path(), "ID=fedora\nID_LIKE=\"rhel centos\"\n").expect("write");
    let mut vars = NO_SSHD_NO_POSTGRES.to_vec();
    let os = other.path().to_str().expect("utf-8").to_owned();
    vars.push(("CRABBOX_TEST_OS_RELEASE", &os));
    let (out, compiled) = script(&[], &vars);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!compiled, "stopped before cargo: {err}");
    assert!(err.contains("this is not Debian or Ubuntu"), "{err}");
    assert!(
        err.contains("install your system's equivalents): openssh-server postgresql"),
        "{err}"
    );
}

#[test]
fn check_reports_without_installing_or_compiling() {
    // This machine runs the suite, so it has everything.
    let (out, compiled) = script(&["--check"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!compiled);
    let (out, compiled) = script(&["--check"], &NO_SSHD_NO_POSTGRES);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!compiled);
    assert!(
        err.contains("apt-get install -y openssh-server postgresql"),
        "{err}"
    );
}
