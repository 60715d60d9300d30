//! One apply per pond at a time. With local state: an OS file lock on
//! `<state>/ponds/<pond>/lock`, whose content names the holder (pid, host,
//! command, start time, CI run URL). The OS drops the lock when the holder
//! dies, so a cancelled CI job never leaves a stuck lock behind.
//!
//! With the PostgreSQL state backend: a row of `crabbox_locks` naming the
//! same holder, taken when absent or expired. It is a lease: it expires
//! [`ttl`] after it was last renewed, and a tokio task renews it every third
//! of that while the [`PondLock`] lives, so a holder that dies (even by
//! SIGKILL) frees the pond within the TTL. `crabbox pond unlock NAME --force`
//! deletes it.
//!
//! Taking a lock waits with `tokio::time::sleep` and does its file work on
//! the blocking pool, so a command waiting for a pond (`--lock-timeout`)
//! never holds a runtime worker. A command ends by [`PondLock::release`];
//! dropping the lock is the fallback.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::claims::{ClaimStore, Place};
use crate::state_pg::{self, Database};
use crabbox_fs::atomic_file::create_private_dir;

/// Lifetime of a PostgreSQL pond lock between renewals, unless
/// `CRABBOX_LOCK_TTL` (seconds) says otherwise.
pub const DEFAULT_TTL: Duration = Duration::from_secs(30);
/// Longest a dropped (not released) database lock waits for its row to be
/// deleted when no runtime is at hand.
const DROP_RELEASE: Duration = Duration::from_secs(5);
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

impl Holder {
    /// `pid 42 on ci-7 since 14:03 UTC (5m ago) running `crabbox apply``,
    /// the start in words as of `now` (Unix seconds); a start that is not a
    /// time is shown as recorded.
    #[must_use]
    pub fn describe(&self, now: u64) -> String {
        use crabbox_core::human_time::{ago, clock};
        let since = crabbox_core::expiry::parse_time(&self.started).map_or_else(
            || self.started.clone(),
            |at| format!("{} ({})", clock(at, now), ago(at, now)),
        );
        let mut text = format!(
            "pid {} on {} since {since} running `{}`",
            self.pid, self.host, self.command
        );
        if let Some(url) = &self.ci_run_url {
            text.push_str(&format!(" ({url})"));
        }
        text
    }
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe(crabbox_core::labels::now_secs()))
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

/// A held pond lock. Release it with [`PondLock::release`] where the command
/// ends; a lock that is only dropped is released as well as can be (a file
/// lock at once; a database lock by a task when dropped on a runtime, which
/// may not run if the runtime ends first, or by waiting up to 5 s when
/// dropped outside one); whatever is left, its TTL frees.
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

    /// Releases the lock: a database lock's heartbeat is stopped and its row
    /// deleted (a failure is said: the lock then expires within its TTL).
    pub async fn release(mut self) {
        let held = std::mem::replace(&mut self.held, Held::Released);
        match held {
            Held::File(file) => release_file(&file),
            Held::Lease(mut lease) => {
                lease.stop_heartbeat().await;
                if let Err(e) = lease.db.lock_release(&lease.pond, &lease.token).await {
                    anstream::eprintln!(
                        "warning: cannot release the lock of pond `{}`: {e}; it expires within {}s",
                        lease.pond,
                        ttl().as_secs()
                    );
                }
            }
            Held::Released => {}
        }
    }
}

#[derive(Debug)]
enum Held {
    File(File),
    Lease(LeaseLock),
    Released,
}

