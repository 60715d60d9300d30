//! The embedded `local` provider: real processes on this machine.
//!
//! A lease is a directory `<state_dir>/local/leases/<leaseID>/` holding
//! - `lease.json`: the labels, the lease's loopback bind address and its
//!   creation time, written atomically before anything runs;
//! - `workspace/`: where the sync archive is unpacked and commands run;
//! - `logs/`: `exec.log` (every command's output), `setup.log` (the setup
//!   steps' output, for `crabbox logs`) and `<name>.log` per background
//!   service;
//! - `pids/`: `<name>.pid` per background service (the leader of its own
//!   session and process group).
//!
//! Discovery lists these directories: a lease exists exactly when its
//! directory with a readable `lease.json` exists, so two crabbox processes
//! (or a crashed one) agree on what is live. A directory is created under a
//! hidden staging name and renamed into place once `lease.json` is in it, so
//! no lease is ever seen without its labels.
//!
//! Each lease gets its own loopback address `127.77.x.y`, derived from the
//! lease ID and unique among the live local leases (allocation is serialized
//! within the process by a mutex and across processes by
//! `<root>/.alloc.lock`), or pinned with the member's `local.bind_addr`.
//! Commands see it as `CRABBOX_BIND_ADDR`, so services of two leases can use
//! the same port side by side.
//!
//! Every process crabbox starts carries `CRABBOX_LEASE_ID=<lease ID>` in its
//! environment; before signalling a recorded process group, the provider
//! checks (through `/proc`) that the group still carries that marker, so a
//! reused PID is never killed.

use std::collections::BTreeSet;
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;

mod probe;
mod processes;

use probe::{http_ok, is_loopback_name, tcp_connects};
use processes::{kill_group, kill_marked, stop_pid_file};

use crate::registry::Descriptor;
use crabbox_exec::output::{NullSink, Outcome, exit_code, finish_pumps, pump_lines};
use crabbox_exec::session::Session;
use crabbox_spec::desired::DesiredMember;
use crabbox_spec::providers::LocalBlock;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncRead;
use tokio::net::TcpStream;

use crate::{CreateRequest, Provider};
use crabbox_core::duration;
use crabbox_core::labels::{self, Labels};
use crabbox_core::lease::{Endpoint, Lease};
use crabbox_core::provider::ProviderName;
use crabbox_core::provider::{OutputSink, ProviderError, Stream};
use crabbox_exec::session::ExecRequest;
use crabbox_fs::atomic_file;
use crabbox_spec::desired::Probe;

/// The lease record inside each lease directory.
const LEASE_FILE: &str = "lease.json";
/// Where files are synced and commands run.
const WORKSPACE: &str = "workspace";
/// Command and service output.
const LOGS: &str = "logs";
/// The setup steps' output (`crabbox logs`), in `logs/`.
const SETUP_LOG_FILE: &str = "setup.log";
/// Background service pid files.
const PIDS: &str = "pids";
/// The cross-process lock for address allocation, in the leases root.
const ALLOC_LOCK: &str = ".alloc.lock";
/// Prefix of a lease directory being created.
const STAGING_PREFIX: &str = ".creating-";

/// Environment variable with the lease's loopback address.
const ENV_BIND_ADDR: &str = "CRABBOX_BIND_ADDR";
/// Environment variable with the lease ID; also the ownership marker.
const ENV_LEASE_ID: &str = "CRABBOX_LEASE_ID";
/// Environment variable with the workspace path.
const ENV_WORKSPACE: &str = "CRABBOX_WORKSPACE";

/// Addresses in `127.77.0.0/16` with the last octet in 1..=254.
const ADDRESS_SLOTS: u32 = 256 * 254;
/// TCP connect limit for probes.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Whole-exchange limit for an HTTP probe.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);
/// A probe command that runs longer counts as not ready.
const PROBE_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a service gets to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How long to wait for processes to vanish after SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// How long to wait for a dead service's leader to be reaped.
const ZOMBIE_GRACE: Duration = Duration::from_millis(500);
/// Poll interval while waiting for processes to exit.
const POLL: Duration = Duration::from_millis(50);
/// How long a background service must survive to count as started.
const STARTUP_CHECK: Duration = Duration::from_millis(100);
/// After a command exits, how long to keep reading output its leftover
/// children may still hold open.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);
/// Lines of a failed service's log shown in the error.
const LOG_TAIL_LINES: usize = 20;

/// `lease.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaseRecord {
    /// The lease ID (also the directory name).
    lease_id: String,
    /// The lease's labels.
    labels: Labels,
    /// The loopback address its services bind to.
    bind_addr: String,
    /// Unix seconds when the directory was created.
    created_at: u64,
}
/// The `local` adapter in the registry's table.
pub const DESCRIPTOR: Descriptor = Descriptor {
    name: ProviderName::Local,
    build: |dir, _| Some(Arc::new(LocalProvider::new(dir))),
    credentials: None,
    help: "",
    transport_refusal: None,
};

/// The `local` provider, rooted at `<state_dir>/local/leases`.
#[derive(Debug)]
pub struct LocalProvider {
    root: PathBuf,
    /// Serializes address allocation among this process's creates.
    alloc: tokio::sync::Mutex<()>,
}

impl LocalProvider {
    /// The provider keeping its leases under `<state_dir>/local/leases`.
    #[must_use]
    pub fn new(state_dir: &Path) -> Self {
        Self {
            root: state_dir.join("local").join("leases"),
            alloc: tokio::sync::Mutex::new(()),
        }
    }

    /// The directory of `lease` (its cloud ID, which is the lease ID).
    fn lease_dir(&self, lease: &Lease) -> Result<PathBuf, ProviderError> {
        let name = if lease.cloud_id.is_empty() {
            &lease.id
        } else {
            &lease.cloud_id
        };
        check_name("local lease directory", name)?;
        Ok(self.root.join(name))
    }

