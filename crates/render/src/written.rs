//! Which output files crabbox wrote for a pond, and where: kept in the state
//! directory (`ponds/<pond>/outputs.json`, a map from directory to file
//! names). `destroy --pond NAME` has no spec to say where the outputs went or
//! which templates there were, and must still remove every file that
//! describes the pond's leases.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::files::OutputFile;

type Record = BTreeMap<PathBuf, BTreeSet<String>>;

fn record_path(state_dir: &Path, pond: &str) -> PathBuf {
    state_dir.join("ponds").join(pond).join("outputs.json")
}

/// The recorded files; none when there is no (readable) record.
fn load(state_dir: &Path, pond: &str) -> Record {
    std::fs::read_to_string(record_path(state_dir, pond))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// Whether anything was recorded as written for `pond`.
#[must_use]
pub fn any(state_dir: &Path, pond: &str) -> bool {
    !load(state_dir, pond).is_empty()
}

/// Adds `files`, written to `dir`, to the pond's record (rewritten only when
/// it changes).
///
/// # Errors
/// Writing the record, with its path.
pub fn remember(
    state_dir: &Path,
    pond: &str,
    dir: &Path,
    files: &[OutputFile],
) -> std::io::Result<()> {
    let mut record = load(state_dir, pond);
    let names = record.entry(dir.to_owned()).or_default();
    let before = names.len();
    names.extend(files.iter().map(|f| f.name.clone()));
    if names.len() == before && record_path(state_dir, pond).exists() {
        return Ok(());
    }
    let text = serde_json::to_string_pretty(&record).map_err(std::io::Error::other)?;
    crabbox_fs::atomic_file::write(&record_path(state_dir, pond), text.as_bytes())
}

/// Removes every recorded file of `pond` and every file in `known`
/// (directory, names), then the directories left empty and the record.
/// Returns the problems, one per file that could not be removed.
#[must_use]
pub fn remove_all(state_dir: &Path, pond: &str, known: &[(PathBuf, Vec<String>)]) -> Vec<String> {
    let mut all = load(state_dir, pond);
    for (dir, names) in known {
        all.entry(dir.clone())
            .or_default()
            .extend(names.iter().cloned());
    }
    let mut problems = Vec::new();
    for (dir, names) in &all {
        for name in names {
            let path = dir.join(name);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => problems.push(format!("{}: {e}", path.display())),
            }
            // Template destinations may be in subdirectories: drop the empty ones.
            let mut parent = path.parent();
            while let Some(p) = parent.filter(|p| p.starts_with(dir) && *p != dir) {
                if std::fs::remove_dir(p).is_err() {
                    break;
                }
                parent = p.parent();
            }
        }
        // Only when empty: the user may keep other files there.
        let _ = std::fs::remove_dir(dir);
    }
    let record = record_path(state_dir, pond);
    match std::fs::remove_file(&record) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => problems.push(format!("{}: {e}", record.display())),
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str) -> OutputFile {
        OutputFile {
            name: name.to_owned(),
            contents: String::new(),
        }
    }

    #[test]
    fn remembered_files_are_removed_with_their_empty_directories() {
        let state = tempfile::tempdir().expect("state");
        let out = tempfile::tempdir().expect("out");
        let dir = out.path().join("custom");
        let files = [file("peers.json"), file("conf/app.ini")];
        crate::files::write_outputs(&dir, &files).expect("write");
        std::fs::write(out.path().join("keep"), "user's").expect("keep");
        remember(state.path(), "p", &dir, &files).expect("remember");
        assert!(any(state.path(), "p"));
        assert!(!any(state.path(), "other"));

        let problems = remove_all(state.path(), "p", &[]);
        assert!(problems.is_empty(), "{problems:?}");
        assert!(!dir.exists(), "the directory held only outputs");
        assert!(out.path().join("keep").exists());
        assert!(!any(state.path(), "p"), "the record is gone too");
    }
}
