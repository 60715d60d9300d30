//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

use crabbox_spec::diagnostic::render_human;
use crabbox_spec::interpolate::Variables;
use crabbox_spec::load::{Loaded, load_str};

/// The repository root (tests run with it as the working directory).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Loads a file by its path relative to the repository root, with no
/// environment variables, so results do not depend on the machine.
pub fn load_fixture(relative: &str) -> Loaded {
    let text = std::fs::read_to_string(root().join(relative)).expect("fixture exists");
    let dir = Path::new(relative).parent().expect("has a parent");
    load_str(
        relative,
        &text,
        dir,
        &Variables::fixed(vec![("PR_NUMBER".into(), "42".into())]),
    )
}

/// Diagnostics as a person sees them, without colour.
pub fn rendered(loaded: &Loaded) -> String {
    anstream::adapter::strip_str(&render_human(&loaded.file, &loaded.diagnostics)).to_string()
}

/// The `.yaml` files of a directory under the root, sorted.
pub fn yaml_files(relative_dir: &str) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(root().join(relative_dir))
        .expect("directory exists")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .map(|n| format!("{relative_dir}/{n}"))
        .collect();
    files.sort();
    files
}

/// Compares `actual` with the snapshot file; with `UPDATE_SNAPSHOTS=1`
/// writes it instead. Returns a description of the mismatch.
pub fn check_snapshot(relative: &str, actual: &str) -> Option<String> {
    let path = root().join(relative);
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, actual).expect("snapshot written");
        return None;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    (expected != actual)
        .then(|| format!("--- {relative} (expected)\n{expected}\n+++ actual\n{actual}"))
}

/// The verdicts an independent validator script printed, one line per
/// document (`ok`, or why not), after checking that it ran and judged
/// `expected` documents.
pub fn validator_verdicts(out: &std::process::Output, expected: usize) -> Vec<Result<(), String>> {
    assert!(
        out.status.success(),
        "the independent validator failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let verdicts: Vec<Result<(), String>> = text
        .lines()
        .map(|l| if l == "ok" { Ok(()) } else { Err(l.to_owned()) })
        .collect();
    assert_eq!(verdicts.len(), expected, "{text}");
    verdicts
}

/// A multi-threaded runtime of its own, which serves a test's fakes while
/// the test itself blocks (running the binary, waiting on children).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The `crabbox` binary run in a test's own world under `root`: state in
/// `root/state`, `HOME` (and Crabbox's user config dir) under `root/home`,
/// the working directory `root/work`, no colour, no stdin, and no shared
/// state backend from the developer's environment.
pub fn crabbox_in(root: &Path) -> std::process::Command {
    let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("crabbox"));
    c.env("CRABBOX_STATE_DIR", root.join("state"))
        .env("HOME", root.join("home"))
        .env("XDG_CONFIG_HOME", root.join("home/.config"))
        .env("NO_COLOR", "1")
        .env_remove("CRABBOX_STATE_URL")
        .current_dir(root.join("work"))
        .stdin(std::process::Stdio::null());
    c
}