    /// Runs `request` in the lease's workspace; output to `sink` and
    /// appended to each of `logs` (a file in `logs/` and the header line
    /// written before the output).
    async fn run(
        &self,
        lease: &Lease,
        request: &ExecRequest,
        sink: Arc<dyn OutputSink>,
        logs: &[(&str, String)],
    ) -> Result<Outcome, ProviderError> {
        let dir = self.lease_dir(lease)?;
        let record = load_record(&dir, &lease.id).await?;
        let mut files = Vec::new();
        for (name, header) in logs {
            let path = dir.join(LOGS).join(name);
            let mut file = open_log(&path)?;
            writeln!(file, "{header}").map_err(|e| failed(&path, &e))?;
            files.push(file);
        }
        let log = (!files.is_empty()).then(|| Arc::new(Mutex::new(files)));
        // The step dies with crabbox: its group watches a pipe whose only
        // writer is this process (see `DIES_WITH_CRABBOX`).
        let (alive_r, alive_w) = std::io::pipe().map_err(|e| {
            ProviderError::Failed(format!("creating the step's lifeline pipe: {e}"))
        })?;
        let lifeline = std::os::fd::AsRawFd::as_raw_fd(&alive_r);
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(DIES_WITH_CRABBOX)
            .arg("sh")
            .arg(&request.command);
        apply_env(cmd.as_std_mut(), &dir, &record, lease, request);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: runs in the forked child before exec and only calls
        // dup2(2) and fcntl(2), which are async-signal-safe; `lifeline` is
        // an open fd. When the pipe already is fd 3, dup2 would be a no-op
        // that keeps close-on-exec: the flag is cleared instead.
        unsafe {
            cmd.pre_exec(move || inherit_as_lifeline(lifeline));
        }
        let spawned = cmd.spawn();
        drop(alive_r);
        let mut child = spawned.map_err(|e| {
            ProviderError::Failed(format!("starting `sh -c` in {}: {e}", dir.display()))
        })?;
        // Held until the step is over; closed by the kernel if crabbox dies.
        let _lifeline = alive_w;
        let pgid = child_pid(child.id())?;
        // For a second Ctrl-C, which exits without running destructors.
        let _live = crabbox_exec::process_groups::register(pgid);
        // Declared after `child`, so dropped first: the group dies while its
        // leader is still unreaped and the group ID cannot have been reused.
        let mut guard = GroupGuard { pgid, armed: true };
        let pumps = [
            child
                .stdout
                .take()
                .map(|r| tokio::spawn(pump(r, Stream::Stdout, sink.clone(), log.clone()))),
            child
                .stderr
                .take()
                .map(|r| tokio::spawn(pump(r, Stream::Stderr, sink, log.clone()))),
        ];
        let waited = match request.timeout {
            Some(limit) => tokio::time::timeout(limit, child.wait()).await.ok(),
            None => Some(child.wait().await),
        };
        let outcome = if let Some(status) = waited {
            let status = status.map_err(|e| {
                ProviderError::Failed(format!("waiting for `sh -c` in {}: {e}", dir.display()))
            })?;
            // The leader is reaped: its group ID may be reused from here on.
            guard.armed = false;
            Outcome::Exited(exit_code(status))
        } else {
            kill_group(pgid, libc::SIGKILL);
            guard.armed = false;
            let _ = child.wait().await;
            Outcome::TimedOut(request.timeout.unwrap_or_default())
        };
        finish_pumps(pumps, OUTPUT_GRACE).await;
        if let Some(log) = &log {
            let footer = match outcome {
                Outcome::Exited(code) => format!("--- exit {code}"),
                Outcome::TimedOut(limit) => {
                    format!("--- killed: timed out after {}", duration::format(limit))
                }
            };
            for file in log
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter_mut()
            {
                let _ = writeln!(file, "{footer}");
            }
        }
        Ok(outcome)
    }

    /// Stops every service recorded in `pids/`.
    async fn stop_all(&self, dir: &Path, lease_id: &str) -> Result<(), ProviderError> {
        let pids = dir.join(PIDS);
        let entries = match std::fs::read_dir(&pids) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(failed(&pids, &e)),
        };
        let mut files = Vec::new();
        for entry in entries {
            let path = entry.map_err(|e| failed(&pids, &e))?.path();
            if path.extension().is_some_and(|x| x == "pid") {
                files.push(path);
            }
        }
        files.sort();
        for file in files {
            stop_pid_file(&file, lease_id).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Provider for LocalProvider {
    fn session<'a>(&'a self, lease: &'a Lease) -> Box<dyn Session + 'a> {
        Box::new(LocalSession {
            provider: self,
            lease,
        })
    }

    fn name(&self) -> ProviderName {
        ProviderName::Local
    }

    /// Staging directories (`.creating-<lease>`) of creates that died: those
    /// whose record names this pond (no create of it runs: the caller holds
    /// the pond lock), and record-less ones older than a minute (a create
    /// writes its record within moments of making the directory).
    async fn sweep(&self, pond: &str) -> Result<Vec<String>, ProviderError> {
        let root = self.root.clone();
        let pond = pond.to_owned();
        blocking(move || {
            let entries = match std::fs::read_dir(&root) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(failed(&root, &e)),
            };
            let mut removed = Vec::new();
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !name.starts_with(STAGING_PREFIX) {
                    continue;
                }
                let path = entry.path();
                let record: Option<LeaseRecord> = std::fs::read(path.join(LEASE_FILE))
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok());
                let dead = match &record {
                    Some(r) => r.labels.get(labels::POND).is_some_and(|p| *p == pond),
                    None => entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| t.elapsed().ok())
                        .is_some_and(|age| age > Duration::from_secs(60)),
                };
                if dead {
                    std::fs::remove_dir_all(&path).map_err(|e| failed(&path, &e))?;
                    removed.push(format!("the staging directory {}", path.display()));
                }
            }
            Ok(removed)
        })
        .await
    }

    async fn list(&self, pond: &str) -> Result<Vec<Lease>, ProviderError> {
        let root = self.root.clone();
        let pond = pond.to_owned();
        blocking(move || {
            let mut leases: Vec<Lease> = read_leases(&root)?
                .into_iter()
                .filter(|(_, r)| r.labels.get(labels::POND).is_some_and(|p| *p == pond))
                .map(to_lease)
                .collect();
            leases.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(leases)
        })
        .await
    }

    async fn ponds(&self) -> Result<Vec<String>, ProviderError> {
        let root = self.root.clone();
        blocking(move || {
            let ponds: std::collections::BTreeSet<String> = read_leases(&root)?
                .into_iter()
                .filter(|(_, r)| r.labels.get(labels::CRABBOX).is_some_and(|v| v == "true"))
                .filter_map(|(_, r)| r.labels.get(labels::POND).map(ToString::to_string))
                .collect();
            Ok(ponds.into_iter().collect())
        })
        .await
    }

    async fn create(&self, request: &CreateRequest) -> Result<Lease, ProviderError> {
        check_name("lease ID", &request.lease_id)?;
        let pinned = pinned_bind_addr(&request.member)?;
        let root = self.root.clone();
        let id = request.lease_id.clone();
        let labels = request.labels.clone();
        let _in_process = self.alloc.lock().await;
        let record = blocking(move || create_dir(&root, &id, labels, pinned)).await?;
        Ok(to_lease((record.lease_id.clone(), record)))
    }

    async fn relabel(&self, lease: &Lease, labels: &Labels) -> Result<(), ProviderError> {
        let dir = self.lease_dir(lease)?;
        let mut record = load_record(&dir, &lease.id).await?;
        record.labels = labels.clone();
        blocking(move || write_record(&dir, &record)).await
    }

    async fn release(&self, lease: &Lease) -> Result<(), ProviderError> {
        let dir = self.lease_dir(lease)?;
        if !exists(&dir)? {
            return Err(not_found(lease, &dir));
        }
        let record = load_record(&dir, &lease.id).await.map_err(|e| {
            ProviderError::Failed(format!(
                "refusing to release {} ({}): cannot tell that it is a crabbox lease: {e}",
                lease.id,
                dir.display()
            ))
        })?;
        let ours = record.labels.get(labels::CRABBOX).map(|v| v.as_str()) == Some("true")
            && record
                .labels
                .get(labels::LEASE)
                .is_some_and(|v| *v == lease.id);
        if !ours {
            return Err(ProviderError::Failed(format!(
                "refusing to release {} ({}): not a crabbox lease",
                lease.id,
                dir.display()
            )));
        }
        self.stop_all(&dir, &lease.id).await?;
        // Anything else still carrying the lease's marker: processes a
        // service double-forked away, or commands still running.
        kill_marked(&lease.id).await;
        blocking(move || match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(failed(&dir, &e)),
        })
        .await
    }
}

