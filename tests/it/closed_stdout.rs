//! A closed stdout (`crabbox plan --format json | head -c1`) ends a command
//! quietly with status 0, as ripgrep does.

use std::path::Path;
use std::process::{Command, Stdio};

/// A pond directory with its own state dir and home.
fn pond_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("home")).expect("home");
    std::fs::write(
        dir.path().join("pond.yaml"),
        "version: 1\npond: closed-stdout\ndefaults:\n  sync: false\nmembers:\n  - slug: db\n    expose: [5432]\n  - slug: api\n    depends_on: [db]\n",
    )
    .expect("spec");
    dir
}

fn crabbox(dir: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("crabbox"));
    cmd.args(args)
        .current_dir(dir)
        .env("CRABBOX_STATE_DIR", dir.join("state"))
        .env("HOME", dir.join("home"))
        .env("NO_COLOR", "1")
        .env_remove("CRABBOX_STATE_URL")
        .env_remove("HCLOUD_TOKEN")
        .stdin(Stdio::null());
    cmd
}

/// Runs crabbox with `args` in `dir`, its stdout a pipe whose reading end is
/// closed before crabbox writes; returns (status, stderr).
fn closed_stdout_in(dir: &Path, args: &[&str]) -> (Option<i32>, String) {
    let mut child = crabbox(dir, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("crabbox starts");
    // The reader goes away before crabbox prints anything.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("crabbox ends");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// [`closed_stdout_in`] a fresh pond directory.
fn with_closed_stdout(args: &[&str]) -> (Option<i32>, String) {
    closed_stdout_in(pond_dir().path(), args)
}

#[test]
fn plan_json_into_a_closed_pipe_exits_0_quietly() {
    let (code, stderr) = with_closed_stdout(&["plan", "--format", "json"]);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_eq!(stderr, "");
}

#[test]
fn peers_json_into_a_closed_pipe_exits_0_quietly() {
    let (code, stderr) = with_closed_stdout(&["peers", "--json"]);
    assert_eq!(code, Some(0), "stderr: {stderr}");
    assert_eq!(stderr, "");
}

#[test]
fn other_commands_into_a_closed_pipe_exit_0_quietly() {
    for args in [
        &["schema"][..],
        &["validate", "--format", "json"],
        &["plan", "--format", "markdown"],
        &["list", "--json"],
    ] {
        let (code, stderr) = with_closed_stdout(args);
        assert_eq!((code, stderr.as_str()), (Some(0), ""), "crabbox {args:?}");
    }
}

#[test]
fn a_member_s_output_into_a_closed_pipe_ends_run_quietly() {
    // `run` prints the member's output from a runtime worker thread.
    let dir = pond_dir();
    let apply = crabbox(dir.path(), &["apply", "--auto-approve"])
        .output()
        .expect("apply runs");
    assert!(
        apply.status.success(),
        "{}",
        String::from_utf8_lossy(&apply.stderr)
    );
    let (code, stderr) = closed_stdout_in(
        dir.path(),
        &[
            "run",
            "--pond",
            "closed-stdout",
            "--id",
            "db",
            "--",
            "sh",
            "-c",
            "seq 1 100000",
        ],
    );
    let destroy = crabbox(dir.path(), &["destroy", "--auto-approve"])
        .output()
        .expect("destroy runs");
    assert!(
        destroy.status.success(),
        "{}",
        String::from_utf8_lossy(&destroy.stderr)
    );
    assert_eq!((code, stderr.as_str()), (Some(0), ""));
}
