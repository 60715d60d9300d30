//! The provider adapters: one trait, one module per provider. Only code in
//! this module talks to providers (processes, HTTP, SSH); everything above it
//! works with [`Lease`]s and [`ProviderError`]s.

pub mod aws;
pub mod azure;
pub mod blacksmith;
pub mod claim_backed;
pub mod claimed_ports;
pub mod coordinator;
pub mod daytona;
pub mod e2b;
pub mod gcp;
pub mod hetzner;
pub mod http;
pub mod islo;
pub mod local;
pub mod modal;
pub mod owner;
pub mod registry;
pub mod ssh;
pub mod ssh_lease;
pub mod tailnet;
pub mod tensorlake;
#[cfg(test)]
mod test_env;

use std::time::Duration;

use async_trait::async_trait;
use crabbox_core::labels::Labels;
use crabbox_core::lease::Lease;
use crabbox_core::provider::{ProviderError, ProviderName};
use crabbox_exec::session::Session;
use crabbox_spec::desired::DesiredMember;

use crate::claimed_ports::ClaimedPorts;

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

/// The member's provider block, typed (`T::default()` without one): a
/// block that does not fit is a configuration error naming the member.
pub(crate) fn block_of<T: serde::de::DeserializeOwned + Default>(
    member: &DesiredMember,
) -> Result<T, ProviderError> {
    member.block().map_err(|e| ProviderError::Config {
        message: format!(
            "member `{}`: invalid {} block: {e}",
            member.slug, member.provider
        ),
        hint: format!(
            "see `crabbox schema` for the fields of `{}:`",
            member.provider
        ),
    })
}

/// One provider.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Its name.
    fn name(&self) -> ProviderName;

    /// Every lease of `pond` (one list call, filtered by label).
    async fn list(&self, pond: &str) -> Result<Vec<Lease>, ProviderError>;

    /// [`Self::list`] for discovery, which reads the pond's claims while
    /// the providers are listed: `claimed` yields the SSH port each claim
    /// records. A provider that learns a lease's port from a local record
    /// of its own takes the claim's instead, and reads the record only for
    /// a lease whose claim holds none; the others list as `list` does.
    async fn list_with_claimed_ports(
        &self,
        pond: &str,
        claimed: ClaimedPorts,
    ) -> Result<Vec<Lease>, ProviderError> {
        let _ = claimed;
        self.list(pond).await
    }

    /// The ponds that have crabbox resources on this provider, from its labels
    /// (one list call; `crabbox sweep` uses it). Claim-backed providers have no
    /// labels to list: their ponds come from the claims.
    async fn ponds(&self) -> Result<Vec<String>, ProviderError> {
        Ok(Vec::new())
    }

    /// The `slug` labels of every crabbox resource this provider lists,
    /// whatever its pond: a new lease's slug must be unique across them (and
    /// the local claims), as Crabbox's allocation requires
    /// (internal/cli/slug.go:103-145). Label-less providers check claims
    /// only, as Crabbox does (slug.go:147-185).
    async fn slugs_in_use(&self) -> Result<Vec<String>, ProviderError> {
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

    /// The ID for a new lease of `member`, in this provider's shape as
    /// Crabbox mints it (`cbx_` + 12 hex unless the provider says
    /// otherwise), so Crabbox maps it back to the resource. The executor
    /// writes the pending claim under it before `create`. A provider whose
    /// ID is only known after its create call (Tensorlake) returns a
    /// provisional `cbx_` ID here and re-keys the claim in `create`; the
    /// lease `create` returns carries the final ID.
    ///
    /// # Errors
    /// The member cannot get an ID (e.g. its static host already holds a
    /// lease of another member).
    async fn lease_id(&self, pond: &str, member: &DesiredMember) -> Result<String, ProviderError> {
        let _ = (pond, member);
        Ok(crabbox_core::lease::new_lease_id())
    }

    /// Creates a lease carrying `request.labels`.
    async fn create(&self, request: &CreateRequest) -> Result<Lease, ProviderError>;

    /// Replaces a lease's labels.
    async fn relabel(&self, lease: &Lease, labels: &Labels) -> Result<(), ProviderError>;

    /// The value a label holds once this provider stored it (Compute
    /// Engine lowercases and maps `.` to `_`): the engine keeps its view of
    /// a lease it relabelled equal to what the next listing shows.
    fn stored_label(&self, value: &str) -> String {
        value.to_owned()
    }

    /// How to reach the lease: run commands, upload the repository, run
    /// services, probe readiness. Building it does no I/O; each call does.
    fn session<'a>(&'a self, lease: &'a Lease) -> Box<dyn Session + 'a>;

    /// Releases the lease and everything crabbox started on it. A lease
    /// that is already gone is [`ProviderError::NotFound`].
    async fn release(&self, lease: &Lease) -> Result<(), ProviderError>;

    /// The provider's URL bridge (publishing ports at public URLs), if it
    /// has one.
    fn url_bridge(&self) -> Option<&dyn UrlBridge> {
        None
    }

    /// Pausing and resuming leases, if the provider can.
    fn pausing(&self) -> Option<&dyn Pausing> {
        None
    }

    /// How to reach the lease over SSH, for SSH-lease providers (the SSH mesh
    /// of `pond connect` uses it); `None` for providers without SSH.
    async fn ssh_target(&self, lease: &Lease) -> Option<crabbox_exec::ssh::SshTarget> {
        let _ = lease;
        None
    }
}

/// A provider's URL bridge: ports of a lease published at public URLs, so
/// peers reach a member that has no SSH.
#[async_trait]
pub trait UrlBridge: Send + Sync {
    /// Publishes `port` of the lease at a public URL for `ttl`, reusing a
    /// live share of the same port.
    async fn share(&self, lease: &Lease, port: u16, ttl: Duration) -> Result<Share, ProviderError>;

    /// The lease's current shares.
    async fn shares(&self, lease: &Lease) -> Result<Vec<Share>, ProviderError>;
}

/// Leases that can be paused, releasing their compute but keeping the lease
/// and its claim, and resumed later.
#[async_trait]
pub trait Pausing: Send + Sync {
    /// Pauses the lease.
    async fn pause(&self, lease: &Lease) -> Result<(), ProviderError>;

    /// Resumes a paused lease.
    async fn resume(&self, lease: &Lease) -> Result<(), ProviderError>;
}

impl dyn Provider {
    /// The URL bridge, or the error that says the provider has none.
    ///
    /// # Errors
    /// [`ProviderError::Unsupported`] for providers without one.
    pub fn bridge(&self) -> Result<&dyn UrlBridge, ProviderError> {
        self.url_bridge().ok_or_else(|| {
            ProviderError::Unsupported(format!("provider `{}` has no URL bridge", self.name()))
        })
    }

    /// Pausing, or the error that says the provider cannot `verb` leases.
    ///
    /// # Errors
    /// [`ProviderError::Unsupported`] for providers that cannot pause.
    pub fn pauser(&self, verb: &str) -> Result<&dyn Pausing, ProviderError> {
        self.pausing().ok_or_else(|| {
            ProviderError::Unsupported(format!("provider `{}` cannot {verb} leases", self.name()))
        })
    }
}