/// A lease of this provider, reached through its own command API.
struct LocalSession<'a> {
    provider: &'a LocalProvider,
    lease: &'a Lease,
}

#[async_trait]
impl Session for LocalSession<'_> {
    async fn upload(&self, archive: &Path) -> Result<(), ProviderError> {
        let dir = self.provider.lease_dir(self.lease)?;
        if !exists(&dir)? {
            return Err(not_found(self.lease, &dir));
        }
        let archive = archive.to_path_buf();
        let workspace = dir.join(WORKSPACE);
        blocking(move || {
            crabbox_exec::archive::unpack(&archive, &workspace)
                .map_err(|e| ProviderError::Failed(e.to_string()))
        })
        .await
    }

    async fn exec(
        &self,
        request: &ExecRequest,
        sink: Arc<dyn OutputSink>,
    ) -> Result<i32, ProviderError> {
        match self
            .provider
            .run(self.lease, request, sink, &[exec_log(request)])
            .await?
        {
            Outcome::Exited(code) => Ok(code),
            Outcome::TimedOut(limit) => Err(ProviderError::Failed(format!(
                "command timed out after {}",
                duration::format(limit)
            ))),
        }
    }

    /// Natively: the output goes to `exec.log` and `setup.log` as it is read.
    async fn exec_logged(
        &self,
        request: &ExecRequest,
        sink: Arc<dyn OutputSink>,
        header: &str,
    ) -> Result<i32, ProviderError> {
        let logs = [exec_log(request), (SETUP_LOG_FILE, header.to_owned())];
        match self.provider.run(self.lease, request, sink, &logs).await? {
            Outcome::Exited(code) => Ok(code),
            Outcome::TimedOut(limit) => Err(ProviderError::Failed(format!(
                "command timed out after {}",
                duration::format(limit)
            ))),
        }
    }

    /// Reading logs is not recorded in `exec.log`: a follow would copy
    /// every log into it.
    async fn exec_unrecorded(
        &self,
        request: &ExecRequest,
        sink: Arc<dyn OutputSink>,
    ) -> Result<i32, ProviderError> {
        match self.provider.run(self.lease, request, sink, &[]).await? {
            Outcome::Exited(code) => Ok(code),
            Outcome::TimedOut(limit) => Err(ProviderError::Failed(format!(
                "command timed out after {}",
                duration::format(limit)
            ))),
        }
    }

    /// `logs/` beside `workspace/` in the lease directory.
    fn logs_dir(&self) -> Option<String> {
        Some(format!("../{LOGS}"))
    }

    async fn start_background(
        &self,
        request: &ExecRequest,
        name: &str,
    ) -> Result<(), ProviderError> {
        check_name("background service name", name)?;
        let dir = self.provider.lease_dir(self.lease)?;
        let record = load_record(&dir, &self.lease.id).await?;
        let pid_file = dir.join(PIDS).join(format!("{name}.pid"));
        // Starting a service again replaces the running instance.
        stop_pid_file(&pid_file, &self.lease.id).await?;

        let log_path = dir.join(LOGS).join(format!("{name}.log"));
        let mut log = open_log(&log_path)?;
        writeln!(
            log,
            "--- {} starting `{name}`: $ {}",
            labels::now_secs(),
            request.command
        )
        .map_err(|e| failed(&log_path, &e))?;
        let start_offset = log.stream_position().map_err(|e| failed(&log_path, &e))?;
        let log_err = log.try_clone().map_err(|e| failed(&log_path, &e))?;

        let mut cmd = std::process::Command::new("sh");
        cmd.arg("-c").arg(&request.command);
        apply_env(&mut cmd, &dir, &record, self.lease, request);
        cmd.stdin(Stdio::null()).stdout(log).stderr(log_err);
        // SAFETY: the closure runs in the forked child before exec and only
        // calls setsid(2), which is async-signal-safe; it touches no memory of
        // the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    Err(std::io::Error::last_os_error())
                } else {
                    Ok(())
                }
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            ProviderError::Failed(format!("starting `{name}` in {}: {e}", dir.display()))
        })?;
        let pid = child_pid(Some(child.id()))?;

        // Reap the service whenever it exits (no zombie), and tell us if that
        // happens during the start-up check.
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name(format!("crabbox-reap-{pid}"))
            .spawn(move || {
                let _ = tx.send(child.wait());
            })
            .map_err(|e| {
                ProviderError::Failed(format!("starting a reaper thread for `{name}`: {e}"))
            })?;

        let recorded = {
            let pid_file = pid_file.clone();
            blocking(move || {
                atomic_file::write(&pid_file, format!("{pid}\n").as_bytes())
                    .map_err(|e| failed(&pid_file, &e))
            })
            .await
        };
        if let Err(e) = recorded {
            kill_group(pid, libc::SIGKILL);
            return Err(e);
        }

        match tokio::time::timeout(STARTUP_CHECK, rx).await {
            Ok(Ok(Ok(status))) if !status.success() => {
                let _ = std::fs::remove_file(&pid_file);
                let tail = log_tail(&log_path, start_offset, LOG_TAIL_LINES);
                Err(ProviderError::Failed(format!(
                    "background service `{name}` exited with status {} right after starting; last lines of {}:\n{tail}",
                    exit_code(status),
                    log_path.display()
                )))
            }
            _ => Ok(()),
        }
    }

    async fn stop_background(&self) -> Result<(), ProviderError> {
        let dir = self.provider.lease_dir(self.lease)?;
        if !exists(&dir)? {
            return Err(not_found(self.lease, &dir));
        }
        self.provider.stop_all(&dir, &self.lease.id).await
    }

    async fn probe(
        &self,
        probe: &Probe,
        env: &std::collections::BTreeMap<String, String>,
    ) -> Result<bool, ProviderError> {
        match probe {
            Probe::Tcp {
                host: Some(host),
                port,
            } if !is_loopback_name(host) => Ok(tcp_connects(host, *port).await),
            Probe::Tcp { port, .. } => {
                let dir = self.provider.lease_dir(self.lease)?;
                let record = load_record(&dir, &self.lease.id).await?;
                Ok(tcp_connects(&record.bind_addr, *port).await)
            }
            Probe::Http(url) => {
                // On a member, "localhost" is the member's own loopback address.
                let dir = self.provider.lease_dir(self.lease)?;
                let record = load_record(&dir, &self.lease.id).await?;
                http_ok(url, &record.bind_addr).await
            }
            Probe::Command(command) => {
                let request = ExecRequest {
                    command: command.clone(),
                    env: env.clone(),
                    timeout: Some(PROBE_COMMAND_TIMEOUT),
                };
                match self
                    .provider
                    .run(self.lease, &request, Arc::new(NullSink), &[])
                    .await?
                {
                    Outcome::Exited(code) => Ok(code == 0),
                    Outcome::TimedOut(_) => Ok(false),
                }
            }
        }
    }
}

/// Kills a running command's process group when dropped while armed (the
/// caller gave up on the command, e.g. a timeout around `exec`).
/// The file descriptor on which a foreground step's group watches crabbox.
const LIFELINE_FD: i32 = 3;

