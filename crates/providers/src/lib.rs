//! The provider adapters: one trait, one module per provider. Only code in
//! this module talks to providers (processes, HTTP, SSH); everything above it
//! works with [`Lease`]s and [`ProviderError`]s.

pub mod claim_backed;
pub mod hetzner;
pub mod http;
pub mod islo;
pub mod local;
pub mod registry;
pub mod ssh;
pub mod tensorlake;

use std::time::Duration;

use async_trait::async_trait;
use crabbox_core::labels::Labels;
use crabbox_core::lease::Lease;
use crabbox_core::provider::{ProviderError, ProviderName};
use crabbox_exec::session::Session;
use crabbox_spec::desired::DesiredMember;

pub use crabbox_core::lease::Share;

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

/// One provider.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Its name.
    fn name(&self) -> ProviderName;

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

    /// How to reach the lease: run commands, upload the repository, run
    /// services, probe readiness. Building it does no I/O; each call does.
    fn session<'a>(&'a self, lease: &'a Lease) -> Box<dyn Session + 'a>;

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
    fn ssh_target(&self, lease: &Lease) -> Option<crabbox_exec::ssh::SshTarget> {
        let _ = lease;
        None
    }
}
