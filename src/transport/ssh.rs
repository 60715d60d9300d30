//! SSH transport shared by every SSH-lease provider: the system OpenSSH
//! client, one multiplexed connection per lease, strict host keys recorded on
//! first contact in the state directory.
//!
//! (API skeleton: bodies are being written.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::providers::{OutputSink, ProviderError};
use crate::spec::desired::Probe;

/// How to reach one lease over SSH and where its files live there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Login user.
    pub user: String,
    /// Private key file (`-i`); `None` uses the user's agent/config.
    pub key: Option<PathBuf>,
    /// Remote directory that belongs to this lease (created by `prepare`,
    /// removed by `remove_work_root`); holds `workspace/`, `logs/`, `pids/`.
    pub work_root: String,
    /// Local state directory: `ssh/known_hosts` and control sockets live under it.
    pub state_dir: PathBuf,
    /// Value of `CRABBOX_LEASE_ID` for processes started on the host.
    pub lease_id: String,
}

impl SshTarget {
    /// Waits until SSH answers (and records the host key on first contact).
    ///
    /// # Errors
    /// Timeout or authentication failure.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), ProviderError> {
        let _ = timeout;
        unimplemented!()
    }

    /// Creates the work root (`workspace/`, `logs/`, `pids/`).
    ///
    /// # Errors
    /// SSH failures.
    pub async fn prepare(&self) -> Result<(), ProviderError> {
        unimplemented!()
    }

    /// Runs a command in `workspace/` with `env` (sent over stdin, never argv), streaming output.
    ///
    /// # Errors
    /// SSH failures (not the command's own non-zero exit).
    pub async fn exec(
        &self,
        command: &str,
        env: &BTreeMap<String, String>,
        sink: Arc<dyn OutputSink>,
        timeout: Option<Duration>,
    ) -> Result<i32, ProviderError> {
        let _ = (command, env, sink, timeout);
        unimplemented!()
    }

    /// Unpacks a local `.tar.gz` into `workspace/`, streamed over SSH.
    ///
    /// # Errors
    /// SSH or tar failures.
    pub async fn upload(&self, archive: &Path) -> Result<(), ProviderError> {
        let _ = archive;
        unimplemented!()
    }

    /// Starts a detached service (own session), output to `logs/<name>.log`, pid in `pids/<name>.pid`.
    ///
    /// # Errors
    /// SSH failures, or the service exiting at once with an error.
    pub async fn start_background(
        &self,
        command: &str,
        env: &BTreeMap<String, String>,
        name: &str,
    ) -> Result<(), ProviderError> {
        let _ = (command, env, name);
        unimplemented!()
    }

    /// Stops every service started by `start_background` (TERM, then KILL after 5 s).
    ///
    /// # Errors
    /// SSH failures.
    pub async fn stop_background(&self) -> Result<(), ProviderError> {
        unimplemented!()
    }

    /// One readiness attempt, run on the host.
    ///
    /// # Errors
    /// SSH failures.
    pub async fn probe(
        &self,
        probe: &Probe,
        env: &BTreeMap<String, String>,
    ) -> Result<bool, ProviderError> {
        let _ = (probe, env);
        unimplemented!()
    }

    /// Stops services and removes the work root; nothing else on the host is touched.
    ///
    /// # Errors
    /// SSH failures.
    pub async fn remove_work_root(&self) -> Result<(), ProviderError> {
        unimplemented!()
    }

    /// Closes the multiplexed connection.
    pub async fn close(&self) {}
}
