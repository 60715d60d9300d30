//! The example GitHub workflows, the release workflow and a workflow using
//! the action at the repository root pass actionlint (installed by
//! `scripts/test`).

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
    let files = yml_files(&dir);
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
    // The crate named crabbox on crates.io is another project: the examples
    // install with this repository's action instead.
    for (name, text) in [("pond.yml", &pond), ("sweep.yml", &sweep)] {
        assert!(
            text.contains("uses: OWNER/crabbox@v") && !text.contains("cargo install"),
            "{name} installs crabbox with the action"
        );
    }
}

fn yml_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yml"))
        .collect();
    files.sort();
    files
}

#[test]
fn release_workflow_passes_actionlint() {
    let files = yml_files(&root().join(".github/workflows"));
    assert!(
        files.iter().any(|p| p.ends_with("release.yml")),
        "{files:?}"
    );
    let out = actionlint(&files);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let release =
        std::fs::read_to_string(root().join(".github/workflows/release.yml")).expect("release.yml");
    for needle in [
        "x86_64-unknown-linux-gnu",
        "aarch64-unknown-linux-gnu",
        "aarch64-apple-darwin",
        "CARGO_PROFILE_RELEASE_STRIP",
        "SHA256SUMS",
        "crabbox-${TAG#v}-$TARGET.tar.gz",
    ] {
        assert!(release.contains(needle), "release.yml lacks {needle}");
    }
}

/// A workflow using the action as `./` (actionlint reads the local
/// `action.yml` and checks `with:` inputs against it), with a control
/// showing that an input the action lacks is rejected.
#[test]
fn workflow_using_the_action_passes_actionlint() {
    let repo = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(repo.path().join(".git")).expect("mkdir .git");
    std::fs::create_dir_all(repo.path().join(".github/workflows")).expect("mkdir");
    std::fs::copy(root().join("action.yml"), repo.path().join("action.yml")).expect("copy");
    let workflow = |input: &str| {
        format!(
            "on: push\njobs:\n  x:\n    runs-on: ubuntu-latest\n    steps:\n      - uses: actions/checkout@v4\n      - id: crabbox\n        uses: ./\n        with:\n          {input}: v0.1.0\n      - run: echo \"$P\"\n        env:\n          P: ${{{{ steps.crabbox.outputs.path }}}} ${{{{ steps.crabbox.outputs.version }}}}\n"
        )
    };
    let path = repo.path().join(".github/workflows/ci.yml");
    let lint = || {
        Command::new("actionlint")
            .arg("-no-color")
            .arg(&path)
            .current_dir(repo.path())
            .output()
            .expect("actionlint")
    };
    std::fs::write(&path, workflow("version")).expect("write");
    let out = lint();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(&path, workflow("no-such-input")).expect("write");
    let out = lint();
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stdout).contains("no-such-input"),
        "actionlint checks inputs against action.yml: {}",
        String::from_utf8_lossy(&out.stdout)
    );
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
