//! The provider adapters: one trait, one module per provider. Only code in
//! this module talks to providers (processes, HTTP, SSH); everything above it
//! works with [`Lease`]s and [`ProviderError`]s.

pub mod hetzner;
pub mod http;
pub mod islo;
pub mod local;
pub mod registry;
pub mod ssh;
pub mod tensorlake;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::inventory::labels::Labels;
use crate::inventory::lease::Lease;
use crate::spec::desired::{DesiredMember, Probe};
use crate::spec::providers::ProviderName;

/// What a provider can do; decides peer transports, which steps exist, and
/// which spec options are refused before anything is created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features {
    /// Resources carry labels (else: claim files).
    pub labels: bool,
    /// Reachable over SSH.
    pub ssh: bool,
    /// Peers reach it through provider URLs (shares).
    pub url_bridge: bool,
    /// Runs on this machine with its own loopback address.
    pub local: bool,
    /// Setup steps can run in the background (detached services).
    pub background: bool,
    /// Leases can be paused and resumed, keeping their claim.
    pub pause_resume: bool,
}

impl Features {
    /// Whether peers can reach a port a member exposes.
    #[must_use]
    pub fn reachable_ports(self) -> bool {
        self.ssh || self.url_bridge || self.local
    }
}

/// What each provider can do. One table, so `validate` (which talks to no
/// provider) and the adapters agree.
#[must_use]
pub fn features_of(name: ProviderName) -> Features {
    let ssh_lease = Features {
        labels: true,
        ssh: true,
        background: true,
        ..Features::default()
    };
    match name {
        ProviderName::Local => Features {
            labels: true,
            local: true,
            background: true,
            ..Features::default()
        },
        ProviderName::Ssh => Features {
            ssh: true,
            background: true,
            ..Features::default()
        },
        ProviderName::Hetzner
        | ProviderName::Aws
        | ProviderName::Azure
        | ProviderName::Gcp
        | ProviderName::Daytona => ssh_lease,
        ProviderName::Islo => Features {
            url_bridge: true,
            background: true,
            pause_resume: true,
            ..Features::default()
        },
        ProviderName::E2b => Features {
            labels: true,
            url_bridge: true,
            background: true,
            ..Features::default()
        },
        ProviderName::Tensorlake => Features {
            background: true,
            ..Features::default()
        },
        ProviderName::Modal => Features {
            labels: true,
            ..Features::default()
        },
        ProviderName::BlacksmithTestbox => Features::default(),
    }
}

pub use crate::inventory::lease::Share;

/// A provider call that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The resource does not exist (any more). Release treats this as done.
    #[error("{0} not found")]
    NotFound(String),
    /// Worth retrying: rate limits, 5xx, timeouts. `retry_after` when the provider said.
    #[error("{message}")]
    Retryable {
        /// What happened.
        message: String,
        /// The provider's requested delay.
        retry_after: Option<Duration>,
    },
    /// Credentials or configuration are missing or wrong; says what to set.
    #[error("{message}")]
    Config {
        /// What is wrong.
        message: String,
        /// What to do.
        hint: String,
    },
    /// The provider cannot do this at all (says what and why).
    #[error("{0}")]
    Unsupported(String),
    /// Anything else.
    #[error("{0}")]
    Failed(String),
}

impl ProviderError {
    /// The claim store could not be read or written: what it holds is
    /// unknown, so the operation stops rather than guessing.
    #[must_use]
    pub fn state(e: std::io::Error) -> Self {
        Self::Failed(format!("the claim store could not be read or written: {e}"))
    }

    /// Whether the executor should retry the call.
    #[must_use]
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable { .. })
    }
}

/// The pending claim a create of a claim-backed provider starts from: the
/// engine writes it before calling `create`, so its absence is a bug, and a
/// store that cannot be read is an error (never "no claim").
///
/// # Errors
/// The store could not be read, or the claim is missing.
pub fn pending_claim(
    claims: &crate::inventory::claims::ClaimStore,
    lease_id: &str,
) -> Result<crate::inventory::claims::Claim, ProviderError> {
    claims
        .load(lease_id)
        .map_err(ProviderError::state)?
        .ok_or_else(|| {
            ProviderError::Failed(format!(
                "the pending claim of {lease_id} is missing; it is written before create"
            ))
        })
}

