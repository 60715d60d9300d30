//! Reaching one lease: a [`Session`] runs commands there, copies the
//! repository in, starts and stops services and checks readiness. The
//! engine asks a provider for the session of a lease and never cares how
//! it is reached. Providers with their own command API (Islo, Tensorlake,
//! the local provider) implement it themselves; SSH-lease providers only
//! say how to find a lease's [`SshTarget`] ([`SshTargets`]) and get
//! [`SshSession`] for free.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use crabbox_core::lease::Lease;
use crabbox_core::provider::{OutputSink, ProviderError};
use crabbox_spec::desired::Probe;

use crate::remote_shell::LOGS;
use crate::ssh::SshTarget;

/// One command to run on a lease.
#[derive(Debug, Clone, Default)]
pub struct ExecRequest {
    /// Shell command, run with `sh -c` in the lease's workspace.
    pub command: String,
    /// Environment (member env, peer variables, step env).
    pub env: BTreeMap<String, String>,
    /// Time limit.
    pub timeout: Option<Duration>,
}

/// What can be done on one lease once it exists.
#[async_trait]
pub trait Session: Send + Sync {
    /// Unpacks a gzipped tar archive into the lease's workspace.
    async fn upload(&self, archive: &Path) -> Result<(), ProviderError>;

    /// Runs a command to completion, streaming its output; returns its exit code.
    async fn exec(
        &self,
        request: &ExecRequest,
        sink: Arc<dyn OutputSink>,
    ) -> Result<i32, ProviderError>;

    /// Runs a command like [`Session::exec`] without the provider keeping a
    /// record of it: `crabbox logs` reading the logs must not append them to
    /// a log of their own (the local provider records every `exec`).
    async fn exec_unrecorded(
        &self,
        request: &ExecRequest,
        sink: Arc<dyn OutputSink>,
    ) -> Result<i32, ProviderError> {
        self.exec(request, sink).await
    }

    /// Runs a setup step like [`Session::exec`], its output also appended to
    /// the lease's setup log after `header` (for `crabbox logs`). By
    /// default a shell script around the command does it (see
    /// [`crate::logs::setup_logged_script`]); without a logs directory the
    /// step just runs.
    async fn exec_logged(
        &self,
        request: &ExecRequest,
        sink: Arc<dyn OutputSink>,
        header: &str,
    ) -> Result<i32, ProviderError> {
        match self.logs_dir() {
            Some(dir) => {
                let logged = ExecRequest {
                    command: crate::logs::setup_logged_script(&dir, header, &request.command),
                    ..request.clone()
                };
                self.exec(&logged, sink).await
            }
            None => self.exec(request, sink).await,
        }
    }

    /// The directory of the lease's logs (the setup log and one per
    /// background service, see [`crate::logs`]), as a shell started by
    /// [`Session::exec`] sees it (relative to the workspace, so it holds
    /// wherever the work root is). `None`: the provider keeps no logs on
    /// its leases, and `crabbox logs` says so.
    fn logs_dir(&self) -> Option<String> {
        None
    }

    /// Starts a long-running service detached; its output goes to the lease's logs.
    async fn start_background(
        &self,
        request: &ExecRequest,
        name: &str,
    ) -> Result<(), ProviderError>;

    /// Stops every background service crabbox started on the lease.
    async fn stop_background(&self) -> Result<(), ProviderError>;

    /// One readiness attempt: `Ok(true)` when the probe passes.
    async fn probe(
        &self,
        probe: &Probe,
        env: &BTreeMap<String, String>,
    ) -> Result<bool, ProviderError>;
}

/// How an SSH-lease provider finds the SSH target of one of its leases:
/// all such a provider implements to have its leases reached.
#[async_trait]
pub trait SshTargets: Send + Sync {
    /// The lease's target, ready to use (waiting for a booting host when
    /// the provider knows it may still boot).
    async fn ssh_target_of(&self, lease: &Lease) -> Result<SshTarget, ProviderError>;

    /// Called before services are stopped: a lease adopted while its host
    /// was still booting must be reachable first. Nothing by default.
    async fn before_stop(&self, target: &SshTarget) -> Result<(), ProviderError> {
        let _ = target;
        Ok(())
    }
}

/// The session of a lease reached over SSH.
pub struct SshSession<'a, T: SshTargets + ?Sized> {
    targets: &'a T,
    lease: &'a Lease,
}

impl<'a, T: SshTargets + ?Sized> SshSession<'a, T> {
    /// The session of `lease`, whose target `targets` finds.
    pub fn new(targets: &'a T, lease: &'a Lease) -> Self {
        Self { targets, lease }
    }
}

#[async_trait]
impl<T: SshTargets + ?Sized> Session for SshSession<'_, T> {
    async fn upload(&self, archive: &Path) -> Result<(), ProviderError> {
        self.targets
            .ssh_target_of(self.lease)
            .await?
            .upload(archive)
            .await
    }

    async fn exec(
        &self,
        request: &ExecRequest,
        sink: Arc<dyn OutputSink>,
    ) -> Result<i32, ProviderError> {
        self.targets
            .ssh_target_of(self.lease)
            .await?
            .exec(&request.command, &request.env, sink, request.timeout)
            .await
    }

    /// `logs/` beside `workspace/` under the work root.
    fn logs_dir(&self) -> Option<String> {
        Some(format!("../{LOGS}"))
    }

    async fn start_background(
        &self,
        request: &ExecRequest,
        name: &str,
    ) -> Result<(), ProviderError> {
        self.targets
            .ssh_target_of(self.lease)
            .await?
            .start_background(&request.command, &request.env, name)
            .await
    }

    async fn stop_background(&self) -> Result<(), ProviderError> {
        let target = self.targets.ssh_target_of(self.lease).await?;
        self.targets.before_stop(&target).await?;
        target.stop_background().await
    }

    async fn probe(
        &self,
        probe: &Probe,
        env: &BTreeMap<String, String>,
    ) -> Result<bool, ProviderError> {
        self.targets
            .ssh_target_of(self.lease)
            .await?
            .probe(probe, env)
            .await
    }
}
