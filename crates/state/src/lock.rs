//! One apply per pond at a time. With local state: an OS file lock on
//! `<state>/ponds/<pond>/lock`, whose content names the holder (pid, host,
//! command, start time, CI run URL). The OS drops the lock when the holder
//! dies, so a cancelled CI job never leaves a stuck lock behind.
//!
//! With the PostgreSQL state backend: a row of `crabbox_locks` naming the
//! same holder, taken when absent or expired. It is a lease: it expires
//! [`ttl`] after it was last renewed, and a thread renews it every third of
//! that while the [`PondLock`] lives, so a holder that dies (even by SIGKILL)
//! frees the pond within the TTL. `crabbox pond unlock NAME --force` deletes
//! it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::state_pg::{self, Handle};
use crabbox_fs::atomic_file::create_private_dir;

/// Lifetime of a PostgreSQL pond lock between renewals, unless
/// `CRABBOX_LOCK_TTL` (seconds) says otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// The environment variable overriding [`DEFAULT_TTL`] (whole seconds, at least 1).
pub const TTL_ENV: &str = "CRABBOX_LOCK_TTL";

/// The TTL of PostgreSQL pond locks.
#[must_use]
pub fn ttl() -> Duration {
    std::env::var(TTL_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&s| s >= 1)
        .map_or(DEFAULT_TTL, Duration::from_secs)
}

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
    /// The state database could not be used.
    #[error("cannot take the lock of pond `{pond}`: {message}")]
    State {
        /// The pond.
        pond: String,
        /// Why.
        message: String,
    },
}

/// A held pond lock; released on drop.
#[derive(Debug)]
pub struct PondLock {
    held: Held,
    /// Set once the lock is known lost (PostgreSQL: broken, or not renewed
    /// within its TTL). A file lock cannot be lost while its holder lives.
    lost: Arc<AtomicBool>,
}

impl PondLock {
    /// A flag that becomes true when the lock is lost, for the executor.
    #[must_use]
    pub fn lost(&self) -> Arc<AtomicBool> {
        self.lost.clone()
    }
}

#[derive(Debug)]
enum Held {
    File(File),
    Lease(LeaseLock),
}

