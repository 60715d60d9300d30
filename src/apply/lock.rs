//! One apply per pond at a time: an OS file lock on
//! `<state>/ponds/<pond>/lock`, whose content names the holder (pid, host,
//! command, start time, CI run URL). The OS drops the lock when the holder
//! dies, so a cancelled CI job never leaves a stuck lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::atomic_file::create_private_dir;

/// Who holds a pond's lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Process ID.
    pub pid: u32,
    /// Host name.
    pub host: String,
    /// The command line.
    pub command: String,
    /// RFC 3339.
    pub started: String,
    /// CI run URL, when known (GitHub Actions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ci_run_url: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} on {} since {} running `{}`",
            self.pid, self.host, self.started, self.command
        )?;
        if let Some(url) = &self.ci_run_url {
            write!(f, " ({url})")?;
        }
        Ok(())
    }
}

/// The lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Someone else holds it.
    #[error("pond `{pond}` is locked by {}", holder.as_ref().map_or_else(|| "another crabbox process".to_owned(), ToString::to_string))]
    Held {
        /// The pond.
        pond: String,
        /// Who, when readable.
        holder: Option<Box<Holder>>,
    },
    /// The lock file could not be used.
    #[error("cannot use the lock file {path}: {error}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        error: std::io::Error,
    },
}

/// A held pond lock; released on drop.
#[derive(Debug)]
pub struct PondLock {
    file: File,
}

/// The lock file of a pond.
#[must_use]
pub fn lock_path(state_dir: &Path, pond: &str) -> PathBuf {
    state_dir.join("ponds").join(pond).join("lock")
}

fn this_holder(command: &str) -> Holder {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "unknown".to_owned(), |h| h.trim().to_owned());
    let ci_run_url = match (
        std::env::var("GITHUB_SERVER_URL"),
        std::env::var("GITHUB_REPOSITORY"),
        std::env::var("GITHUB_RUN_ID"),
    ) {
        (Ok(server), Ok(repo), Ok(run)) => Some(format!("{server}/{repo}/actions/runs/{run}")),
        _ => None,
    };
    Holder {
        pid: std::process::id(),
        host,
        command: command.to_owned(),
        started: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        ci_run_url,
    }
}

/// Reads the holder recorded in a lock file.
#[must_use]
pub fn read_holder(path: &Path) -> Option<Holder> {
    let mut text = String::new();
    File::open(path).ok()?.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// Takes the pond's lock, waiting up to `timeout` (zero: fail at once).
///
/// # Errors
/// [`LockError::Held`] naming the holder, or an I/O error.
pub fn acquire(
    state_dir: &Path,
    pond: &str,
    command: &str,
    timeout: Duration,
) -> Result<PondLock, LockError> {
    let path = lock_path(state_dir, pond);
    let io = |error| LockError::Io {
        path: path.clone(),
        error,
    };
    create_private_dir(path.parent().expect("lock path has a parent")).map_err(io)?;
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    let deadline = Instant::now() + timeout;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100))
            }
            Err(TryLockError::WouldBlock) => {
                return Err(LockError::Held {
                    pond: pond.to_owned(),
                    holder: read_holder(&path).map(Box::new),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
    }
    let text = serde_json::to_string_pretty(&this_holder(command))
        .map_err(|e| io(std::io::Error::other(e)))?;
    file.set_len(0).map_err(io)?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    Ok(PondLock { file })
}

impl Drop for PondLock {
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

/// Whether a pond's lock is held right now, and by whom.
///
/// # Errors
/// I/O errors opening the lock file.
pub fn status(state_dir: &Path, pond: &str) -> std::io::Result<Option<Option<Holder>>> {
    let path = lock_path(state_dir, pond);
    let Ok(file) = File::open(&path) else {
        return Ok(None);
    };
    match file.try_lock_shared() {
        Ok(()) => {
            let _ = file.unlock();
            Ok(None)
        }
        Err(TryLockError::WouldBlock) => Ok(Some(read_holder(&path))),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_fails_fast_naming_the_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = acquire(dir.path(), "p", "crabbox apply", Duration::ZERO).expect("first");
        let err = acquire(dir.path(), "p", "crabbox apply", Duration::ZERO).expect_err("second");
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(text.contains("crabbox apply"), "{text}");
        assert!(status(dir.path(), "p").expect("status").is_some());
        drop(first);
        assert!(status(dir.path(), "p").expect("status").is_none());
        let again = acquire(
            dir.path(),
            "p",
            "crabbox destroy",
            Duration::from_millis(50),
        );
        assert!(again.is_ok());
    }
}