/// In a forked child before exec: makes `fd` the child's [`LIFELINE_FD`],
/// open across exec. When `fd` already is that number, dup2 would be a no-op
/// that keeps close-on-exec, so the flag is cleared instead.
///
/// # Safety
/// Only calls dup2(2) and fcntl(2), which are async-signal-safe; fit for
/// `pre_exec`.
fn inherit_as_lifeline(fd: i32) -> std::io::Result<()> {
    // SAFETY: plain system calls on integers.
    let ok = unsafe {
        if fd == LIFELINE_FD {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            flags != -1 && libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) != -1
        } else {
            libc::dup2(fd, LIFELINE_FD) != -1
        }
    };
    if ok {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// How a foreground step runs (`sh -c` with the command as `$1`): the
/// command in the background of its process group, and a watcher that reads
/// the lifeline (fd 3, whose only writer is crabbox). When crabbox dies, by
/// any signal, the kernel closes the writer, the read ends and the watcher
/// kills the whole group. A parent-death signal would reach only the direct
/// child, never the command's own children. When the command ends, the
/// watcher is stopped and its status returned.
const DIES_WITH_CRABBOX: &str = r#"(read -r _ <&3; kill -KILL 0) </dev/null >/dev/null 2>&1 &
watcher=$!
sh -c "$1" 3<&- &
wait $!
status=$?
kill "$watcher" 2>/dev/null
exit "$status"
"#;

struct GroupGuard {
    pgid: i32,
    armed: bool,
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            kill_group(self.pgid, libc::SIGKILL);
        }
    }
}

/// Runs a blocking closure off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ProviderError> + Send + 'static,
) -> Result<T, ProviderError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ProviderError::Failed(format!("local provider task failed: {e}")))?
}

fn failed(path: &Path, e: &dyn std::fmt::Display) -> ProviderError {
    ProviderError::Failed(format!("{}: {e}", path.display()))
}

fn not_found(lease: &Lease, dir: &Path) -> ProviderError {
    ProviderError::NotFound(format!("local lease {} ({})", lease.id, dir.display()))
}

fn exists(path: &Path) -> Result<bool, ProviderError> {
    path.try_exists().map_err(|e| failed(path, &e))
}

/// Lease IDs and service names become file names: no separators, no
/// leading dot, nothing but `[A-Za-z0-9_.-]`.
fn check_name(what: &str, name: &str) -> Result<(), ProviderError> {
    let ok = !name.is_empty()
        && !name.starts_with('.')
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(ProviderError::Failed(format!(
            "invalid {what} `{name}`: only letters, digits, `_`, `-` and `.` are allowed"
        )))
    }
}

fn to_lease((id, record): (String, LeaseRecord)) -> Lease {
    Lease {
        id: id.clone(),
        provider: ProviderName::Local,
        cloud_id: id,
        labels: record.labels,
        endpoint: Endpoint {
            host: Some(record.bind_addr),
            ..Endpoint::default()
        },
        listed: true,
        claimed: false,
    }
}

fn read_record(dir: &Path) -> Result<LeaseRecord, String> {
    let path = dir.join(LEASE_FILE);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| format!("{}: invalid lease record: {e}", path.display()))
}

/// The lease's record; [`ProviderError::NotFound`] when its directory is gone.
async fn load_record(dir: &Path, lease_id: &str) -> Result<LeaseRecord, ProviderError> {
    let path = dir.join(LEASE_FILE);
    match tokio::fs::read(&path).await {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| failed(&path, &format!("invalid lease record: {e}"))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !dir.exists() => Err(
            ProviderError::NotFound(format!("local lease {lease_id} ({})", dir.display())),
        ),
        Err(e) => Err(failed(&path, &e)),
    }
}

fn write_record(dir: &Path, record: &LeaseRecord) -> Result<(), ProviderError> {
    let path = dir.join(LEASE_FILE);
    let mut json = serde_json::to_vec_pretty(record).map_err(|e| failed(&path, &e))?;
    json.push(b'\n');
    atomic_file::write(&path, &json).map_err(|e| failed(&path, &e))
}