/// A held PostgreSQL lock and the thread renewing it.
#[derive(Debug)]
struct LeaseLock {
    handle: Arc<Handle>,
    pond: String,
    token: String,
    stop: Option<mpsc::Sender<()>>,
    heartbeat: Option<std::thread::JoinHandle<()>>,
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
/// [`LockError::Held`] naming the holder, or an I/O or database error.
pub fn acquire(
    state_dir: &Path,
    pond: &str,
    command: &str,
    timeout: Duration,
) -> Result<PondLock, LockError> {
    match state_pg::selected() {
        Ok(None) => acquire_file(state_dir, pond, command, timeout),
        Ok(Some(handle)) => acquire_lease(handle, pond, command, timeout),
        Err(e) => Err(LockError::State {
            pond: pond.to_owned(),
            message: e.0,
        }),
    }
}

fn acquire_file(
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
    // 0600: the holder record names the command that holds the lock.
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
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
    Ok(PondLock {
        held: Held::File(file),
        lost: Arc::new(AtomicBool::new(false)),
    })
}

fn new_token() -> String {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).expect("the OS provides randomness");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn acquire_lease(
    handle: Arc<Handle>,
    pond: &str,
    command: &str,
    timeout: Duration,
) -> Result<PondLock, LockError> {
    let state = |e: state_pg::StateError| LockError::State {
        pond: pond.to_owned(),
        message: e.0,
    };
    let holder = serde_json::to_string(&this_holder(command)).expect("a holder is JSON");
    let token = new_token();
    let ttl = ttl();
    let deadline = Instant::now() + timeout;
    loop {
        if handle.lock_try(pond, &holder, &token, ttl).map_err(state)? {
            break;
        }
        if Instant::now() >= deadline {
            let holder = handle
                .lock_holder(pond)
                .map_err(state)?
                .and_then(|(json, _)| serde_json::from_str(&json).ok())
                .map(Box::new);
            return Err(LockError::Held {
                pond: pond.to_owned(),
                holder,
            });
        }
        std::thread::sleep(Duration::from_millis(250).min(deadline - Instant::now()));
    }
    let (stop, stopped) = mpsc::channel::<()>();
    let lost = Arc::new(AtomicBool::new(false));
    let spawned = {
        let (h, p, t, l) = (handle.clone(), pond.to_owned(), token.clone(), lost.clone());
        std::thread::Builder::new()
            .name("crabbox-lock-heartbeat".to_owned())
            .spawn(move || heartbeat(&h, &p, &t, ttl, &stopped, &l))
    };
    let heartbeat = match spawned {
        Ok(thread) => thread,
        Err(e) => {
            let _ = handle.lock_release(pond, &token);
            return Err(LockError::State {
                pond: pond.to_owned(),
                message: format!("cannot start the lock heartbeat: {e}"),
            });
        }
    };
    Ok(PondLock {
        held: Held::Lease(LeaseLock {
            handle,
            pond: pond.to_owned(),
            token,
            stop: Some(stop),
            heartbeat: Some(heartbeat),
        }),
        lost,
    })
}

/// Renews the lock every third of its TTL until told to stop, or until the
/// lock is lost: broken or expired (`Ok(false)`), or not renewed for a whole
/// TTL (the database did not answer) — then `lost` is set and it is said once.
fn heartbeat(
    handle: &Handle,
    pond: &str,
    token: &str,
    ttl: Duration,
    stop: &mpsc::Receiver<()>,
    lost: &AtomicBool,
) {
    let every = ttl / 3;
    let mut renewed = Instant::now();
    loop {
        match stop.recv_timeout(every) {
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            _ => return,
        }
        match handle.lock_renew(pond, token, ttl) {
            Ok(true) => renewed = Instant::now(),
            Ok(false) => {
                lost.store(true, Ordering::SeqCst);
                anstream::eprintln!(
                    "error: the lock of pond `{pond}` was broken (`pond unlock --force`) or expired; another crabbox may now change this pond"
                );
                return;
            }
            Err(e) if renewed.elapsed() >= ttl => {
                lost.store(true, Ordering::SeqCst);
                anstream::eprintln!(
                    "error: the lock of pond `{pond}` expired: it could not be renewed for {}s: {e}",
                    ttl.as_secs()
                );
                return;
            }
            Err(e) => anstream::eprintln!(
                "warning: cannot renew the lock of pond `{pond}` (it expires {}s after the last renewal): {e}",
                ttl.as_secs()
            ),
        }
    }
}

impl Drop for PondLock {
    fn drop(&mut self) {
        match &mut self.held {
            Held::File(file) => {
                let _ = file.set_len(0);
                let _ = file.unlock();
            }
            Held::Lease(lease) => {
                drop(lease.stop.take());
                if let Some(thread) = lease.heartbeat.take() {
                    let _ = thread.join();
                }
                let _ = lease.handle.lock_release(&lease.pond, &lease.token);
            }
        }
    }
}

/// Whether the pond lock lives in the shared state database (rather than in
/// a local file).
#[must_use]
pub fn is_shared() -> bool {
    matches!(state_pg::selected(), Ok(Some(_)))
}

/// Deletes the pond's lock in the state database, whoever holds it; returns
/// the holder of a lock that was live (`Some(None)`: live but unreadable).
/// Only for the PostgreSQL backend: a file lock is released by its holder.
///
/// # Errors
/// Database errors, or local state (nothing to break).
pub fn break_lock(pond: &str) -> std::io::Result<Option<Option<Holder>>> {
    let Some(handle) = state_pg::selected()? else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "a local lock file is released only by its holder",
        ));
    };
    Ok(handle
        .lock_break(pond)?
        .map(|json| serde_json::from_str(&json).ok()))
}

/// The live lock of a pond in the state database: its holder and how long
/// until it expires unless renewed. `Ok(None)` when not locked or with local
/// state.
///
/// # Errors
/// Database errors.
pub fn lease_status(pond: &str) -> std::io::Result<Option<(Option<Holder>, Duration)>> {
    let Some(handle) = state_pg::selected()? else {
        return Ok(None);
    };
    Ok(handle.lock_holder(pond)?.map(|(json, left)| {
        (
            serde_json::from_str(&json).ok(),
            Duration::from_secs_f64(left.max(0.0)),
        )
    }))
}

/// Whether a pond's lock is held right now, and by whom.
///
/// # Errors
/// I/O errors opening the lock file, database errors.
pub fn status(state_dir: &Path, pond: &str) -> std::io::Result<Option<Option<Holder>>> {
    if let Some(handle) = state_pg::selected()? {
        return Ok(handle
            .lock_holder(pond)?
            .map(|(json, _)| serde_json::from_str(&json).ok()));
    }
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
