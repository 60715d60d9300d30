//! A closed stdout (`crabbox plan --format json | head -c1`) ends a command
//! quietly with status 0, as ripgrep does.

use std::process::{Command, Stdio};

/// Runs crabbox with `args` in a fresh state dir, its stdout a pipe whose
/// reading end is closed before crabbox writes; returns (status, stderr).
fn with_closed_stdout(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("home")).expect("home");
    std::fs::write(
        dir.path().join("pond.yaml"),
        "version: 1\npond: closed-stdout\nmembers:\n  - slug: db\n    expose: [5432]\n  - slug: api\n    depends_on: [db]\n",
    )
    .expect("spec");
    let mut child = Command::new(assert_cmd::cargo::cargo_bin("crabbox"))
        .args(args)
        .current_dir(dir.path())
        .env("CRABBOX_STATE_DIR", dir.path().join("state"))
        .env("HOME", dir.path().join("home"))
        .env("NO_COLOR", "1")
        .env_remove("CRABBOX_STATE_URL")
        .env_remove("HCLOUD_TOKEN")
        .stdin(Stdio::null())
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