/// Every lease directory's (name, record) under `root`; unreadable ones are
/// skipped with a warning. A missing root holds no leases.
fn read_leases(root: &Path) -> Result<Vec<(String, LeaseRecord)>, ProviderError> {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(failed(root, &e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| failed(root, &e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        // The lock file and lease directories still being created.
        if name.starts_with('.') || !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        match read_record(&entry.path()) {
            Ok(record) => out.push((name.to_owned(), record)),
            Err(err) => eprintln!("warning: skipping local lease {name}: {err}"),
        }
    }
    Ok(out)
}

/// The member's pinned `local.bind_addr`, which must be a loopback IPv4 address.
fn pinned_bind_addr(member: &DesiredMember) -> Result<Option<Ipv4Addr>, ProviderError> {
    let hint = "use an address in 127.0.0.0/8 such as 127.77.0.10, or leave `local.bind_addr` out to get one derived from the lease ID";
    let block: LocalBlock = member.block().map_err(|e| ProviderError::Config {
        message: format!("member `{}` has an invalid local block: {e}", member.slug),
        hint: hint.to_owned(),
    })?;
    match block.bind_addr {
        None => Ok(None),
        Some(s) => match s.parse::<Ipv4Addr>() {
            Ok(addr) if addr.is_loopback() => Ok(Some(addr)),
            _ => Err(ProviderError::Config {
                message: format!("local.bind_addr `{s}` is not a loopback IPv4 address"),
                hint: hint.to_owned(),
            }),
        },
    }
}

/// The address at allocation slot `slot`: `127.77.x.y`, y in 1..=254.
fn slot_addr(slot: u32) -> Ipv4Addr {
    let slot = slot % ADDRESS_SLOTS;
    let x = u8::try_from(slot / 254).unwrap_or(0);
    let y = u8::try_from(slot % 254 + 1).unwrap_or(1);
    Ipv4Addr::new(127, 77, x, y)
}

/// The first slot tried for a lease: from the first bytes of SHA-256 of its ID.
fn derived_slot(lease_id: &str) -> u32 {
    let digest = Sha256::digest(lease_id.as_bytes());
    u32::from(digest[0]) * 254 + u32::from(digest[1]) % 254
}

/// The derived address for `lease_id` not used by any live lease under `root`.
fn allocate(root: &Path, lease_id: &str) -> Result<Ipv4Addr, ProviderError> {
    let taken: BTreeSet<String> = read_leases(root)?
        .into_iter()
        .map(|(_, r)| r.bind_addr)
        .collect();
    let start = derived_slot(lease_id);
    (0..ADDRESS_SLOTS)
        .map(|i| slot_addr(start + i))
        .find(|addr| !taken.contains(&addr.to_string()))
        .ok_or_else(|| {
            ProviderError::Failed(format!(
                "every address in 127.77.0.0/16 is used by a local lease under {}",
                root.display()
            ))
        })
}

/// Creates the lease directory with its record, under the allocation lock.
fn create_dir(
    root: &Path,
    id: &str,
    labels: Labels,
    pinned: Option<Ipv4Addr>,
) -> Result<LeaseRecord, ProviderError> {
    atomic_file::create_private_dir(root).map_err(|e| failed(root, &e))?;
    let lock_path = root.join(ALLOC_LOCK);
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(&lock_path)
        .map_err(|e| failed(&lock_path, &e))?;
    lock.lock().map_err(|e| failed(&lock_path, &e))?;

    let dir = root.join(id);
    if dir.symlink_metadata().is_ok() {
        return Err(ProviderError::Failed(format!(
            "local lease directory {} already exists; refusing to create lease {id} over it",
            dir.display()
        )));
    }
    let staging = root.join(format!("{STAGING_PREFIX}{id}"));
    if staging.symlink_metadata().is_ok() {
        // Left by a create that crashed; nothing ever ran in it.
        std::fs::remove_dir_all(&staging).map_err(|e| failed(&staging, &e))?;
    }
    let result = (|| {
        let mut builder = std::fs::DirBuilder::new();
        builder.mode(0o700);
        for sub in [
            PathBuf::new(),
            PathBuf::from(WORKSPACE),
            PathBuf::from(LOGS),
            PathBuf::from(PIDS),
        ] {
            let path = staging.join(sub);
            builder.create(&path).map_err(|e| failed(&path, &e))?;
        }
        let bind = match pinned {
            Some(addr) => addr,
            None => allocate(root, id)?,
        };
        let record = LeaseRecord {
            lease_id: id.to_owned(),
            labels,
            bind_addr: bind.to_string(),
            created_at: labels::now_secs(),
        };
        write_record(&staging, &record)?;
        std::fs::rename(&staging, &dir).map_err(|e| failed(&dir, &e))?;
        Ok(record)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// Variables of crabbox's environment every local command keeps: where
/// programs are, who and where the user is, locale and terminal. Nothing
/// else: crabbox's environment holds provider credentials.
const KEPT_ENV: [&str; 10] = [
    "PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TERM", "TZ", "TMPDIR",
];

/// Sets a lease command's working directory and environment: a clean
/// environment with [`KEPT_ENV`] and `LC_*`, then the caller's (the
/// member's env, peers, `pass_env`, `run --allow-env`), then the lease's own
/// `CRABBOX_*` variables (facts about the lease, and the ownership marker).
fn apply_env(
    cmd: &mut std::process::Command,
    dir: &Path,
    record: &LeaseRecord,
    lease: &Lease,
    request: &ExecRequest,
) {
    let workspace = dir.join(WORKSPACE);
    cmd.env_clear();
    for (name, value) in std::env::vars_os() {
        let kept = name
            .to_str()
            .is_some_and(|n| KEPT_ENV.contains(&n) || n.starts_with("LC_"));
        if kept {
            cmd.env(name, value);
        }
    }
    cmd.current_dir(&workspace)
        .envs(&request.env)
        .env(ENV_BIND_ADDR, &record.bind_addr)
        .env(ENV_LEASE_ID, &lease.id)
        .env(ENV_WORKSPACE, &workspace);
}

/// `exec.log` and its header line for `request`.
fn exec_log(request: &ExecRequest) -> (&'static str, String) {
    (
        "exec.log",
        format!("--- {} $ {}", labels::now_secs(), request.command),
    )
}

fn open_log(path: &Path) -> Result<std::fs::File, ProviderError> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| failed(path, &e))
}

fn child_pid(id: Option<u32>) -> Result<i32, ProviderError> {
    id.and_then(|id| i32::try_from(id).ok())
        .ok_or_else(|| ProviderError::Failed("the started process has no pid".to_owned()))
}

/// Copies one pipe to the sink line by line, and to the log as it came.
async fn pump(
    reader: impl AsyncRead + Unpin,
    stream: Stream,
    sink: Arc<dyn OutputSink>,
    log: Option<Arc<Mutex<Vec<std::fs::File>>>>,
) {
    pump_lines(reader, |raw, line| {
        if let Some(log) = &log {
            for file in log
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .iter_mut()
            {
                let _ = file.write_all(raw);
                if !raw.ends_with(b"\n") {
                    let _ = file.write_all(b"\n");
                }
            }
        }
        sink.line(stream, line);
    })
    .await;
}

/// The last `lines` lines of a log from byte `offset` on.
fn log_tail(path: &Path, offset: u64, lines: usize) -> String {
    let Ok(mut file) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map_or(0, |m| m.len());
    // Enough for 20 long lines without reading a huge log.
    let start = offset.max(len.saturating_sub(64 * 1024));
    let mut bytes = Vec::new();
    if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let all: Vec<&str> = text.lines().collect();
    let tail = &all[all.len().saturating_sub(lines)..];
    if tail.is_empty() {
        "(no output)".to_owned()
    } else {
        tail.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt as _;

    use super::probe::parse_http_url;
    use super::processes::{carries_marker, group_members, proc_stat};
    use super::*;
    use crabbox_core::lease::new_lease_id;
    use crabbox_spec::desired::{DesiredMember, SyncSettings};

    /// Collects every line it is given.
    #[derive(Default)]
    struct Collect(Mutex<Vec<(Stream, String)>>);

    impl OutputSink for Collect {
        fn line(&self, stream: Stream, line: &str) {
            self.0.lock().expect("lock").push((stream, line.to_owned()));
        }
    }

    impl Collect {
        fn of(&self, stream: Stream) -> Vec<String> {
            self.0
                .lock()
                .expect("lock")
                .iter()
                .filter(|(s, _)| *s == stream)
                .map(|(_, l)| l.clone())
                .collect()
        }
    }

    fn member(slug: &str, block: Option<serde_json::Value>) -> DesiredMember {
        DesiredMember {
            sync: SyncSettings {
                enabled: true,
                exclude: vec![],
                max_bytes: 1 << 20,
            },
            ttl: Duration::from_secs(3600),
            idle_timeout: Duration::from_secs(600),
            provider_block: block,
            ..DesiredMember::new(slug, ProviderName::Local)
        }
    }

    fn request(pond: &str, slug: &str, block: Option<serde_json::Value>) -> CreateRequest {
        let lease_id = new_lease_id();
        let m = member(slug, block);
        let labels =
            crabbox_spec::member_labels::for_create(pond, &lease_id, &m, labels::now_secs());
        CreateRequest {
            lease_id,
            pond: pond.to_owned(),
            member: m,
            labels,
        }
    }

    fn exec_request(command: &str) -> ExecRequest {
        ExecRequest {
            command: command.to_owned(),
            env: BTreeMap::new(),
            timeout: Some(Duration::from_secs(30)),
        }
    }

    fn process_gone(pid: i32) -> bool {
        proc_stat(pid).is_none_or(|s| s.state == 'Z')
    }

    async fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if check() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        check()
    }

    fn read_pid(provider: &LocalProvider, lease: &Lease, name: &str) -> i32 {
        let path = provider
            .root
            .join(&lease.id)
            .join(PIDS)
            .join(format!("{name}.pid"));
        std::fs::read_to_string(path)
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid")
    }

    #[tokio::test]
    async fn create_list_relabel_round_trip_with_pond_filtering() {
        let state = tempfile::tempdir().expect("tempdir");
        let provider = LocalProvider::new(state.path());
        assert_eq!(provider.name(), ProviderName::Local);
        let features = crabbox_core::provider::features_of(provider.name());
        assert!(features.labels && features.local && features.background && !features.ssh);
        assert!(
            provider.list("a").await.expect("empty list").is_empty(),
            "missing root is an empty list"
        );

        let req_db = request("a", "db", None);
        let req_api = request("a", "api", None);
        let req_other = request("b", "web", None);
        let db = provider.create(&req_db).await.expect("create db");
        let api = provider.create(&req_api).await.expect("create api");
        provider.create(&req_other).await.expect("create other");

        assert_eq!(db.id, req_db.lease_id);
        assert_eq!(db.cloud_id, req_db.lease_id);
        assert_eq!(db.labels, req_db.labels);
        assert!(db.listed && !db.claimed);
        assert!(db.is_ours("a"));
        let dir = state.path().join("local/leases").join(&db.id);
        for sub in ["", "workspace", "logs", "pids"] {
            let mode = std::fs::metadata(dir.join(sub))
                .expect("dir")
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o700, "{sub}");
        }
        let on_disk: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("lease.json")).expect("lease.json"))
                .expect("json");
        assert_eq!(on_disk["labels"]["slug"], "db");
        assert_eq!(
            on_disk["bind_addr"],
            db.endpoint.host.clone().expect("host").as_str()
        );
        assert!(on_disk["created_at"].as_u64().expect("created_at") > 0);

        let mut expected = vec![db.clone(), api.clone()];
        expected.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(provider.list("a").await.expect("list a"), expected);
        let b = provider.list("b").await.expect("list b");
        assert_eq!(b.len(), 1);
        assert_eq!(b[0].slug(), "web");
        assert!(provider.list("c").await.expect("list c").is_empty());

        let mut relabelled = db.labels.clone();
        relabelled.insert(labels::STATE.into(), labels::state::READY.into());
        provider.relabel(&db, &relabelled).await.expect("relabel");
        let listed = provider.list("a").await.expect("list after relabel");
        let again = listed.iter().find(|l| l.id == db.id).expect("db listed");
        assert_eq!(again.state(), "ready");
        assert_eq!(again.endpoint, db.endpoint, "bind address kept");
        let after: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("lease.json")).expect("lease.json"))
                .expect("json");
        assert_eq!(
            after["created_at"], on_disk["created_at"],
            "created time kept"
        );

        // Relabelling into another pond moves it between lists.
        let mut moved = relabelled.clone();
        moved.insert(labels::POND.into(), "b".into());
        provider.relabel(&db, &moved).await.expect("relabel to b");
        assert_eq!(provider.list("a").await.expect("list a").len(), 1);
        assert_eq!(provider.list("b").await.expect("list b").len(), 2);

        // The same lease ID cannot be created twice.
        let err = provider.create(&req_db).await.expect_err("duplicate");
        assert!(err.to_string().contains("already exists"), "{err}");
    }

    #[tokio::test]
    async fn addresses_are_unique_and_pinned_addresses_are_honoured() {
        let state = tempfile::tempdir().expect("tempdir");
        let provider = Arc::new(LocalProvider::new(state.path()));

        // Concurrent creates all get distinct 127.77 addresses.
        let mut handles = Vec::new();
        for i in 0..8 {
            let provider = provider.clone();
            handles.push(tokio::spawn(async move {
                provider.create(&request("p", &format!("m{i}"), None)).await
            }));
        }
        let mut addrs = BTreeSet::new();
        for h in handles {
            let lease = h.await.expect("join").expect("create");
            let host = lease.endpoint.host.expect("host");
            let ip: Ipv4Addr = host.parse().expect("ipv4");
            let [a, b, _, y] = ip.octets();
            assert_eq!((a, b), (127, 77), "{ip}");
            assert!((1..=254).contains(&y), "{ip}");
            assert_eq!(
                ip,
                slot_addr(derived_slot(&lease.id)),
                "derived from the lease ID"
            );
            addrs.insert(host);
        }
        assert_eq!(addrs.len(), 8);

        // An address taken by another lease directory is skipped.
        let req = request("p", "next", None);
        let wanted = slot_addr(derived_slot(&req.lease_id));
        let squatter = provider.root.join("cbx_squatter0000");
        std::fs::create_dir_all(&squatter).expect("mkdir");
        let record = LeaseRecord {
            lease_id: "cbx_squatter0000".into(),
            labels: Labels::new(),
            bind_addr: wanted.to_string(),
            created_at: 1,
        };
        write_record(&squatter, &record).expect("write squatter");
        let lease = provider.create(&req).await.expect("create next");
        assert_eq!(
            lease.endpoint.host,
            Some(slot_addr(derived_slot(&req.lease_id) + 1).to_string())
        );

        // Pinned.
        let pinned = provider
            .create(&request(
                "p",
                "pinned",
                Some(serde_json::json!({ "bind_addr": "127.0.0.42" })),
            ))
            .await
            .expect("create pinned");
        assert_eq!(pinned.endpoint.host.as_deref(), Some("127.0.0.42"));
        let nested = provider
            .create(&request(
                "p",
                "nested",
                Some(serde_json::json!({ "local": { "bind_addr": "127.9.8.7" } })),
            ))
            .await
            .expect("create nested pin");
        assert_eq!(nested.endpoint.host.as_deref(), Some("127.9.8.7"));
        let err = provider
            .create(&request(
                "p",
                "bad",
                Some(serde_json::json!({ "bind_addr": "10.0.0.1" })),
            ))
            .await
            .expect_err("not loopback");
        assert!(matches!(err, ProviderError::Config { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn exec_streams_lines_in_order_and_returns_exit_codes() {
        let state = tempfile::tempdir().expect("tempdir");
        let provider = LocalProvider::new(state.path());
        let lease = provider
            .create(&request("p", "app", None))
            .await
            .expect("create");
        let host = lease.endpoint.host.clone().expect("host");

        let sink = Arc::new(Collect::default());
        let mut req = exec_request(
            "echo one; echo err1 >&2; echo two; echo err2 >&2; printf 'bind=%s\\n' \"$CRABBOX_BIND_ADDR\"; \
             echo \"id=$CRABBOX_LEASE_ID foo=$FOO home=$HOME\"; pwd; printf 'no newline'",
        );
        req.env.insert("FOO".into(), "bar".into());
        req.env.insert("HOME".into(), "/caller/home".into());
        let code = provider
            .session(&lease)
            .exec(&req, sink.clone())
            .await
            .expect("exec");
        assert_eq!(code, 0);
        let workspace = state
            .path()
            .join("local/leases")
            .join(&lease.id)
            .join("workspace");
        assert_eq!(
            sink.of(Stream::Stdout),
            [
                "one".to_owned(),
                "two".to_owned(),
                format!("bind={host}"),
                format!("id={} foo=bar home=/caller/home", lease.id),
                workspace
                    .canonicalize()
                    .expect("canon")
                    .display()
                    .to_string(),
                "no newline".to_owned(),
            ]
        );
        assert_eq!(sink.of(Stream::Stderr), ["err1", "err2"]);

        let sink = Arc::new(Collect::default());
        let code = provider
            .session(&lease)
            .exec(&exec_request("echo before; exit 3"), sink.clone())
            .await
            .expect("exec");
        assert_eq!(code, 3);
        assert_eq!(sink.of(Stream::Stdout), ["before"]);

        let code = provider
            .session(&lease)
            .exec(&exec_request("kill -9 $$"), Arc::new(NullSink))
            .await
            .expect("exec");
        assert_eq!(code, 128 + 9);

        let log = std::fs::read_to_string(
            state
                .path()
                .join("local/leases")
                .join(&lease.id)
                .join("logs/exec.log"),
        )
        .expect("log");
        assert!(
            log.contains("one\n") && log.contains("err2\n") && log.contains("before\n"),
            "{log}"
        );
        assert!(log.contains("--- exit 3"), "{log}");

        let gone = Lease {
            id: "cbx_000000000000".into(),
            cloud_id: "cbx_000000000000".into(),
            ..lease
        };
        let err = provider
            .session(&gone)
            .exec(&exec_request("true"), Arc::new(NullSink))
            .await
            .expect_err("missing");
        assert!(matches!(err, ProviderError::NotFound(_)), "{err:?}");
    }

    #[tokio::test]
    async fn exec_timeout_kills_the_process_group() {
        let state = tempfile::tempdir().expect("tempdir");
        let provider = LocalProvider::new(state.path());
        let lease = provider
            .create(&request("p", "app", None))
            .await
            .expect("create");
        let mut req = exec_request("sleep 300 & echo $!; sleep 300");
        req.timeout = Some(Duration::from_millis(700));
        let sink = Arc::new(Collect::default());
        let started = Instant::now();
        let err = provider
            .session(&lease)
            .exec(&req, sink.clone())
            .await
            .expect_err("times out");
        assert_eq!(
            err,
            ProviderError::Failed("command timed out after 700ms".into())
        );
        assert!(started.elapsed() < Duration::from_secs(10));
        let grandchild: i32 = sink.of(Stream::Stdout)[0].parse().expect("pid");
        assert!(
            eventually(Duration::from_secs(5), || process_gone(grandchild)).await,
            "background sleep {grandchild} killed"
        );
    }

    #[tokio::test]
    async fn background_service_is_probed_and_release_leaves_nothing() {
        let state = tempfile::tempdir().expect("tempdir");
        let provider = LocalProvider::new(state.path());
        let lease = provider
            .create(&request("p", "web", None))
            .await
            .expect("create");
        let host = lease.endpoint.host.clone().expect("host");
        let port = 18_765;
        let tcp = Probe::Tcp { host: None, port };
        let http = Probe::Http(format!("http://{host}:{port}/"));
        let env = BTreeMap::new();
        assert!(
            !provider
                .session(&lease)
                .probe(&tcp, &env)
                .await
                .expect("probe before"),
            "nothing listens yet"
        );
        assert!(
            !provider
                .session(&lease)
                .probe(&http, &env)
                .await
                .expect("http before")
        );

        let req = exec_request(&format!(
            "sleep 300 & exec python3 -m http.server --bind \"$CRABBOX_BIND_ADDR\" {port}"
        ));
        provider
            .session(&lease)
            .start_background(&req, "web")
            .await
            .expect("start");
        let pid = read_pid(&provider, &lease, "web");
        assert!(proc_stat(pid).is_some(), "service runs");

        let mut up = false;
        for _ in 0..100 {
            if provider
                .session(&lease)
                .probe(&tcp, &env)
                .await
                .expect("probe")
            {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(up, "http.server accepts connections on {host}:{port}");
        assert!(
            provider
                .session(&lease)
                .probe(&http, &env)
                .await
                .expect("http"),
            "GET / answers 200"
        );
        let explicit = Probe::Tcp {
            host: Some(host.clone()),
            port,
        };
        assert!(
            provider
                .session(&lease)
                .probe(&explicit, &env)
                .await
                .expect("explicit host")
        );
        let own = Probe::Http(format!("http://localhost:{port}/"));
        assert!(
            provider
                .session(&lease)
                .probe(&own, &env)
                .await
                .expect("localhost"),
            "localhost in a ready URL is the member's own address"
        );
        let missing = Probe::Http(format!("http://{host}:{port}/no-such-file"));
        assert!(
            !provider
                .session(&lease)
                .probe(&missing, &env)
                .await
                .expect("404"),
            "404 is not ready"
        );
        let members = group_members(pid);
        assert!(
            members.len() >= 2,
            "python and the background sleep share the group: {members:?}"
        );

        provider.release(&lease).await.expect("release");
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "the service {pid} is gone and reaped: {:?}",
            proc_stat(pid)
        );
        // Its other members are dead; orphans are reaped by init, not by us
        // (and some container inits never do), so a zombie counts as gone.
        for member in members {
            assert!(
                process_gone(member),
                "process {member} is gone: {:?}",
                proc_stat(member)
            );
        }
        assert!(
            !state.path().join("local/leases").join(&lease.id).exists(),
            "directory removed"
        );
        assert!(
            !provider
                .session(&lease)
                .probe(&explicit, &env)
                .await
                .expect("probe after")
        );
        assert!(provider.list("p").await.expect("list").is_empty());
    }

    #[test]
    fn the_lifeline_reaches_the_step_whatever_fd_the_pipe_has() {
        use std::io::Write as _;
        use std::os::fd::AsRawFd as _;
        use std::os::unix::process::CommandExt as _;
        // Once as another fd, once as fd 3 with close-on-exec (as a fresh
        // process's first pipe is): the child reads what is written.
        for as_fd3 in [false, true] {
            let (reader, mut writer) = std::io::pipe().expect("pipe");
            let fd = reader.as_raw_fd();
            let mut cmd = std::process::Command::new("sh");
            cmd.args(["-c", "cat <&3"]).stdout(Stdio::piped());
            // SAFETY: dup2/fcntl only, in the child before exec.
            unsafe {
                cmd.pre_exec(move || {
                    let fd = if as_fd3 {
                        if libc::dup2(fd, LIFELINE_FD) == -1
                            || libc::fcntl(LIFELINE_FD, libc::F_SETFD, libc::FD_CLOEXEC) == -1
                        {
                            return Err(std::io::Error::last_os_error());
                        }
                        LIFELINE_FD
                    } else {
                        fd
                    };
                    inherit_as_lifeline(fd)
                });
            }
            let child = cmd.spawn().expect("spawn");
            drop(reader);
            writer.write_all(b"alive\n").expect("write");
            drop(writer);
            let out = child.wait_with_output().expect("wait");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "alive\n",
                "as fd 3: {as_fd3}"
            );
        }
    }

    #[tokio::test]
    async fn sweep_removes_staging_directories_of_dead_creates_of_this_pond_only() {
        let state = tempfile::tempdir().expect("tempdir");
        let provider = LocalProvider::new(state.path());
        let root = state.path().join("local/leases");
        let stage = |id: &str, pond: Option<&str>| {
            let dir = root.join(format!("{STAGING_PREFIX}{id}"));
            std::fs::create_dir_all(dir.join(WORKSPACE)).expect("staging");
            if let Some(pond) = pond {
                let mut labels = Labels::new();
                labels.insert(labels::POND.into(), pond.into());
                write_record(
                    &dir,
                    &LeaseRecord {
                        lease_id: id.into(),
                        labels,
                        bind_addr: "127.77.0.9".into(),
                        created_at: 0,
                    },
                )
                .expect("record");
            }
            dir
        };
        let mine = stage("cbx_00000000000a", Some("p"));
        let other = stage("cbx_00000000000b", Some("q"));
        let fresh = stage("cbx_00000000000c", None);
        let old = stage("cbx_00000000000d", None);
        let long_ago = std::time::SystemTime::now() - Duration::from_secs(600);
        std::fs::File::open(&old)
            .and_then(|f| f.set_modified(long_ago))
            .expect("age the directory");
        let removed = provider.sweep("p").await.expect("sweep");
        assert_eq!(removed.len(), 2, "{removed:?}");
        assert!(!mine.exists() && !old.exists());
        assert!(other.exists(), "another pond's create may be running");
        assert!(fresh.exists(), "a create may be about to write its record");
    }

    #[tokio::test]
    async fn stop_background_stops_services_and_ignores_foreign_pids() {
        let state = tempfile::tempdir().expect("tempdir");
        let provider = LocalProvider::new(state.path());
        let lease = provider
            .create(&request("p", "svc", None))
            .await
            .expect("create");
        provider
            .session(&lease)
            .start_background(&exec_request("sleep 300"), "sleeper")
            .await
            .expect("start");
        let pid = read_pid(&provider, &lease, "sleeper");
        assert!(carries_marker(pid, &lease.id));

        // A pid file naming a process that is not ours is dropped, not signalled.
        let mut stranger = std::process::Command::new("sleep")
            .arg("300")
            .spawn()
            .expect("spawn stranger");
        let stranger_pid = i32::try_from(stranger.id()).expect("pid");
        let pids = state
            .path()
            .join("local/leases")
            .join(&lease.id)
            .join("pids");
        std::fs::write(pids.join("stranger.pid"), format!("{stranger_pid}\n")).expect("write");

        provider
            .session(&lease)
            .stop_background()
            .await
            .expect("stop");
        assert!(process_gone(pid), "service stopped");
        assert!(
            std::fs::read_dir(&pids).expect("pids").next().is_none(),
            "pid files removed"
        );
        assert!(
            stranger.try_wait().expect("try_wait").is_none(),
            "the stranger still runs"
        );
        stranger.kill().expect("kill stranger");
        stranger.wait().expect("reap stranger");
    }

    #[tokio::test]
    async fn start_background_that_fails_immediately_reports_its_log() {
        let state = tempfile::tempdir().expect("tempdir");
        let provider = LocalProvider::new(state.path());
        let lease = provider
            .create(&request("p", "svc", None))
            .await
            .expect("create");
        let err = provider
            .session(&lease)
            .start_background(
                &exec_request("echo starting; echo 'boom: no config' >&2; exit 3"),
                "broken",
            )
            .await
            .expect_err("fails");
        let ProviderError::Failed(msg) = &err else {
            panic!("{err:?}")
        };
        assert!(msg.contains("`broken` exited with status 3"), "{msg}");
        assert!(msg.contains("starting\nboom: no config"), "{msg}");
        let pid_file = state
            .path()
            .join("local/leases")
            .join(&lease.id)
            .join("pids/broken.pid");
        assert!(!pid_file.exists());
    }

    #[tokio::test]
    async fn release_checks_what_it_deletes() {
        let state = tempfile::tempdir().expect("tempdir");
        let provider = LocalProvider::new(state.path());
        let lease = provider
            .create(&request("p", "x", None))
            .await
            .expect("create");

        let missing = Lease {
            id: "cbx_0000000000ff".into(),
            cloud_id: "cbx_0000000000ff".into(),
            ..lease.clone()
        };
        let err = provider.release(&missing).await.expect_err("missing");
        assert!(matches!(err, ProviderError::NotFound(_)), "{err:?}");

        let mut foreign = lease.labels.clone();
        foreign.remove(labels::CRABBOX);
        provider.relabel(&lease, &foreign).await.expect("relabel");
        let err = provider.release(&lease).await.expect_err("not ours");
        assert!(err.to_string().contains("not a crabbox lease"), "{err}");
        assert!(
            state.path().join("local/leases").join(&lease.id).exists(),
            "left alone"
        );

        provider
            .relabel(&lease, &lease.labels)
            .await
            .expect("relabel back");
        provider.release(&lease).await.expect("release");
        let err = provider.release(&lease).await.expect_err("second release");
        assert!(matches!(err, ProviderError::NotFound(_)), "{err:?}");

        let traversal = Lease {
            cloud_id: "../../etc".into(),
            ..lease
        };
        assert!(matches!(
            provider.release(&traversal).await,
            Err(ProviderError::Failed(_))
        ));
    }

    #[tokio::test]
    async fn corrupt_lease_json_is_skipped_by_list() {
        let state = tempfile::tempdir().expect("tempdir");
        let provider = LocalProvider::new(state.path());
        let good = provider
            .create(&request("p", "good", None))
            .await
            .expect("create");
        let bad = state.path().join("local/leases/cbx_bad000000000");
        std::fs::create_dir_all(&bad).expect("mkdir");
        std::fs::write(bad.join("lease.json"), b"{ not json").expect("write");
        std::fs::create_dir_all(state.path().join("local/leases/cbx_empty0000000")).expect("mkdir");
        let listed = provider.list("p").await.expect("list");
        assert_eq!(listed, vec![good.clone()]);
        // Allocation still works next to the corrupt directory.
        provider
            .create(&request("p", "another", None))
            .await
            .expect("create next to corrupt");
        assert_eq!(provider.list("p").await.expect("list").len(), 2);
    }

    #[tokio::test]
    async fn upload_unpacks_into_the_workspace_and_probe_commands_run_there() {
        let state = tempfile::tempdir().expect("tempdir");
        let provider = LocalProvider::new(state.path());
        let lease = provider
            .create(&request("p", "app", None))
            .await
            .expect("create");
        let src = tempfile::tempdir().expect("src");
        std::fs::write(src.path().join("hello.txt"), b"synced\n").expect("write");
        let archive = crabbox_exec::archive::build(src.path(), &[], 1 << 20).expect("archive");
        provider
            .session(&lease)
            .upload(&archive.path)
            .await
            .expect("upload");

        let sink = Arc::new(Collect::default());
        assert_eq!(
            provider
                .session(&lease)
                .exec(&exec_request("cat hello.txt"), sink.clone())
                .await
                .expect("exec"),
            0
        );
        assert_eq!(sink.of(Stream::Stdout), ["synced"]);

        let mut env = BTreeMap::new();
        env.insert("WANT".to_owned(), "hello.txt".to_owned());
        assert!(
            provider
                .session(&lease)
                .probe(&Probe::Command("test -f \"$WANT\"".into()), &env)
                .await
                .expect("probe")
        );
        assert!(
            !provider
                .session(&lease)
                .probe(&Probe::Command("test -f nope.txt".into()), &env)
                .await
                .expect("probe")
        );
        let err = provider
            .session(&lease)
            .probe(&Probe::Http("https://example.com/".into()), &env)
            .await
            .expect_err("https");
        assert_eq!(
            err,
            ProviderError::Failed("https ready checks are not supported on local; use tcp".into())
        );
    }

    #[test]
    fn http_urls_are_parsed() {
        let p = |u: &str| parse_http_url(u).expect(u);
        assert_eq!(
            p("http://127.0.0.1:8080/health"),
            (
                "127.0.0.1".into(),
                8080,
                "/health".into(),
                "127.0.0.1:8080".into()
            )
        );
        assert_eq!(
            p("http://localhost"),
            ("localhost".into(), 80, "/".into(), "localhost".into())
        );
        assert_eq!(
            p("HTTP://h:1?x=1#frag"),
            ("h".into(), 1, "/?x=1".into(), "h:1".into())
        );
        assert_eq!(
            p("http://[::1]:9000/a/b"),
            ("::1".into(), 9000, "/a/b".into(), "[::1]:9000".into())
        );
        assert!(parse_http_url("http://h:notaport/").is_err());
        assert!(parse_http_url("ftp://h/").is_err());
    }
}