/// A request to create one lease. Labels are complete: providers put them on
/// the resource in the create call itself.
#[derive(Debug, Clone)]
pub struct CreateRequest {
    /// Minted lease ID.
    pub lease_id: String,
    /// Normalized pond name.
    pub pond: String,
    /// The member being created.
    pub member: DesiredMember,
    /// Every label the resource must carry from its first moment.
    pub labels: Labels,
}

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

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// Where a command's output goes, line by line, as it arrives.
pub trait OutputSink: Send + Sync {
    /// One line (without its newline).
    fn line(&self, stream: Stream, line: &str);
}

/// One provider.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Its name.
    fn name(&self) -> ProviderName;

    /// What it can do (the [`features_of`] table).
    fn features(&self) -> Features {
        features_of(self.name())
    }

    /// Every lease of `pond` (one list call, filtered by label).
    async fn list(&self, pond: &str) -> Result<Vec<Lease>, ProviderError>;

    /// The ponds that have crabbox resources on this provider, from its labels
    /// (one list call; `crabbox sweep` uses it). Claim-backed providers have no
    /// labels to list: their ponds come from the claims.
    async fn ponds(&self) -> Result<Vec<String>, ProviderError> {
        Ok(Vec::new())
    }

    /// Deletes what creates and releases of `pond` left behind when their
    /// process died halfway — resources that belong to no existing lease,
    /// such as an SSH key uploaded before its server's create call — only
    /// when they carry crabbox's markers for this pond. Returns a description
    /// of each thing removed; an error names what is still left. Called by
    /// `apply` and `destroy` (which hold the pond lock), never by `plan`.
    async fn sweep(&self, pond: &str) -> Result<Vec<String>, ProviderError> {
        let _ = pond;
        Ok(Vec::new())
    }

    /// Creates a lease carrying `request.labels`.
    async fn create(&self, request: &CreateRequest) -> Result<Lease, ProviderError>;

    /// Replaces a lease's labels.
    async fn relabel(&self, lease: &Lease, labels: &Labels) -> Result<(), ProviderError>;

    /// Unpacks a gzipped tar archive into the lease's workspace.
    async fn upload(&self, lease: &Lease, archive: &Path) -> Result<(), ProviderError>;

    /// Runs a command to completion, streaming its output; returns its exit code.
    async fn exec(
        &self,
        lease: &Lease,
        request: &ExecRequest,
        sink: Arc<dyn OutputSink>,
    ) -> Result<i32, ProviderError>;

    /// Starts a long-running service detached; its output goes to the lease's logs.
    async fn start_background(
        &self,
        lease: &Lease,
        request: &ExecRequest,
        name: &str,
    ) -> Result<(), ProviderError>;

    /// Stops every background service crabbox started on the lease.
    async fn stop_background(&self, lease: &Lease) -> Result<(), ProviderError>;

    /// One readiness attempt: `Ok(true)` when the probe passes.
    async fn probe(
        &self,
        lease: &Lease,
        probe: &Probe,
        env: &BTreeMap<String, String>,
    ) -> Result<bool, ProviderError>;

    /// Releases the lease and everything crabbox started on it. A lease
    /// that is already gone is [`ProviderError::NotFound`].
    async fn release(&self, lease: &Lease) -> Result<(), ProviderError>;

    /// Publishes `port` of the lease at a public URL for `ttl` (URL-bridge
    /// providers), reusing a live share of the same port.
    async fn share(&self, lease: &Lease, port: u16, ttl: Duration) -> Result<Share, ProviderError> {
        let _ = (lease, port, ttl);
        Err(ProviderError::Unsupported(format!(
            "provider `{}` has no URL bridge",
            self.name()
        )))
    }

    /// The lease's current shares (empty for providers without a URL bridge).
    async fn shares(&self, lease: &Lease) -> Result<Vec<Share>, ProviderError> {
        let _ = lease;
        Ok(Vec::new())
    }

    /// Pauses the lease, releasing its compute but keeping it and its claim.
    async fn pause(&self, lease: &Lease) -> Result<(), ProviderError> {
        let _ = lease;
        Err(ProviderError::Unsupported(format!(
            "provider `{}` cannot pause leases",
            self.name()
        )))
    }

    /// Resumes a paused lease.
    async fn resume(&self, lease: &Lease) -> Result<(), ProviderError> {
        let _ = lease;
        Err(ProviderError::Unsupported(format!(
            "provider `{}` cannot resume leases",
            self.name()
        )))
    }

    /// How to reach the lease over SSH, for SSH-lease providers (the SSH mesh
    /// of `pond connect` uses it); `None` for providers without SSH.
    fn ssh_target(&self, lease: &Lease) -> Option<crate::transport::ssh::SshTarget> {
        let _ = lease;
        None
    }
}