/// A held PostgreSQL lock and the task renewing it.
#[derive(Debug)]
struct LeaseLock {
    db: Arc<Database>,
    pond: String,
    token: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

impl LeaseLock {
    /// Stops the heartbeat and waits for it, so no renewal follows the
    /// release.
    async fn stop_heartbeat(&mut self) {
        drop(self.stop.take());
        if let Some(task) = self.heartbeat.take() {
            let _ = task.await;
        }
    }
}

fn release_file(file: &File) {
    let _ = file.set_len(0);
    let _ = file.unlock();
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

/// Takes the pond's lock in `store`'s backend (the file next to a local
/// store's claims, or the database's lock row), waiting up to `timeout`
/// (zero: fail at once).
///
/// # Errors
/// [`LockError::Held`] naming the holder, or an I/O or database error.
pub async fn acquire(
    store: &ClaimStore,
    pond: &str,
    command: &str,
    timeout: Duration,
) -> Result<PondLock, LockError> {
    match store.place() {
        Place::Files(state_dir) => acquire_file(state_dir, pond, command, timeout).await,
        Place::Database(db) => acquire_lease(db.clone(), pond, command, timeout).await,
    }
}

/// Opens the lock file and tries its lock once: `Ok(None)` while another
/// holds it.
fn try_lock_file(path: &Path) -> std::io::Result<Option<File>> {
    create_private_dir(path.parent().expect("lock path has a parent"))?;
    // 0600: the holder record names the command that holds the lock.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(e)) => Err(e),
    }
}

/// Writes this process as the holder into a lock file it holds.
fn write_holder(mut file: &File, command: &str) -> std::io::Result<()> {
    let text =
        serde_json::to_string_pretty(&this_holder(command)).map_err(std::io::Error::other)?;
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

async fn acquire_file(
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
    let on_pool = |e: tokio::task::JoinError| std::io::Error::other(e.to_string());
    let deadline = Instant::now() + timeout;
    let file = loop {
        let attempt = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || try_lock_file(&path))
                .await
                .map_err(on_pool)
                .and_then(|r| r)
                .map_err(io)?
        };
        if let Some(file) = attempt {
            break file;
        }
        if Instant::now() >= deadline {
            let path = path.clone();
            let holder = tokio::task::spawn_blocking(move || read_holder(&path))
                .await
                .ok()
                .flatten();
            return Err(LockError::Held {
                pond: pond.to_owned(),
                holder: holder.map(Box::new),
            });
        }
        tokio::time::sleep(Duration::from_millis(100).min(deadline - Instant::now())).await;
    };
    let command = command.to_owned();
    let file = tokio::task::spawn_blocking(move || write_holder(&file, &command).map(|()| file))
        .await
        .map_err(on_pool)
        .and_then(|r| r)
        .map_err(io)?;
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

async fn acquire_lease(
    db: Arc<Database>,
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
        if db
            .lock_try(pond, &holder, &token, ttl)
            .await
            .map_err(state)?
        {
            break;
        }
        if Instant::now() >= deadline {
            let holder = db
                .lock_holder(pond)
                .await
                .map_err(state)?
                .and_then(|(json, _)| serde_json::from_str(&json).ok())
                .map(Box::new);
            return Err(LockError::Held {
                pond: pond.to_owned(),
                holder,
            });
        }
        tokio::time::sleep(Duration::from_millis(250).min(deadline - Instant::now())).await;
    }
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let lost = Arc::new(AtomicBool::new(false));
    let heartbeat = tokio::spawn(heartbeat(
        db.clone(),
        pond.to_owned(),
        token.clone(),
        ttl,
        stopped,
        lost.clone(),
    ));
    Ok(PondLock {
        held: Held::Lease(LeaseLock {
            db,
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
/// One renewal may take at most a third of the TTL, so a database that hangs
/// is noticed within the TTL rather than after the call's own timeout.
async fn heartbeat(
    db: Arc<Database>,
    pond: String,
    token: String,
    ttl: Duration,
    mut stop: tokio::sync::oneshot::Receiver<()>,
    lost: Arc<AtomicBool>,
) {
    let every = ttl / 3;
    let mut renewed = Instant::now();
    loop {
        tokio::select! {
            _ = &mut stop => return,
            () = tokio::time::sleep(every) => {}
        }
        let renewal = tokio::time::timeout(every, db.lock_renew(&pond, &token, ttl))
            .await
            .unwrap_or_else(|_| {
                Err(state_pg::StateError(format!(
                    "the state database did not answer within {}s",
                    every.as_secs_f64()
                )))
            });
        match renewal {
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
        match std::mem::replace(&mut self.held, Held::Released) {
            Held::File(file) => release_file(&file),
            Held::Lease(mut lease) => {
                // Not released explicitly (an early return, a panic): stop
                // renewing at once and delete the row as well as can be
                // done without blocking a runtime; the TTL covers the rest.
                drop(lease.stop.take());
                if let Some(task) = lease.heartbeat.take() {
                    task.abort();
                }
                let release = async move {
                    let _ = lease.db.lock_release(&lease.pond, &lease.token).await;
                };
                match tokio::runtime::Handle::try_current() {
                    // On a runtime: a task, which runs unless the runtime ends first.
                    Ok(runtime) => drop(runtime.spawn(release)),
                    // Outside any (a command unwinding): wait here, briefly.
                    Err(_) => {
                        if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build()
                        {
                            let _ = runtime.block_on(tokio::time::timeout(DROP_RELEASE, release));
                        }
                    }
                }
            }
            Held::Released => {}
        }
    }
}

/// Deletes the pond's lock in the state database, whoever holds it; returns
/// the holder of a lock that was live (`Some(None)`: live but unreadable).
/// Only for the PostgreSQL backend: a file lock is released by its holder.
///
/// # Errors
/// Database errors, or local state (nothing to break).
pub async fn break_lock(store: &ClaimStore, pond: &str) -> std::io::Result<Option<Option<Holder>>> {
    let Some(db) = store.database() else {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "a local lock file is released only by its holder",
        ));
    };
    Ok(db
        .lock_break(pond)
        .await?
        .map(|json| serde_json::from_str(&json).ok()))
}

/// The live lock of a pond in the state database: its holder and how long
/// until it expires unless renewed. `Ok(None)` when not locked or with local
/// state.
///
/// # Errors
/// Database errors.
pub async fn lease_status(
    store: &ClaimStore,
    pond: &str,
) -> std::io::Result<Option<(Option<Holder>, Duration)>> {
    let Some(db) = store.database() else {
        return Ok(None);
    };
    Ok(db.lock_holder(pond).await?.map(|(json, left)| {
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
pub async fn status(store: &ClaimStore, pond: &str) -> std::io::Result<Option<Option<Holder>>> {
    let state_dir = match store.place() {
        Place::Database(db) => {
            return Ok(db
                .lock_holder(pond)
                .await?
                .map(|(json, _)| serde_json::from_str(&json).ok()));
        }
        Place::Files(state_dir) => state_dir,
    };
    let path = lock_path(state_dir, pond);
    tokio::task::spawn_blocking(move || {
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
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_says_when_it_started_in_words() {
        let holder = Holder {
            pid: 42,
            host: "ci-7".to_owned(),
            command: "crabbox apply".to_owned(),
            started: "2026-12-05T12:46:00Z".to_owned(),
            ci_run_url: None,
        };
        assert_eq!(
            holder.describe(1_796_475_060),
            "pid 42 on ci-7 since 12:46 UTC (5m ago) running `crabbox apply`"
        );
        let odd = Holder {
            started: "yesterday".to_owned(),
            ..holder
        };
        assert!(
            odd.describe(1_796_475_060)
                .contains("since yesterday running")
        );
    }

    #[tokio::test]
    async fn second_holder_fails_fast_naming_the_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ClaimStore::local(dir.path());
        let first = acquire(&store, "p", "crabbox apply", Duration::ZERO)
            .await
            .expect("first");
        let err = acquire(&store, "p", "crabbox apply", Duration::ZERO)
            .await
            .expect_err("second");
        let text = err.to_string();
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert!(text.contains("crabbox apply"), "{text}");
        assert!(status(&store, "p").await.expect("status").is_some());
        first.release().await;
        assert!(status(&store, "p").await.expect("status").is_none());
        let again = acquire(&store, "p", "crabbox destroy", Duration::from_millis(50)).await;
        assert!(again.is_ok());
    }

    /// Waiting for a held pond lock (`--lock-timeout`) leaves the runtime
    /// free: on a single-threaded runtime a timer keeps ticking, and the
    /// waiter gets the lock once the holder lets go.
    #[tokio::test(flavor = "current_thread")]
    async fn waiting_for_the_pond_lock_does_not_block_other_tasks() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = ClaimStore::local(dir.path());
        let first = acquire(&store, "p", "crabbox apply", Duration::ZERO)
            .await
            .expect("first");
        let waiter = {
            let store = store.clone();
            tokio::spawn(async move {
                acquire(&store, "p", "crabbox destroy", Duration::from_secs(30)).await
            })
        };
        let mut ticks = 0;
        while ticks < 20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            ticks += 1;
        }
        assert!(!waiter.is_finished(), "it waits for the holder");
        first.release().await;
        let second = waiter.await.expect("task").expect("taken once free");
        second.release().await;
    }
}
